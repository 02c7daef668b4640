"""BrierLM: a likelihood-free language-model score that every family can be given (CALM, section 4).

For a prefix and the true next n tokens y, Brier(P, y) = 2 P(y) - sum_z P(z)^2 (higher is better, at most 1).
Samples x_1 .. x_S of the next n tokens give an unbiased estimate without any probability (CALM's uses S = 2):
2 mean_i 1{x_i = y} - mean_{i != j} 1{x_i = x_j}, the collision term sum_z P(z)^2 = P(x_i = x_j) estimated by the
U-statistic over all S (S - 1) ordered pairs. Brier-n averages it over prefixes; BrierLM = 100 (prod_{n=1..4}
Brier-n)^(1/4). For small models Brier-4 is about 1e-3 and the S = 2 estimate, whose collision term is a single
coin, often comes out negative, which zeroes BrierLM: more samples shrink its variance (the default is 16).
Standard errors come from the spread of the per-prefix estimates (BrierLM's by the delta method, with the four
orders' covariance).

Prefixes: windows of `context + 4` tokens of a split starting every `stride` tokens; the first `context`
tokens are the prefix and the next 4 the target (chunk-aligned for CALM when `context` is a multiple of K).

Estimators:
* `sample` (any family that can sample a continuation): the S-sample estimate above.
* `exact` (ar only): P(y_{1:n}) exactly from the logits; the collision term sum_z P(z)^2 exactly for n = 1
  (from the softmax) and, for n > 1, as E_{z~P}[P(z)] averaged over S sampled continuations with their exact
  probabilities (unbiased, lower variance than the sample estimate).
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from explorer import kernels
from explorer.data import TokenStream, load_corpus

ORDERS = (1, 2, 3, 4)
ESTIMATORS = ("sample", "exact")
DEFAULT_SAMPLES = 16  # continuations per prefix


def sample_brier(samples: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) unbiased estimates of 2 P(y) - sum_z P(z)^2 from S >= 2 samples (B, S, n) of P and the truth y (B, n):
    twice the hit rate minus the collision rate over the S (S - 1) ordered pairs of distinct samples."""
    S = samples.shape[1]
    if S < 2:
        raise ValueError(f"the sample estimator needs at least 2 samples per prefix, got {S}")
    hits = (samples == y[:, None]).all(-1).float().mean(1)  # (B,)
    same = (samples[:, :, None] == samples[:, None, :]).all(-1).float()  # (B, S, S), the diagonal all ones
    collisions = (same.sum((1, 2)) - S) / (S * (S - 1))
    return 2 * hits - collisions


def brier_windows(tokenizer, split: str, context: int, max_windows: int | None, stride: int = 8,
                  corpus: str | None = None) -> torch.Tensor:
    """(N, context + 4) windows of the split starting every `stride` tokens (targets at every stride-th position)."""
    return windows_of(TokenStream(load_corpus(corpus), split, tokenizer).ids, context, max_windows, stride)


def windows_of(ids: torch.Tensor, context: int, max_windows: int | None, stride: int) -> torch.Tensor:
    """(N, context + 4) windows of a token stream (N,) starting every `stride` tokens."""
    length = context + max(ORDERS)
    starts = torch.arange(0, len(ids) - length + 1, stride)[:max_windows]
    return torch.stack([ids[s : s + length] for s in starts.tolist()])


@torch.no_grad()
def ar_continuations(model, prefixes: torch.Tensor, length: int, seed: int, temperature: float = 1.0,
                     samples: int = 1, return_probs: bool = False):
    """(B samples, length) tokens sampled at `temperature` after <bos> + each prefix (B, P), with a KV cache:
    `samples` continuations of each prefix (rows b * samples ...), sharing one pass over the prefix. With
    `return_probs` also the model's (untempered) probability of each drawn token given what precedes it."""
    cache = model.new_cache()
    bos = torch.full((len(prefixes), 1), model.bos_id, dtype=torch.long)
    logits = model(torch.cat([bos, prefixes], 1).to(model.device), cache=cache, logits_for=slice(-1, None))[:, -1]
    cache.repeat_interleave(samples)
    logits = logits.repeat_interleave(samples, 0)  # (B samples, V)
    out, probs = [], []
    for step in range(length):
        tokens, prob, *_ = kernels.sample_and_score(logits.float(), temperature, seed=seed,
                                                    offset=step * logits.numel(), margin=False, entropy=False)
        out.append(tokens.cpu())
        probs.append(prob.cpu())
        if step < length - 1:
            logits = model(tokens[:, None], cache=cache)[:, -1]
    return (torch.stack(out, 1), torch.stack(probs, 1)) if return_probs else torch.stack(out, 1)


@torch.no_grad()
def ar_logprobs(model, prefixes: torch.Tensor, continuation: torch.Tensor, with_first: bool = False):
    """(B, n) log P of each continuation token given <bos> + prefix + the continuation so far; `with_first` also
    returns the whole distribution of the first token, (B, V) probabilities, from the same pass."""
    bos = torch.full((len(prefixes), 1), model.bos_id, dtype=torch.long)
    ids = torch.cat([bos, prefixes, continuation], 1).to(model.device)
    logp = model(ids[:, :-1], logits_for=slice(prefixes.shape[1], None)).float().log_softmax(-1)  # (B, n, V)
    taken = logp.gather(-1, continuation.to(model.device)[..., None]).squeeze(-1).cpu()
    return (taken, logp[:, 0].exp().cpu()) if with_first else taken


@torch.no_grad()
def calm_continuations(model, prefixes: torch.Tensor, length: int, generator: torch.Generator,
                       samples: int = 1) -> torch.Tensor:
    """(B samples, length) tokens: whole chunks decoded from one head sample each, after chunk-aligned prefixes;
    `samples` continuations of each prefix (rows b * samples ...), sharing one pass over the prefix."""
    cache = model.new_cache()
    hidden = model.prefix_state(prefixes, cache).repeat_interleave(samples, 0)  # (B samples, d)
    cache.repeat_interleave(samples)
    out = []
    while sum(c.shape[1] for c in out) < length:
        z = model.sample_latents(hidden, 1, generator)[:, 0]  # (B, l)
        chunk = model.autoencoder.decode(z).argmax(-1)  # (B, K)
        out.append(chunk.cpu())
        if sum(c.shape[1] for c in out) < length:
            hidden = model.hidden_states(chunk[:, None], cache=cache)[:, -1]
    return torch.cat(out, 1)[:, :length]


def sampled_continuations(model, prefixes: torch.Tensor, length: int, seed: int, samples: int) -> torch.Tensor:
    """(B, S, length) continuations, S = `samples` per prefix, at the family's plain sampling (temperature 1)."""
    from explorer.sampling import generate
    from explorer.sampling.cdcd import CDCD_SAMPLER

    B = len(prefixes)
    if model.family in ("ar", "calm"):  # batched: S rows per prefix draw S different continuations
        if model.family == "ar":
            out = ar_continuations(model, prefixes, length, seed, samples=samples)
        else:
            out = calm_continuations(model, prefixes, length, torch.Generator().manual_seed(seed), samples=samples)
        return out.view(B, samples, length)
    knobs = {"mdlm": dict(sampler="ancestral", steps=length, temperature=1.0),
             "bd3lm": dict(temperature=1.0, top_p=1.0, stop_at_eos=False, min_entropy=0.0),
             "cdcd": dict(steps=50, **CDCD_SAMPLER)}[model.family]
    gen = length if model.family != "bd3lm" else -(-length // model.block_size) * model.block_size
    rows = [[generate(model, prefix, gen_length=gen, seed=(seed * 100_003 + i) * 131 + k, record="none",
                      **knobs).final_tokens[:length] for k in range(samples)]
            for i, prefix in enumerate(prefixes.tolist())]
    return torch.tensor(rows)


def brier_lm(model, split: str = "test", context: int = 64, max_windows: int | None = None, batch_size: int = 64,
             estimator: str = "sample", seed: int = 0, stride: int = 8, corpus: str | None = None,
             progress: bool = True, samples: int = DEFAULT_SAMPLES) -> dict:
    """{"brier": {n: Brier-n}, "brier_se": {n: its standard error}, "brierlm": 100 * geometric mean, "brierlm_se",
    ...} on the split's windows, with `samples` continuations per prefix."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator == "exact" and model.family != "ar":
        raise ValueError(f"estimator='exact' needs token probabilities (the ar family); {model.family} uses 'sample'")
    if context < 1 or context + max(ORDERS) > model.max_seq_len - (1 if model.family == "ar" else 0):
        raise ValueError(f"context must be in [1, {model.max_seq_len - max(ORDERS) - 1}] for {model.name}, "
                         f"got {context}")
    if not isinstance(samples, int) or isinstance(samples, bool) or not 2 <= samples <= 1024:
        raise ValueError(f"samples must be an integer in [2, 1024] (continuations per prefix), got {samples!r}")
    model.eval()
    windows = brier_windows(model.tokenizer, split, context, max_windows, stride, corpus)
    per_prefix = []  # (B, 4) estimates of every batch
    for b, batch in enumerate(tqdm(windows.split(batch_size), desc=f"brier {model.name}", disable=not progress)):
        prefixes, targets = batch[:, :context], batch[:, context:]
        batch_seed = seed * 7919 + b
        if estimator == "exact":
            logp, first = ar_logprobs(model, prefixes, targets, with_first=True)
            logp = logp.cumsum(1)  # (B, 4): log P(y_{1:n})
            _, probs = ar_continuations(model, prefixes, max(ORDERS), batch_seed, samples=samples, return_probs=True)
            # (B, 4): E_{z~P} P(z_{1:n}), each drawn continuation's probability from the pass that drew it
            collision = probs.cumprod(1).view(len(prefixes), samples, -1).mean(1)
            collision[:, 0] = first.pow(2).sum(-1)  # exact for n = 1
            per_prefix.append(2 * logp.exp() - collision)
        else:
            drawn = sampled_continuations(model, prefixes, max(ORDERS), batch_seed, samples)  # (B, S, 4)
            per_prefix.append(torch.stack([sample_brier(drawn[..., :n], targets[:, :n]) for n in ORDERS], 1))
    return {"checkpoint": model.name, "family": model.family, "split": split, "estimator": estimator,
            "samples": samples, "context": context, "stride": stride, "windows": int(len(windows)),
            **summarize(torch.cat(per_prefix))}


def summarize(estimates: torch.Tensor) -> dict:
    """Brier-n, their standard errors, BrierLM and its standard error from per-prefix estimates (N, 4)."""
    estimates = estimates.double()
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(len(estimates))
    positive = bool((mean > 0).all())
    score = 100 * math.exp(float(mean.log().mean())) if positive else 0.0
    score_se = 0.0
    if positive and len(estimates) > 1:  # delta method: log BrierLM = mean_n log B_n, with the orders' covariance
        gradient = 1 / (len(ORDERS) * mean)
        score_se = score * math.sqrt(float(gradient @ torch.cov(estimates.T) @ gradient) / len(estimates))
    return {"brier": {str(n): significant(v) for n, v in zip(ORDERS, mean)},
            "brier_se": {str(n): significant(v) for n, v in zip(ORDERS, se)},
            "brierlm": round(score, 4), "brierlm_se": round(score_se, 4)}


def significant(value, digits: int = 4) -> float:
    """`value` to `digits` significant digits: Brier-4 of small models is 1e-5 and the unigram floor's 1e-8."""
    return float(f"{float(value):.{digits}g}")


def unigram_brier(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, 4) exact Brier-n of the unigram model `probs` (V,) at each row of targets (N, 4): the next n tokens are
    independent draws, so P(y_{1:n}) = prod_i p(y_i) and sum_z P(z)^2 = (sum_v p_v^2)^n."""
    hit = probs.double()[targets].cumprod(1)  # (N, 4)
    collision = probs.double().pow(2).sum() ** torch.tensor(ORDERS, dtype=torch.float64)  # (4,)
    return 2 * hit - collision


def unigram_baseline(tokenizer, split: str = "test", context: int = 64, stride: int = 8,
                     corpus: str | None = None) -> dict:
    """The floor a language model has to beat: the unigram model of the train split (token counts plus one),
    scored exactly on the same windows as `brier_lm`, with its cross-entropy (nats per token) on the split."""
    works = load_corpus(corpus)
    train = TokenStream(works, "train", tokenizer).ids
    probs = (torch.bincount(train, minlength=tokenizer.get_vocab_size()) + 1).double()
    probs /= probs.sum()
    test = TokenStream(works, split, tokenizer).ids
    windows = windows_of(test, context, None, stride)
    return {"checkpoint": "unigram", "split": split, "estimator": "exact", "context": context, "stride": stride,
            "windows": int(len(windows)), "cross_entropy": round(float(-probs[test].log().mean()), 4),
            **summarize(unigram_brier(probs, windows[:, context:]))}


def beats(score: dict, baseline: dict) -> bool:
    """Whether every Brier-n of `score` is above the baseline's by more than two standard errors of the difference.
    An order where no sample ever hit the truth or met another (estimate 0, standard error 0) was not measured: its
    true value is somewhere below about 3 / (positions x samples), so it beats nothing."""
    def above(n: str) -> bool:
        if score["brier"][n] == 0 and score["brier_se"][n] == 0:
            return False
        gap = score["brier"][n] - baseline["brier"][n]
        return gap > 2 * math.hypot(score["brier_se"][n], baseline["brier_se"][n])

    return all(above(n) for n in map(str, ORDERS))
