"""Autoregressive baseline: next-token prediction, left-to-right or right-to-left."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from explorer.models.base import LanguageModel
from explorer.nn import KVCache, TransformerConfig

DIRECTIONS = ("l2r", "r2l")


@dataclass(frozen=True)
class ARConfig:
    backbone: TransformerConfig = field(default_factory=lambda: TransformerConfig(attention="causal"))  # causal
    direction: str = "l2r"  # "l2r" reads text forwards; "r2l" is trained on reversed windows (generates backwards)

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.backbone.attention != "causal":
            raise ValueError("the ar family needs attention='causal'")


class ARModel(LanguageModel):
    family = "ar"
    config_class = ARConfig

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None, return_hidden: bool = False,
                logits_for: slice = slice(None)):
        """(B, L) ids in model order -> logits (B, L, V) for the next token at each position (`logits_for`: only
        these positions get logits)."""
        return self.backbone(input_ids, cache=cache, return_hidden=return_hidden, logits_for=logits_for)


    def to_model_order(self, ids: torch.Tensor) -> torch.Tensor:
        return ids.flip(-1) if self.config.direction == "r2l" else ids

    def loss(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Exact NLL of every token of the (B, L) windows, each read after `<bos>`."""
        targets = self.to_model_order(batch)  # (B, L)
        bos = torch.full_like(targets[:, :1], self.bos_id)
        logits = self(torch.cat([bos, targets[:, :-1]], dim=1))  # (B, L, V)
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
        return {"loss": nll / targets.numel(), "nll_sum": nll.detach(), "tokens": targets.numel()}
