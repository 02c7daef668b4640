"""Draft-and-refine: autoregression for structure, diffusion for refinement.

A drafter (`ar-tiny`, or a block-diffusion checkpoint) writes the whole continuation; then for
`rounds` rounds the masked-diffusion model remasks the `fraction` of draft tokens with the lowest
confidence (the drafter's probability of the token it chose, or the refiner's commit probability
once a token has been re-denoised) and re-denoises them, one token per step by default. Frames
record the draft steps, the remasking of each round, and which tokens now differ from the draft.
Hidden states (level "full") are the refiner's: the draft frames have None rows (the drafter's
space is another model's), and each round starts from the states of the round before.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import torch

from explorer.models.base import SamplerModel
from explorer.sampling.common import (
    MAX_GEN_LENGTH,
    MAX_STEPS,
    Sampler,
    SamplerParams,
    check_int,
    check_range,
    check_sampling_knobs,
    knob,
)
from explorer.sampling.mdlm import MaskedParams, masked_diffusion
from explorer.sampling.trace import Frame


@dataclass(frozen=True)
class RefineParams(SamplerParams):
    gen_length: int = knob(64, "tokens to generate")
    drafter: SamplerModel | None = knob(None, "the loaded ar or bd3lm model that drafts (CLI: its name or folder)")
    rounds: int = knob(2, "refinement rounds R")
    fraction: float = knob(0.25, "share of the draft remasked in each round (lowest confidence first)")
    steps: int | None = knob(None, "denoising steps per round; None = one token per step")
    temperature: float = knob(1.0, "drafter temperature")
    top_k: int | None = knob(None, "drafter top-k")
    top_p: float | None = knob(None, "drafter nucleus")
    refine_temperature: float = knob(0.0, "temperature of the re-denoising proposals (0 = argmax)")

    def validate(self, model) -> None:
        check_int("gen_length", self.gen_length, 1, MAX_GEN_LENGTH)
        check_int("rounds", self.rounds, 0)
        check_range("fraction", self.fraction, 0, 1, low_open=True)
        if self.steps is not None:
            check_int("steps", self.steps, 1, MAX_STEPS)
        per_round = self.steps or self.remask_count
        if self.rounds * per_round > MAX_STEPS:
            raise ValueError(f"rounds ({self.rounds}) x steps per round ({per_round}) = {self.rounds * per_round:,}; "
                             f"at most {MAX_STEPS:,} refinement steps are allowed")
        check_sampling_knobs(self.temperature, self.top_k, self.top_p, "none")
        check_range("refine_temperature", self.refine_temperature, 0)

    @property
    def remask_count(self) -> int:
        return max(1, round(self.fraction * self.gen_length))


def check_drafter(drafter, refiner) -> None:
    """The drafter is a loaded ar or bd3lm model on the refiner's tokenizer (callers load it: this layer opens no
    checkpoint)."""
    if drafter is None or isinstance(drafter, str):
        raise ValueError(f"drafter must be a loaded ar or bd3lm model, e.g. drafter=explorer.load('ar-tiny'), got "
                         f"{drafter!r}")
    if drafter.family not in ("ar", "bd3lm"):
        raise ValueError(f"drafter must be an ar or bd3lm checkpoint, {drafter.name!r} is {drafter.family}")
    if drafter.tokenizer.get_vocab() != refiner.tokenizer.get_vocab():
        raise ValueError(f"drafter {drafter.name!r} uses a different tokenizer than the refiner {refiner.name!r}")


@torch.no_grad()
def draft_and_refine(model, prompt_ids: list[int], params: RefineParams, generator: torch.Generator,
                     record: str = "tokens") -> Iterator[Frame]:
    """Yield the drafter's frames, then each round's remasked canvas and re-denoising steps."""
    from explorer.sampling import build_sampler  # the registry lives in the package

    params.validate(model)
    drafter = params.drafter
    check_drafter(drafter, model)
    knobs = dict(gen_length=params.gen_length, temperature=params.temperature, top_k=params.top_k,
                 top_p=params.top_p)
    if drafter.family == "bd3lm":
        knobs |= dict(stop_at_eos=False, min_entropy=0.0)
    draft_params, draft_fn = build_sampler(drafter.family, None, **knobs)
    frame = None
    known = [None] * params.gen_length if record == "full" else None  # the refiner's latest state per position
    for frame in draft_fn(drafter, prompt_ids, draft_params, generator, "full", hidden=False):
        if record != "none":
            yield _at_level(replace(frame, hidden=known), record)
    draft = list(frame.tokens)
    confidence = torch.tensor([1.0 if c is None else c for c in frame.confidence])  # (G,)
    last = frame
    count = min(params.remask_count, len(draft))
    for round_no in range(params.rounds):
        remask = set(confidence.argsort(stable=True)[:count].tolist())  # lowest confidence first
        pinned = {i: t for i, t in enumerate(last.tokens) if i not in remask}
        inner = MaskedParams(len(draft), params.steps or count, temperature=params.refine_temperature,
                             pinned=pinned)
        start_step, start_nfe = last.step, last.nfe
        for inner_frame in masked_diffusion(model, prompt_ids, inner, generator, "full", hidden=record == "full"):
            for pos in inner_frame.committed:
                confidence[pos] = inner_frame.confidence[pos]
            revised = [i for i, (now, was) in enumerate(zip(inner_frame.tokens, draft))
                       if now != was and now != model.mask_id]
            if known is not None:
                known = [was if now is None else now for now, was in zip(inner_frame.hidden, known)]
            last = replace(inner_frame, step=start_step + inner_frame.step + 1,
                           nfe=start_nfe + inner_frame.nfe, block=round_no,
                           remasked=sorted(remask) if inner_frame.step == 0 else [], revised=revised, hidden=known)
            if record != "none":
                yield _at_level(last, record)
    if record == "none":
        yield _at_level(last, "tokens")


def _at_level(frame: Frame, record: str) -> Frame:
    """The frame with what `record` keeps (proposals, confidences and hidden states only at level "full")."""
    return frame if record == "full" else replace(frame, proposal=None, confidence=None, latent=None, hidden=None)


SAMPLERS = [Sampler("mdlm", "draft_refine", RefineParams, draft_and_refine, "draft-and-refine")]
