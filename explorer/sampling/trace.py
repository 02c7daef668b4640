"""The trace: everything needed to replay a generation without the model (versioned JSON)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

SCHEMA = 1
RECORD_LEVELS = ("none", "tokens", "full")


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
    cache: str | None = None  # cache behind this step's network call: "kv" (exact), "prefix"/"dual" (approximate), "refresh"
    stop: str | None = None  # final frame of variable-length sampling: "eos", "eot", "entropy" or "length"
    revised: list[int] | None = None  # positions whose token changed (draft-and-refine: vs the draft; cdcd: vs the last step)
    noise: float | None = None  # cdcd: the Gaussian noise scale sigma of the state after this step (0 = clean)
    entropy: list[float] | None = None  # level "full", cdcd: entropy (nats) of the model's softmax per position
    samples: list[list[float]] | None = None  # level "full", calm: energy-head samples for this chunk (its predictive spread)
    # level "full", discrete families (ar, mdlm, bd3lm): each position's last-layer hidden state after the final
    # norm (what the LM head reads; ar: the state that predicted the position's token) as known after this step.
    # A position this step's pass did not compute (bd3lm's finished blocks, Fast-dLLM's cached positions) keeps
    # its latest state; a None row was never computed (ar's future tokens, bd3lm's future blocks, the draft
    # frames of draft-and-refine, whose drafter is another model). Stored rounded to 4 decimals.
    hidden: list[list[float] | None] | None = None


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
    schema: int = SCHEMA

    @property
    def final_tokens(self) -> list[int]:
        return self.frames[-1].tokens

    def commit_steps(self, upto: int = -1) -> list[int | None]:
        """For each position, the step at which it was last committed up to frame index `upto` (None if never)."""
        last = upto % len(self.frames)
        steps: list[int | None] = [None] * len(self.frames[last].tokens)
        for frame in self.frames[: last + 1]:
            for pos in frame.committed:
                steps[pos] = frame.step
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
    def from_dict(cls, data: dict) -> "Trace":
        schema = data.get("schema")
        if schema != SCHEMA:
            raise ValueError(f"trace schema {schema!r} is not supported (this version reads schema {SCHEMA})")
        known = {f.name for f in fields(Frame)}
        frames = [Frame(**{k: v for k, v in frame.items() if k in known}) for frame in data["frames"]]
        kwargs = {f.name: data[f.name] for f in fields(cls) if f.name in data and f.name != "frames"}
        kwargs["token_strings"] = {int(k): v for k, v in data.get("token_strings", {}).items()}
        return cls(frames=frames, **kwargs)

    @classmethod
    def load(cls, path: str | Path) -> "Trace":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not a trace JSON file: {err}") from None
        return cls.from_dict(data)
