"""The one Transformer every family shares: RMSNorm, rotary positions, SwiGLU, SDPA with mask modes.

Families differ in objective and sampler, not in backbone: `ar` uses `attention="causal"` (with a
KV cache when decoding), `mdlm` uses `attention="bidirectional"`, `bd3lm` uses `"block_causal"` and
passes its own mask (a boolean tensor or a FlexAttention `BlockMask`, see `explorer.nn.masks`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

ATTENTION_MODES = ("causal", "bidirectional", "block_causal")


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = 2048  # token embedding rows (the tokenizer's size)
    d_model: int = 256  # residual stream width
    n_layers: int = 4  # Transformer blocks
    n_heads: int = 4  # attention heads (head dim = d_model / n_heads)
    d_ff: int = 688  # SwiGLU hidden width (about 8/3 d_model)
    max_seq_len: int = 128  # longest sequence the rotary table and KV cache hold
    # "causal", "bidirectional" or "block_causal" (the caller passes the mask; none = all keys)
    attention: str = "causal"
    rope_theta: float = 10000.0  # rotary base frequency
    norm_eps: float = 1e-5  # RMSNorm epsilon
    dropout: float = 0.0  # dropout on attention output and MLP output during training
    tie_embeddings: bool = True  # output head shares the token embedding matrix
    time_conditioning: bool = False  # adaptive norms driven by a noise level per row (cdcd only)

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
        # normalise in float32 and cast back before the gain, as LLaDA's and Qwen2's norms do in bfloat16 models
        # (a no-op for float32 models)
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class Rotary(nn.Module):
    """Rotary position embedding: `angles(positions)` once per forward, `rotate` on (B, H, L, Dh) tensors.

    The cos / sin tables stay float32 whatever dtype the model is cast to, and `rotate` works in float32, as
    LLaDA's rotary does: in bfloat16 the angle of position 2,000 would be off by several radians' worth of ulps.
    """

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        self.head_dim, self.max_seq_len, self.theta = head_dim, max_seq_len, theta
        cos, sin = self._tables(torch.device("cpu"))
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / self.theta ** (torch.arange(0, self.head_dim, 2, device=device).float() / self.head_dim)
        angles = torch.outer(torch.arange(self.max_seq_len, device=device).float(), inv_freq)  # (L, Dh/2)
        return angles.cos(), angles.sin()

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)  # moves (and may cast) the tables; rebuild them in float32 where they now live
        if self.cos.dtype != torch.float32:
            self.cos, self.sin = self._tables(self.cos.device)
        return self

    def angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[positions], self.sin[positions]  # (L, Dh/2) each, float32

    @staticmethod
    def rotate(x: torch.Tensor, angles: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        cos, sin = angles
        x32 = x.float()
        x1, x2 = x32[..., 0::2], x32[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).to(x.dtype)


class KVCache:
    """Keys and values of every layer for positions [0, length), in buffers preallocated for `capacity` positions
    and written in place (a write past the capacity doubles it).

    A forward pass over a window of new positions starting at `start` attends to the cached keys
    before the window, its own keys, and (Fast-dLLM's dual cache) the cached keys after it. The
    window's keys replace the cached ones at its positions (Fast-dLLM's `replace_position`); its first
    `store` positions also count as cached from then on: all of them when decoding autoregressively,
    the finished clean block for block diffusion, none for an approximate cache that is only
    refreshed once per block (whose window is recomputed at every step, so what it leaves is never read).
    Under autograd the writes are out of place (`slice_scatter`), so gradients flow through the keys.
    """

    def __init__(self, n_layers: int, capacity: int | None = None):
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1):
            raise ValueError(f"KVCache capacity must be a positive int (positions) or None, got {capacity!r}")
        self.capacity = capacity  # positions each buffer holds; None: sized by the first write
        self.keys: list[torch.Tensor | None] = [None] * n_layers  # each (B, H, capacity, Dh)
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.length = 0  # cached positions

    def attend(self, layer: int, k, v, start: int, store: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All keys/values a window's queries see (window keys at [start, start + l)), each (B, H, Lk, Dh) with
        Lk = max(length, start + l); store a prefix of them."""
        if not 0 <= start <= self.length:
            raise ValueError(f"a cached window must start within the cached positions [0, {self.length}], "
                             f"got start {start}")
        end = start + k.shape[2]
        self.keys[layer] = _write(self._room(self.keys[layer], k, end), k, start)
        self.values[layer] = _write(self._room(self.values[layer], v, end), v, start)
        seen = max(self.length, end)
        return self.keys[layer][:, :, :seen], self.values[layer][:, :, :seen]

    def _room(self, buffer: torch.Tensor | None, new: torch.Tensor, end: int) -> torch.Tensor:
        """`buffer` (B, H, C, Dh) with C >= end: allocated at the first write, doubled when too short."""
        if buffer is None:
            B, H, _, Dh = new.shape
            self.capacity = max(self.capacity or 0, end)
            return new.new_zeros(B, H, self.capacity, Dh)
        size = buffer.shape[2]
        if end <= size:
            return buffer
        while size < end:
            size *= 2
        self.capacity = size
        return torch.cat([buffer, buffer.new_zeros(*buffer.shape[:2], size - buffer.shape[2], buffer.shape[3])], 2)

    def repeat_interleave(self, repeats: int) -> None:
        """Repeat each batch row `repeats` times (rows b*repeats .. (b+1)*repeats - 1 copy row b): many
        continuations of one prefix share the prefix's pass."""
        self.keys = [None if k is None else k.repeat_interleave(repeats, 0) for k in self.keys]
        self.values = [None if v is None else v.repeat_interleave(repeats, 0) for v in self.values]

    def crop(self, length: int) -> None:
        """Forget every position from `length` on (the buffers stay allocated)."""
        self.length = min(self.length, length)


def _write(buffer: torch.Tensor, new: torch.Tensor, start: int) -> torch.Tensor:
    """`new` (B, H, l, Dh) written into `buffer` (B, H, C, Dh) at [start, start + l): in place, or out of place
    when autograd records (an in-place write would change tensors saved for an earlier pass's backward)."""
    end = start + new.shape[2]
    if torch.is_grad_enabled() and (new.requires_grad or buffer.requires_grad):
        return buffer.slice_scatter(new.to(buffer.dtype), 2, start, end)
    buffer[:, :, start:end] = new
    return buffer


@dataclass(frozen=True)
class SplitMask:
    """A mask over [first n queries | the rest] where the rest attend only to the rest (BD3-LM's
    vectorized pass: clean tokens never see noisy ones), computed as two dense attention calls."""

    noisy: torch.Tensor  # (n, Lk) boolean: the first n queries over all keys
    clean: torch.Tensor  # (Lq - n, Lk - n) boolean: the other queries over the other keys


@dataclass
class Probe:
    """What `Transformer.probe` records of the last forward pass, per chosen layer: its keys and values (B, H, Lk,
    Dh) as attention saw them (rotary applied, cached ones included) and, when asked, its attention probabilities
    (B, H, Lq, Lk). Only the last pass is kept, so memory stays one pass's worth however many passes run."""

    layers: frozenset[int]
    attention: bool = False
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    probs: dict[int, torch.Tensor] = field(default_factory=dict)

    def record(self, layer: int, q, k, v, mask, causal: bool, start: int) -> None:
        if layer not in self.layers:
            return
        self.keys[layer], self.values[layer] = k.detach().clone(), v.detach().clone()  # not views of the cache
        if not self.attention:
            return
        if isinstance(mask, (BlockMask, SplitMask)):
            raise ValueError("recording attention needs a dense mask (a boolean tensor or none), got "
                             f"{type(mask).__name__}")
        Lq, Lk = q.shape[2], k.shape[2]
        if mask is None and causal:  # query i (at position start + i) sees keys up to it
            mask = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril(start if Lk > Lq else 0)
        scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, Lq, Lk)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        self.probs[layer] = scores.softmax(-1)


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.mode = config.attention
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        self.probe: Probe | None = None  # set only inside `Transformer.probe` (diagnostics)

    def forward(self, x, angles, layer: int, cache: KVCache | None, start: int, store: int,
                mask=None, outputs: int | None = None) -> torch.Tensor:
        """`outputs`: only the first `outputs` queries' results (B, outputs, d) are computed; every position
        still supplies its keys and values (the last layer of BD3-LM's training passes)."""
        B, L, D = x.shape
        Lq = L if outputs is None else outputs
        if not 0 <= Lq <= L:
            raise ValueError(f"outputs must be in [0, {L}] (the positions of this pass), got {outputs}")
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, Dh)
        q, k = Rotary.rotate(q[:, :, :Lq], (angles[0][:Lq], angles[1][:Lq])), Rotary.rotate(k, angles)
        if cache is not None:
            k, v = cache.attend(layer, k, v, start, store)
        if self.probe is not None:
            self.probe.record(layer, q, k, v, mask, self.mode == "causal", start)
        if isinstance(mask, BlockMask):
            if outputs is not None:
                raise ValueError("outputs needs a dense mask (a boolean tensor, a SplitMask or none), got a BlockMask")
            y = flex_attention_fn(q.device)(q, k, v, block_mask=mask)
        elif isinstance(mask, SplitMask):  # two dense calls that skip the empty clean -> noisy quadrant
            n = mask.noisy.shape[0]
            if Lq not in (n, L):
                raise ValueError(f"outputs with a SplitMask must be {n} (the first part) or all {L}, got {Lq}")
            y = F.scaled_dot_product_attention(q[:, :, :n], k, v, attn_mask=mask.noisy)  # (B, H, n, Dh)
            if Lq == L:
                clean = F.scaled_dot_product_attention(q[:, :, n:], k[:, :, n:], v[:, :, n:], attn_mask=mask.clean)
                y = torch.cat([y, clean], dim=2)  # (B, H, L, Dh)
        else:
            is_causal = False
            if mask is None and self.mode == "causal" and L > 1:
                if k.shape[2] == L:
                    is_causal = True  # top-left aligned: also right for the first Lq queries alone
                else:  # a window of new queries after cached positions: query i sees keys <= start + i
                    mask = torch.ones(L, k.shape[2], dtype=torch.bool, device=x.device).tril(start)
            if mask is not None:
                mask = mask[:Lq]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)  # (B, H, Lq, Dh)
        return self.dropout(self.out(y.transpose(1, 2).reshape(B, Lq, D)))


@functools.cache
def flex_attention_fn(device: torch.device):
    """FlexAttention compiled on CUDA (where it is fast); eager elsewhere (CPU tests of the backend)."""
    if device.type == "cuda":
        return torch.compile(flex_attention, dynamic=False)
    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
    return flex_attention


class TimeEmbedding(nn.Module):
    """A noise feature per row (B,) -> a conditioning vector (B, d): sinusoids, then a small MLP."""

    def __init__(self, d_model: int, n_frequencies: int = 64):
        super().__init__()
        # periods from 2*pi to about 2*pi / 1000 over the feature's range (log(t) / 4 is within [0, 1.5])
        self.register_buffer("frequencies", torch.logspace(0, 3, n_frequencies), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * n_frequencies, d_model), nn.SiLU(), nn.Linear(d_model, d_model))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        angles = feature.float()[:, None] * self.frequencies  # (B, F)
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))  # (B, d)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


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
        # adaptive norm (DiT's adaLN, with gates 1 + g): zero-initialised, so at init the block is the plain one
        self.modulation = nn.Linear(config.d_model, 6 * config.d_model) if config.time_conditioning else None

    def forward(self, x, angles, layer, cache, start, store, mask, condition=None, outputs: int | None = None):
        """`outputs`: return only the first `outputs` positions (B, outputs, d); all of them are keys and values."""
        if self.modulation is None:
            x = x[:, :outputs] + self.attn(self.attn_norm(x), angles, layer, cache, start, store, mask, outputs)
            return x + self.mlp(self.mlp_norm(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(condition))[:, None].chunk(6, dim=-1)
        h = self.attn(modulate(self.attn_norm(x), shift1, scale1), angles, layer, cache, start, store, mask, outputs)
        x = x[:, :outputs] + (1 + gate1) * h
        return x + (1 + gate2) * self.mlp(modulate(self.mlp_norm(x), shift2, scale2))


def window(cache: KVCache | None, length: int, start: int | None, store: int | None, positions: torch.Tensor | None,
           max_seq_len: int, device) -> tuple[int, int, torch.Tensor]:
    """A forward pass's window of `length` new positions: its start (default: after the cached positions), how
    many of them go into the cache (default all) and their rotary positions (default start..start+length)."""
    if start is None:
        start = cache.length if cache is not None else 0
    store = length if store is None else store
    if positions is None:
        if start + length > max_seq_len:
            raise ValueError(f"sequence of {start + length} tokens exceeds max_seq_len {max_seq_len}")
        positions = torch.arange(start, start + length, device=device)
    return start, store, positions


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
        if config.time_conditioning:
            self.time_embedding = TimeEmbedding(config.d_model)
            self.final_modulation = nn.Linear(config.d_model, 2 * config.d_model)  # shift, scale of the last norm
        self.apply(self._init_weights)
        for block in self.blocks:  # scale residual projections by depth (GPT-2)
            for proj in (block.attn.out, block.mlp.down):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * config.n_layers))
        if config.time_conditioning:
            for layer in [block.modulation for block in self.blocks] + [self.final_modulation]:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    @staticmethod
    def _init_weights(module: nn.Module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None, return_hidden: bool = False,
                mask=None, positions: torch.Tensor | None = None, start: int | None = None,
                store: int | None = None, logits_for: slice | torch.Tensor = slice(None),
                embeds: torch.Tensor | None = None, noise_feature: torch.Tensor | None = None,
                outputs: int | None = None):
        """`input_ids` (B, L), or `embeds` (B, L, d) given instead (continuous inputs; pass input_ids=None).
        `noise_feature` (B,): the noise level per row, required by (and only by) time-conditioned configs.
        `mask`: None (the config's mode), a boolean (Lq, Lk) tensor (True = may attend), a SplitMask or a BlockMask.
        `positions`: (L,) rotary positions, default start..start+L. With a cache, the window starts at
        `start` (default: after the cached positions) and its first `store` positions (default all)
        are written back to the cache. `logits_for`: the positions that need logits, a slice or an index tensor
        (the head is skipped elsewhere).
        `outputs`: only the first `outputs` positions go through the last block past their keys and values (the
        others only feed attention); logits and hidden states are then of those positions, `logits_for` indexes them."""
        B, L = input_ids.shape if embeds is None else embeds.shape[:2]
        device = (input_ids if embeds is None else embeds).device
        if (noise_feature is None) == self.config.time_conditioning:
            raise ValueError("noise_feature (B,) is required by time-conditioned backbones and accepted only by them")
        start, store, positions = window(cache, L, start, store, positions, self.config.max_seq_len, device)
        angles = self.rotary.angles(positions)
        x = self.embed(input_ids) if embeds is None else embeds  # (B, L, d)
        condition = None if noise_feature is None else self.time_embedding(noise_feature)  # (B, d)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, angles, i, cache, start, store, mask, condition, outputs if i == last else None)
        if cache is not None and store:
            cache.length = max(cache.length, start + store)
        hidden = self.norm(x)  # (B, L or outputs, d)
        if condition is not None:
            shift, scale = self.final_modulation(F.silu(condition))[:, None].chunk(2, dim=-1)
            hidden = modulate(hidden, shift, scale)
        logits = self.head(hidden[:, logits_for])  # (B, positions in logits_for, V)
        return (logits, hidden) if return_hidden else logits

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @contextlib.contextmanager
    def probe(self, layers: list[int] | None = None, attention: bool = False):
        """Inside the block, each forward pass records the keys and values (and with `attention` the attention
        probabilities) of `layers` (None = all) into the yielded `Probe`; outside it, forwards record nothing."""
        n = self.config.n_layers
        layers = list(range(n)) if layers is None else layers
        for layer in layers:
            if type(layer) is not int or not 0 <= layer < n:
                raise ValueError(f"layer must be an int in [0, {n - 1}] (the model's layers), got {layer!r}")
        probe = Probe(frozenset(layers), attention)
        for block in self.blocks:
            block.attn.probe = probe
        try:
            yield probe
        finally:
            for block in self.blocks:
                block.attn.probe = None
