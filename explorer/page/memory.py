"""Runs the page keeps, under one memory budget: generations in flight per user, frames packed into arrays, the
sessions' runs dropped least recently used first, and N runs streamed in lockstep."""

from __future__ import annotations

import ctypes
import functools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np
import torch

from explorer.sampling import Frame, Trace, build_trace, stream

RUNS_PER_USER = 1  # generations one browser session may have going at once
HIDDEN_ROWS = 8_192  # hidden states kept per live request, gen_length x frames x N (~4 MB packed at d = 256): larger
# requests keep them every k-th frame (and the newest), so the latent view always has a path to draw
STALE_RUN_S = 600.0  # a run registered longer ago than this is treated as gone (its generator was dropped)
MEMORY_BUDGET_MB = 1024  # the runs of every session together; the least recently used sessions are dropped beyond it
MAX_REWIND = 8  # hand edits a session can rewind (each keeps the trace before it)
MAX_UPLOAD_MB = 20  # a trace file loaded on the page
DROPPED = "your run was dropped to free memory; Generate again"


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

def frames_per_run(model, knobs: dict) -> int:
    """At most how many steps one run takes (each frame holds gen_length hidden states): `steps` counts per block
    for bd3lm and per canvas for DiffusionGemma, for the whole run elsewhere; none given (ar, or one token per step)
    is gen_length."""
    gen_length = knobs["gen_length"]
    steps = knobs.get("steps") or gen_length
    if model.family == "diffusion_gemma":
        return steps * -(-gen_length // model.canvas_length)
    if model.family == "bd3lm" and knobs.get("steps"):
        block = knobs.get("block_length") or model.block_size
        # a block's step commits at least one token (steps past its tokens are skipped); + 1: the prompt's last block
        # may hold generated positions
        return min(steps, block) * (-(-gen_length // block) + 1)
    return steps


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
        rows = self.knobs["gen_length"] * (frames_per_run(self.model, self.knobs) + 1) * self.runs
        stride = -(-rows // HIDDEN_ROWS)  # keep the hidden states of every stride-th frame
        if stride > 1 and self.model.family in ("ar", "mdlm", "bd3lm", "diffusion_gemma"):
            self.notices.append(f"hidden states are kept every {stride} steps (gen_length x steps x N = {rows:,} rows "
                                f"> {HIDDEN_ROWS:,}): the latent view's paths skip the steps between")
        busy = [0.0] * len(streams)
        pending = set(range(len(streams)))
        while pending:
            for k in sorted(pending):
                description, prompt_ids, frames_iter = streams[k]
                started = time.perf_counter()
                with torch.no_grad():  # grad mode is per thread, and Gradio may resume us on another one
                    frame = next(frames_iter, None)
                busy[k] += time.perf_counter() - started
                if k == 0 and frame is not None:  # the run's own notes (the process's warnings hold other users')
                    self.notices += [note for note in frame.notes or [] if note not in self.notices]
                if frame is None:
                    pending.discard(k)
                else:
                    kept = frames[k]
                    if kept and (len(kept) - 1) % stride:  # the newest frame keeps its states until a later one comes
                        kept[-1].hidden = None
                    kept.append(pack_frame(frame))
            if not frames[0]:
                raise ValueError("the sampler produced no frames")
            self.traces = [build_trace(self.model, streams[k][1], streams[k][0], list(frames[k]), busy[k])
                           for k in range(len(streams)) if frames[k]]
            if pending:
                yield self.traces
