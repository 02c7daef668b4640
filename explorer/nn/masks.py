"""Attention masks of block diffusion (BD3-LM), as boolean tensors (True = may attend) or FlexAttention masks.

Blocks are aligned to absolute positions: token p belongs to block p // block_size.
- Sampling and the clean half of training use the block-causal mask: a token sees every token of
  its own block and of earlier blocks.
- Vectorized training runs one pass over `x_t (+) x0` (length 2L, both halves at positions 0..L-1)
  with the three-part mask [[M_BD, M_OBC], [0, M_BC]]:
    M_BD  noisy -> noisy of the same block,
    M_OBC noisy -> clean of strictly earlier blocks,
    M_BC  clean -> clean of the same or earlier blocks; clean never sees noisy.
"""

from __future__ import annotations

import functools

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask


def block_causal_mask(q_positions: torch.Tensor, k_positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """(Lq, Lk) boolean: a query sees the keys of its own block and of earlier blocks."""
    return (k_positions[None, :] // block_size) <= (q_positions[:, None] // block_size)


def bd3_mask_mod(seq_len: int, block_size: int):
    """FlexAttention mask_mod of the vectorized training pass over [x_t | x0] (indices 0..2L-1)."""

    def mask_mod(batch, head, q, kv):
        q_noisy, kv_noisy = q < seq_len, kv < seq_len
        q_block, kv_block = (q % seq_len) // block_size, (kv % seq_len) // block_size
        noisy_to_noisy = q_noisy & kv_noisy & (q_block == kv_block)
        noisy_to_clean = q_noisy & ~kv_noisy & (kv_block < q_block)
        clean_to_clean = ~q_noisy & ~kv_noisy & (kv_block <= q_block)
        return noisy_to_noisy | noisy_to_clean | clean_to_clean

    return mask_mod


@functools.lru_cache(maxsize=16)
def bd3_dense_mask(seq_len: int, block_size: int, device: str = "cpu") -> torch.Tensor:
    """(2L, 2L) boolean mask for scaled_dot_product_attention."""
    idx = torch.arange(2 * seq_len, device=device)
    return bd3_mask_mod(seq_len, block_size)(None, None, idx[:, None], idx[None, :])


@functools.lru_cache(maxsize=16)
def bd3_split_mask(seq_len: int, block_size: int, device: str = "cpu"):
    """The same mask as two dense pieces (noisy queries over all keys; clean over clean), for SDPA."""
    from explorer.nn.transformer import SplitMask

    dense = bd3_dense_mask(seq_len, block_size, device)
    return SplitMask(noisy=dense[:seq_len], clean=dense[seq_len:, seq_len:])


@functools.lru_cache(maxsize=16)
def bd3_flex_mask(seq_len: int, block_size: int, device: str = "cpu") -> BlockMask:
    """The same mask as a FlexAttention BlockMask (skips fully masked tiles on GPU)."""
    return create_block_mask(bd3_mask_mod(seq_len, block_size), None, None, 2 * seq_len, 2 * seq_len, device=device)


@functools.lru_cache(maxsize=16)
def two_pass_noisy_mask(seq_len: int, block_size: int, device: str = "cpu") -> torch.Tensor:
    """(L, 2L) mask of the second pass of two-pass training: x_t queries over keys [x0 | x_t]."""
    return bd3_dense_mask(seq_len, block_size, device)[:seq_len].roll(seq_len, dims=1)
