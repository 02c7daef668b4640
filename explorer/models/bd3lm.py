"""Block diffusion (BD3-LM): autoregressive over blocks of `block_size` tokens, masked diffusion inside each.

Training is vectorized: one pass over `x_t (+) x0` with the three-part mask of `explorer.nn.masks`
(two backends: FlexAttention or a dense boolean SDPA mask); each block draws its own mask rate t and
its loss is weighted 1/t. A clipped window [beta, omega] of mask rates (with block resampling) lowers
the variance of training; evaluation always uses the unclipped schedule [eps, 1].

With `shift=True` (a model fine-tuned from a shifted masked diffusion model, itself adapted from an AR one:
Dream's shift, as Fast-dLLM v2 adapts Qwen2.5 to block diffusion) output i predicts token i + 1. A block's first
position is then predicted from the last position of the block before it, as the clean context sees it (that
output depends on the clean earlier blocks only); position 0 keeps its own output. Callers see ordinary
per-position logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from explorer.models.base import LanguageModel, shift_right
from explorer.models.mdlm import low_discrepancy_t
from explorer.nn import KVCache, TransformerConfig, bd3_flex_mask, block_causal_mask
from explorer.nn.masks import bd3_split_mask, two_pass_noisy_mask

BACKENDS = ("auto", "flex", "sdpa")
# Published best clip windows [beta, omega] per block size (BD3-LM, Table 4 / Sec. 5).
PUBLISHED_CLIP = {4: (0.45, 0.95), 16: (0.3, 0.8), 128: (0.0, 0.5)}
# Windows the variance search compares: the unclipped schedule and the published ones.
CLIP_CANDIDATES = ((0.0, 1.0), (0.0, 0.5), (0.3, 0.8), (0.45, 0.95), (0.5, 1.0))
RESAMPLE_TRIES = 100


@dataclass(frozen=True)
class BD3LMConfig:
    backbone: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(attention="block_causal")
    )  # block-causal; masks are passed per call
    block_size: int = 16  # L': tokens per block (1 = autoregressive, max_seq_len = MDLM)
    eps: float = 1e-3  # smallest mask rate of the unclipped schedule
    attention_backend: str = "auto"  # training pass: "flex", "sdpa" (dense masks), "auto" = flex on CUDA
    shift: bool = False  # Dream's shift: output i predicts token i + 1 (fine-tuned from a shifted model)

    def __post_init__(self):
        if self.backbone.attention != "block_causal":
            raise ValueError("the bd3lm family needs attention='block_causal'")
        if not 1 <= self.block_size <= self.backbone.max_seq_len or self.backbone.max_seq_len % self.block_size:
            raise ValueError(f"block_size must divide the context ({self.backbone.max_seq_len}), got {self.block_size}")
        if self.attention_backend not in BACKENDS:
            raise ValueError(f"attention_backend must be one of {BACKENDS}, got {self.attention_backend!r}")


def check_clip(clip) -> tuple[float, float]:
    lo, hi = clip
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"clip window must satisfy 0 <= beta < omega <= 1, got [{lo}, {hi}]")
    return float(lo), float(hi)


class BD3LMModel(LanguageModel):
    family = "bd3lm"
    config_class = BD3LMConfig

    @property
    def block_size(self) -> int:
        return self.config.block_size

    @property
    def logit_shift(self) -> int:
        """1 when position i's logits come from output i - 1 (a window of logits needs one position before it)."""
        return int(self.config.shift)

    def _backend(self, device) -> str:
        if self.config.attention_backend == "auto":
            return "flex" if device.type == "cuda" else "sdpa"
        if self.config.attention_backend == "flex" and device.type == "cpu" and torch.is_grad_enabled():
            raise ValueError("attention_backend='flex' cannot train on CPU (FlexAttention has no CPU backward); "
                             "use 'sdpa' or 'auto'")
        return self.config.attention_backend

    def _exclude_mask(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.index_fill(-1, torch.tensor([self.mask_id], device=logits.device), float("-inf"))

    # --- training -----------------------------------------------------------------------------

    def block_rates(self, batch_size: int, n_blocks: int, clip=None, generator=None) -> torch.Tensor:
        """(B, n_blocks) mask rates: low-discrepancy over all blocks of the batch, mapped into the clip window."""
        u = low_discrepancy_t(batch_size * n_blocks, 0.0, generator)  # evenly spread over [0, 1)
        u = u[torch.randperm(len(u), generator=generator)].view(batch_size, n_blocks)  # strata dealt at random
        lo, hi = check_clip(clip) if clip is not None else (0.0, 1.0)
        lo = max(lo, self.config.eps)
        return lo + (hi - lo) * u

    def mask_blocks(self, x0: torch.Tensor, rates: torch.Tensor, clip=None, generator=None):
        """Mask each block at its rate; with a clip window, redraw blocks whose masked fraction falls outside it."""
        B, L = x0.shape
        per_token = rates.cpu().repeat_interleave(self.block_size, dim=1)  # (B, L), drawn on the CPU generator
        masked = torch.rand(x0.shape, generator=generator) < per_token
        if clip is not None:
            lo, hi = clip
            for _ in range(RESAMPLE_TRIES):
                frac = masked.view(B, -1, self.block_size).float().mean(-1)  # (B, n_blocks)
                bad = ((frac < lo) | (frac > hi)).repeat_interleave(self.block_size, dim=1)
                if not bad.any():
                    break
                redraw = torch.rand(x0.shape, generator=generator) < per_token
                masked = torch.where(bad, redraw, masked)
        masked = masked.to(x0.device)
        return torch.where(masked, torch.full_like(x0, self.mask_id), x0), masked

    def noisy_logits(self, x_t: torch.Tensor, x0: torch.Tensor, vectorized: bool = True) -> torch.Tensor:
        """Denoiser logits (B, L, V) of the noisy half, each block seeing itself and the clean earlier blocks.

        vectorized: one pass over [x_t | x0] with the three-part mask; otherwise two passes (clean
        blocks first, their keys cached, then the noisy ones), the reference the benchmark compares."""
        B, L = x_t.shape
        device = x_t.device
        positions = torch.arange(L, device=device)
        shift = self.config.shift  # a shifted model also reads the clean outputs that end each block
        # otherwise the clean tokens' last-layer outputs feed nothing: `outputs` stops them at their keys and values;
        # of those a shifted model computes, only the block ends get logits (`ends`: one per block after the first)
        ends = torch.arange(self.block_size - 1, L - 1, self.block_size, device=device)
        if vectorized:
            both = torch.cat([x_t, x0], dim=1)
            heads = torch.cat([positions, L + ends]) if shift else slice(0, L)  # the outputs that need logits
            if self._backend(device) == "flex":  # the BlockMask spans all 2L queries, so the last layer does too
                logits = self.backbone(both, mask=bd3_flex_mask(L, self.block_size, str(device)),
                                       positions=positions.repeat(2), logits_for=heads)
            else:
                logits = self.backbone(both, mask=bd3_split_mask(L, self.block_size, str(device)),
                                       positions=positions.repeat(2), outputs=2 * L if shift else L, logits_for=heads)
            noisy, clean_ends = logits[:, :L], logits[:, L:]
        else:
            cache = self.new_cache()
            clean_ends = self.backbone(x0, cache=cache, mask=block_causal_mask(positions, positions, self.block_size),
                                       outputs=L if shift else 0, logits_for=ends if shift else slice(0, 0))
            noisy = self.backbone(x_t, cache=cache, start=L, store=0, positions=positions,
                                  mask=two_pass_noisy_mask(L, self.block_size, str(device)))
        if shift:
            noisy = self._shift(noisy, clean_ends)
        return self._exclude_mask(noisy)

    def _shift(self, noisy: torch.Tensor, clean_ends: torch.Tensor) -> torch.Tensor:
        """Shifted logits (B, L, V): position i from noisy output i - 1 inside a block; at a block's first position
        from the clean output that ends the block before it (`clean_ends` (B, L / L' - 1, V): the previous block as
        its context sees it); position 0 its own."""
        shifted = shift_right(noisy)
        firsts = torch.arange(self.block_size, noisy.shape[1], self.block_size, device=noisy.device)
        return shifted.index_copy(1, firsts, clean_ends)

    def loss(self, batch: torch.Tensor, generator: torch.Generator | None = None, t: torch.Tensor | None = None,
             clip=None, vectorized: bool = True) -> dict:
        """NELBO: per-block mask rates, CE on masked tokens weighted 1/t, summed, divided by all B * L tokens.
        `t`: (B,) one rate per sequence (evaluation) or (B, n_blocks); None draws per-block rates."""
        B, L = batch.shape
        if L % self.block_size:
            raise ValueError(f"sequence length {L} must be a multiple of block_size {self.block_size}")
        n_blocks = L // self.block_size
        if t is None:
            t = self.block_rates(B, n_blocks, clip, generator)
        elif t.dim() == 1:
            t = t[:, None].expand(B, n_blocks)
        x_t, masked = self.mask_blocks(batch, t, clip, generator)
        logits = self.noisy_logits(x_t, batch.to(x_t.device), vectorized)  # (B, L, V)
        ce = F.cross_entropy(logits.flatten(0, 1), batch.flatten(), reduction="none").view(B, L)
        weight = t.to(batch.device).repeat_interleave(self.block_size, dim=1)
        weighted = (ce * masked / weight).sum()
        return {"loss": weighted / (B * L), "nll_sum": weighted.detach(), "tokens": B * L}

    # --- sampling -------------------------------------------------------------------------------


    def window_logits(self, window: torch.Tensor, start: int, cache: KVCache | None, store: int,
                      block_size: int | None = None, logits_from: int = 0, return_hidden: bool = False):
        """Logits (B, l - logits_from, V) of the tokens at positions start + logits_from .. start + l, which see
        everything before them (cached keys or, without a cache, `window` must start at 0), block-causally;
        with `return_hidden` also the final hidden states (B, l, d) of the whole window. A shifted model reads
        position p's logits at output p - 1: the window's first position keeps its own (start the window one
        position earlier for its shifted logits)."""
        block_size = block_size or self.block_size
        device = window.device
        end = start + window.shape[1]
        if start // block_size == (end - 1) // block_size:
            mask = None  # one block of queries sees every key before its end: no mask needed
        else:
            mask = block_causal_mask(torch.arange(start, end, device=device), torch.arange(end, device=device),
                                     block_size)
        lead = min(logits_from, self.logit_shift)  # outputs needed before the first position asked for
        logits, hidden = self.backbone(window, cache=cache, mask=mask, start=start, store=store,
                                       logits_for=slice(logits_from - lead, None), return_hidden=True)
        if self.config.shift:
            logits = logits[:, :-1] if lead else shift_right(logits)
        logits = self._exclude_mask(logits)
        return (logits, hidden) if return_hidden else logits


@torch.no_grad()
def clip_variance(model: BD3LMModel, batches: list[torch.Tensor], windows=CLIP_CANDIDATES, draws: int = 8,
                  seed: int = 0) -> dict[str, float]:
    """Variance of the training loss over noise draws for each clip window, averaged over batches.
    The search keeps the window with the lowest variance (BD3-LM's data-driven schedule)."""
    was_training = model.training
    model.eval()
    result = {}
    for window in windows:
        generator = torch.Generator().manual_seed(seed)
        per_batch = []
        for batch in batches:
            losses = torch.tensor([float(model.loss(batch, generator=generator, clip=window)["loss"])
                                   for _ in range(draws)])
            per_batch.append(float(losses.var()))
        result[f"{window[0]:g},{window[1]:g}"] = sum(per_batch) / len(per_batch)
    model.train(was_training)
    return result
