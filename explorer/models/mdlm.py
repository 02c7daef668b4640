"""Masked diffusion (MDLM / LLaDA): log-linear schedule, 1/t weighting, SUBS parameterization.

With `shift=True` (Dream 7B, DiffuLLaMA: a model adapted from an autoregressive one) the network's output at
position i predicts token i + 1, as in the AR model it started from; `denoiser_logits` moves the logits right by
one position (position 0 keeps its own), so samplers, traces and losses see ordinary per-position logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from explorer.models.base import LanguageModel, shifted_rows
from explorer.nn import TransformerConfig


@dataclass(frozen=True)
class MDLMConfig:
    backbone: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(attention="bidirectional")
    )  # bidirectional, no time conditioning (MDLM: not needed)
    eps: float = 1e-3  # smallest mask rate drawn in training: t = (1 - eps) u + eps
    shift: bool = False  # Dream's shift: output i predicts token i + 1 (a model initialised from an AR one)

    def __post_init__(self):
        if self.backbone.attention != "bidirectional":
            raise ValueError("the mdlm family needs attention='bidirectional'")


def low_discrepancy_t(batch_size: int, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) mask rates t_i = (1 - eps) ((u0 + i / B) mod 1) + eps: one random u0, evenly spread."""
    u0 = torch.rand(1, generator=generator)
    u = (u0 + torch.arange(batch_size) / batch_size) % 1.0
    return (1 - eps) * u + eps


def mask_tokens(x0: torch.Tensor, t: torch.Tensor, mask_id: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward process: each token of row i becomes [MASK] with probability t_i. Returns (x_t, masked)."""
    masked = torch.rand(x0.shape, generator=generator) < t[:, None]  # (B, L)
    masked = masked.to(x0.device)
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def annealed_mask(length: int, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(L, L) boolean attention mask (True = may attend): causal, plus a random `fraction` of the future keys."""
    future = torch.rand(length, length, generator=generator) < fraction
    return torch.ones(length, length, dtype=torch.bool).tril() | future


def subs_logits(logits: torch.Tensor, x_t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS (B, L, V), in place where `logits` is contiguous (a copy otherwise): masked positions keep the
    denoiser's logits; unmasked ones carry over (logit 0 for the input token, -inf elsewhere)."""
    logits = logits.contiguous()
    flat = logits.view(-1, logits.shape[-1])  # (B * L, V)
    rows = (x_t != mask_id).reshape(-1).nonzero().squeeze(-1)  # the unmasked positions: rows to overwrite
    flat.index_fill_(0, rows, float("-inf"))  # (writing only those rows is twice as fast as a select over all)
    flat[rows, x_t.reshape(-1)[rows]] = 0.0
    return logits


class MDLMModel(LanguageModel):
    family = "mdlm"
    config_class = MDLMConfig

    @property
    def logit_shift(self) -> int:
        """1 when position i's logits come from output i - 1 (a window of logits needs one position before it)."""
        return int(self.config.shift)

    def denoiser_logits(self, x_t: torch.Tensor, return_hidden: bool = False, t: float | None = None,
                        **backbone_args):
        """Logits (B, L, V) of x0 with the mask token excluded (its logit is -inf). `t`: the sampler's noise level,
        passed on to time-conditioned backbones (which otherwise take the masked fraction). `backbone_args`:
        `cache`, `start`, `store` run a window of positions against cached keys (Fast-dLLM's caches); `mask` an
        attention mask (training's causal-to-bidirectional annealing)."""
        if t is not None and self.time_conditioned:
            backbone_args["time"] = t
        if self.config.shift:  # position i reads output i - 1: the head runs on shifted hidden states
            backbone_args["logits_for"] = shifted_rows(x_t.shape[1], x_t.device)
        logits, hidden = self.backbone(x_t, return_hidden=True, **backbone_args)  # (B, L, V), (B, L, d) unshifted
        # in place: the head's output is this call's own (B, L, V) tensor, and a copy of it costs a pass over memory
        logits = logits.contiguous().index_fill_(-1, torch.tensor([self.mask_id], device=logits.device), float("-inf"))
        return (logits, hidden) if return_hidden else logits

    def forward(self, x_t: torch.Tensor, return_hidden: bool = False, t: float | None = None):
        """SUBS logits (B, L, V): masked positions get the denoiser's logits; unmasked ones carry over
        (logit 0 for the input token, -inf elsewhere). `t`: the sampler's noise level, where it has one."""
        logits, hidden = self.denoiser_logits(x_t, return_hidden=True, t=t)
        logits = subs_logits(logits, x_t, self.mask_id)
        return (logits, hidden) if return_hidden else logits

    def loss(self, batch: torch.Tensor, generator: torch.Generator | None = None, t: torch.Tensor | None = None,
             attention: float = 1.0) -> dict:
        """Continuous-time NELBO: CE on masked tokens weighted 1/t, summed, divided by all B * L tokens.
        `attention` < 1 (DiffuLLaMA's annealing while adapting an AR model): each query sees the keys before it and
        this fraction of the keys after it (one random mask per batch); 1 = bidirectional."""
        B, L = batch.shape
        if t is None:
            t = low_discrepancy_t(B, self.config.eps, generator)
        t = t.to(batch.device)
        x_t, masked = mask_tokens(batch, t, self.mask_id, generator)
        mask = None if attention >= 1 else annealed_mask(L, attention, generator).to(batch.device)  # (L, L)
        logits = self.denoiser_logits(x_t, mask=mask)  # (B, L, V)
        ce = F.cross_entropy(logits.flatten(0, 1), batch.flatten(), reduction="none").view(B, L)
        weighted = (ce * masked / t[:, None]).sum()
        return {"loss": weighted / (B * L), "nll_sum": weighted.detach(), "tokens": B * L}
