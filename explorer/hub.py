"""Checkpoint names -> folders: shipped checkpoints under `checkpoints/`, or any local folder."""

from __future__ import annotations

import os
from pathlib import Path

from explorer.models import FAMILIES
from explorer.models.base import load_folder, read_config

CHECKPOINT_DIR = Path(os.environ.get("EXPLORER_CHECKPOINTS", Path(__file__).resolve().parents[1] / "checkpoints"))


def shipped() -> dict[str, Path]:
    """{name: folder} of the shipped checkpoints (folders with config.json and model.safetensors)."""
    if not CHECKPOINT_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(CHECKPOINT_DIR.iterdir())
            if (p / "config.json").is_file() and (p / "model.safetensors").is_file()}


def resolve(name_or_path: str | Path) -> Path:
    known = shipped()
    if str(name_or_path) in known:
        return known[str(name_or_path)]
    path = Path(name_or_path)
    if path.is_dir():
        return path
    raise ValueError(f"unknown checkpoint {str(name_or_path)!r}; shipped checkpoints: {sorted(known)} "
                     "(or pass a checkpoint folder)")


def load(name_or_path: str | Path, device: str | None = None, dtype=None, device_map=None, max_memory=None):
    """Load a shipped checkpoint by name, or a checkpoint folder, as an eval-mode model in float32.
    A folder whose config.json has no "family" is a released layout (LLaDA, ...; see `explorer.released`):
    it loads on `device` (default CUDA if any, else CPU) in `dtype` (default bf16 on CUDA, fp32 on CPU), or
    spread over several devices with `device_map` ("auto", "balanced", "sequential" or {module name: device},
    within `max_memory` such as {0: "20GiB", 1: "20GiB"}; needs accelerate)."""
    path = resolve(name_or_path)
    config = read_config(path)
    if "family" not in config:
        from explorer.released import load_released

        return load_released(path, device=device, dtype=dtype, config=config, device_map=device_map,
                             max_memory=max_memory)
    if device_map is not None or max_memory is not None:
        raise ValueError(f"device_map / max_memory apply to released checkpoints only; {path} loads on one device "
                         "(pass device=...)")
    if dtype is not None:
        raise ValueError(f"dtype={dtype!r} applies to released checkpoints only; {path} loads in float32")
    model = load_folder(path, FAMILIES)
    model.checkpoint_path = str(path)
    return model.to(device) if device else model


def calm_chunk_sizes() -> dict[str, int]:
    """{name: K} of the shipped calm checkpoints: tokens packed into each latent vector."""
    configs = {name: read_config(path) for name, path in shipped().items()}
    return {name: c["model"]["autoencoder"]["chunk"] for name, c in configs.items() if c.get("family") == "calm"}


def calm_for_chunk(chunk: int) -> str:
    """The shipped calm checkpoint trained with K = `chunk` tokens per vector."""
    sizes = calm_chunk_sizes()
    for name, K in sorted(sizes.items()):
        if K == chunk:
            return name
    raise ValueError(f"K={chunk} has no trained calm checkpoint; trained K values: {sorted(set(sizes.values()))} "
                     f"({', '.join(sorted(sizes)) or 'none shipped'})")


def describe(path: Path) -> dict:
    config = read_config(path)
    training = config.get("training", {})
    return {"name": path.name, "family": config.get("family"), "steps": training.get("steps_done"),
            "tokens_seen": training.get("tokens_seen"), "wall_s": training.get("wall_s"),
            "metrics": config.get("metrics", {})}
