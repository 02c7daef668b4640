"""The trace: everything needed to replay a generation without the model (versioned JSON)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

SCHEMA = 1
RECORD_LEVELS = ("none", "tokens", "full")
MAX_TRACE_BYTES = 100_000_000  # Trace.load refuses larger files before parsing them (the page allows less)
MAX_DEPTH = 6  # nesting of free-form entries (model, sampler knobs, stats); a real trace's nest 3 deep
MAX_ID = 2**31 - 1  # token ids, steps, positions and counts
MAX_SOURCE_KEYS, MAX_SOURCE_TEXT = 64, 1000  # a trace's `source` block: entries per object, characters per string
_MISSING = object()  # a required field that is absent (named so in messages)


@dataclass
class Frame:
    """One sampler step. Positions index the generated region (the prompt is `Trace.prompt_ids`)."""

    step: int  # 0 = initial canvas, last = final output
    tokens: list[int] | None  # canvas after this step (mask id where still masked); None below level "tokens"
    committed: list[int] = field(default_factory=list)  # positions that became fixed at this step
    remasked: list[int] = field(default_factory=list)  # positions un-fixed at this step
    nfe: int = 0  # network evaluations so far
    t: float | None = None  # noise level in [0, 1] (1 = all masked; cdcd: log t normalised, 1 = t_max); None for ar
    block: int | None = None  # current block of semi-autoregressive sampling
    proposal: list[int] | None = None  # level "full": the model's x0 guess at every position
    confidence: list[float | None] | None = None  # level "full": score of the proposal (commit-time score once fixed)
    latent: list[list[float]] | None = None  # level "full": continuous state per position, where the family has one
    # cache behind this step's network call: "kv" (exact), "prefix"/"dual" (approximate), "refresh"
    cache: str | None = None
    stop: str | None = None  # final frame of variable-length sampling: "eos", "eot", "entropy" or "length"
    # positions whose token changed (draft-and-refine: vs the draft; cdcd: vs the last step)
    revised: list[int] | None = None
    noise: float | None = None  # cdcd: the Gaussian noise scale sigma of the state after this step (0 = clean)
    entropy: list[float] | None = None  # level "full", cdcd: entropy (nats) of the model's softmax per position
    # level "full", calm: energy-head samples for this chunk (its predictive spread)
    samples: list[list[float]] | None = None
    # level "full", discrete families (ar, mdlm, bd3lm): each position's last-layer hidden state after the final
    # norm (what the LM head reads; ar: the state that predicted the position's token) as known after this step.
    # A position this step's pass did not compute (bd3lm's finished blocks, Fast-dLLM's cached positions) keeps
    # its latest state; a None row was never computed (ar's future tokens, bd3lm's future blocks, the draft
    # frames of draft-and-refine, whose drafter is another model). Stored rounded to 4 decimals.
    hidden: list[list[float] | None] | None = None
    # what the sampler says about the run at this step, for people (e.g. "steps reduced to fit"); the run's own notes,
    # never warnings caught from the process
    notes: list[str] | None = None


@dataclass
class Trace:
    model: dict  # {name, family, params, checkpoint}
    sampler: dict  # {name, seed, every knob}: enough to re-run it exactly
    prompt_ids: list[int]
    frames: list[Frame]
    text: str  # decoded final output (generated region only)
    token_strings: dict[int, str]  # display string of every token id that appears in a frame
    stats: dict = field(default_factory=dict)  # measured: nfe, wall_s, tokens_per_s, ...
    prompt_text: str = ""
    mask_id: int | None = None
    # who ran the generation when it was not one of our samplers: {library, version, model_class, settings: {...}}
    # (explorer.integrations); None for our own runs. Strings, numbers, bools and nulls, one object deep inside.
    source: dict | None = None
    schema: int = SCHEMA

    @classmethod
    def of_run(cls, frames: list[Frame], prompt_ids: list[int], *, model: dict, sampler: dict, wall_s: float,
               mask_id: int | None, answer: list[int], decode, token_string, source: dict | None = None,
               stop: str | None = None) -> Trace:
        """The Trace of a finished run, ours or another library's: `answer` is the part of the final canvas that is
        the text, `decode(ids, skip_special_tokens=...)` and `token_string(id)` say how ids read, `stop` why the run
        ended early (eos, end of turn), if it did."""
        gen = len(frames[-1].tokens)
        return cls(
            model=model, sampler=sampler, prompt_ids=list(prompt_ids), frames=frames,
            text=decode(answer, skip_special_tokens=True),
            token_strings={i: token_string(i) for i in token_ids_seen(prompt_ids, frames)},
            stats={"nfe": frames[-1].nfe, "wall_s": round(wall_s, 4), "tokens_per_s": round(gen / max(wall_s, 1e-9), 2),
                   "steps": frames[-1].step, "gen_length": gen, **({"stop": stop} if stop else {})},
            prompt_text=decode(list(prompt_ids), skip_special_tokens=False) if prompt_ids else "",
            mask_id=mask_id, source=source)

    @property
    def final_tokens(self) -> list[int]:
        return self.frames[-1].tokens

    def commit_steps(self, upto: int = -1) -> list[int | None]:
        """For each position, the step at which it was last committed up to frame index `upto` (None if never),
        counted as frame indices: the sampler's own step numbers, except that the canvas of a hand edit counts as a
        step of its own (as the page, the plots and the exports number steps)."""
        last = upto % len(self.frames)
        steps: list[int | None] = [None] * len(self.frames[last].tokens)
        for index, frame in enumerate(self.frames[: last + 1]):
            for pos in frame.committed:
                steps[pos] = index
            for pos in frame.remasked:
                steps[pos] = None
        return steps

    def to_dict(self) -> dict:
        data = asdict(replace(self, frames=[]))
        data["token_strings"] = {str(k): v for k, v in self.token_strings.items()}
        for frame in self.frames:
            entry = asdict(replace(frame, hidden=None))  # hidden states skip the deep copy: rounding copies them
            if entry["confidence"] is not None:
                entry["confidence"] = [None if c is None or math.isnan(c) else round(c, 6) for c in entry["confidence"]]
            if frame.hidden is not None:
                entry["hidden"] = [None if row is None else [round(v, 4) for v in row] for row in frame.hidden]
            data["frames"].append(entry)
        return data

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, data: dict, vocab_size: int | None = None) -> "Trace":
        """A trace from its JSON form, checked first (`check_trace_data`): a malformed one raises a ValueError that
        names the field. `vocab_size`, when known, bounds the token ids."""
        check_trace_data(data)
        known = {f.name for f in fields(Frame)}
        frames = [Frame(**{k: v for k, v in frame.items() if k in known}) for frame in data["frames"]]
        kwargs = {f.name: data[f.name] for f in fields(cls) if f.name in data and f.name != "frames"}
        kwargs["token_strings"] = {int(k): v for k, v in data.get("token_strings", {}).items()}
        trace = cls(frames=frames, **kwargs)
        if vocab_size is not None:
            trace.check_token_ids(vocab_size)
        return trace

    @classmethod
    def load(cls, path: str | Path, vocab_size: int | None = None, max_bytes: int = MAX_TRACE_BYTES) -> "Trace":
        """Read a trace JSON file of at most `max_bytes` (checked before parsing), then `from_dict`."""
        path = Path(path)
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)  # no more, whatever the file's size
        if len(raw) > max_bytes:
            raise ValueError(f"{path} has {path.stat().st_size / 1e6:.1f} MB; a trace may have at most "
                             f"{max_bytes / 1e6:g} MB here")
        try:
            data = json.loads(raw)
        except RecursionError:
            raise ValueError(f"{path} is not a trace JSON file: it nests too deeply") from None
        except ValueError as err:  # JSONDecodeError, bad UTF-8, an integer of too many digits
            raise ValueError(f"{path} is not a trace JSON file: {err}") from None
        try:
            return cls.from_dict(data, vocab_size)
        except ValueError as err:  # the field that is wrong, after the file that has it
            raise ValueError(f"{path} is not a trace JSON file: {err}") from None

    def check_token_ids(self, vocab_size: int) -> None:
        """Raise a ValueError naming the first token id (prompt, mask, canvas or proposal) outside [0, vocab_size)."""
        lists = [("prompt_ids", self.prompt_ids), ("mask_id", [] if self.mask_id is None else [self.mask_id])]
        for i, frame in enumerate(self.frames):
            lists += [(f"frames[{i}].tokens", frame.tokens or []), (f"frames[{i}].proposal", frame.proposal or [])]
        for where, ids in lists:
            if ids and not 0 <= min(ids) <= max(ids) < vocab_size:
                k = next(k for k, t in enumerate(ids) if not 0 <= t < vocab_size)
                place = where if where == "mask_id" else f"{where}[{k}]"
                raise ValueError(f"{place} must be a token id in [0, {vocab_size - 1}] (the vocabulary), got {ids[k]}")


# --- checking a trace's JSON form: every field's type, length and range ----------------------------------------

def check_trace_data(data) -> None:
    """Raise a ValueError naming the first field of `data` (a trace's JSON form) that a trace cannot have, e.g.
    "frames[3].tokens[5] must be an int, got a string". Ids, steps and counts are ints (not bools, floats or
    strings) in [0, 2**31); every per-position list of a frame has the canvas's length; free-form entries (sampler
    knobs, stats) nest at most MAX_DEPTH deep."""
    if not isinstance(data, dict):
        raise ValueError(f"a trace must be a JSON object, got {_kind(data)}")
    schema = data.get("schema")
    if schema != SCHEMA or type(schema) is not int:
        raise ValueError(f"trace schema {_shown(schema)} is not supported (this version reads schema {SCHEMA})")
    model = _object(data, "model")
    _string(model, "name", "model")
    _string(model, "family", "model")
    _optional_int(model, "params", "model", high=2**63 - 1)
    _optional_string(model, "checkpoint", "model")
    _depth(model, "model")
    _check_sampler(_object(data, "sampler"))
    stats = _object(data, "stats")
    for key in ("nfe", "steps"):
        _int(stats.get(key, _MISSING), f"stats.{key}")
    for key in ("wall_s", "tokens_per_s"):
        _number(stats.get(key, _MISSING), f"stats.{key}")
    _optional_int(stats, "gen_length", "stats")
    _optional_string(stats, "stop", "stats")
    _depth(stats, "stats")
    _ints(_list(data, "prompt_ids"), "prompt_ids")
    _string(data, "text")
    _optional_string(data, "prompt_text")
    _optional_int(data, "mask_id")
    if data.get("source") is not None:
        _check_source(_object(data, "source"), "source", nested=True)
    for key, value in (_object(data, "token_strings") if "token_strings" in data else {}).items():
        _digits(key, "token_strings key")
        if not isinstance(value, str):
            raise ValueError(f"token_strings[{key}] must be a string, got {_kind(value)}")
    frames = _list(data, "frames")
    if not frames or not isinstance(frames[0], dict):
        raise ValueError(f"frames must start with a frame object, got {_kind(frames[0]) if frames else 'none'}")
    length = len(_list(frames[0], "tokens", "frames[0]"))  # every frame is a canvas of the generated region
    if not length:
        raise ValueError("frames[0].tokens must hold at least one position, got none")
    widths: dict[str, int] = {}  # each of hidden / latent / samples has one row width over the whole trace
    for i, frame in enumerate(frames):
        _check_frame(frame, f"frames[{i}]", length, widths)


def _check_sampler(sampler: dict) -> None:
    """The sampler's name and seed, the knobs an edit resumes with, and the edits made by hand."""
    _string(sampler, "name", "sampler")
    _optional_int(sampler, "seed", "sampler", low=-(2**63), high=2**64 - 1)
    for key in ("gen_length", "steps", "block_length", "n_candidates"):
        _optional_int(sampler, key, "sampler")
    for key in ("temperature", "threshold", "cfg_scale"):
        if sampler.get(key) is not None:
            _number(sampler[key], f"sampler.{key}")
    if sampler.get("record") not in (None, *RECORD_LEVELS):
        raise ValueError(f"sampler.record must be one of {RECORD_LEVELS}, got {_shown(sampler['record'])}")
    for i, edit in enumerate(_list(sampler, "edits", "sampler") if "edits" in sampler else []):
        where = f"sampler.edits[{i}]"
        if not isinstance(edit, dict):
            raise ValueError(f"{where} must be an object, got {_kind(edit)}")
        _int(edit.get("frame", _MISSING), f"{where}.frame")
        _int(edit.get("at_step", _MISSING), f"{where}.at_step")
        _optional_int(edit, "seed", where, low=-(2**63), high=2**64 - 1)
        for pos, tok in _object(edit, "tokens", where).items():
            _digits(pos, f"{where}.tokens key")
            _int(tok, f"{where}.tokens[{pos}]")
    _depth(sampler, "sampler")


def _check_source(source: dict, where: str, nested: bool) -> None:
    """Another library's run: short strings, finite numbers, bools and nulls, with objects one level down only."""
    if len(source) > MAX_SOURCE_KEYS:
        raise ValueError(f"{where} may hold at most {MAX_SOURCE_KEYS} entries, got {len(source)}")
    for key, value in source.items():
        entry = f"{where}.{key[:30]}"
        if len(key) > 100:
            raise ValueError(f"{where} keys may have at most 100 characters, got {len(key)}")
        if isinstance(value, dict) and nested:
            _check_source(value, entry, nested=False)
        elif isinstance(value, str):
            if len(value) > MAX_SOURCE_TEXT:
                raise ValueError(f"{entry} may have at most {MAX_SOURCE_TEXT} characters, got {len(value)}")
        elif type(value) is float and not math.isfinite(value):
            raise ValueError(f"{entry} must be a finite number, got {value}")
        elif value is not None and type(value) not in (bool, int, float):
            raise ValueError(f"{entry} must be a string, a number, a bool or null, got {_kind(value)}")


def _check_frame(frame, where: str, length: int, widths: dict[str, int]) -> None:
    if not isinstance(frame, dict):
        raise ValueError(f"{where} must be an object, got {_kind(frame)}")
    _int(frame.get("step", _MISSING), f"{where}.step")
    _optional_int(frame, "nfe", where)
    _optional_int(frame, "block", where)
    for key in ("t", "noise"):
        if frame.get(key) is not None:
            _number(frame[key], f"{where}.{key}")
    for key in ("cache", "stop"):
        _optional_string(frame, key, where)
    for k, note in enumerate(_list(frame, "notes", where) if frame.get("notes") is not None else []):
        if not isinstance(note, str):
            raise ValueError(f"{where}.notes[{k}] must be a string, got {_kind(note)}")
    _ints(_list(frame, "tokens", where, length), f"{where}.tokens")
    for key in ("committed", "remasked", "revised"):  # positions
        if frame.get(key) is not None:
            _ints(_list(frame, key, where), f"{where}.{key}", high=length - 1)
    if frame.get("proposal") is not None:
        _ints(_list(frame, "proposal", where, length), f"{where}.proposal")
    for key in ("confidence", "entropy"):
        if frame.get(key) is not None:
            _numbers(_list(frame, key, where, length), f"{where}.{key}", nulls=True)
    # rows of numbers: hidden, one per position (null = not computed); latent, one per position (cdcd) or one
    # per chunk (calm); samples, the energy head's draws
    for key, rows_allowed, nulls in (("hidden", (length,), True), ("latent", (1, length), False),
                                     ("samples", None, False)):
        if frame.get(key) is None:
            continue
        rows = _list(frame, key, where)
        if rows_allowed is not None and len(rows) not in rows_allowed:
            raise ValueError(f"{where}.{key} must have {' or '.join(map(str, rows_allowed))} rows, got {len(rows)}")
        for k, row in enumerate(rows):
            if row is None and nulls:
                continue
            if not isinstance(row, list):
                raise ValueError(f"{where}.{key}[{k}] must be a list of numbers, got {_kind(row)}")
            if len(row) != widths.setdefault(key, len(row)):
                raise ValueError(f"{where}.{key}[{k}] must have {widths[key]} numbers like the rows before it, "
                                 f"got {len(row)}")
            _numbers(row, f"{where}.{key}[{k}]")


def _kind(value) -> str:
    """`value`'s JSON type, for messages (the value itself may be long or hostile)."""
    if value is _MISSING:
        return "nothing (the field is missing)"
    names = {bool: "a bool", int: "an int", float: "a float", str: "a string", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _shown(value) -> str:
    """An int or a short string as itself, anything else by its JSON type."""
    if type(value) is int:
        return str(value)
    return repr(value[:30]) if isinstance(value, str) else _kind(value)


def _int(value, where: str, low: int = 0, high: int = MAX_ID) -> None:
    if type(value) is not int:  # bool is an int subclass: refused too
        raise ValueError(f"{where} must be an int, got {_kind(value)}")
    if not low <= value <= high:
        raise ValueError(f"{where} must be in [{low}, {high}], got {value}")


def _ints(values: list, where: str, low: int = 0, high: int = MAX_ID) -> None:
    if all(type(v) is int for v in values) and (not values or low <= min(values) and max(values) <= high):
        return  # the common case, without a call per number
    for k, value in enumerate(values):
        _int(value, f"{where}[{k}]", low, high)


def _number(value, where: str) -> None:
    if type(value) not in (int, float):
        raise ValueError(f"{where} must be a number, got {_kind(value)}")


def _numbers(values: list, where: str, nulls: bool = False) -> None:
    allowed = (int, float, type(None)) if nulls else (int, float)
    if all(type(v) in allowed for v in values):
        return
    k = next(k for k, v in enumerate(values) if type(v) not in allowed)
    raise ValueError(f"{where}[{k}] must be a number{' or null' if nulls else ''}, got {_kind(values[k])}")


def _digits(key: str, where: str) -> None:
    if not (isinstance(key, str) and key.isascii() and key.isdigit() and int(key) <= MAX_ID):
        raise ValueError(f"{where} {_shown(key)} must be a token id written in decimal digits")


def _object(data: dict, key: str, parent: str = "") -> dict:
    value = data.get(key, _MISSING)
    if not isinstance(value, dict):
        raise ValueError(f"{_name(parent, key)} must be an object, got {_kind(value)}")
    return value


def _list(data: dict, key: str, parent: str = "", length: int | None = None) -> list:
    value = data.get(key, _MISSING)
    if not isinstance(value, list):
        raise ValueError(f"{_name(parent, key)} must be a list, got {_kind(value)}")
    if length is not None and len(value) != length:
        raise ValueError(f"{_name(parent, key)} must have {length} entries (the canvas length), got {len(value)}")
    return value


def _string(data: dict, key: str, parent: str = "") -> None:
    if not isinstance(data.get(key), str):
        raise ValueError(f"{_name(parent, key)} must be a string, got {_kind(data.get(key, _MISSING))}")


def _optional_string(data: dict, key: str, parent: str = "") -> None:
    if data.get(key) is not None:
        _string(data, key, parent)


def _optional_int(data: dict, key: str, parent: str = "", low: int = 0, high: int = MAX_ID) -> None:
    if data.get(key) is not None:
        _int(data[key], _name(parent, key), low, high)


def _name(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _depth(value, where: str) -> None:
    """Free-form JSON nests at most MAX_DEPTH deep (copying and printing it recurse)."""
    level = [value]
    for depth in range(MAX_DEPTH + 1):
        level = [v for item in level for v in (item.values() if isinstance(item, dict) else
                                               item if isinstance(item, list) else ())]
        if not level:
            return
    raise ValueError(f"{where} nests deeper than {MAX_DEPTH} levels")


def token_ids_seen(prompt_ids: list[int], frames: list[Frame]) -> list[int]:
    """Every token id a trace shows (prompt, canvases, proposals), sorted: the keys of its `token_strings`."""
    ids = set(prompt_ids)
    for frame in frames:
        ids.update(frame.tokens or [])
        ids.update(frame.proposal or [])
    return sorted(ids)
