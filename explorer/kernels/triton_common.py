"""Pieces the Triton kernels share: the online-softmax merges, the tl.dot precision choice and the vocabulary split."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

NEG_INF = tl.constexpr(float("-inf"))  # compiled kernels may read only constexpr globals
PROGRAMS_PER_SM = 4  # split the vocabulary until the grid has this many programs per multiprocessor


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


@triton.jit
def softmax_combine(m, s, h, m2, s2, h2):
    """Merge two online-softmax states (m, s, h) and (m2, s2, h2) of disjoint column ranges of the same rows.

    Returns (m, s, h, alpha, beta): alpha and beta rescale anything accumulated against m and against m2.
    A state that is all -inf (s = h = 0) contributes nothing; no inf - inf appears.
    """
    m_new = tl.maximum(m, m2)
    shift_new = tl.where(m_new == NEG_INF, 0.0, m_new)
    shift_a = tl.where(m == NEG_INF, shift_new, m)
    shift_b = tl.where(m2 == NEG_INF, shift_new, m2)
    alpha = tl.exp(shift_a - shift_new)
    beta = tl.exp(shift_b - shift_new)
    h = alpha * (h + (shift_a - shift_new) * s) + beta * (h2 + (shift_b - shift_new) * s2)
    s = alpha * s + beta * s2
    return m_new, s, h, alpha, beta


def vocab_splits(row_programs: int, tiles: int, device: torch.device, splits: int | None = None) -> tuple[int, int]:
    """(splits, tiles per split) for a grid of `row_programs` programs streaming `tiles` vocabulary tiles each.

    With few rows one program per row block leaves most of a GPU idle while it walks the whole vocabulary;
    splitting the vocabulary into contiguous runs of tiles gives row_programs x splits programs, enough to fill
    the device (PROGRAMS_PER_SM per multiprocessor). Many rows keep splits = 1, the single pass. `splits`
    forces a count (tests); off CUDA (the interpreter) the default is 1. Empty splits are dropped.
    """
    if splits is None:
        if device.type != "cuda":
            return 1, tiles
        target = PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
        splits = triton.cdiv(target, max(row_programs, 1))
    splits = max(1, min(splits, tiles))
    per_split = triton.cdiv(tiles, splits)
    return triton.cdiv(tiles, per_split), per_split
