"""Triton kernels for `sample_and_score` and the fused `head_sample_and_score`.

One program handles BLOCK_R rows (positions) and streams over the vocabulary in tiles of BLOCK_V
columns, keeping per row a small running state (see `_update`):

    m, s, h   online softmax of the raw logits: max, sum exp(x - m), sum exp(x - m) * (x - m)
    t2        second-largest logit (for the top-1 / top-2 margin; t1 is m)
    i1        index of the first maximum (the T = 0 choice)
    best, bi  running Gumbel-max: max of x / T + gumbel and its (first) index
    bx        raw logit of the current Gumbel-max choice (for its probability)

`head_sample_and_score` can also split the vocabulary across programs (grid (row blocks, splits)) when
there are too few row blocks to fill the GPU: each program streams one contiguous run of tiles and
writes its state, and `_merge_kernel` merges the states in split order (see `triton_common.vocab_splits`).

Noise is reference.counter_gumbel (lowbias32 hash, 32-bit uniform) of the counter row * V + v + offset, so
the sampled token is the reference's (bit-identical on the interpreter; on a GPU `tl.log` may differ
from torch's by an ulp, which can only matter for exact near-ties). Nothing of size (rows, V) is
ever written. top-k and top-p each keep the logits at least a per-row floor (the k-th largest; the nucleus's
smallest, which needs the sorted values, not one streaming pass): the floors are computed beforehand in row
chunks (`_floors`), then the single pass masks what is below them. The fused head's top-k / top-p calls still
use the reference.

These wrappers assume validated arguments (kernels/__init__.py validates); they take CPU tensors
under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from explorer.kernels import reference
from explorer.kernels.reference import _as_int32
from explorer.kernels.triton_common import NEG_INF, dot_precision, softmax_combine, softmax_merge, vocab_splits

UNIFORM_MAX = tl.constexpr(reference.UNIFORM_MAX)  # compiled kernels may read only constexpr globals
MERGE_ROWS = 64  # rows per program of _merge_kernel


@triton.jit
def _gumbel(counter, seedmix):
    """reference.counter_gumbel for int64 counters: the same hash, uniform and operations, in the same order."""
    x = counter.to(tl.uint32) * tl.full((), 0x9E3779B1, tl.uint32) + seedmix.to(tl.uint32, bitcast=True)
    x = x ^ (x >> 16)
    x = x * tl.full((), 0x7FEB352D, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full((), 0x846CA68B, tl.uint32)
    x = x ^ (x >> 16)
    u = tl.minimum((x.to(tl.float32) + 0.5) * (1.0 / 4294967296.0), UNIFORM_MAX)  # in (0, 1), 32 bits
    w = 1.0 - u
    log1p_neg_u = tl.where(w == 1.0, -u, tl.log(w) * -u / (w - 1.0))
    return -tl.log(-log1p_neg_u)


@triton.jit
def _init_state(BLOCK_R: tl.constexpr):
    """Per-row streaming state: m, s, h (softmax), t2, i1 (top-2), best, bi, bx (Gumbel-max)."""
    m = tl.full((BLOCK_R,), NEG_INF, tl.float32)
    s = tl.zeros((BLOCK_R,), tl.float32)
    h = tl.zeros((BLOCK_R,), tl.float32)
    t2 = tl.full((BLOCK_R,), NEG_INF, tl.float32)
    i1 = tl.zeros((BLOCK_R,), tl.int32)
    best = tl.full((BLOCK_R,), NEG_INF, tl.float32)
    bi = tl.zeros((BLOCK_R,), tl.int32)
    bx = tl.full((BLOCK_R,), NEG_INF, tl.float32)
    return m, s, h, t2, i1, best, bi, bx


@triton.jit
def _merge_top2(m, t2, i1, tm, tt2, ti):
    """Merge a part's max tm, second value tt2 and first argmax ti into (t2, i1); m is the max before the merge.
    A repeated max is also the second; ties keep the earlier index (parts are merged in column order)."""
    return tl.maximum(tl.minimum(m, tm), tl.maximum(t2, tt2)), tl.where(tm > m, ti, i1)


@triton.jit
def _merge_gumbel(best, bi, bx, yb, yi, xb):
    """Merge a part's Gumbel-max (value yb, index yi, raw logit xb); strict >, so ties keep the earlier index."""
    take = yb > best
    return tl.where(take, yb, best), tl.where(take, yi, bi), tl.where(take, xb, bx)


@triton.jit
def _update(x, start, row, V, offset, seedmix, temperature, kth,
            m, s, h, t2, i1, best, bi, bx,
            SAMPLE: tl.constexpr, HAS_FLOOR: tl.constexpr, BLOCK_V: tl.constexpr):
    """Merge a tile x (BLOCK_R, BLOCK_V) of float32 logits (columns start.., -inf padding) into the state."""
    local = tl.arange(0, BLOCK_V)
    # top-1 / top-2 of the raw logits; ties: the first index wins, and a repeated max is also the second
    tm = tl.max(x, axis=1)
    ti = tl.argmax(x, axis=1)
    is_top = x == tm[:, None]
    count = tl.sum(is_top.to(tl.int32), axis=1)
    second = tl.max(tl.where(is_top, NEG_INF, x), axis=1)
    tt2 = tl.where(count >= 2, tm, second)
    t2, i1 = _merge_top2(m, t2, i1, tm, tt2, ti + start)
    m, s, h, _, _ = softmax_merge(x, tm, m, s, h)
    if SAMPLE:
        cols = start + local
        counter = row[:, None] * V + cols[None, :] + offset
        xf = x
        if HAS_FLOOR:
            xf = tl.where(x < kth[:, None], NEG_INF, x)
        y = xf / temperature + _gumbel(counter, seedmix)
        y = tl.where(x == NEG_INF, NEG_INF, y)  # padding and -inf logits (a gumbel is finite anyway)
        yb = tl.max(y, axis=1)
        yi = tl.argmax(y, axis=1)
        xb = tl.max(tl.where(local[None, :] == yi[:, None], x, NEG_INF), axis=1)
        best, bi, bx = _merge_gumbel(best, bi, bx, yb, yi + start, xb)
    return m, s, h, t2, i1, best, bi, bx


@triton.jit
def _finish(r, r_ok, m, s, h, t2, i1, bi, bx, tok_ptr, prob_ptr, margin_ptr, ent_ptr, SAMPLE: tl.constexpr):
    shift = tl.where(m == NEG_INF, 0.0, m)
    if SAMPLE:
        token = bi
        chosen = bx
    else:
        token = i1
        chosen = m
    tl.store(tok_ptr + r, token.to(tl.int64), mask=r_ok)
    tl.store(prob_ptr + r, tl.exp(chosen - shift) / s, mask=r_ok)
    tl.store(margin_ptr + r, (tl.exp(m - shift) - tl.exp(t2 - shift)) / s, mask=r_ok)
    tl.store(ent_ptr + r, tl.log(s) - h / s, mask=r_ok)


@triton.jit
def _sample_kernel(logits_ptr, stride_row, rows_ptr, kth_ptr, n_rows, V, offset, seedmix, temperature,
                   tok_ptr, prob_ptr, margin_ptr, ent_ptr,
                   SAMPLE: tl.constexpr, HAS_ROWS: tl.constexpr, HAS_FLOOR: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < n_rows
    if HAS_ROWS:
        row = tl.load(rows_ptr + r, mask=r_ok, other=0).to(tl.int64)
    else:
        row = r.to(tl.int64)
    kth = tl.full((BLOCK_R,), NEG_INF, tl.float32)
    if HAS_FLOOR:
        kth = tl.load(kth_ptr + r, mask=r_ok, other=NEG_INF)
    m, s, h, t2, i1, best, bi, bx = _init_state(BLOCK_R)
    base = logits_ptr + row * stride_row
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        ok = r_ok[:, None] & (cols[None, :] < V)
        x = tl.load(base[:, None] + cols[None, :], mask=ok, other=NEG_INF).to(tl.float32)
        m, s, h, t2, i1, best, bi, bx = _update(x, start, row, V, offset, seedmix, temperature, kth,
                                                m, s, h, t2, i1, best, bi, bx, SAMPLE, HAS_FLOOR, BLOCK_V)
    _finish(r, r_ok, m, s, h, t2, i1, bi, bx, tok_ptr, prob_ptr, margin_ptr, ent_ptr, SAMPLE)


@triton.jit
def _head_kernel(h_ptr, stride_h, w_ptr, stride_w, n_rows, V, D, span, offset, seedmix, temperature,
                 stat_ptr, idx_ptr, tok_ptr, prob_ptr, margin_ptr, ent_ptr,
                 SAMPLE: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program (i, j) streams rows i * BLOCK_R.. over the columns [j * span, (j + 1) * span) (span: whole tiles).
    SPLIT: store the state at (row, j) of stat (n_rows, splits, 6) and idx (n_rows, splits, 2) for _merge_kernel;
    otherwise (one split) write the results."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < n_rows
    row = r.to(tl.int64)
    kth = tl.full((BLOCK_R,), NEG_INF, tl.float32)
    m, s, h, t2, i1, best, bi, bx = _init_state(BLOCK_R)
    lo = tl.program_id(1) * span
    for start in range(lo, tl.minimum(lo + span, V), BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        acc = tl.zeros((BLOCK_R, BLOCK_V), tl.float32)
        for k in range(0, D, BLOCK_D):
            kk = k + tl.arange(0, BLOCK_D)
            k_ok = kk < D
            a = tl.load(h_ptr + row[:, None] * stride_h + kk[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_ptr + cols[None, :].to(tl.int64) * stride_w + kk[:, None],
                        mask=col_ok[None, :] & k_ok[:, None], other=0.0)  # (BLOCK_D, BLOCK_V) = W^T tile
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PRECISION)
        x = tl.where(r_ok[:, None] & col_ok[None, :], acc, NEG_INF)
        m, s, h, t2, i1, best, bi, bx = _update(x, start, row, V, offset, seedmix, temperature, kth,
                                                m, s, h, t2, i1, best, bi, bx, SAMPLE, False, BLOCK_V)
    if SPLIT:
        at = row * tl.num_programs(1) + tl.program_id(1)
        tl.store(stat_ptr + at * 6, m, mask=r_ok)
        tl.store(stat_ptr + at * 6 + 1, s, mask=r_ok)
        tl.store(stat_ptr + at * 6 + 2, h, mask=r_ok)
        tl.store(stat_ptr + at * 6 + 3, t2, mask=r_ok)
        tl.store(stat_ptr + at * 6 + 4, best, mask=r_ok)
        tl.store(stat_ptr + at * 6 + 5, bx, mask=r_ok)
        tl.store(idx_ptr + at * 2, i1, mask=r_ok)
        tl.store(idx_ptr + at * 2 + 1, bi, mask=r_ok)
    else:
        _finish(r, r_ok, m, s, h, t2, i1, bi, bx, tok_ptr, prob_ptr, margin_ptr, ent_ptr, SAMPLE)


@triton.jit
def _merge_kernel(stat_ptr, idx_ptr, n_rows, splits, tok_ptr, prob_ptr, margin_ptr, ent_ptr,
                  SAMPLE: tl.constexpr, BLOCK_R: tl.constexpr):
    """Merge the per-split states of _head_kernel[SPLIT] in split (= column) order and write the results:
    the same merges as the single pass, so the same token and scores up to float rounding of s and h."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < n_rows
    m, s, h, t2, i1, best, bi, bx = _init_state(BLOCK_R)
    for j in range(0, splits):
        at = r.to(tl.int64) * splits + j
        m2 = tl.load(stat_ptr + at * 6, mask=r_ok, other=NEG_INF)
        s2 = tl.load(stat_ptr + at * 6 + 1, mask=r_ok, other=0.0)
        h2 = tl.load(stat_ptr + at * 6 + 2, mask=r_ok, other=0.0)
        t22 = tl.load(stat_ptr + at * 6 + 3, mask=r_ok, other=NEG_INF)
        i12 = tl.load(idx_ptr + at * 2, mask=r_ok, other=0)
        t2, i1 = _merge_top2(m, t2, i1, m2, t22, i12)
        m, s, h, _, _ = softmax_combine(m, s, h, m2, s2, h2)
        if SAMPLE:
            best2 = tl.load(stat_ptr + at * 6 + 4, mask=r_ok, other=NEG_INF)
            bx2 = tl.load(stat_ptr + at * 6 + 5, mask=r_ok, other=NEG_INF)
            bi2 = tl.load(idx_ptr + at * 2 + 1, mask=r_ok, other=0)
            best, bi, bx = _merge_gumbel(best, bi, bx, best2, bi2, bx2)
    _finish(r, r_ok, m, s, h, t2, i1, bi, bx, tok_ptr, prob_ptr, margin_ptr, ent_ptr, SAMPLE)


def _seedmix(seed: int) -> int:
    return _as_int32(seed * 0x85EBCA77 + 0x27D4EB2F)


def _outputs(n: int, device) -> list[torch.Tensor]:
    return [torch.empty(n, dtype=torch.long, device=device)] + [
        torch.empty(n, dtype=torch.float32, device=device) for _ in range(3)]


def _floors(flat: torch.Tensor, index: torch.Tensor | None, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """reference.keep_floor of each processed row (float32; at least one of top_k / top_p filters), in row chunks."""
    n = flat.shape[0] if index is None else index.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=flat.device)
    step = max(1, reference.CHUNK_ELEMENTS // flat.shape[1])
    for start in range(0, n, step):
        chunk = (flat[start : start + step] if index is None else flat[index[start : start + step]]).float()
        out[start : start + chunk.shape[0]] = reference.keep_floor(chunk, top_k, top_p)[:, 0]
    return out


def sample_and_score(logits, temperature=1.0, top_k=None, top_p=None, seed=0, offset=0, rows=None,
                     block_rows: int = 4, block_v: int | None = None):
    """Triton version of reference.sample_and_score (same arguments and results)."""
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    if flat.stride(1) != 1:
        flat = flat.contiguous()
    index = None if rows is None else rows.to(device=logits.device, dtype=torch.long).contiguous()
    n = flat.shape[0] if index is None else index.shape[0]
    sample = temperature != 0
    has_floor = sample and ((top_k is not None and top_k < vocab) or (top_p is not None and top_p < 1.0))
    kth = _floors(flat, index, top_k, top_p) if has_floor else None
    out = _outputs(n, logits.device)
    block_v = block_v or min(triton.next_power_of_2(vocab), 2048)
    if n:
        grid = (triton.cdiv(n, block_rows),)
        _sample_kernel[grid](flat, flat.stride(0), index, kth, n, vocab, offset, _seedmix(seed),
                             float(temperature) if sample else 1.0, *out,
                             SAMPLE=sample, HAS_ROWS=index is not None, HAS_FLOOR=has_floor,
                             BLOCK_R=block_rows, BLOCK_V=block_v)
    shape = logits.shape[:-1] if rows is None else (n,)
    return tuple(o.view(shape) for o in out)


def head_sample_and_score(hidden, weight, temperature=1.0, top_k=None, top_p=None, seed=0, offset=0,
                          block_rows: int = 16, block_v: int = 64, block_d: int = 32, splits: int | None = None):
    """Triton version of reference.head_sample_and_score: the matmul tile feeds the streaming state.

    The vocabulary is split across programs when there are few rows (`triton_common.vocab_splits`;
    `splits` forces a count), with the same tokens and scores as the single pass.

    top-k / top-p calls use the reference (it needs the k-th largest logit or the sorted nucleus first).
    float32 inputs multiply in IEEE float32 (no TF32); half inputs in TF32, which holds their values
    exactly (as a half-precision tensor-core dot would), float32 sums.
    """
    vocab, d = weight.shape
    if (top_k is not None and top_k < vocab) or (top_p is not None and top_p < 1.0):
        if temperature != 0:
            return reference.head_sample_and_score(hidden, weight, temperature, top_k, top_p, seed, offset)
    flat = hidden.reshape(-1, d)
    if flat.stride(1) != 1:
        flat = flat.contiguous()
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    if flat.dtype != weight.dtype:
        common = torch.promote_types(flat.dtype, weight.dtype)
        flat, weight = flat.to(common), weight.to(common)
    n = flat.shape[0]
    sample = temperature != 0
    out = _outputs(n, hidden.device)
    if n:
        row_blocks = triton.cdiv(n, block_rows)
        splits, per_split = vocab_splits(row_blocks, triton.cdiv(vocab, block_v), hidden.device, splits)
        stat = idx = None
        if splits > 1:  # per (row, split): m, s, h, t2, best, bx and i1, bi
            stat = torch.empty(n, splits, 6, dtype=torch.float32, device=hidden.device)
            idx = torch.empty(n, splits, 2, dtype=torch.int32, device=hidden.device)
        _head_kernel[(row_blocks, splits)](flat, flat.stride(0), weight, weight.stride(0), n, vocab, d,
                                           per_split * block_v, offset, _seedmix(seed),
                                           float(temperature) if sample else 1.0, stat, idx, *out,
                                           SAMPLE=sample, SPLIT=splits > 1, PRECISION=dot_precision(flat.dtype),
                                           BLOCK_R=block_rows, BLOCK_V=block_v, BLOCK_D=block_d)
        if splits > 1:
            _merge_kernel[(triton.cdiv(n, MERGE_ROWS),)](stat, idx, n, splits, *out, SAMPLE=sample,
                                                         BLOCK_R=MERGE_ROWS)
    return tuple(o.view(hidden.shape[:-1]) for o in out)
