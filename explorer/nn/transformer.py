"""The one Transformer every family shares: RMSNorm, rotary positions, SwiGLU, SDPA with mask modes.

Families differ in objective and sampler, not in backbone: `ar` uses `attention="causal"` (with a
KV cache when decoding), `mdlm` uses `attention="bidirectional"`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_MODES = ("causal", "bidirectional")


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = 2048  # token embedding rows (the tokenizer's size)
    d_model: int = 256  # residual stream width
    n_layers: int = 4  # Transformer blocks
    n_heads: int = 4  # attention heads (head dim = d_model / n_heads)
    d_ff: int = 688  # SwiGLU hidden width (about 8/3 d_model)
    max_seq_len: int = 128  # longest sequence the rotary table and KV cache hold
    attention: str = "causal"  # mask mode: "causal" or "bidirectional"
    rope_theta: float = 10000.0  # rotary base frequency
    norm_eps: float = 1e-5  # RMSNorm epsilon
    dropout: float = 0.0  # dropout on attention output and MLP output during training
    tie_embeddings: bool = True  # output head shares the token embedding matrix

    def __post_init__(self):
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    def with_(self, **changes) -> "TransformerConfig":
        return replace(self, **changes)


PRESETS = {
    # CPU-trainable, the shipped size: 3.7M parameters with a 2,048-entry vocabulary.
    "tiny": TransformerConfig(d_model=256, n_layers=4, n_heads=4, d_ff=688, max_seq_len=128),
    # GPU-scale (about 100M parameters with this vocabulary), configuration only.
    "small": TransformerConfig(d_model=768, n_layers=14, n_heads=12, d_ff=2048, max_seq_len=1024),
}


def preset(name: str, **changes) -> TransformerConfig:
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name].with_(**changes)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Rotary(nn.Module):
    """Rotary position embedding on (B, H, L, Dh) tensors, starting at an absolute offset."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(max_seq_len).float(), inv_freq)  # (L, Dh/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        length = x.shape[-2]
        if offset + length > self.cos.shape[0]:
            raise ValueError(f"sequence of {offset + length} tokens exceeds max_seq_len {self.cos.shape[0]}")
        cos, sin = self.cos[offset : offset + length], self.sin[offset : offset + length]
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class KVCache:
    """Keys and values of every layer for causal decoding, preallocated to `max_len` positions."""

    def __init__(self, config: TransformerConfig, batch_size: int, device=None, dtype=torch.float32):
        head_dim = config.d_model // config.n_heads
        shape = (batch_size, config.n_heads, config.max_seq_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.length = 0  # positions filled so far (all layers)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, H, l, Dh) keys/values of this layer; return all keys/values so far."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.causal = config.attention == "causal"
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, rotary: Rotary, layer: int, cache: KVCache | None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, Dh)
        offset = cache.length if cache is not None else 0
        q, k = rotary(q, offset), rotary(k, offset)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        mask, is_causal = None, False
        if self.causal and L > 1:
            if k.shape[2] == L:
                is_causal = True
            else:  # a chunk of new queries after cached positions: query i sees keys <= offset + i
                mask = torch.ones(L, k.shape[2], dtype=torch.bool, device=x.device).tril(offset)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)  # (B, H, L, Dh)
        return self.dropout(self.out(y.transpose(1, 2).reshape(B, L, D)))


class SwiGLU(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.gate_up = nn.Linear(config.d_model, 2 * config.d_ff, bias=False)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.dropout(self.down(F.silu(gate) * up))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x, rotary, layer, cache):
        x = x + self.attn(self.attn_norm(x), rotary, layer, cache)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """Token ids (B, L) -> logits (B, L, V), optionally with the final hidden states (B, L, d)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.rotary = Rotary(config.d_model // config.n_heads, config.max_seq_len, config.rope_theta)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        self.apply(self._init_weights)
        for block in self.blocks:  # scale residual projections by depth (GPT-2)
            for proj in (block.attn.out, block.mlp.down):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None, return_hidden: bool = False):
        x = self.embed(input_ids)  # (B, L, d)
        for i, block in enumerate(self.blocks):
            x = block(x, self.rotary, i, cache)
        if cache is not None:
            cache.length += input_ids.shape[1]
        hidden = self.norm(x)  # (B, L, d)
        logits = self.head(hidden)  # (B, L, V)
        return (logits, hidden) if return_hidden else logits

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
