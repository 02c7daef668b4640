"""BrierLM: a likelihood-free language-model score that every family can be given (CALM, section 4).

For a prefix and the true next n tokens y, Brier(P, y) = 2 P(y) - sum_z P(z)^2 (higher is better, at most 1).
Two samples x1, x2 of the next n tokens give an unbiased estimate without any probability:
1{x1 = y} + 1{x2 = y} - 1{x1 = x2}. Brier-n averages it over prefixes; BrierLM = 100 (prod_{n=1..4} Brier-n)^(1/4).

Prefixes: windows of `context + 4` tokens of a split starting every `stride` tokens; the first `context`
tokens are the prefix and the next 4 the target (chunk-aligned for CALM when `context` is a multiple of K).

Estimators:
* `sample` (any family that can sample a continuation): the two-sample estimate above.
* `exact` (ar only): P(y_{1:n}) exactly from the logits; the collision term sum_z P(z)^2 exactly for n = 1
  (from the softmax) and, for n > 1, as E_{z~P}[P(z)] with one sampled continuation and its exact
  probability (unbiased, lower variance than the two-sample estimate).
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from explorer import kernels
from explorer.data import TokenStream, load_corpus

ORDERS = (1, 2, 3, 4)
ESTIMATORS = ("sample", "exact")


def two_sample_brier(x1: torch.Tensor, x2: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) unbiased estimates of 2 P(y) - sum_z P(z)^2 from two samples x1, x2 (B, n) of P and the truth y (B, n)."""
    hit1 = (x1 == y).all(-1).float()
    hit2 = (x2 == y).all(-1).float()
    return hit1 + hit2 - (x1 == x2).all(-1).float()


def brier_windows(tokenizer, split: str, context: int, max_windows: int | None, stride: int = 8,
                  corpus: str | None = None) -> torch.Tensor:
    """(N, context + 4) windows of the split starting every `stride` tokens (targets at every stride-th position)."""
    ids = TokenStream(load_corpus(corpus), split, tokenizer).ids
    length = context + max(ORDERS)
    starts = torch.arange(0, len(ids) - length + 1, stride)[:max_windows]
    return torch.stack([ids[s : s + length] for s in starts.tolist()])


@torch.no_grad()
def ar_continuations(model, prefixes: torch.Tensor, length: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
    """(B, length) tokens sampled at `temperature` after <bos> + each prefix (B, P), with a KV cache."""
    cache = model.new_cache()
    bos = torch.full((len(prefixes), 1), model.bos_id, dtype=torch.long)
    logits = model(torch.cat([bos, prefixes], 1).to(model.device), cache=cache)[:, -1]  # (B, V)
    out = []
    for step in range(length):
        tokens = kernels.sample_and_score(logits.float(), temperature, seed=seed, offset=step * logits.numel())[0]
        out.append(tokens.cpu())
        if step < length - 1:
            logits = model(tokens[:, None], cache=cache)[:, -1]
    return torch.stack(out, 1)


@torch.no_grad()
def ar_logprobs(model, prefixes: torch.Tensor, continuation: torch.Tensor) -> torch.Tensor:
    """(B, n) log P of each continuation token given <bos> + prefix + the continuation so far."""
    bos = torch.full((len(prefixes), 1), model.bos_id, dtype=torch.long)
    ids = torch.cat([bos, prefixes, continuation], 1).to(model.device)
    logp = model(ids[:, :-1]).float().log_softmax(-1)[:, prefixes.shape[1]:]  # (B, n, V)
    return logp.gather(-1, continuation.to(model.device)[..., None]).squeeze(-1).cpu()


@torch.no_grad()
def calm_continuations(model, prefixes: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """(B, length) tokens: whole chunks decoded from one head sample each, after chunk-aligned prefixes."""
    cache = model.new_cache()
    hidden = model.prefix_state(prefixes, cache)  # (B, d)
    out = []
    while sum(c.shape[1] for c in out) < length:
        z = model.sample_latents(hidden, 1, generator)[:, 0]  # (B, l)
        chunk = model.autoencoder.decode(z).argmax(-1)  # (B, K)
        out.append(chunk.cpu())
        if sum(c.shape[1] for c in out) < length:
            hidden = model.hidden_states(chunk[:, None], cache=cache)[:, -1]
    return torch.cat(out, 1)[:, :length]


def sampled_continuations(model, prefixes: torch.Tensor, length: int, seed: int) -> torch.Tensor:
    """(B, length) continuations at the family's plain sampling (temperature 1)."""
    from explorer.sampling import generate

    if model.family == "ar":
        return ar_continuations(model, prefixes, length, seed)
    if model.family == "calm":
        return calm_continuations(model, prefixes, length, torch.Generator().manual_seed(seed))
    knobs = {"mdlm": dict(sampler="ancestral", steps=length, temperature=1.0),
             "bd3lm": dict(temperature=1.0, top_p=1.0, stop_at_eos=False, min_entropy=0.0),
             "cdcd": dict(steps=50)}[model.family]
    rows = []
    for i, prefix in enumerate(prefixes.tolist()):
        gen = length if model.family != "bd3lm" else -(-length // model.block_size) * model.block_size
        trace = generate(model, prefix, gen_length=gen, seed=seed * 100_003 + i, record="none", **knobs)
        rows.append(trace.final_tokens[:length])
    return torch.tensor(rows)


def brier_lm(model, split: str = "test", context: int = 64, max_windows: int | None = None, batch_size: int = 64,
             estimator: str = "sample", seed: int = 0, stride: int = 8, corpus: str | None = None,
             progress: bool = True) -> dict:
    """{"brier": {n: Brier-n}, "brierlm": 100 * geometric mean, ...} on the split's windows."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator == "exact" and model.family != "ar":
        raise ValueError(f"estimator='exact' needs token probabilities (the ar family); {model.family} uses 'sample'")
    if context < 1 or context + max(ORDERS) > model.max_seq_len - (1 if model.family == "ar" else 0):
        raise ValueError(f"context must be in [1, {model.max_seq_len - max(ORDERS) - 1}] for {model.name}, got {context}")
    model.eval()
    windows = brier_windows(model.tokenizer, split, context, max_windows, stride, corpus)
    totals = {n: 0.0 for n in ORDERS}
    for b, batch in enumerate(tqdm(windows.split(batch_size), desc=f"brier {model.name}", disable=not progress)):
        prefixes, targets = batch[:, :context], batch[:, context:]
        if estimator == "exact":
            logp = ar_logprobs(model, prefixes, targets).cumsum(1)  # (B, 4): log P(y_{1:n})
            sample = ar_continuations(model, prefixes, max(ORDERS), seed * 7919 + b)
            collision = ar_logprobs(model, prefixes, sample).cumsum(1).exp()  # P(z_{1:n}) for z ~ P
            bos = torch.full((len(prefixes), 1), model.bos_id, dtype=torch.long)
            with torch.no_grad():
                first = model(torch.cat([bos, prefixes], 1).to(model.device))[:, -1].float().softmax(-1)
            collision[:, 0] = first.pow(2).sum(-1).cpu()  # exact for n = 1
            for n in ORDERS:
                totals[n] += float((2 * logp[:, n - 1].exp() - collision[:, n - 1]).sum())
        else:
            x1 = sampled_continuations(model, prefixes, max(ORDERS), seed * 7919 + 2 * b)
            x2 = sampled_continuations(model, prefixes, max(ORDERS), seed * 7919 + 2 * b + 1)
            for n in ORDERS:
                totals[n] += float(two_sample_brier(x1[:, :n], x2[:, :n], targets[:, :n]).sum())
    brier = {n: totals[n] / len(windows) for n in ORDERS}
    positive = all(v > 0 for v in brier.values())
    score = 100 * math.exp(sum(math.log(v) for v in brier.values()) / len(ORDERS)) if positive else 0.0
    return {"checkpoint": model.name, "family": model.family, "split": split, "estimator": estimator,
            "context": context, "stride": stride, "windows": int(len(windows)), "brier": {str(n): round(v, 6) for n, v in brier.items()},
            "brierlm": round(score, 4)}


# --- does BrierLM track cross-entropy? (CALM's check on AR checkpoints) ----------------------------------------

def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def spearman(x: list[float], y: list[float]) -> float:
    return pearson(_ranks(x), _ranks(y))


def brier_vs_cross_entropy(checkpoints: list[str], out: str, split: str = "test", context: int = 64,
                           stride: int = 32) -> dict:
    """BrierLM (exact estimator) and cross-entropy of each ar checkpoint, their Pearson and Spearman
    correlations (CALM reports -0.966 / -0.991), as JSON, a markdown table and a scatter plot."""
    from pathlib import Path

    import explorer
    from explorer.eval import evaluate
    from explorer.measure import write_results

    if len(checkpoints) < 3:
        raise ValueError(f"the correlation needs at least 3 checkpoints, got {len(checkpoints)}")
    rows = []
    for name in tqdm(checkpoints, desc="checkpoints"):
        model = explorer.load(name)
        if model.family != "ar":
            raise ValueError(f"{name} is a {model.family} checkpoint; the cross-entropy side needs ar checkpoints")
        ce = evaluate(model, split, progress=False)["nll_per_token"]
        score = brier_lm(model, split, context, estimator="exact", stride=stride, progress=False)
        steps = getattr(model, "checkpoint_info", {}).get("training", {}).get("steps_done")
        rows.append({"checkpoint": str(name), "steps": steps, "cross_entropy": ce, "brierlm": score["brierlm"],
                     "brier": score["brier"], "windows": score["windows"]})
    ce, br = [r["cross_entropy"] for r in rows], [r["brierlm"] for r in rows]
    result = {"split": split, "context": context, "stride": stride, "rows": rows,
              "pearson": round(pearson(ce, br), 4), "spearman": round(spearman(ce, br), 4),
              "published": {"pearson": -0.966, "spearman": -0.991}}
    lines = [f"BrierLM (exact estimator, {rows[0]['windows']} positions of the {split} split, context {context}) "
             f"against cross-entropy for {len(rows)} ar checkpoints: Pearson **{result['pearson']}**, Spearman "
             f"**{result['spearman']}** (CALM: -0.966 / -0.991).", "",
             "| checkpoint | steps | cross-entropy (nats) | BrierLM | Brier-1 | Brier-2 | Brier-3 | Brier-4 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["brier"]
        lines.append(f"| {Path(r['checkpoint']).name} | {r['steps']} | {r['cross_entropy']:.4f} | {r['brierlm']:.3f} | "
                     f"{b['1']:.4f} | {b['2']:.4f} | {b['3']:.4f} | {b['4']:.5f} |")
    write_results(out, result, "\n".join(lines) + "\n")
    _plot_correlation(result, Path(out).with_suffix(".png"))
    return result


def _plot_correlation(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(5.6, 4), dpi=110)
    ax.plot([r["cross_entropy"] for r in rows], [r["brierlm"] for r in rows], "o-", color="#0072B2")
    for r in rows:
        ax.annotate(str(r["steps"]), (r["cross_entropy"], r["brierlm"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.set_xlabel("cross-entropy (nats / token, test)")
    ax.set_ylabel("BrierLM (exact estimator)")
    ax.set_title(f"BrierLM tracks cross-entropy: Pearson {result['pearson']}, Spearman {result['spearman']}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
