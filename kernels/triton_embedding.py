"""Triton kernel for `expected_embedding`: softmax(logits / T) @ E streamed flash-style, plus entropy.

Grid (row blocks, d blocks). A program owns BLOCK_R rows and BLOCK_D columns of the output and walks
the vocabulary in tiles of BLOCK_V: x = logits tile / T, running max m, s = sum exp(x - m),
h = sum exp(x - m) (x - m) (for the entropy log s - h / s), and an accumulator
acc (BLOCK_R, BLOCK_D) += exp(x - m) @ E[tile, cols], rescaled by exp(m_old - m_new) whenever the
max grows. Programs of the same rows but other d blocks recompute the (cheap) softmax statistics
instead of communicating, as flash attention does across heads. Only d block 0 writes the entropy.
T = 0 (the argmax embedding) is handled by the wrapper without the kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

NEG_INF = float("-inf")


def _precision(dtype: torch.dtype) -> str:
    """tl.dot precision: IEEE float32 for float32/64 data; TF32 for half data, whose values TF32 holds
    exactly (so products match a half-precision tensor-core dot with float32 sums). The inputs are
    upcast to float32 first because bfloat16 tl.dot is wrong under the Triton 3.9 interpreter."""
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


@triton.jit
def _expected_embedding_kernel(logits_ptr, stride_row, emb_ptr, stride_emb, mean_ptr, ent_ptr,
                               n_rows, V, D, temperature, PRECISION: tl.constexpr,
                               BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    dcol = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    r_ok = r < n_rows
    d_ok = dcol < D
    row = r.to(tl.int64)
    m = tl.full((BLOCK_R,), NEG_INF, tl.float32)
    s = tl.zeros((BLOCK_R,), tl.float32)
    h = tl.zeros((BLOCK_R,), tl.float32)
    acc = tl.zeros((BLOCK_R, BLOCK_D), tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        c_ok = cols < V
        x = tl.load(logits_ptr + row[:, None] * stride_row + cols[None, :], mask=r_ok[:, None] & c_ok[None, :],
                    other=NEG_INF).to(tl.float32) / temperature
        m_new = tl.maximum(m, tl.max(x, axis=1))
        shift_new = tl.where(m_new == NEG_INF, 0.0, m_new)
        shift_old = tl.where(m == NEG_INF, shift_new, m)
        alpha = tl.exp(shift_old - shift_new)
        z = x - shift_new[:, None]
        e = tl.exp(z)
        h = alpha * (h + (shift_old - shift_new) * s) + tl.sum(tl.where(e > 0, e * z, 0.0), axis=1)
        s = alpha * s + tl.sum(e, axis=1)
        m = m_new
        emb = tl.load(emb_ptr + cols[:, None].to(tl.int64) * stride_emb + dcol[None, :],
                      mask=c_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot(e, emb.to(tl.float32), acc * alpha[:, None], input_precision=PRECISION)
    tl.store(mean_ptr + row[:, None] * D + dcol[None, :], acc / s[:, None], mask=r_ok[:, None] & d_ok[None, :])
    if tl.program_id(1) == 0:
        tl.store(ent_ptr + r, tl.log(s) - h / s, mask=r_ok)


def expected_embedding(logits, embedding, temperature=1.0,
                       block_rows: int = 16, block_v: int = 64, block_d: int | None = None):
    """Triton version of reference.expected_embedding (same arguments and results).

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
        grid = (triton.cdiv(n, block_rows), triton.cdiv(d, block_d))
        _expected_embedding_kernel[grid](flat, flat.stride(0), embedding, embedding.stride(0), mean, entropy,
                                         n, vocab, d, float(temperature),
                                         PRECISION=_precision(embedding.dtype),
                                         BLOCK_R=block_rows, BLOCK_V=block_v, BLOCK_D=block_d)
    return mean.view(*shape, d), entropy.view(shape)
