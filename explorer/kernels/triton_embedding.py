"""Triton kernel for `expected_embedding`: softmax(logits / T) @ E streamed flash-style, plus entropy.

Grid (row blocks, d blocks). A program owns BLOCK_R rows and BLOCK_D columns of the output and walks
the vocabulary in tiles of BLOCK_V: x = logits tile / T, running max m, s = sum exp(x - m),
h = sum exp(x - m) (x - m) (for the entropy log s - h / s), and an accumulator
acc (BLOCK_R, BLOCK_D) += exp(x - m) @ E[tile, cols], rescaled by exp(m_old - m_new) whenever the
max grows. Programs of the same rows but other d blocks recompute the (cheap) softmax statistics
instead of communicating, as flash attention does across heads. Only d block 0 writes the entropy.
T = 0 (the argmax embedding) is handled by the wrapper without the kernel.

With few rows the vocabulary is also split (grid (row blocks, d blocks, splits), `triton_common.vocab_splits`):
each program streams one contiguous run of tiles and stores its unnormalised acc and (m, s, h);
`_expected_embedding_merge_kernel` rescales and adds them (flash-decoding's second pass).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from explorer.kernels.triton_common import NEG_INF, dot_precision, softmax_combine, softmax_merge, vocab_splits


@triton.jit
def _expected_embedding_kernel(logits_ptr, stride_row, emb_ptr, stride_emb, mean_ptr, ent_ptr, stat_ptr, part_ptr,
                               n_rows, V, D, span, temperature, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
                               BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program (i, c, j): rows i * BLOCK_R.., output columns c * BLOCK_D.., vocabulary [j * span, (j + 1) * span).
    SPLIT: store acc at (row, j) of part (n_rows, splits, D) and (m, s, h) of stat (n_rows, splits, 3)."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    dcol = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    r_ok = r < n_rows
    d_ok = dcol < D
    row = r.to(tl.int64)
    m = tl.full((BLOCK_R,), NEG_INF, tl.float32)
    s = tl.zeros((BLOCK_R,), tl.float32)
    h = tl.zeros((BLOCK_R,), tl.float32)
    acc = tl.zeros((BLOCK_R, BLOCK_D), tl.float32)
    lo = tl.program_id(2) * span
    for start in range(lo, tl.minimum(lo + span, V), BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        c_ok = cols < V
        x = tl.load(logits_ptr + row[:, None] * stride_row + cols[None, :], mask=r_ok[:, None] & c_ok[None, :],
                    other=NEG_INF).to(tl.float32) / temperature
        m, s, h, alpha, e = softmax_merge(x, tl.max(x, axis=1), m, s, h)
        emb = tl.load(emb_ptr + cols[:, None].to(tl.int64) * stride_emb + dcol[None, :],
                      mask=c_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot(e, emb.to(tl.float32), acc * alpha[:, None], input_precision=PRECISION)
    out_ok = r_ok[:, None] & d_ok[None, :]
    if SPLIT:
        at = row * tl.num_programs(2) + tl.program_id(2)
        tl.store(part_ptr + at[:, None] * D + dcol[None, :], acc, mask=out_ok)
        if tl.program_id(1) == 0:
            tl.store(stat_ptr + at * 3, m, mask=r_ok)
            tl.store(stat_ptr + at * 3 + 1, s, mask=r_ok)
            tl.store(stat_ptr + at * 3 + 2, h, mask=r_ok)
    else:
        tl.store(mean_ptr + row[:, None] * D + dcol[None, :], acc / s[:, None], mask=out_ok)
        if tl.program_id(1) == 0:
            tl.store(ent_ptr + r, tl.log(s) - h / s, mask=r_ok)


@triton.jit
def _expected_embedding_merge_kernel(stat_ptr, part_ptr, mean_ptr, ent_ptr, n_rows, D, splits,
                                     BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid (row blocks, d blocks): merge the splits' (m, s, h) in order and sum their acc, each rescaled to the
    common max; then mean = acc / s and the entropy, as the single pass writes them."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    dcol = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    r_ok = r < n_rows
    out_ok = r_ok[:, None] & (dcol < D)[None, :]
    row = r.to(tl.int64)
    m = tl.full((BLOCK_R,), NEG_INF, tl.float32)
    s = tl.zeros((BLOCK_R,), tl.float32)
    h = tl.zeros((BLOCK_R,), tl.float32)
    acc = tl.zeros((BLOCK_R, BLOCK_D), tl.float32)
    for j in range(0, splits):
        at = row * splits + j
        m2 = tl.load(stat_ptr + at * 3, mask=r_ok, other=NEG_INF)
        s2 = tl.load(stat_ptr + at * 3 + 1, mask=r_ok, other=0.0)
        h2 = tl.load(stat_ptr + at * 3 + 2, mask=r_ok, other=0.0)
        part = tl.load(part_ptr + at[:, None] * D + dcol[None, :], mask=out_ok, other=0.0)
        m, s, h, alpha, beta = softmax_combine(m, s, h, m2, s2, h2)
        acc = acc * alpha[:, None] + part * beta[:, None]
    tl.store(mean_ptr + row[:, None] * D + dcol[None, :], acc / s[:, None], mask=out_ok)
    if tl.program_id(1) == 0:
        tl.store(ent_ptr + r, tl.log(s) - h / s, mask=r_ok)


def expected_embedding(logits, embedding, temperature=1.0,
                       block_rows: int = 16, block_v: int = 64, block_d: int | None = None, splits: int | None = None):
    """Triton version of reference.expected_embedding (same arguments and results).

    The vocabulary is split across programs when there are few rows (`triton_common.vocab_splits`;
    `splits` forces a count); the merge gives the single pass's results up to float rounding.

    float32 embeddings are multiplied in IEEE float32; half embeddings in TF32 (exact for their
    values; the probabilities keep 10 mantissa bits), float32 sums.
    """
    vocab = logits.shape[-1]
    d = embedding.shape[1]
    shape = logits.shape[:-1]
    if temperature == 0:
        flat = logits.reshape(-1, vocab)
        return embedding[flat.argmax(-1)].float().view(*shape, d), torch.zeros(shape, device=logits.device)
    flat = logits.reshape(-1, vocab)
    if flat.stride(1) != 1:
        flat = flat.contiguous()
    if embedding.stride(1) != 1:
        embedding = embedding.contiguous()
    n = flat.shape[0]
    mean = torch.empty(n, d, dtype=torch.float32, device=logits.device)
    entropy = torch.empty(n, dtype=torch.float32, device=logits.device)
    block_d = block_d or max(16, min(triton.next_power_of_2(d), 128))
    if n:
        blocks = (triton.cdiv(n, block_rows), triton.cdiv(d, block_d))
        splits, per_split = vocab_splits(blocks[0] * blocks[1], triton.cdiv(vocab, block_v), logits.device, splits)
        stat = part = None
        if splits > 1:  # per (row, split): m, s, h and the unnormalised acc (d,)
            stat = torch.empty(n, splits, 3, dtype=torch.float32, device=logits.device)
            part = torch.empty(n, splits, d, dtype=torch.float32, device=logits.device)
        _expected_embedding_kernel[blocks + (splits,)](flat, flat.stride(0), embedding, embedding.stride(0), mean,
                                                       entropy, stat, part, n, vocab, d, per_split * block_v,
                                                       float(temperature), SPLIT=splits > 1,
                                                       PRECISION=dot_precision(embedding.dtype),
                                                       BLOCK_R=block_rows, BLOCK_V=block_v, BLOCK_D=block_d)
        if splits > 1:
            _expected_embedding_merge_kernel[blocks](stat, part, mean, entropy, n, d, splits,
                                                     BLOCK_R=block_rows, BLOCK_D=block_d)
    return mean.view(*shape, d), entropy.view(shape)
