"""Perplexity on a held-out split: exact for `ar`, the NELBO bound for `mdlm`.

Both families score exactly the same tokens: the split cut into consecutive windows of the
model's context length. The diffusion bound averages the continuous-time NELBO over `n_t`
low-discrepancy mask rates per window and is token-weighted over the whole split.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from explorer.data import TokenStream, load_corpus
from explorer.models.mdlm import low_discrepancy_t


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
            "n_t": n_t if model.family != "ar" else None, "checkpoint": getattr(model, "name", None),
            "window": model.max_seq_len}
