"""Triton kernel for `energy_score` (forward only).

One program per batch row b. The cross term sums ||x_i - y_j|| over (BLOCK_I, BLOCK_J) tiles of
pairs, each distance accumulated over the latent dimension in slices of BLOCK_L through a
(BLOCK_I, BLOCK_J, BLOCK_L) difference tile (exact differences, not |x|^2 + |y|^2 - 2 x.y, so small
distances keep their precision); the within term does the same over (i, j) pairs of samples (the
diagonal is exactly 0). The program writes 2 cross / (N M) - within / (N (N - 1)).
Gradients: the dispatch uses the differentiable reference whenever autograd needs one.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _pair_distance_sum(a_ptr, stride_a, A, b_ptr, stride_b, Bn, L,
                       BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_L: tl.constexpr):
    total = tl.zeros((BLOCK_I, BLOCK_J), tl.float32)
    for i0 in range(0, A, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        for j0 in range(0, Bn, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            sq = tl.zeros((BLOCK_I, BLOCK_J), tl.float32)
            for l0 in range(0, L, BLOCK_L):
                ll = l0 + tl.arange(0, BLOCK_L)
                l_ok = ll < L
                xa = tl.load(a_ptr + i[:, None] * stride_a + ll[None, :], mask=(i < A)[:, None] & l_ok[None, :],
                             other=0.0).to(tl.float32)
                xb = tl.load(b_ptr + j[:, None] * stride_b + ll[None, :], mask=(j < Bn)[:, None] & l_ok[None, :],
                             other=0.0).to(tl.float32)
                diff = xa[:, None, :] - xb[None, :, :]
                sq += tl.sum(diff * diff, axis=2)
            ok = (i < A)[:, None] & (j < Bn)[None, :]
            total += tl.where(ok, tl.sqrt(sq), 0.0)
    return tl.sum(tl.sum(total, axis=1), axis=0)


@triton.jit
def _energy_kernel(x_ptr, sxb, sxn, y_ptr, syb, sym, out_ptr, N, M, L,
                   BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_L: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    x = x_ptr + b * sxb
    y = y_ptr + b * syb
    cross = _pair_distance_sum(x, sxn, N, y, sym, M, L, BLOCK_I, BLOCK_J, BLOCK_L)
    within = _pair_distance_sum(x, sxn, N, x, sxn, N, L, BLOCK_I, BLOCK_J, BLOCK_L)
    tl.store(out_ptr + b, 2.0 * cross / (N * M) - within / (N * (N - 1)))


def energy_score(samples, targets, block_i: int = 16, block_j: int = 16, block_l: int = 32):
    """Triton version of reference.energy_score: (B,) float32, no autograd."""
    if samples.stride(-1) != 1:
        samples = samples.contiguous()
    if targets.stride(-1) != 1:
        targets = targets.contiguous()
    batch, n, l = samples.shape
    m = targets.shape[1]
    out = torch.empty(batch, dtype=torch.float32, device=samples.device)
    if batch:
        _energy_kernel[(batch,)](samples, samples.stride(0), samples.stride(1), targets, targets.stride(0),
                                 targets.stride(1), out, n, m, l,
                                 BLOCK_I=block_i, BLOCK_J=block_j, BLOCK_L=block_l)
    return out
