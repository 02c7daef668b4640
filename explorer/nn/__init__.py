"""The shared Transformer and the attention masks of block diffusion."""

from explorer.nn.masks import bd3_dense_mask, bd3_flex_mask, bd3_mask_mod, block_causal_mask
from explorer.nn.transformer import ATTENTION_MODES, PRESETS, KVCache, Transformer, TransformerConfig, preset

__all__ = ["ATTENTION_MODES", "PRESETS", "KVCache", "Transformer", "TransformerConfig", "bd3_dense_mask",
           "bd3_flex_mask", "bd3_mask_mod", "block_causal_mask", "preset"]
