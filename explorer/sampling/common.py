"""Pieces every sampler shares: the knob definition, knob validation, per-step noise seeds, frame building."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields

import torch

from explorer.sampling.trace import RECORD_LEVELS, Frame

MAX_GEN_LENGTH = 65_536  # tokens one run may generate (ar and bd3lm slide past the context; others stop there)
MAX_STEPS = 100_000  # network steps one knob may ask for (per run; bd3lm: per block)
MAX_SEED = 2**63 - 1  # seeds are 0 .. MAX_SEED (what a torch.Generator takes)


def knob(default, help: str, choices: tuple | None = None, user: bool = True, flag: dict | None = None):
    """A sampler knob: a dataclass field with its default and the one line of help that the CLI, the page and the
    docs show (its range is checked in the Params' `validate`). `choices`: the allowed values of a text knob;
    `user=False`: set by the library, not by hand (no CLI flag); `flag`: extra argparse settings of its CLI flag.
    A dict default (pinned tokens) starts empty."""
    metadata = {"help": help, "choices": choices, "user": user, "flag": flag or {}}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


class SamplerParams:
    """Base of every sampler's Params: a frozen dataclass whose fields are its knobs, each defined once by `knob`."""

    @classmethod
    def knob_fields(cls) -> dict[str, Field]:
        return {f.name: f for f in fields(cls)}

    @classmethod
    def default_of(cls, name: str):
        f = cls.knob_fields()[name]
        return f.default_factory() if f.default is MISSING else f.default

    @classmethod
    def resolve(cls, given: dict) -> dict:
        """The knobs given (None = not given), completed where a default depends on another knob."""
        return given

    def validate(self, model) -> None:
        """Raise ValueError naming a knob, its value and the allowed range when a knob does not fit `model`."""
        raise NotImplementedError


class TokenPerStepParams(SamplerParams):
    """Params whose `steps` defaults to `gen_length`: one token per network evaluation (LLaDA's and Dream's
    READMEs: 512 steps for 512 tokens)."""

    @classmethod
    def resolve(cls, given: dict) -> dict:
        return {"steps": given.get("gen_length", cls.default_of("gen_length"))} | given


@dataclass(frozen=True)
class Sampler:
    """One sampler as users name it: the family it runs on, its Params (every knob: default, help; `validate`
    checks the ranges) and the generator that runs it. Each sampler module lists its own in `SAMPLERS`;
    `explorer.sampling.registry` collects them, and the API, the CLI and the page read that table."""

    family: str  # the model family it runs on
    name: str  # what users pass: sampler="low_confidence"
    params: type  # a SamplerParams dataclass
    run: Callable  # run(model, prompt_ids, params, generator, record) -> Iterator[Frame]
    title: str  # for messages and the page, e.g. "LLaDA's loop"
    fixed: dict = field(default_factory=dict)  # Params fields this name sets (not knobs), e.g. the remasking rule
    defaults: dict = field(default_factory=dict)  # this name's defaults over the Params' own, e.g. threshold 0.9

    @property
    def knobs(self) -> dict[str, Field]:
        """The knobs a user may set: the Params fields minus those the name fixes."""
        return {name: f for name, f in self.params.knob_fields().items() if name not in self.fixed}

    def default(self, knob_name: str):
        return self.defaults[knob_name] if knob_name in self.defaults else self.params.default_of(knob_name)


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    return f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"


def check_range(knob: str, value, low=None, high=None, low_open=False, high_open=False) -> None:
    """Raise ValueError naming the knob, the value and the allowed range; NaN, inf and non-numbers are never in it."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    finite = number and (isinstance(value, numbers.Integral) or math.isfinite(value))  # a huge int is no float
    bad = not finite or (
        (low is not None and (value < low or (low_open and value == low)))
        or (high is not None and (value > high or (high_open and value == high)))
    )
    if bad:
        raise ValueError(f"{knob} must be in {_interval(low, high, low_open, high_open)}, got "
                         f"{value if number else repr(value)}")


def check_int(knob: str, value, low=None, high=None) -> None:
    """check_range for a count or an index: an int (or numpy integer) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{knob} must be an integer in {_interval(low, high, False, False)}, got {value!r}")
    check_range(knob, value, low, high)


def check_flag(knob: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{knob} must be True or False, got {value!r}")


def check_sampling_knobs(temperature: float, top_k: int | None, top_p: float | None, record: str) -> None:
    check_range("temperature", temperature, 0)
    if top_k is not None:
        check_int("top_k", top_k, 1)
    if top_p is not None:
        check_range("top_p", top_p, 0, 1, low_open=True)
    if record not in RECORD_LEVELS:
        raise ValueError(f"record must be one of {RECORD_LEVELS}, got {record!r}")


def step_seed(generator: torch.Generator) -> int:
    """A fresh 31-bit seed for the counter-based noise of one step, drawn from the sampler's generator."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def record_hidden(record: str, hidden: bool | None) -> bool:
    """Whether a discrete sampler records hidden states: `hidden` if given, else at level "full" only."""
    return record == "full" if hidden is None else hidden


def keep_states(states: torch.Tensor, hidden: torch.Tensor, start: int, prompt_len: int) -> None:
    """Write one pass's hidden states (l, d) of absolute positions start .. start + l into `states` (G, d), the
    latest state of each generated position; prompt positions are skipped."""
    skip = max(prompt_len - start, 0)
    first = start + skip - prompt_len
    rows = hidden[skip : skip + len(states) - first]  # (<= l, d)
    states[first : first + len(rows)] = rows.float().cpu()


def wants_frame(record: str, final: bool) -> bool:
    """Whether a step makes a Frame: every step above level "none", only the final one at "none" (so a sampler
    skips building what the frame would show)."""
    return record != "none" or final


def make_frame(record: str, final: bool, step: int, canvas: torch.Tensor, committed, nfe: int, *,
               t=None, block=None, proposal=None, confidence=None, remasked=(), cache=None, stop=None,
               revised=None, hidden=None, notes: list[str] | None = None) -> Frame | None:
    """A Frame with what the recording level asks for; None at level 'none' except for the final frame.
    `hidden` (G, d): latest hidden state per position, NaN rows where never computed (stored as None rows).
    `notes`: what the sampler has said since its last frame; a frame that is made takes them and empties the list
    (at level 'none' they wait for the final frame)."""
    if not wants_frame(record, final):
        return None
    full = record == "full"
    said = list(notes) if notes else None
    if notes:
        notes.clear()
    return Frame(
        step=step,
        tokens=canvas.tolist(),
        committed=sorted(int(p) for p in committed),
        remasked=sorted(int(p) for p in remasked),
        nfe=nfe,
        t=t,
        block=block,
        proposal=proposal.tolist() if full and proposal is not None else None,
        confidence=([None if math.isnan(c) else c for c in confidence.tolist()]
                    if full and confidence is not None else None),
        cache=cache,
        stop=stop,
        revised=sorted(int(p) for p in revised) if revised is not None else None,
        hidden=_state_rows(hidden) if hidden is not None else None,
        notes=said,
    )


def _state_rows(states: torch.Tensor) -> list[list[float] | None]:
    known = (~states.isnan().any(-1)).tolist()
    return [row if ok else None for row, ok in zip(states.tolist(), known)]
