"""One file per family; each model returns logits and knows nothing of sampling or plotting."""

from explorer.models.ar import ARConfig, ARModel
from explorer.models.base import LanguageModel
from explorer.models.bd3lm import BD3LMConfig, BD3LMModel
from explorer.models.calm import CALMConfig, CALMModel
from explorer.models.cdcd import CDCDConfig, CDCDModel
from explorer.models.mdlm import MDLMConfig, MDLMModel

FAMILIES: dict[str, type[LanguageModel]] = {"ar": ARModel, "mdlm": MDLMModel, "bd3lm": BD3LMModel, "cdcd": CDCDModel,
                                            "calm": CALMModel}

__all__ = ["FAMILIES", "ARConfig", "ARModel", "BD3LMConfig", "BD3LMModel", "CALMConfig", "CALMModel", "CDCDConfig",
           "CDCDModel", "LanguageModel", "MDLMConfig", "MDLMModel"]
