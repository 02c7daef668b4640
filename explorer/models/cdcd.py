"""Continuous diffusion on token embeddings (CDCD), with Diffusion-LM's rounding and clamping at sampling.

Tokens live as points of a learned embedding table, L2-normalised and scaled to norm sqrt(embed_dim).
The forward process is variance exploding, `x = e + t * eps` with t in [t_min, t_max]; the network
reads `x / sqrt(1 + t^2)` and the noise feature `log(t) / 4`, and predicts the clean tokens with a
cross-entropy loss. Samplers turn its softmax into the expected embedding `E[x0] = softmax @ E`
(score interpolation) and integrate the ODE with Euler steps (`explorer.sampling.cdcd`).

Training spends its noise levels where the loss changes: `TimeWarp` fits a monotone piecewise-linear
curve to the cross-entropy per noise level and noise levels are drawn through its inverse (CDCD's time
warping). Half of the steps feed the model its own previous estimate (self-conditioning). Each row
keeps a random prefix (and, for infilling, a suffix) clean, and 10% of rows keep nothing clean, so
one model serves prompts, infilling and classifier-free guidance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from explorer.models.base import LanguageModel
from explorer.models.mdlm import low_discrepancy_t
from explorer.nn import TransformerConfig


@dataclass(frozen=True)
class CDCDConfig:
    backbone: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(attention="bidirectional", time_conditioning=True)
    )  # bidirectional, with adaptive norms driven by the noise level
    embed_dim: int = 64  # dimension of the diffusion space (the token embeddings the noise is added to)
    t_min: float = 1.0  # smallest noise scale (training and the last sampling step before t = 0)
    t_max: float = 300.0  # largest noise scale: x_T ~ N(0, t_max^2 I) carries no trace of the tokens
    time_warping: bool = True  # draw t through the learned CDF of the loss (False: uniform in log t)
    warp_bins: int = 100  # pieces of the piecewise-linear warping curve
    self_conditioning: float = 0.5  # fraction of training rows fed the model's own previous E[x0]
    cond_dropout: float = 0.1  # fraction of training rows with nothing clean (the unconditional model for guidance)

    def __post_init__(self):
        if self.backbone.attention != "bidirectional" or not self.backbone.time_conditioning:
            raise ValueError("the cdcd family needs attention='bidirectional' and time_conditioning=True")
        if not 0 < self.t_min < self.t_max:
            raise ValueError(f"t_min must be > 0 and < t_max, got t_min={self.t_min}, t_max={self.t_max}")
        if self.embed_dim < 2:
            raise ValueError(f"embed_dim must be >= 2, got {self.embed_dim}")
        if self.warp_bins < 1:
            raise ValueError(f"warp_bins must be >= 1, got {self.warp_bins}")
        for knob in ("self_conditioning", "cond_dropout"):
            if not 0 <= getattr(self, knob) <= 1:
                raise ValueError(f"{knob} must be in [0, 1], got {getattr(self, knob)}")


class TimeWarp(nn.Module):
    """A monotone piecewise-linear curve `CE(s) ~ offset + scale * F(s)` over s = normalised log t in [0, 1].

    F (the normalised part, F(0) = 0, F(1) = 1) is the CDF that training draws noise levels from:
    s = F^-1(u) puts samples where the cross-entropy rises fastest. Parameters are stored divided by
    `SPEED` so that AdamW, at the model's learning rate, moves the curve `SPEED` times faster.
    """

    SPEED = 10.0

    def __init__(self, bins: int, initial_scale: float):
        super().__init__()
        self.bin_logits = nn.Parameter(torch.zeros(bins))  # (bins,) softmax -> the rise of F in each bin
        self.offset = nn.Parameter(torch.zeros(()))  # CE at s = 0
        self.log_scale = nn.Parameter(torch.tensor(math.log(initial_scale) / self.SPEED))  # CE(1) - CE(0)

    def knots(self) -> torch.Tensor:
        """F at s = 0, 1/bins, ..., 1: (bins + 1,) increasing from 0 to 1."""
        rise = torch.softmax(self.bin_logits * self.SPEED, dim=0)
        return torch.cat([rise.new_zeros(1), rise.cumsum(0)]).clamp(max=1.0)

    def cdf(self, s: torch.Tensor) -> torch.Tensor:
        knots = self.knots()
        bins = len(knots) - 1
        position = s.clamp(0, 1) * bins
        index = position.floor().clamp(max=bins - 1).long()
        frac = position - index
        return knots[index] + frac * (knots[index + 1] - knots[index])

    def predicted_loss(self, s: torch.Tensor) -> torch.Tensor:
        return self.offset * self.SPEED + torch.exp(self.log_scale * self.SPEED) * self.cdf(s)

    @torch.no_grad()
    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """s = F^-1(u) for u in [0, 1] (linear inside each bin)."""
        knots = self.knots().to(u.device)
        bins = len(knots) - 1
        index = (torch.searchsorted(knots, u.contiguous(), right=True) - 1).clamp(0, bins - 1)
        low, rise = knots[index], (knots[index + 1] - knots[index]).clamp(min=1e-12)
        return ((index + ((u - low) / rise).clamp(0, 1)) / bins).clamp(0, 1)

    def fit_loss(self, s: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
        """Squared error of the curve against the (detached) cross-entropy observed at s."""
        return (self.predicted_loss(s) - ce.detach()).pow(2).mean()


class CDCDModel(LanguageModel):
    family = "cdcd"
    config_class = CDCDConfig

    def __init__(self, config: CDCDConfig, tokenizer):
        super().__init__(config, tokenizer)
        d, De = config.backbone.d_model, config.embed_dim
        V = config.backbone.vocab_size
        self.token_embedding = nn.Parameter(torch.randn(V, De))  # (V, De) before normalisation
        self.input_proj = nn.Linear(2 * De, d)  # [x_t scaled, self-conditioning estimate] -> residual stream
        self.clean_embedding = nn.Embedding(2, d)  # 0 = noisy position, 1 = clean (prompt / pinned) position
        nn.init.normal_(self.clean_embedding.weight, std=0.02)
        self.warp = TimeWarp(config.warp_bins, initial_scale=math.log(V)) if config.time_warping else None

    # --- the diffusion space -------------------------------------------------------------------

    def embeddings(self) -> torch.Tensor:
        """The token points (V, De): unit rows scaled by sqrt(De), so each coordinate has variance ~1."""
        return F.normalize(self.token_embedding, dim=-1) * math.sqrt(self.config.embed_dim)

    def log_t_range(self) -> tuple[float, float]:
        return math.log(self.config.t_min), math.log(self.config.t_max)

    def t_from_s(self, s: torch.Tensor) -> torch.Tensor:
        """Noise scale from the normalised log noise level s in [0, 1]."""
        lo, hi = self.log_t_range()
        return torch.exp(lo + s * (hi - lo))

    def s_from_t(self, t: torch.Tensor) -> torch.Tensor:
        lo, hi = self.log_t_range()
        return (torch.log(t) - lo) / (hi - lo)

    def sampling_times(self, steps: int, schedule: str = "auto") -> torch.Tensor:
        """(steps + 1,) noise scales from t_max down to t_min, then 0 (the last Euler step lands on E[x0]).

        "warped" spaces the steps evenly in the learned warping CDF (CDCD samples with the training
        warp), "log" evenly in log t; "auto" = warped when the model learned a warp.
        """
        if schedule == "auto":
            schedule = "warped" if self.warp is not None else "log"
        if schedule == "warped" and self.warp is None:
            raise ValueError("schedule='warped' needs a model trained with time warping; use 'log'")
        if schedule not in ("warped", "log"):
            raise ValueError(f"schedule must be 'auto', 'warped' or 'log', got {schedule!r}")
        grid = torch.linspace(1, 0, steps) if steps > 1 else torch.ones(1)
        s = self.warp.inverse(grid.to(self.device)).cpu() if schedule == "warped" else grid
        return torch.cat([self.t_from_s(s), torch.zeros(1)])

    # --- the network -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor, clean: torch.Tensor, self_cond: torch.Tensor | None = None,
                return_hidden: bool = False):
        """Logits (B, L, V) of the clean tokens from the noisy points x (B, L, De) at noise scales t (B,).

        `clean` (B, L) bool marks positions whose x is an exact embedding (prompt, pinned, infill context);
        `self_cond` (B, L, De) is a previous E[x0] estimate (zeros when absent).
        """
        t = t.to(x.device, x.dtype)
        position_t = torch.where(clean, torch.zeros_like(x[..., 0]), t[:, None])  # (B, L)
        scaled = x * torch.rsqrt(1 + position_t**2)[..., None]
        if self_cond is None:
            self_cond = torch.zeros_like(x)
        h = self.input_proj(torch.cat([scaled, self_cond], dim=-1)) + self.clean_embedding(clean.long())  # (B, L, d)
        logits, hidden = self.backbone(None, embeds=h, noise_feature=torch.log(t) / 4, return_hidden=True)
        logits = logits.index_fill(-1, torch.tensor([self.mask_id], device=logits.device), float("-inf"))
        return (logits, hidden) if return_hidden else logits

    def expected_embedding(self, logits: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Score interpolation: E[x0] = softmax(logits / T) @ E (..., De) and the softmax entropy (...)."""
        from explorer import kernels

        return kernels.expected_embedding(logits, self.embeddings(), temperature)

    # --- training ---------------------------------------------------------------------------------

    def conditioning_mask(self, B: int, L: int, generator=None) -> torch.Tensor:
        """(B, L) clean positions: a random prefix (up to half the row), and for half the rows also a
        random suffix (infilling); `cond_dropout` of the rows keep nothing clean."""
        prefix = (torch.rand(B, generator=generator) * (L // 2 + 1)).long()  # (B,) in [0, L/2]
        gap_end = prefix + 1 + (torch.rand(B, generator=generator) * (L - prefix)).long()  # (B,) in (prefix, L]
        infill = torch.rand(B, generator=generator) < 0.5
        end = torch.where(infill, gap_end, torch.full_like(gap_end, L))
        unconditional = torch.rand(B, generator=generator) < self.config.cond_dropout
        pos = torch.arange(L)
        clean = (pos < prefix[:, None]) | (pos >= end[:, None])
        return (clean & ~unconditional[:, None]).to(self.device)

    def draw_s(self, B: int, generator=None) -> torch.Tensor:
        """(B,) normalised log noise levels: through the warp while training, evenly spread otherwise."""
        u = low_discrepancy_t(B, 0.0, generator).to(self.device)
        if self.training and self.warp is not None:
            return self.warp.inverse(u)
        return u

    def loss(self, batch: torch.Tensor, generator: torch.Generator | None = None,
             s: torch.Tensor | None = None) -> dict:
        """Cross-entropy of the clean tokens at the noisy positions (the model's loss, unweighted), plus the
        warp's fit to it. `nll_sum` / `tokens` average the cross-entropy over noisy positions."""
        B, L = batch.shape
        batch = batch.to(self.device)
        s = self.draw_s(B, generator) if s is None else s.to(self.device)
        t = self.t_from_s(s)  # (B,)
        E = self.embeddings()
        eps = torch.randn(B, L, self.config.embed_dim, generator=generator).to(self.device)
        clean = self.conditioning_mask(B, L, generator)
        x = torch.where(clean[..., None], E[batch], E[batch] + t[:, None, None] * eps)  # (B, L, De)
        self_cond = torch.zeros_like(x)
        rows = torch.rand(B, generator=generator) < self.config.self_conditioning if self.training \
            else torch.full((B,), self.config.self_conditioning > 0)
        rows = rows.to(self.device)
        if rows.any():  # a first pass without grad gives the estimate fed back to those rows
            with torch.no_grad():
                first = self(x[rows], t[rows], clean[rows])
                self_cond[rows] = self.expected_embedding(first)[0].to(x.dtype)
        logits = self(x, t, clean, self_cond)  # (B, L, V)
        ce = F.cross_entropy(logits.flatten(0, 1), batch.flatten(), reduction="none").view(B, L)
        noisy = (~clean).float()
        nll_sum = (ce * noisy).sum()
        tokens = noisy.sum().clamp(min=1)
        out = {"loss": nll_sum / tokens, "nll_sum": nll_sum.detach(), "tokens": int(tokens.item()),
               "ce_per_row": ((ce * noisy).sum(1) / noisy.sum(1).clamp(min=1)).detach(), "s": s}
        if self.warp is not None and self.training:
            has_noisy = noisy.sum(1) > 0
            out["warp_loss"] = self.warp.fit_loss(s[has_noisy], out["ce_per_row"][has_noisy])
            # Adam is invariant to the scale of a loss; the factor only keeps the warp's gradient out of the
            # global clipping norm, which would otherwise shrink the model's own steps
            out["loss"] = out["loss"] + 1e-3 * out["warp_loss"]
        return out


@torch.no_grad()
def ce_per_noise_level(model: CDCDModel, windows: torch.Tensor, levels: int = 16, batch_size: int = 32,
                       seed: int = 0, progress: bool = False) -> dict:
    """Cross-entropy (nats/token) of the unconditional denoiser at `levels` noise scales evenly spaced in log t,
    with self-conditioning as the sampler uses it. Returns {"t": [...], "ce": [...]}."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    s_grid = torch.linspace(0, 1, levels)
    ces = []
    for s in tqdm(s_grid, desc="cross-entropy per noise level", disable=not progress, leave=False):
        total, count = 0.0, 0
        for batch in windows.split(batch_size):
            B, L = batch.shape
            batch = batch.to(model.device)
            t = model.t_from_s(torch.full((B,), float(s), device=model.device))
            E = model.embeddings()
            eps = torch.randn(B, L, model.config.embed_dim, generator=generator).to(model.device)
            x = E[batch] + t[:, None, None] * eps
            clean = torch.zeros(B, L, dtype=torch.bool, device=model.device)
            self_cond = None
            if model.config.self_conditioning > 0:
                self_cond = model.expected_embedding(model(x, t, clean))[0]
            logits = model(x, t, clean, self_cond)
            total += float(F.cross_entropy(logits.flatten(0, 1), batch.flatten(), reduction="sum"))
            count += batch.numel()
        ces.append(total / count)
    model.train(was_training)
    return {"t": [round(float(v), 4) for v in model.t_from_s(s_grid)], "ce": [round(c, 4) for c in ces]}
