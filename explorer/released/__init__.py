"""Loaders for released checkpoints (safetensors + config.json, never pickles, never remote code).

`LAYOUTS` maps a layout name to (detector, loader): the detector looks at a folder's config.json (a
dict) and says whether the layout is its own; the loader builds the model from the folder. To add
a layout, write `detect(config: dict) -> bool` and `load(path, device=None, dtype=None) -> model`
(a model with the family interface the samplers use), then `register("name", detect, load)`.
`explorer.load(folder)` consults `detect_layout` for any config.json without our "family" field.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from explorer.models.base import read_config
from explorer.released.dit import is_dit_release, load_dit
from explorer.released.dream import DreamModel, is_dream, load_dream
from explorer.released.llada import (
    LLaDAConfig,
    LLaDAModel,
    chat_prompt,
    is_llada,
    load_llada,
)
from explorer.released.memory import NotEnoughMemory, SafetensorsFolder, check_memory

Detector = Callable[[dict], bool]  # config.json as a dict -> is this layout
Loader = Callable[..., object]  # (path, device=None, dtype=None) -> model

LAYOUTS: dict[str, tuple[Detector, Loader]] = {}  # layout name -> (detector, loader)


def register(name: str, detector: Detector, loader: Loader) -> None:
    """Make `explorer.load` recognise a released layout (a later registration of a name replaces it)."""
    LAYOUTS[name] = (detector, loader)


register("llada", is_llada, load_llada)
register("dream", is_dream, load_dream)
register("kuleshov-dit", is_dit_release, load_dit)  # MDLM / BD3-LM releases: refused, naming why


def detect_layout(config: dict) -> str | None:
    """The name of the first registered layout whose detector accepts this config.json, else None."""
    for name, (detector, _loader) in LAYOUTS.items():
        if detector(config):
            return name
    return None


def describe_architecture(config: dict) -> str:
    return repr(config.get("architectures") or config.get("model_type") or "none given")


def load_released(path: str | Path, device=None, dtype=None, config: dict | None = None):
    """Load a released checkpoint folder with the loader of its detected layout."""
    path = Path(path)
    file = path / "config.json"
    config = read_config(path) if config is None else config
    name = detect_layout(config)
    if name is None:
        raise ValueError(f"{file}: unknown architecture {describe_architecture(config)}; known released layouts: "
                         f"{sorted(LAYOUTS)} (our own checkpoints carry a 'family' field)")
    model = LAYOUTS[name][1](path, device=device, dtype=dtype)
    model.checkpoint_path = str(path)
    return model


__all__ = ["LAYOUTS", "DreamModel", "LLaDAConfig", "LLaDAModel", "NotEnoughMemory", "SafetensorsFolder", "chat_prompt",
           "check_memory", "detect_layout", "load_dream", "load_llada", "load_released", "register"]
