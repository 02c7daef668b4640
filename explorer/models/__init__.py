"""One file per family; each model returns logits and knows nothing of sampling or plotting."""

from explorer.models.ar import ARConfig, ARModel
from explorer.models.base import LanguageModel
from explorer.models.mdlm import MDLMConfig, MDLMModel

FAMILIES: dict[str, type[LanguageModel]] = {"ar": ARModel, "mdlm": MDLMModel}

__all__ = ["FAMILIES", "ARConfig", "ARModel", "LanguageModel", "MDLMConfig", "MDLMModel"]
