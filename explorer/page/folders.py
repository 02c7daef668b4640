"""Which checkpoints the page may open: shipped names, or folders under allow-listed roots (links and `..` resolved
first, every file a loader would read checked), and the loaded models by folder. Messages name no server path."""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import explorer
from explorer.hub import CHECKPOINT_DIR
from explorer.models.base import WEIGHTS, read_config


def default_roots() -> list[Path]:
    return [CHECKPOINT_DIR]


SHARD_INDEX = "model.safetensors.index.json"  # released checkpoints split into shards (LLaDA-8B, Dream-7B)


def weights_at(folder: Path) -> Path | None:
    """The file that says a folder holds weights: model.safetensors, else a shard index; None when neither."""
    for name in (WEIGHTS, SHARD_INDEX):
        if (folder / name).is_file():
            return folder / name
    return None


def local_checkpoints(roots: list[Path], depth: int = 3) -> dict[str, Path]:
    """{label: folder} of checkpoint folders (config.json + model.safetensors or a shard index) up to `depth`
    levels below each root; the label is the folder relative to its root's parent (e.g. `runs/mdlm-long`)."""
    found = {}
    for root in roots:
        root = Path(root).resolve()
        if not root.is_dir():
            continue
        for level in range(1, depth + 1):
            for config in sorted(root.glob("/".join(["*"] * level) + "/config.json")):
                folder = config.parent
                if weights_at(folder) and folder.resolve().is_relative_to(root):  # no link out
                    found[str(folder.relative_to(root.parent))] = folder
    return found


def resolve_checkpoint(choice: str, roots: list[Path]) -> Path:
    """A shipped name, a label from `local_checkpoints`, or a folder path that must lie inside one of `roots`
    (symbolic links and `..` are resolved first, so a path cannot escape its root); every file the loaders would
    read there must lie inside the roots too (`check_files`)."""
    if not choice:
        raise ValueError(f"checkpoint is empty: pick a shipped checkpoint or a folder under {root_names(roots)}")
    shipped = explorer.shipped()
    if choice in shipped:
        return shipped[choice]
    known = local_checkpoints(roots)
    path = (known[choice] if choice in known else labelled(choice, roots) or Path(choice).expanduser()).resolve()
    if not any(path.is_relative_to(Path(r).resolve()) for r in roots):
        raise ValueError(f"checkpoint folder {choice!r} is outside the allowed roots ({root_names(roots)}); start "
                         "the app with --checkpoint-root DIR to allow another folder")
    if not (path / "config.json").is_file() or not weights_at(path):
        pickles = sorted(p.name for pattern in PICKLES for p in path.glob(pattern))
        raise ValueError(f"checkpoint folder {choice!r} has no config.json and {WEIGHTS} (or {SHARD_INDEX})"
                         + (f"; it has {pickles[0]}, pickled weights, and the page loads safetensors weights only (it "
                            "never unpickles)" if pickles else ""))
    check_files(path, roots)
    return path


PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")  # weights the page never loads


def root_names(roots: list[Path]) -> str:
    """The allowed roots as users see them: by name (the server's absolute paths stay private)."""
    return ", ".join(Path(r).resolve().name for r in roots)


def labelled(choice: str, roots: list[Path]) -> Path | None:
    """The folder a label like `runs/mdlm-long` names (relative to a root's parent, as the checkpoint list shows
    them), also for a folder the list leaves out (e.g. one without safetensors weights); None if no root matches."""
    if Path(choice).is_absolute():
        return None
    first = Path(choice).parts[:1]
    for root in roots:
        root = Path(root).resolve()
        if first == (root.name,):
            return root.parent / choice
    return None


def checkpoint_label(path: Path, roots: list[Path]) -> str:
    """How the page names a checkpoint folder to users and in exported traces: its shipped name, else the folder
    relative to its root's parent (as in the checkpoint list), else the folder's name alone."""
    path = Path(path).resolve()
    for name, folder in explorer.shipped().items():
        if folder.resolve() == path:
            return name
    for root in roots:
        root = Path(root).resolve()
        if path.is_relative_to(root):
            return str(path.relative_to(root.parent))
    return path.name


def check_files(folder: Path, roots: list[Path]) -> None:
    """Refuse a checkpoint folder that reads anything outside the roots: every JSON file (config, tokenizer, shard
    index), every *.safetensors and every shard an index names must resolve inside an allowed root (a symbolic link
    or a shard named by an absolute path or `..` may point anywhere). Files are named relative to the root's
    parent, as the checkpoint list names folders; a shard named by an absolute path, by its file name alone."""
    inside = [Path(r).resolve() for r in roots]
    label = checkpoint_label(folder, roots)
    named = [(f"checkpoint file {label}/{p.name}", p) for pattern in ("*.json", "*.safetensors")
             for p in sorted(folder.glob(pattern))]
    for index in sorted(folder.glob("*.index.json")):
        for shard in shard_names(index, f"{label}/{index.name}"):
            shown = f"{Path(shard).name!r} (by an absolute path)" if Path(shard).is_absolute() else repr(shard)
            named.append((f"{label}/{index.name} names shard {shown}, which", folder / shard))
    for what, file in named:
        if not any(file.resolve().is_relative_to(root) for root in inside):
            raise ValueError(f"{what} lies outside the allowed roots ({root_names(roots)}); the page reads no file "
                             "outside them")


def shard_names(index: Path, shown: str) -> list[str]:
    """The shard files a safetensors index names (its weight_map's values); `shown` names the index in errors."""
    try:
        if index.stat().st_size > 50_000_000:  # LLaDA-8B's index is 30 kB
            raise ValueError("larger than 50 MB")
        weight_map = json.loads(index.read_bytes())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise ValueError(f"{shown} is not a shard index ({{\"weight_map\": {{key: file}}}}): {err}") from None
    if not all(isinstance(name, str) for name in names):
        raise ValueError(f"{shown}: every shard in its weight_map must be a file name")
    return names


def public(message: str, roots: list[Path]) -> str:
    """`message` without this server's paths: a path under a root from the root's name on (as the page labels
    checkpoints), a temporary file (an upload, an export) by its name alone."""
    for root in sorted({p for r in roots for p in (Path(r).absolute(), Path(r).resolve())}, key=lambda p: -len(str(p))):
        message = message.replace(str(root.parent) + os.sep, "")
    for tmp in {tempfile.gettempdir(), os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()}:
        message = re.sub(re.escape(tmp.rstrip(os.sep)) + r"/(?:[^/\s'\"]+/)*", "", message)
    return message


def safe_filename(text: str, fallback: str = "trace") -> str:
    """`text` (e.g. a loaded trace's model name) as a file name: letters, digits, '.', '_' and '-' only, no leading
    or trailing dot, at most 80 characters; `fallback` when nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:80].strip("._") or fallback


def family_at(path: Path, config: dict | None = None) -> str:
    """The family of a checkpoint folder: config.json's "family", or the family of a released layout that
    `explorer.released` recognises (LLaDA, Dream, MDLM: mdlm; BD3-LM: bd3lm); anything else is refused with the
    layouts it knows."""
    config = read_config(path) if config is None else config
    if "family" in config:
        return config["family"]
    from explorer.released import LAYOUTS, describe_architecture, released_family

    family = released_family(config)
    if family is None:
        raise ValueError(f"{path / 'config.json'}: unknown architecture {describe_architecture(config)}; known "
                         f"released layouts: {sorted(LAYOUTS)} (our own checkpoints carry a 'family' field)")
    return family


def sampler_at(path: Path, config: dict | None = None) -> str | None:
    """The sampler a checkpoint folder's runs get when none is named: a released layout's own (Dream's), else None
    (the family's first), as `explorer.generate` picks it."""
    config = read_config(path) if config is None else config
    if "family" in config:
        return None
    from explorer.released import released_sampler

    return released_sampler(config)


def has_chat_template(path: Path) -> bool:
    """Whether a checkpoint folder's tokenizer_config.json carries a chat template (released Instruct models); the
    page then offers to wrap the prompt in it."""
    from explorer.released.llada import read_chat_template

    try:
        return bool(read_chat_template(path))
    except ValueError:  # a broken tokenizer_config.json: loading the model will name the file
        return False




class ModelCache:
    """Loaded models by resolved folder, reloaded when the weights file changes (a training run may rewrite it).
    A model's traces name its checkpoint as the page does (`checkpoint_label` under `roots`), never by the server's
    path, and a load error names no server path either."""

    def __init__(self, size: int = 6, released_options: dict | None = None, roots: list[Path] | None = None):
        self.size = size
        self.models: dict[Path, tuple[int, object]] = {}
        self.lock = threading.Lock()
        # explorer.load's device / dtype / device_map for released folders (ours are small: CPU, float32)
        self.released_options = dict(released_options or {})
        self.roots = list(roots or [])

    def get(self, path: Path):
        stamp = weights_at(path).stat().st_mtime_ns
        with self.lock:
            if path in self.models and self.models[path][0] == stamp:
                return self.models[path][1]
        for attempt in range(3):  # a training run may be rewriting the checkpoint right now
            try:
                released = self.released_options and "family" not in read_config(path)
                model = explorer.load(path, **(self.released_options if released else {})).eval()
                break
            except Exception as err:  # noqa: BLE001 (a half-written file fails in many ways)
                if attempt == 2:
                    raise ValueError(f"could not load checkpoint {path.name!r}: {public(str(err), self.roots)}"
                                     ) from None
                time.sleep(1.0)
        model.name = path.name
        model.checkpoint_path = checkpoint_label(path, self.roots)  # what build_trace writes into its traces
        with self.lock:
            self.models[path] = (stamp, model)
            while len(self.models) > self.size:
                self.models.pop(next(iter(self.models)))
        return model

