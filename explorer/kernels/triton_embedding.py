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

from explorer.kernels.triton_common import NEG_INF, dot_precision, softmax_merge


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
        m, s, h, alpha, e = softmax_merge(x, tl.max(x, axis=1), m, s, h)
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
                                         PRECISION=dot_precision(embedding.dtype),
                                         BLOCK_R=block_rows, BLOCK_V=block_v, BLOCK_D=block_d)
    return mean.view(*shape, d), entropy.view(shape)
