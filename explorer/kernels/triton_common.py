"""Pieces the Triton kernels share: the online-softmax merge and the tl.dot precision choice."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

NEG_INF = tl.constexpr(float("-inf"))  # compiled kernels may read only constexpr globals


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot precision: IEEE float32 for float32/64 data; TF32 for half data, whose values TF32 holds
    exactly (so products match a half-precision tensor-core dot with float32 sums). The inputs are
    upcast to float32 first because bfloat16 tl.dot is wrong under the Triton 3.9 interpreter."""
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


@triton.jit
def softmax_merge(x, tile_max, m, s, h):
    """Online softmax with entropy: merge tile x (R, C) with row maxima tile_max into (m, s, h).

    Returns (m, s, h, alpha, e): alpha rescales anything accumulated against the old max, e = exp(x - m).
    Shifts are 0 while a row is all -inf, so no inf - inf appears.
    """
    m_new = tl.maximum(m, tile_max)
    shift_new = tl.where(m_new == NEG_INF, 0.0, m_new)
    shift_old = tl.where(m == NEG_INF, shift_new, m)
    alpha = tl.exp(shift_old - shift_new)
    z = x - shift_new[:, None]
    e = tl.exp(z)
    h = alpha * (h + (shift_old - shift_new) * s) + tl.sum(tl.where(e > 0, e * z, 0.0), axis=1)
    s = alpha * s + tl.sum(e, axis=1)
    return m_new, s, h, alpha, e
