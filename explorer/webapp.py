"""What the explorer page does, without Gradio: which checkpoints it may open, what a request may cost, how the
page's controls become sampler knobs, and how N runs stream side by side. `app.py` wires these to widgets."""

from __future__ import annotations

import ctypes
import functools
import html
import json
import os
import re
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

import explorer
from explorer.hub import CHECKPOINT_DIR
from explorer.models.base import WEIGHTS, read_config
from explorer.sampling import Frame, Trace, build_trace, stream

MAX_WORK = 65_536  # gen_length x steps x N runs (calm: chunks x N head samples) one request may ask for
MAX_RUNS = 8  # N runs drawn at once for the families other than calm
MAX_LENGTH = 256  # bd3lm slides its window past the 128-token context; other families' samplers refuse clearly
RUNS_PER_USER = 1  # generations one browser session may have going at once
HIDDEN_ROWS = 8_192  # hidden states are kept when gen_length x frames x N stays under this (~4 MB packed)
STALE_RUN_S = 600.0  # a run registered longer ago than this is treated as gone (its generator was dropped)
MEMORY_BUDGET_MB = 1024  # the runs of every session together; the least recently used sessions are dropped beyond it
MAX_REWIND = 8  # hand edits a session can rewind (each keeps the trace before it)
MAX_UPLOAD_MB = 20  # a trace file loaded on the page
DROPPED = "your run was dropped to free memory; Generate again"
CACHES = {"mdlm": ["none", "prefix", "dual"], "bd3lm": ["kv", "none"], "ar": ["kv"], "cdcd": ["none"],
          "calm": ["kv"]}  # the first is the default
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"  # precomputed traces for the page's first paint


# --- checkpoints: shipped names, or folders under allow-listed roots ----------------------------------------

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


def has_chat_template(path: Path) -> bool:
    """Whether a checkpoint folder's tokenizer_config.json carries a chat template (released Instruct models); the
    page then offers to wrap the prompt in it."""
    from explorer.released.llada import read_chat_template

    try:
        return bool(read_chat_template(path))
    except ValueError:  # a broken tokenizer_config.json: loading the model will name the file
        return False


def model_prompt(model, prompt: str, chat: bool) -> str:
    """The prompt the model is given: one user turn in the checkpoint's chat template when `chat` is ticked and the
    checkpoint has a template (what an Instruct model was tuned on), else the prompt as typed."""
    if not chat or not model.chat_template:
        return prompt
    from jinja2 import TemplateError

    from explorer.released import chat_prompt

    try:
        return chat_prompt(model, prompt)
    except TemplateError as err:  # the page shows ValueErrors; the folder's template is not ours to fix
        raise ValueError(f"the chat template of {model.name} could not be rendered ({err}); untick "
                         "'chat template' to send the prompt as typed") from None


def prompt_note(prompt: str, given: str) -> str:
    """A collapsible line for the stats showing what the model got, when the chat template changed the prompt."""
    if given == prompt:
        return ""
    return ("\n\n<details class=\"dlm-chat\"><summary>chat template applied: the prompt the model got</summary>"
            f"<pre>{html.escape(given)}</pre></details>")


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


# --- requests: knobs, cost, per-user cap ----------------------------------------------------------------------

@dataclass
class Request:
    """The Denoise controls of one run."""

    sampler: str | None
    gen_length: int
    steps: int
    block_length: int  # K for masked (semi-autoregressive blocks) and block diffusion
    temperature: float
    threshold: float = 0.9
    cache: str | None = None
    n: int = 1  # N: runs drawn at once (calm: head samples per chunk of the batch algorithm)
    cfg_scale: float = 0.0  # classifier-free guidance (mdlm, cdcd)
    constraints: str = ""  # word constraints "POS:TEXT, POS:TEXT" (mdlm, cdcd)
    pinned: dict = field(default_factory=dict)


def parse_constraints(text: str) -> dict[int, str]:
    """LLaDA's word constraints: "0:Once, 5:upon" -> {0: "Once", 5: "upon"} (positions in the generated region)."""
    pins = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        pos, sep, word = item.partition(":")
        if not sep or not pos.strip().isdigit() or not word.strip():
            raise ValueError(f"word constraints must look like 0:Once, 5:upon (position:text), got {item!r}")
        pins[int(pos)] = word.strip() if int(pos) == 0 else " " + word.strip()
    return pins


def request_work(family: str, request: Request, chunk: int = 1) -> int:
    """What a request costs in token-steps: gen_length x steps x N (ar: one step per token; calm: one step per
    chunk of K tokens, N head samples each)."""
    if family == "calm":
        return -(-request.gen_length // max(chunk, 1)) * request.n
    steps = request.gen_length if family == "ar" else request.steps
    return request.gen_length * steps * request.n


def check_request(family: str, request: Request, chunk: int = 1) -> None:
    if family != "calm" and not 1 <= request.n <= MAX_RUNS:
        raise ValueError(f"N (runs) must be in [1, {MAX_RUNS}], got {request.n}")
    work = request_work(family, request, chunk)
    if work > MAX_WORK:
        what = (f"{-(-request.gen_length // max(chunk, 1))} chunks x N {request.n} head samples" if family == "calm" else
                f"gen_length {request.gen_length} x steps {request.gen_length if family == 'ar' else request.steps}"
                f" x N {request.n} runs")
        raise ValueError(f"request too large: {what} = {work:,}; this server allows at most {MAX_WORK:,} "
                         "(lower gen length, steps or N)")


def sampler_knobs(family: str, request: Request) -> dict:
    """The page's controls as sampler knobs; `cache` means Fast-dLLM's cache for mdlm, the exact KV cache for
    bd3lm; calm takes the temperature algorithm and N head samples."""
    knobs = {"gen_length": int(request.gen_length), "temperature": float(request.temperature)}
    pins = parse_constraints(request.constraints) | request.pinned
    if pins and family not in ("mdlm", "cdcd"):
        raise ValueError(f"word constraints need a masked-diffusion (mdlm) or continuous-diffusion (cdcd) "
                         f"checkpoint; the {family} family generates in order")
    if request.cfg_scale and family not in ("mdlm", "cdcd"):
        raise ValueError(f"guidance (cfg_scale) applies to the mdlm and cdcd families, not {family}")
    if family == "calm":  # one chunk per step with a KV cache; temperature in (0, 1] without likelihoods
        return knobs | {"n_candidates": int(request.n)}
    if family == "ar":
        return knobs  # AR decoding always uses its KV cache
    knobs["steps"] = int(request.steps)
    if family == "cdcd":  # Euler steps of the ODE: no blocks, no commit rule, no cache
        return knobs | {"cfg_scale": float(request.cfg_scale), "pinned": pins}
    knobs["block_length"] = int(request.block_length)
    if request.sampler == "threshold":
        knobs["threshold"] = float(request.threshold)
    allowed = CACHES[family]
    cache = request.cache or allowed[0]
    if cache not in allowed:
        raise ValueError(f"cache must be one of {allowed} for the {family} family, got {cache!r}")
    if family == "bd3lm":
        return knobs | {"kv_cache": cache == "kv"}
    return knobs | {"cache": cache, "cfg_scale": float(request.cfg_scale), "pinned": pins}


class RunRegistry:
    """Generations in flight per browser session, so one user cannot fill the queue (at most RUNS_PER_USER)."""

    def __init__(self, per_user: int = RUNS_PER_USER):
        self.per_user = per_user
        self.runs: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def start(self, user: str) -> float:
        with self.lock:
            now = max([time.monotonic()] + [t + 1e-6 for t in self.runs.get(user, [])])  # distinct tokens
            live = [t for t in self.runs.get(user, []) if now - t < STALE_RUN_S]
            if len(live) >= self.per_user:
                raise ValueError("a run of yours is still going: press Stop or wait for it to finish "
                                 f"(at most {self.per_user} run per user at a time)")
            self.runs[user] = live + [now]
        return now

    def finish(self, user: str, token: float) -> None:
        """Forget the run of `user` started at `token`."""
        with self.lock:
            self.runs[user] = [t for t in self.runs.get(user, []) if t != token]

    def cancel(self, user: str) -> None:
        """Forget every run of `user` (the Stop button)."""
        with self.lock:
            self.runs.pop(user, None)


# --- memory: runs kept compact, one budget over all sessions --------------------------------------------------

PACKED = {"hidden": np.float16, "latent": np.float32, "samples": np.float32}  # a frame's rows of floats, as arrays
# (hidden states come after the final norm, so float16 keeps them; continuous states grow with the noise: float32)


def pack_frame(frame: Frame) -> Frame:
    """Pack `frame` in place: each of its rows-of-floats fields (PACKED) becomes one array (rows, width), NaN rows
    where a row is None. A Python float in a list costs 32 bytes, a float16 2: a 64-token, 64-step run's hidden
    states go from ~35 MB to ~2 MB. The plots and the JSON file take `unpacked(trace)`."""
    for name, dtype in PACKED.items():
        rows = getattr(frame, name)
        if isinstance(rows, list) and any(row is not None for row in rows):
            width = len(next(row for row in rows if row is not None))
            nan = [float("nan")] * width
            setattr(frame, name, np.array([nan if row is None else row for row in rows], dtype=dtype))
    return frame


def unpacked(trace: Trace) -> Trace:
    """A copy of `trace` whose packed fields are lists of rows again (None for a NaN row), as the plots and
    `Trace.save` read them; the trace itself stays packed."""
    def rows(array: np.ndarray) -> list:
        missing = np.isnan(array[:, 0]) if array.shape[1] else np.zeros(len(array), dtype=bool)
        return [None if gone else row for gone, row in zip(missing.tolist(), array.astype(np.float32).tolist())]

    frames = [replace(frame, **{name: rows(getattr(frame, name)) for name in PACKED
                                if isinstance(getattr(frame, name), np.ndarray)}) for frame in trace.frames]
    return replace(trace, frames=frames)


def held_bytes(value) -> int:
    """About the bytes `value` holds: an array's own; 32 per number in a list (a pointer and a boxed number)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (list, tuple)):
        return 56 + sum(8 + held_bytes(v) if isinstance(v, (list, tuple, np.ndarray)) else 32 for v in value)
    if isinstance(value, dict):
        return sum(held_bytes(k) + held_bytes(v) + 100 for k, v in value.items())
    return 0


def trace_bytes(trace: Trace) -> int:
    """About the bytes a trace holds (its frames' lists and arrays, its token strings)."""
    frames = sum(300 + sum(held_bytes(v) for v in vars(frame).values()) for frame in trace.frames)
    return frames + held_bytes(trace.prompt_ids) + 100 * len(trace.token_strings)


class SessionMemory:
    """The runs kept by every browser session, under one budget. `keep` (re)counts a session's bytes when its runs
    change and marks it used; while the total is over the budget the least recently used other sessions are
    dropped (their holder's `drop()` is called: the page then asks that user to generate again). `touch` marks a
    session used; `forget` drops one at once (its tab closed)."""

    def __init__(self, budget_mb: float = MEMORY_BUDGET_MB):
        self.budget = int(budget_mb * 1e6)
        self.sessions: OrderedDict[str, tuple[object, int]] = OrderedDict()  # key -> (holder, bytes); oldest first
        self.lock = threading.Lock()

    @property
    def total(self) -> int:
        return sum(nbytes for _, nbytes in self.sessions.values())

    def keep(self, key: str, holder, nbytes: int) -> list:
        """Count `holder` (anything with a `drop()` method) as session `key`'s runs, `nbytes` large, used now.
        Returns the holders of the sessions dropped to make room (never `key`'s own)."""
        with self.lock:
            self.sessions.pop(key, None)
            self.sessions[key] = (holder, nbytes)
            dropped = []
            while self.total > self.budget and len(self.sessions) > 1:
                dropped.append(self.sessions.popitem(last=False)[1][0])
        for old in dropped:
            old.drop()
        if dropped:
            return_memory()
        return dropped

    def touch(self, key: str) -> None:
        with self.lock:
            if key in self.sessions:
                self.sessions.move_to_end(key)

    def forget(self, key: str) -> None:
        with self.lock:
            holder = self.sessions.pop(key, (None, 0))[0]
        if holder is not None:
            holder.drop()
            return_memory()


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):
        return None


def return_memory() -> None:
    """Hand the heap pages freed by dropped runs back to the system: glibc keeps them otherwise, and the server's
    memory would never come back down after its users leave (a millisecond; nothing off glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


# --- streaming N runs in lockstep -------------------------------------------------------------------------------

@dataclass
class LiveRuns:
    """N runs of one sampler (seeds seed .. seed + N - 1) advanced one step each per update; frames are kept packed
    (`pack_frame`)."""

    model: object
    prompt: str
    sampler: str | None
    seed: int
    runs: int
    knobs: dict
    notices: list[str] = field(default_factory=list)
    traces: list[Trace] = field(default_factory=list)

    def __iter__(self) -> Iterator[list[Trace]]:
        """Yields the N traces so far after each round of steps (runs that finished keep their last frame)."""
        streams = [stream(self.model, self.prompt, self.sampler, self.seed + k, record="full", **self.knobs)
                   for k in range(self.runs)]
        frames: list[list] = [[] for _ in streams]
        rows = self.knobs["gen_length"] * (self.knobs.get("steps", self.knobs["gen_length"]) + 1) * self.runs
        keep_hidden = rows <= HIDDEN_ROWS
        if not keep_hidden and self.model.family in ("ar", "mdlm", "bd3lm"):
            self.notices.append(f"hidden states are not kept for this run (gen_length x steps x N = {rows:,} rows "
                                f"> {HIDDEN_ROWS:,}); the latent view needs a smaller run")
        busy = [0.0] * len(streams)
        pending = set(range(len(streams)))
        while pending:
            for k in sorted(pending):
                description, prompt_ids, frames_iter = streams[k]
                started = time.perf_counter()
                with torch.no_grad(), warnings.catch_warnings(record=True) as caught:  # grad mode is per thread
                    warnings.simplefilter("always")  # and Gradio may resume us on another one
                    frame = next(frames_iter, None)
                busy[k] += time.perf_counter() - started
                if k == 0:
                    self.notices.extend(str(w.message) for w in caught if str(w.message) not in self.notices)
                if frame is None:
                    pending.discard(k)
                else:
                    if not keep_hidden:
                        frame.hidden = None
                    frames[k].append(pack_frame(frame))
            if not frames[0]:
                raise ValueError("the sampler produced no frames")
            self.traces = [build_trace(self.model, streams[k][1], streams[k][0], list(frames[k]), busy[k])
                           for k in range(len(streams)) if frames[k]]
            if pending:
                yield self.traces


def load_examples(directory: Path = EXAMPLES_DIR) -> dict[str, Trace]:
    """The precomputed example traces that ship with the app, by file stem (no model runs for them)."""
    return {path.stem: Trace.load(path) for path in sorted(directory.glob("*.json"))}


EXAMPLE_RUNS = {  # name -> (checkpoint, sampler, knobs): the page's first paint, written by `write_examples`
    "mdlm-tiny": ("mdlm-tiny", "low_confidence", {"gen_length": 64, "steps": 64, "block_length": 64,
                                                   "temperature": 0.0}),
    "ar-tiny": ("ar-tiny", "ar", {"gen_length": 32, "temperature": 0.0}),
    "bd3lm-tiny-b16": ("bd3lm-tiny-b16", "first_hitting", {"gen_length": 32, "steps": 16, "block_length": 16}),
    "calm-tiny-k4": ("calm-tiny-k4", "batch", {"gen_length": 32, "temperature": 1.0, "n_candidates": 200}),
}
EXAMPLE_PROMPT = "ROMEO:"


def write_examples(directory: Path = EXAMPLES_DIR, seed: int = 0) -> list[Path]:
    """Run the example generations on the shipped checkpoints and save their traces (`python -m explorer
    examples`); hidden states are left out to keep the files small (the page records them for live runs)."""
    from tqdm import tqdm

    from explorer.sampling import generate

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (checkpoint, sampler, knobs) in tqdm(EXAMPLE_RUNS.items(), desc="example traces"):
        model = explorer.load(checkpoint)
        trace = generate(model, EXAMPLE_PROMPT, sampler, seed, record="full", **knobs)
        for frame in trace.frames:
            frame.hidden = None
        trace.model["checkpoint"] = checkpoint  # a name, not this machine's path
        written.append(trace.save(directory / f"{name}.json"))
    return written
