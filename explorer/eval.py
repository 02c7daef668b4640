"""Evaluation: what the model cards, the benchmarks and the notebooks measure.

Perplexity on a held-out split: exact for `ar`, the NELBO bound for `mdlm` and `bd3lm`.
Both families score exactly the same tokens: the split cut into consecutive windows of the
model's context length. The diffusion bound averages the continuous-time NELBO over `n_t`
low-discrepancy mask rates per window and is token-weighted over the whole split.

Sample quality: continuations of validation prompts judged by an AR checkpoint (generative
perplexity) beside their unigram entropy. Autoencoder robustness: CALM's reconstruction under
noise on the latent. BrierLM, the likelihood-free metric, has its own module (`explorer.brier`).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import torch
from tqdm.auto import tqdm

from explorer.data import TokenStream, load_corpus
from explorer.models.calm import Autoencoder, collapsed_dimensions, reconstruction_accuracy
from explorer.models.mdlm import low_discrepancy_t
from explorer.sampling import generate, sampler_for
from explorer.sampling.bd3lm import unigram_entropy
from explorer.sampling.mdlm import CACHE_MODES
from explorer.sampling.trace import Trace

NOISE_SIGMAS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)  # the robustness curve: accuracy of decode(mean + sigma eps)


@torch.no_grad()
def evaluate(model, split: str = "test", corpus: str | None = None, n_t: int = 8, batch_size: int = 32,
             max_windows: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """{"family", "split", "tokens", "nll_per_token", "ppl", ...}; ppl is an upper bound for diffusion."""
    if n_t < 1:
        raise ValueError(f"n_t must be >= 1, got {n_t}")
    model.eval()
    stream = TokenStream(load_corpus(corpus), split, model.tokenizer)
    windows = stream.windows(model.max_seq_len)[:max_windows]
    generator = torch.Generator().manual_seed(seed)
    nll_sum, tokens = 0.0, 0
    for batch in tqdm(windows.split(batch_size), desc=f"eval {model.family} {split}", disable=not progress):
        batch = batch.to(model.device)
        if model.family == "ar":
            nll_sum += float(model.loss(batch)["nll_sum"])
        else:
            rates = low_discrepancy_t(len(batch) * n_t, model.config.eps, generator).view(n_t, len(batch))
            nll_sum += sum(float(model.loss(batch, generator=generator, t=t)["nll_sum"]) for t in rates) / n_t
        tokens += batch.numel()
    nll = nll_sum / tokens
    return {"family": model.family, "split": split, "tokens": tokens, "nll_per_token": round(nll, 5),
            "ppl": round(math.exp(nll), 3), "bound": model.family != "ar",
            "n_t": n_t if model.family != "ar" else None, "checkpoint": model.name,
            "window": model.max_seq_len}


def prompts_from_val(tokenizer, count: int, length: int = 16) -> list[list[int]]:
    """`count` prompts of `length` tokens spread evenly over the validation split."""
    windows = TokenStream(load_corpus(), "val", tokenizer).windows(length)
    return [windows[i].tolist() for i in torch.linspace(0, len(windows) - 1, count).long()]


@torch.no_grad()
def generative_ppl(judge, prompts: list[list[int]], outputs: list[list[int]]) -> float:
    """Perplexity the AR judge assigns to the generated tokens given <bos> + prompt."""
    nll, count = 0.0, 0
    for prompt, out in zip(prompts, outputs):
        ids = torch.tensor([[judge.bos_id] + prompt + out], device=judge.device)
        logp = judge(ids[:, :-1]).log_softmax(-1)[0]
        targets = ids[0, 1:]
        token_logp = logp.gather(-1, targets[:, None]).squeeze(-1)[len(prompt):]
        nll -= float(token_logp.sum())
        count += len(out)
    return math.exp(nll / count)


def cache_quality(model, trace: Trace, judge=None) -> dict:
    """The run's prompt, seed and knobs with each of Fast-dLLM's caches: {"none" | "prefix" | "dual": {"agreement":
    the fraction of final tokens equal to the uncached run's, "nfe", and with an AR `judge` "gen_ppl" (its
    generative perplexity of the output)}}. Re-runs the mdlm sampler twice (the run itself stands for its own
    cache mode); `explorer.viz.state_drift(..., caches=...)` shows the numbers beside the drift."""
    if model.family != "mdlm" or "cache" not in trace.sampler:
        raise ValueError("the cache comparison needs a run of an mdlm-family sampler with a cache knob (LLaDA's loop, "
                         "threshold or factor)")
    if trace.sampler.get("edits") or trace.sampler.get("infill"):
        raise ValueError("the cache comparison re-runs the sampler: a run with hand edits or an infilled prompt "
                         "cannot be re-run as it was")
    if judge is not None and (judge.family != "ar" or getattr(judge.config, "direction", "l2r") != "l2r"):
        raise ValueError(f"judge must be a left-to-right ar model, got a {judge.family} one")
    name = trace.sampler["name"]
    knobs = {k: v for k, v in trace.sampler.items() if k in sampler_for(model.family, name).knobs and k != "infill"}
    runs = {mode: trace if trace.sampler["cache"] == mode else
            generate(model, trace.prompt_ids, name, trace.sampler["seed"], "tokens", **(knobs | {"cache": mode}))
            for mode in CACHE_MODES}
    base = runs["none"].final_tokens
    result = {}
    for mode, run in runs.items():
        out = run.final_tokens
        result[mode] = {"agreement": sum(a == b for a, b in zip(out, base)) / len(base), "nfe": run.stats.get("nfe")}
        if judge is not None:
            result[mode]["gen_ppl"] = generative_ppl(judge, [list(trace.prompt_ids)], [out])
    return result


def sample_quality(judge, prompts: list[list[int]], outputs: list[list[int]]) -> dict:
    """Generative perplexity and the mean unigram entropy (nats) of the outputs: repetitive text scores well on
    perplexity alone, the entropy shows it."""
    return {"gen_ppl": round(generative_ppl(judge, prompts, outputs), 2),
            "unigram_entropy": round(statistics.mean(unigram_entropy(torch.tensor(o)) for o in outputs), 3)}


@torch.no_grad()
def robustness(autoencoder: Autoencoder, chunks: torch.Tensor) -> dict:
    """Accuracy (clean and under Gaussian noise on the latent) and collapsed dimensions on `chunks` (N, K)."""
    curve = {str(s): round(reconstruction_accuracy(autoencoder, chunks, s), 6) for s in NOISE_SIGMAS}
    return {"accuracy": curve["0.0"], "accuracy_under_noise": curve, "chunks": int(len(chunks)),
            "collapsed_dims": collapsed_dimensions(autoencoder, chunks), "latent_dim": autoencoder.config.latent_dim}


def compare(checkpoints: list[str], out: str | Path, split: str = "test", n_t: int = 8,
            max_windows: int | None = None, variance_batches: int = 4) -> dict:
    """The block-size table: perplexity (bounds for diffusion) of several checkpoints on one split, and
    for block-diffusion checkpoints the NELBO variance of each clip window on validation batches.
    Writes OUT (JSON), OUT with .md (table) and .png (plot)."""
    from explorer.hub import load
    from explorer.models.bd3lm import clip_variance

    rows = []
    for name in tqdm(checkpoints, desc="compare"):
        model = load(name)
        row = evaluate(model, split, n_t=n_t, max_windows=max_windows)
        row["block_size"] = getattr(model, "block_size", None)
        if model.family == "bd3lm" and variance_batches > 0:
            val = TokenStream(load_corpus(), "val", model.tokenizer).windows(model.max_seq_len)
            row["clip_variance"] = clip_variance(model, list(val[: 16 * variance_batches].split(16)))
        rows.append(row)
    result = {"split": split, "n_t": n_t, "max_windows": max_windows, "rows": rows}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(compare_table(result))
    plot_compare(result, out.with_suffix(".png"))
    return result


def compare_table(result: dict) -> str:
    windows = sorted({w for r in result["rows"] for w in r.get("clip_variance", {})},
                     key=lambda w: tuple(float(x) for x in w.split(",")))
    head = "| checkpoint | family | L' | test PPL | " + " | ".join(f"var [{w}]" for w in windows) + " |"
    lines = [head, "|" + "---|" * (4 + len(windows))]
    for r in result["rows"]:
        ppl = f"{'<= ' if r['bound'] else ''}{r['ppl']:.2f}"
        variances = [f"{r['clip_variance'][w]:.4f}" if w in r.get("clip_variance", {}) else "" for w in windows]
        lines.append(f"| {r['checkpoint']} | {r['family']} | {r['block_size'] or ''} | {ppl} | "
                     + " | ".join(variances) + " |")
    return "\n".join(lines) + "\n"


def plot_compare(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    with_var = [r for r in rows if "clip_variance" in r]
    fig, axes = plt.subplots(1, 2 if with_var else 1, figsize=(10 if with_var else 5.5, 3.8), dpi=110, squeeze=False)
    ax = axes[0, 0]
    colors = {"ar": "#0072B2", "bd3lm": "#009E73", "mdlm": "#D55E00"}
    bars = ax.bar([r["checkpoint"] for r in rows], [r["ppl"] for r in rows],
                  color=[colors.get(r["family"], "#999999") for r in rows])
    ax.bar_label(bars, labels=[f"{'≤' if r['bound'] else ''}{r['ppl']:.1f}" for r in rows])
    ax.set_ylabel(f"{result['split']} perplexity (diffusion: upper bound)")
    ax.set_title("AR < BD3 L'=4 < L'=16 < MDLM?")
    ax.tick_params(axis="x", rotation=15)
    if with_var:
        ax = axes[0, 1]
        for r, marker in zip(with_var, "osD^"):
            windows = list(r["clip_variance"])
            ax.plot(windows, list(r["clip_variance"].values()), marker=marker, label=r["checkpoint"])
        ax.set_yscale("log")
        ax.set_xlabel("clip window [beta, omega] of the mask rate")
        ax.set_ylabel("variance of the NELBO estimate")
        ax.set_title("Training-loss variance per clip window")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
