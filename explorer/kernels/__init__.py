"""Sampling hot spots behind one function each: a Triton kernel on CUDA, the PyTorch reference elsewhere.

    sample_and_score(logits, temperature, top_k, top_p, seed, offset, rows) -> tokens, prob, margin, entropy
    head_sample_and_score(hidden, weight, ...)                   -> the same from hidden states
      (margin=False / entropy=False: that score comes back None, and the CPU path skips its passes)
    expected_embedding(logits, embedding, temperature)             -> mean (..., d), entropy (...)
    energy_score(samples (B, N, l), targets (B, M, l))             -> per-row energy loss (B,)
    counter_uniform(index, seed)                                   -> the counter-based uniform noise

Arguments are validated here, once, for both backends (ValueError naming the argument and the
expected shape). The Triton modules are imported only when a CUDA tensor arrives (and triton
imports), so CPU-only installs never load Triton. See README.md beside this file for the algorithms
(and for why this is `explorer.kernels`, never a top-level `kernels`).
"""

from __future__ import annotations

import functools
import numbers

import torch

from explorer.kernels import reference
from explorer.kernels.reference import counter_uniform

__all__ = ["counter_uniform", "energy_score", "expected_embedding", "head_sample_and_score", "sample_and_score"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FORCE_TRITON = False  # tests set this (with TRITON_INTERPRET=1) to route CPU tensors to the Triton kernels


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install on an odd platform
        return False
    return True


def _use_triton(*tensors: torch.Tensor) -> bool:
    """Triton when every tensor is on a CUDA device (or tests force it) and triton imports."""
    return (_FORCE_TRITON or all(t.is_cuda for t in tensors)) and triton_available()


# --- validation ----------------------------------------------------------------------------------

def _check_tensor(name: str, value, shape: str, ndim: int | None = None, min_ndim: int = 1) -> None:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {shape}, got {type(value).__name__}")
    if (ndim is not None and value.dim() != ndim) or value.dim() < min_ndim:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
    if value.dtype not in _FLOATS:
        raise ValueError(f"{name} must be a float16/bfloat16/float32/float64 tensor of shape {shape}, "
                         f"got {value.dtype}")


def _check_same_device(name: str, value: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if value.device != other.device:
        raise ValueError(f"{name} is on {value.device} but {other_name} is on {other.device}; put both on one device")


def _check_knobs(temperature, top_k, top_p) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if not temperature >= 0 or temperature == float("inf"):  # also catches NaN
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


def _check_counter(seed, offset) -> None:
    for name, value in (("seed", seed), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")


def _check_rows(rows, n: int) -> None:
    if rows is None:
        return
    if not isinstance(rows, torch.Tensor) or rows.dim() != 1 or rows.dtype.is_floating_point \
            or rows.dtype == torch.bool or rows.is_complex():
        got = (f"{rows.dtype} tensor of shape {tuple(rows.shape)}" if isinstance(rows, torch.Tensor)
               else type(rows).__name__)
        raise ValueError(f"rows must be None or a 1-D integer tensor of shape (R,) indexing the {n} rows of the "
                         f"flattened (N, V) logits, got {got}")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n):
        raise ValueError(f"rows must index the flattened (N, V) logits, 0 <= row < {n}; "
                         f"got values in [{int(rows.min())}, {int(rows.max())}]")


def _report_nan_rows(name: str, flat: torch.Tensor, prob: torch.Tensor, rows, shape) -> None:
    """Raise if a row whose scores came out NaN has NaN inputs (rows that are all -inf stay NaN, unreported)."""
    bad = torch.isnan(prob.reshape(-1)).nonzero().squeeze(-1)
    if not len(bad):
        return
    index = bad if rows is None else rows.to(bad.device)[bad]
    for start in range(0, len(index), 256):
        chunk = index[start : start + 256].to(flat.device)
        has_nan = torch.isnan(flat[chunk]).any(-1)
        if has_nan.any():
            row = int(chunk[has_nan.nonzero()[0, 0]])
            position = tuple(int(i) for i in torch.unravel_index(torch.tensor(row), tuple(shape))) if len(shape) else ()
            raise ValueError(f"NaN {name} in row {row} (position {position} of {name} shape "
                             f"{tuple(shape)} + (last dim,)); refusing to sample from NaN")


# --- public functions --------------------------------------------------------------------------

def _without(result: tuple, margin: bool, entropy: bool) -> tuple:
    """(tokens, prob, margin, entropy) with the scores the caller did not ask for as None, whichever backend ran."""
    tokens, prob, margin_out, entropy_out = result
    return tokens, prob, margin_out if margin else None, entropy_out if entropy else None


def sample_and_score(logits, temperature=1.0, top_k=None, top_p=None, seed=0, offset=0, rows=None,
                     margin=True, entropy=True):
    """Gumbel-max sample and scores per row of logits (..., V); see reference.sample_and_score.

    Returns (tokens, prob, margin, entropy), each logits.shape[:-1] (or (len(rows),)); prob, margin
    and entropy are of softmax(logits) (untempered). `margin=False` / `entropy=False`: that score is None
    (a caller that only ranks by probability saves the passes over the vocabulary it would cost on the CPU).
    Raises ValueError on bad arguments and on NaN logits.
    """
    _check_tensor("logits", logits, "(..., V) with V >= 1")
    if logits.shape[-1] < 1:
        raise ValueError(f"logits must have shape (..., V) with V >= 1, got {tuple(logits.shape)}")
    _check_knobs(temperature, top_k, top_p)
    _check_counter(seed, offset)
    n = logits.numel() // logits.shape[-1]
    _check_rows(rows, n)
    if _use_triton(logits):
        from explorer.kernels import triton_sample
        result = triton_sample.sample_and_score(logits, temperature, top_k, top_p, seed=seed, offset=offset, rows=rows)
    else:
        result = reference.sample_and_score(logits, temperature, top_k, top_p, seed=seed, offset=offset, rows=rows,
                                            margin=margin, entropy=entropy)
    _report_nan_rows("logits", logits.reshape(-1, logits.shape[-1]), result[1], rows, logits.shape[:-1])
    return _without(result, margin, entropy)


def head_sample_and_score(hidden, weight, temperature=1.0, top_k=None, top_p=None, seed=0, offset=0,
                          margin=True, entropy=True):
    """sample_and_score(hidden @ weight.T, ...) without materialising the logits.

    hidden (B, L, d) (any leading shape), weight (V, d): the output embedding / LM head. Computed in
    float32. T = 0 gives the nearest-token rounding argmax(hidden @ weight.T).
    """
    _check_tensor("hidden", hidden, "(B, L, d)")
    _check_tensor("weight", weight, "(V, d)", ndim=2)
    if weight.shape[0] < 1 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must have shape (V, d) with V >= 1 and d = hidden.shape[-1] = {hidden.shape[-1]}, "
                         f"got {tuple(weight.shape)}")
    _check_same_device("weight", weight, "hidden", hidden)
    _check_knobs(temperature, top_k, top_p)
    _check_counter(seed, offset)
    if _use_triton(hidden, weight):
        from explorer.kernels import triton_sample
        result = triton_sample.head_sample_and_score(hidden, weight, temperature, top_k, top_p, seed, offset)
    else:
        result = reference.head_sample_and_score(hidden, weight, temperature, top_k, top_p, seed, offset,
                                                 margin=margin, entropy=entropy)
    if torch.isnan(result[1]).any():
        _report_nan_rows("hidden", hidden.reshape(-1, hidden.shape[-1]), result[1], None, hidden.shape[:-1])
        if torch.isnan(weight).any():
            raise ValueError("NaN in weight (V, d); refusing to sample from NaN logits")
    return _without(result, margin, entropy)


def expected_embedding(logits, embedding, temperature=1.0):
    """softmax(logits / T) @ embedding, shape (..., d), and the entropy of softmax(logits / T), shape (...).

    logits (..., V), embedding (V, d). T = 0: the embedding of the argmax, entropy 0.
    """
    _check_tensor("logits", logits, "(..., V) with V >= 1")
    _check_tensor("embedding", embedding, "(V, d)", ndim=2)
    if embedding.shape[0] != logits.shape[-1] or logits.shape[-1] < 1:
        raise ValueError(f"embedding must have shape (V, d) with V = logits.shape[-1] = {logits.shape[-1]} >= 1, "
                         f"got {tuple(embedding.shape)}")
    _check_same_device("embedding", embedding, "logits", logits)
    _check_knobs(temperature, None, None)
    if _use_triton(logits, embedding):
        from explorer.kernels import triton_embedding
        mean, entropy = triton_embedding.expected_embedding(logits, embedding, temperature)
    else:
        mean, entropy = reference.expected_embedding(logits, embedding, temperature)
    _report_nan_rows("logits", logits.reshape(-1, logits.shape[-1]), entropy, None, logits.shape[:-1])
    if temperature == 0 and logits.numel():  # entropy is 0 there; torch.argmax picks a NaN if a row has one
        flat = logits.reshape(-1, logits.shape[-1])
        _report_nan_rows("logits", flat, flat.gather(-1, flat.argmax(-1, keepdim=True)).float(), None,
                         logits.shape[:-1])
    return mean, entropy


def energy_score(samples, targets):
    """Per-row energy loss (B,): 2/(N M) sum_ij ||x_i - y_j|| - 1/(N (N-1)) sum_{i != j} ||x_i - x_j||.

    samples (B, N, l) with N >= 2, targets (B, M, l). Differentiable: when autograd needs a graph
    the (differentiable) reference runs even on CUDA; otherwise CUDA tensors take the Triton kernel.
    """
    _check_tensor("samples", samples, "(B, N, l) with N >= 2", ndim=3)
    _check_tensor("targets", targets, "(B, M, l)", ndim=3)
    if samples.shape[1] < 2:
        raise ValueError(f"samples must have shape (B, N, l) with N >= 2, got {tuple(samples.shape)}")
    if targets.shape[0] != samples.shape[0] or targets.shape[2] != samples.shape[2] or targets.shape[1] < 1:
        raise ValueError(f"targets must have shape (B, M, l) = ({samples.shape[0]}, M >= 1, {samples.shape[2]}), "
                         f"got {tuple(targets.shape)}")
    _check_same_device("targets", targets, "samples", samples)
    needs_grad = torch.is_grad_enabled() and (samples.requires_grad or targets.requires_grad)
    if not needs_grad and _use_triton(samples, targets):
        from explorer.kernels import triton_energy
        return triton_energy.energy_score(samples, targets)
    return reference.energy_score(samples, targets)
