"""Loaders for released checkpoints (safetensors + config.json, never pickles, never remote code).

`LAYOUTS` maps a layout name to (detector, loader): the detector looks at a folder's config.json (a
dict) and says whether the layout is its own; the loader builds the model from the folder. To add
a layout, write `detect(config: dict) -> bool` and `load(path, device=None, dtype=None) -> model`
(a model with the family interface the samplers use), then `register("name", detect, load)`. A loader that
also takes `device_map=None, max_memory=None` (see explorer.released.placement) can spread a model over devices.
`explorer.load(folder)` consults `detect_layout` for any config.json without our "family" field.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from explorer.models.base import read_config
from explorer.models.weights import NotEnoughMemory, SafetensorsFolder, check_memory
from explorer.released.diffusion_gemma import DiffusionGemmaModel, is_diffusion_gemma, load_diffusion_gemma
from explorer.released.dit import dit_family, is_dit_release, load_dit
from explorer.released.dream import DreamModel, is_dream, load_dream
from explorer.released.llada import (
    LLaDAConfig,
    LLaDAModel,
    chat_prompt,
    is_llada,
    load_llada,
)
from explorer.released.placement import (
    Placement,
    check_device_exists,
    check_placement_memory,
    finish_placement,
    parse_device,
    plan_placement,
)

Detector = Callable[[dict], bool]  # config.json as a dict -> is this layout
Loader = Callable[..., object]  # (path, device=None, dtype=None[, device_map=None, max_memory=None]) -> model

LAYOUTS: dict[str, tuple[Detector, Loader]] = {}  # layout name -> (detector, loader)
LAYOUT_FAMILIES: dict[str, str | Callable[[dict], str]] = {}  # layout name -> its family, or config -> family


def register(name: str, detector: Detector, loader: Loader, family: str | Callable[[dict], str] = "mdlm") -> None:
    """Make `explorer.load` recognise a released layout (a later registration of a name replaces it). `family`:
    the explorer family its models join (the page picks its controls by it), or a function of config.json."""
    LAYOUTS[name] = (detector, loader)
    LAYOUT_FAMILIES[name] = family


register("llada", is_llada, load_llada)
register("dream", is_dream, load_dream)
register("kuleshov-dit", is_dit_release, load_dit, family=dit_family)  # MDLM -> mdlm, BD3-LM -> bd3lm
register("diffusion_gemma", is_diffusion_gemma, load_diffusion_gemma, family="diffusion_gemma")  # transformers' loop


def detect_layout(config: dict) -> str | None:
    """The name of the first registered layout whose detector accepts this config.json, else None."""
    for name, (detector, _loader) in LAYOUTS.items():
        if detector(config):
            return name
    return None


def released_family(config: dict) -> str | None:
    """The family a released config.json's models join ("mdlm", "bd3lm"), None for an unknown layout."""
    name = detect_layout(config)
    if name is None:
        return None
    family = LAYOUT_FAMILIES.get(name, "mdlm")
    return family(config) if callable(family) else family


def released_sampler(config: dict) -> str | None:
    """The sampler a released layout's runs get when none is named (Dream's own loop for Dream), else None (the
    family's first), read from the layout's model class so the page picks what `explorer.generate` would."""
    return {"dream": DreamModel.default_sampler,
            "diffusion_gemma": DiffusionGemmaModel.default_sampler}.get(detect_layout(config))


def load_options(device=None, dtype=None, device_map=None) -> dict:
    """The placement knobs of `explorer.load` that were given (command-line flags left unset are dropped). A device
    that is not 'cpu', 'cuda', 'cuda:N' or a GPU index, or that this machine lacks, is refused before anything loads."""
    if device is not None:
        index = int(device) if isinstance(device, str) and device.isdigit() else device  # "--device 1": GPU 1
        parsed = parse_device(index, "device")
        check_device_exists(parsed, "device")
        device = str(parsed)
    return {k: v for k, v in (("device", device), ("dtype", dtype), ("device_map", device_map)) if v is not None}


def describe_architecture(config: dict) -> str:
    return repr(config.get("architectures") or config.get("model_type") or "none given")


def _maps(loader: Loader) -> bool:
    """Whether a loader takes device_map / max_memory (the pattern in explorer.released.placement)."""
    return "device_map" in inspect.signature(loader).parameters


def load_released(path: str | Path, device=None, dtype=None, config: dict | None = None, device_map=None,
                  max_memory=None):
    """Load a released checkpoint folder with the loader of its detected layout. `device_map` / `max_memory`
    (see explorer.released.placement) reach loaders that accept them; None keeps the one-device load."""
    path = Path(path)
    file = path / "config.json"
    config = read_config(path) if config is None else config
    name = detect_layout(config)
    if name is None:
        raise ValueError(f"{file}: unknown architecture {describe_architecture(config)}; known released layouts: "
                         f"{sorted(LAYOUTS)} (our own checkpoints carry a 'family' field)")
    loader = LAYOUTS[name][1]
    placement = {}
    if device_map is not None or max_memory is not None:
        if not _maps(loader):
            raise ValueError(f"{path}: device_map is not supported for the {name!r} layout; pass device_map=None "
                             f"(layouts with device maps: {sorted(n for n, (_, f) in LAYOUTS.items() if _maps(f))})")
        placement = {"device_map": device_map, "max_memory": max_memory}
    model = loader(path, device=device, dtype=dtype, **placement)
    model.checkpoint_path = str(path)
    return model


__all__ = ["LAYOUTS", "DreamModel", "LLaDAConfig", "LLaDAModel", "NotEnoughMemory", "Placement", "SafetensorsFolder",
           "chat_prompt", "check_memory", "check_placement_memory", "detect_layout", "finish_placement", "load_dream",
           "load_llada", "load_options", "load_released", "plan_placement", "register", "released_family",
           "released_sampler"]
