"""PyTorch reference implementations of the sampling hot spots: memory-frugal, CPU-friendly.

Work is split into row chunks so that no intermediate is larger than `CHUNK_ELEMENTS` floats,
whatever the batch, length or vocabulary (LLaDA's vocabulary has 126,464 entries), and nothing is
promoted to float64. Noise is counter-based: the uniform for logit (row r, token v) is a hash of
(seed, offset + r * V + v), so samples do not depend on chunking or on which other rows are present.
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 20  # about 4 MB of float32 per intermediate
_MASK32 = 0xFFFFFFFF


def _as_int32(value: int) -> int:
    """The signed int32 with the same 32 bits as `value` (torch has no uint32 arithmetic on CPU)."""
    value &= _MASK32
    return value - (1 << 32) if value >= 1 << 31 else value


def counter_uniform(index: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniform floats in (0, 1) from integer counters: the lowbias32 hash of (counter * golden + seed mix).

    Arithmetic is on int32, which wraps like uint32; `>>` on int32 is arithmetic, so each logical
    shift is followed by a mask. Bit-identical to the same hash on uint32 (the Triton kernels use it).
    """
    x = index.to(torch.int32).mul_(_as_int32(0x9E3779B1)).add_(_as_int32(seed * 0x85EBCA77 + 0x27D4EB2F))
    x.bitwise_xor_((x >> 16) & 0xFFFF).mul_(_as_int32(0x7FEB352D))
    x.bitwise_xor_((x >> 15) & 0x1FFFF).mul_(_as_int32(0x846CA68B))
    x.bitwise_xor_((x >> 16) & 0xFFFF)
    return ((x >> 8) & 0xFFFFFF).to(torch.float32).add_(0.5).mul_(1.0 / (1 << 24))  # 24 bits, never 0 or 1


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
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gumbel-max sample per position from logits (..., V), with scores of the model's distribution.

    Returns (tokens, prob, margin, entropy), each of shape logits.shape[:-1] (or (len(rows),)):
    tokens  - argmax(logits / T + Gumbel) after top-k / top-p filtering (T = 0: argmax)
    prob    - softmax(logits)[token], the untempered probability of the chosen token
    margin  - top-1 minus top-2 probability of softmax(logits)
    entropy - entropy (nats) of softmax(logits)
    `rows` (optional, int64) selects rows of the flattened (N, V) logits to process, without copying
    the others; the noise of a row depends only on its index, so a subset gets the same samples.
    """
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    index = torch.arange(flat.shape[0], device=logits.device) if rows is None else rows.to(logits.device)
    n = index.shape[0]
    tokens = torch.empty(n, dtype=torch.long, device=logits.device)
    prob = torch.empty(n, dtype=torch.float32, device=logits.device)
    margin = torch.empty_like(prob)
    entropy = torch.empty_like(prob)
    step = max(1, CHUNK_ELEMENTS // vocab)
    for start in range(0, n, step):
        chunk_rows = index[start : start + step]
        chunk = (flat[chunk_rows] if rows is not None else flat[start : start + step]).float()  # (c, V)
        if temperature == 0:
            choice = chunk.argmax(-1)
        else:
            noisy = _filter_top_k_top_p(chunk, top_k, top_p) / temperature
            counters = (chunk_rows[:, None] * vocab + torch.arange(vocab, device=chunk.device)).view(-1)
            gumbel = counter_uniform(counters + offset, seed).log_().neg_().log_().neg_()  # -log(-log u)
            choice = noisy.add_(gumbel.view_as(noisy)).argmax(-1)
        p = chunk.softmax(-1)
        top2 = p.topk(min(2, vocab), dim=-1).values
        sl = slice(start, start + len(chunk_rows))
        tokens[sl] = choice
        prob[sl] = p.gather(-1, choice[:, None]).squeeze(-1)
        margin[sl] = top2[:, 0] - (top2[:, 1] if vocab > 1 else 0.0)
        entropy[sl] = torch.special.entr(p).sum(-1)
    shape = logits.shape[:-1] if rows is None else index.shape
    return tokens.view(shape), prob.view(shape), margin.view(shape), entropy.view(shape)
