"""PyTorch reference implementations of the sampling hot spots: memory-frugal, CPU-friendly.

Work is split into row chunks so that no intermediate is larger than `CHUNK_ELEMENTS` floats,
whatever the batch, length or vocabulary (LLaDA's vocabulary has 126,464 entries), and nothing is
promoted to float64. Noise is counter-based: the uniform for logit (row r, token v) is a hash of
(seed, offset + r * V + v), so samples do not depend on chunking or on which other rows are present.
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 22  # about 16 MB of float32 per intermediate
_MASK32 = 0xFFFFFFFF


def counter_uniform(index: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniform floats in (0, 1) from int64 counters: a 32-bit integer hash (lowbias32) of seed and counter."""
    x = (index * 0x9E3779B1 + (seed & _MASK32) * 0x85EBCA77 + 0x27D4EB2F) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    x = x ^ (x >> 16)
    return ((x >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # 24 random bits, never 0 or 1


def _filter_top_k_top_p(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set logits outside the top-k and outside the nucleus of mass top_p to -inf (in that order)."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_and_score(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gumbel-max sample per position from logits (..., V), with scores of the model's distribution.

    Returns (tokens, prob, margin, entropy), each of shape logits.shape[:-1]:
    tokens  - argmax(logits / T + Gumbel) after top-k / top-p filtering (T = 0: argmax)
    prob    - softmax(logits)[token], the untempered probability of the chosen token
    margin  - top-1 minus top-2 probability of softmax(logits)
    entropy - entropy (nats) of softmax(logits)
    """
    vocab = logits.shape[-1]
    rows = logits.reshape(-1, vocab)
    n = rows.shape[0]
    tokens = torch.empty(n, dtype=torch.long, device=logits.device)
    prob = torch.empty(n, dtype=torch.float32, device=logits.device)
    margin = torch.empty_like(prob)
    entropy = torch.empty_like(prob)
    step = max(1, CHUNK_ELEMENTS // vocab)
    for start in range(0, n, step):
        chunk = rows[start : start + step].float()  # (c, V)
        if temperature == 0:
            choice = chunk.argmax(-1)
        else:
            filtered = _filter_top_k_top_p(chunk, top_k, top_p) / temperature
            counters = torch.arange(start * vocab, (start + chunk.shape[0]) * vocab, device=chunk.device)
            u = counter_uniform(counters + offset, seed).view_as(chunk)
            filtered.sub_(torch.log(-torch.log(u)))  # + Gumbel(0, 1)
            choice = filtered.argmax(-1)
        log_p = chunk.log_softmax(-1)
        p = log_p.exp()
        top2 = p.topk(2, dim=-1).values if vocab > 1 else torch.cat([p, torch.zeros_like(p)], -1)
        tokens[start : start + step] = choice
        prob[start : start + step] = p.gather(-1, choice[:, None]).squeeze(-1)
        margin[start : start + step] = top2[:, 0] - top2[:, 1]
        entropy[start : start + step] = -(p * log_p.nan_to_num(neginf=0.0)).sum(-1)
    shape = logits.shape[:-1]
    return tokens.view(shape), prob.view(shape), margin.view(shape), entropy.view(shape)
