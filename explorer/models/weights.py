"""Memory-aware reading of safetensors folders (ours and released ones): lazy (memory-mapped) tensors, never a
pickle.

A released folder holds `model.safetensors`, or shards listed by `model.safetensors.index.json`
(`{"weight_map": {key: shard file}}`). `SafetensorsFolder` reads only the headers up front (key
names, shapes, dtypes), so a loader can check keys and shapes and estimate memory before a single
weight is read; `tensor(key)` then reads one tensor at a time. `check_memory` refuses, before any
weight is read, when the estimate does not fit what the device has available. Every weight file
must lie inside the folder: shard names with `..` or absolute paths, and symlinks out of the folder,
are refused (the Hugging Face cache's links from a snapshot to its blobs excepted).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # weight files that would need unpickling
GiB = 1024 ** 3
MARGIN = 0.10  # fraction added to the weights' bytes for activations, the rotary table and allocator slack
OVERHEAD = 0.25 * GiB  # fixed bytes added on top (the interpreter, the tokenizer, small buffers)


class NotEnoughMemory(MemoryError, ValueError):
    """The estimate of what loading needs exceeds what the device has available (a ValueError too: the CLI and
    the page report it like any other refused input)."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device` as a torch.device; None = the first CUDA device when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(device: torch.device, dtype: torch.dtype | str | None = None) -> torch.dtype:
    """`dtype` when given (a torch.dtype or its name, e.g. "bfloat16"); else bf16 on CUDA (where it is
    supported), fp32 elsewhere (CPU matmuls in half precision are slow and inexact)."""
    if dtype is None:
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
            raise ValueError(f"dtype must be a floating torch dtype such as 'float32' or 'bfloat16', got {dtype!r}")
        return resolved
    return dtype


def bytes_per_element(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def estimate_bytes(n_params: int, dtype: torch.dtype) -> int:
    """Bytes the loaded model is expected to need: parameters x bytes per element, plus MARGIN and OVERHEAD."""
    return int(n_params * bytes_per_element(dtype) * (1 + MARGIN) + OVERHEAD)


def available_bytes(device: torch.device) -> int | None:
    """Free memory of `device` in bytes: free GPU memory on CUDA, available RAM elsewhere (psutil when
    installed, else MemAvailable of /proc/meminfo); None when it cannot be told (no check is made then)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    return None


def check_memory(n_params: int, device: torch.device, dtype: torch.dtype, what: str, hint: str | None = None) -> int:
    """Raise NotEnoughMemory when `n_params` parameters in `dtype` would not fit `device`; return the estimate.
    `hint` replaces the advice that ends the message (default: another device or a smaller dtype)."""
    needed = estimate_bytes(n_params, dtype)
    free = available_bytes(device)
    if free is not None and needed > free:
        if hint is None:
            other = "device='cuda'" if device.type == "cpu" else "device='cpu'"
            smaller = "dtype='bfloat16'" if bytes_per_element(dtype) > 2 else "a machine with more memory"
            hint = f"pass {other} or {smaller}"
        raise NotEnoughMemory(
            f"{what}: {n_params / 1e9:.2f}B parameters in {str(dtype).removeprefix('torch.')} need about "
            f"{needed / GiB:.1f} GiB, {free / GiB:.1f} GiB available on {device}; {hint}"
        )
    return needed


def inside_folder(folder: Path, file: Path) -> Path:
    """`file` when, symlinks resolved, it lies inside `folder` (or, for a Hugging Face cache snapshot
    `.../snapshots/<revision>/`, in the `blobs/` folder its files link to); else a ValueError naming it."""
    real = file.resolve()
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots":
        roots.append(folder.parent.parent.resolve() / "blobs")
    if not any(real.is_relative_to(root) for root in roots):
        raise ValueError(f"{file}: resolves to {real}, outside the checkpoint folder {folder}; weight files must lie "
                         "inside it")
    return file


def reject_pickles(folder: Path, single: str = SINGLE) -> None:
    """Raise naming the pickle weight files of a folder that has no safetensors weights (they are never loaded)."""
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if pickles:
        raise ValueError(
            f"{folder / pickles[0]}: pickle weight files ({', '.join(pickles)}) are refused: they are never loaded "
            "(unpickling runs arbitrary code); convert them to model.safetensors or download the safetensors release"
        )
    raise FileNotFoundError(f"{folder / single}: missing weights (no {single} and no {INDEX})")


@dataclass(frozen=True)
class TensorInfo:
    file: Path  # the safetensors file that holds the tensor
    shape: tuple[int, ...]  # as stored
    dtype: str  # safetensors dtype name as stored, e.g. "BF16"


class SafetensorsFolder:
    """The weights of a folder, headers only until `tensor(key)` reads one (memory-mapped, lazily). `single`: the
    name of the one-file layout (model.safetensors; the CALM autoencoder's autoencoder.safetensors)."""

    def __init__(self, folder: str | Path, single: str = SINGLE):
        self.folder = Path(folder)
        self.tensors: dict[str, TensorInfo] = {}  # key -> where it is and what it looks like
        self._handles: dict[Path, object] = {}  # open safe_open handles, one per file
        index, one_file = self.folder / INDEX, self.folder / single
        if index.is_file():
            self.source = inside_folder(self.folder, index)  # the file that lists the weights, for messages
            self._read_index(index)
        elif one_file.is_file():
            self.source = inside_folder(self.folder, one_file)
            for key, info in self._headers(one_file).items():
                self.tensors[key] = info
        else:
            reject_pickles(self.folder, single)

    def _read_index(self, index: Path) -> None:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{index}: not a safetensors index (needs a 'weight_map' object; {err!r})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(n, str) and n for n in weight_map.values()):
            raise ValueError(f"{index}: 'weight_map' must be an object of tensor name -> shard file name, got "
                             f"{str(weight_map)[:100]}")
        by_file: dict[str, list[str]] = {}
        for key, name in weight_map.items():
            by_file.setdefault(name, []).append(key)
        for name, keys in sorted(by_file.items()):
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ValueError(f"{index}: shard name {name!r} must be a file name inside the folder (no absolute "
                                 "path, no '..')")
            shard = inside_folder(self.folder, self.folder / name)
            if not shard.is_file():
                raise FileNotFoundError(f"{shard}: missing shard (listed in {index.name} for {len(keys)} tensors)")
            headers = self._headers(shard)
            absent = sorted(set(keys) - set(headers))
            if absent:
                raise ValueError(f"{shard}: shard is missing {len(absent)} tensors that {index.name} assigns to it: "
                                 f"{absent[:5]}")
            for key in keys:
                self.tensors[key] = headers[key]

    def _handle(self, file: Path):
        if file not in self._handles:
            try:
                self._handles[file] = safe_open(str(file), framework="pt", device="cpu")
            except (SafetensorError, OSError, ValueError) as err:
                raise ValueError(f"{file}: corrupt or truncated safetensors file ({err})") from None
        return self._handles[file]

    def _headers(self, file: Path) -> dict[str, TensorInfo]:
        handle = self._handle(file)
        infos = {}
        for key in handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
            piece = handle.get_slice(key)
            infos[key] = TensorInfo(file, tuple(piece.get_shape()), piece.get_dtype())
        return infos

    def num_elements(self) -> int:
        return sum(math.prod(info.shape) for info in self.tensors.values())

    def tensor(self, key: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        """Read one tensor (memory-mapped) and move it to `device` in `dtype`."""
        info = self.tensors[key]
        try:
            tensor = self._handle(info.file).get_tensor(key)
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{info.file}: cannot read {key} ({err})") from None
        return tensor.to(device=device, dtype=dtype)

    def close(self) -> None:
        self._handles.clear()


def check_layout(weights: SafetensorsFolder, expected: dict[str, tuple[int, ...]], layout: str,
                 optional: dict[str, tuple[int, ...]] | None = None) -> None:
    """Keys and shapes of a folder against its architecture (`expected`: key -> shape; `optional`: entries an
    upstream save may add, such as buffers, checked when present), from the headers alone; errors name the files."""
    optional = optional or {}
    missing = sorted(set(expected) - set(weights.tensors))
    unexpected = sorted(set(weights.tensors) - set(expected) - set(optional))
    if missing or unexpected:
        files = sorted({weights.tensors[k].file.name for k in unexpected})
        raise ValueError(f"{weights.source}: weights do not match the {layout} layout of config.json: "
                         f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
                         f"{unexpected[:5]}" + (f" (in {files})" if files else ""))
    for key, shape in (expected | {k: v for k, v in optional.items() if k in weights.tensors}).items():
        info = weights.tensors[key]
        if info.shape != shape:
            raise ValueError(f"{info.file}: {key} has shape {info.shape}, config.json implies {shape}")
