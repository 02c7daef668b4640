"""Sampling hot spots behind one function each: a Triton kernel on CUDA, the PyTorch reference elsewhere.

The Triton kernels arrive with the kernels issue; until then every device uses the reference,
which is already memory-frugal (row-chunked, float32, counter-based noise).
"""

from kernels.reference import counter_uniform, sample_and_score

__all__ = ["counter_uniform", "sample_and_score"]
