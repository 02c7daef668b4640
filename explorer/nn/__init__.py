"""The shared Transformer backbone."""

from explorer.nn.transformer import ATTENTION_MODES, PRESETS, KVCache, Transformer, TransformerConfig, preset

__all__ = ["ATTENTION_MODES", "PRESETS", "KVCache", "Transformer", "TransformerConfig", "preset"]
