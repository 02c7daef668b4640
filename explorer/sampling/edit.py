"""Editing a paused masked-diffusion run: the model's candidates at a position, and resuming with tokens forced.

`resume` continues a run from frame i with a fresh run of the same sampler whose `pinned` tokens are
the canvas's committed ones plus the edits; its frames are numbered on from frame i. With one block
the rest of LLaDA's schedule is kept exactly (the counts left of `schedule_counts(M, S)` after k
steps are `schedule_counts(remaining, S - k)`, and MDLM's linear schedule unmasks 1 / steps-left),
and `seed=None` continues the run's own noise stream, so resuming without edits replays the run.
With several blocks the sampler splits `steps` evenly over all blocks, finished ones included, so
the resumed run keeps the run's `steps`: finished blocks cost nothing, later blocks run as before,
and the current block spreads its remaining masks over a whole block's steps (the same schedule
when a step commits at most one token; ancestral restarts the block's time grid).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Iterator

import torch

from explorer.data.tokenizer import display_string
from explorer.sampling import build_sampler, build_trace, sampler_for
from explorer.sampling.common import check_range, step_seed
from explorer.sampling.mdlm import guided_logits
from explorer.sampling.trace import Frame, Trace


@torch.no_grad()
def top_candidates(model, trace: Trace, index: int, position: int, k: int = 5) -> list[dict]:
    """The model's k likeliest tokens at generated `position` given frame `index`'s canvas, the position masked
    for the pass (guided as the run was): [{"id", "text", "prob"}], likeliest first."""
    frame = _paused_frame(model, trace, index)
    check_range("position", position, 0, len(frame.tokens) - 1)
    check_range("k", k, 1, model.tokenizer.get_vocab_size() - 1)  # the mask token is never a candidate
    P = len(trace.prompt_ids)
    canvas = torch.tensor(trace.prompt_ids + frame.tokens, dtype=torch.long, device=model.device)  # (P + G,)
    canvas[P + position] = model.mask_id
    logits = guided_logits(model, canvas, P, trace.sampler.get("cfg_scale", 0.0))[0]  # (P + G, V)
    top = logits[P + position].float().softmax(-1).topk(k)  # (k,) each
    return [{"id": int(i), "text": display_string(model.tokenizer, int(i)), "prob": float(p)}
            for p, i in zip(top.values, top.indices)]


def resume(model, trace: Trace, index: int, edits: dict[int, int], seed: int | None = None
           ) -> tuple[dict, list[int], Iterator[Frame]]:
    """Continue the run from frame `index` with its committed tokens kept and `edits` ({position: token id}) forced,
    same sampler and knobs: (description, prompt ids, frames) like `stream`. The first frame is the edited canvas
    (committed = the edited positions); step and nfe go on from frame `index`'s. seed=None continues the run's
    noise stream; the description is `trace.sampler` with this edit logged, as `spliced_trace` records it."""
    paused = _paused_frame(model, trace, index)
    forced = _checked_edits(model, edits, len(paused.tokens))
    name = trace.sampler["name"]
    knobs = sampler_for(model.family, name).knobs  # trace.sampler also holds name, seed, record, edits, fixed fields
    params, frames_fn = build_sampler(model.family, name, **{k: v for k, v in trace.sampler.items() if k in knobs})
    if not hasattr(params, "pinned"):
        raise ValueError(f"resuming needs a sampler that pins tokens; {name!r} does not")
    reopened = _padding(paused, params)
    kept = {p: t for p, t in enumerate(paused.tokens) if t != model.mask_id and p not in forced and p not in reopened}
    # one block: the steps left; several: the run's steps, as they are split over all blocks (see the module doc)
    steps = params.steps if params.blocks > 1 else max(1, params.steps - paused.step)
    params = replace(params, steps=steps, pinned={**kept, **forced})
    record = trace.sampler.get("record", "tokens")
    frames = frames_fn(model, trace.prompt_ids, params, _noise(trace, index, seed), record)
    edited = _edited_frame(paused, forced, model.mask_id, reopened)
    return _logged(trace, index, forced, seed), list(trace.prompt_ids), _continued(frames, edited, paused, kept)


def spliced_trace(model, trace: Trace, index: int, new_frames: list[Frame], wall_s: float,
                  seed: int | None = None) -> Trace:
    """A new Trace: frames[:index + 1] of `trace` then a resumed run's frames (from `resume(..., index, ...)`), its
    sampler logging the edit (the first new frame's committed tokens; `seed` as given to `resume`). `wall_s`, the
    resumed run's time, is added to the run's. The input trace is left as it was."""
    paused = _paused_frame(model, trace, index)
    if not new_frames or new_frames[0].step != paused.step:
        raise ValueError(f"new_frames must be what resume(model, trace, {index}, ...) yielded, the edited canvas "
                         f"first (step {paused.step}), got {len(new_frames)} frames")
    edited = new_frames[0]
    forced = {p: edited.tokens[p] for p in edited.committed}
    frames = copy.deepcopy(trace.frames[: index + 1] + list(new_frames))
    return build_trace(model, trace.prompt_ids, _logged(trace, index, forced, seed), frames,
                       trace.stats.get("wall_s", 0.0) + wall_s)


def _paused_frame(model, trace: Trace, index: int) -> Frame:
    if model.family != "mdlm":
        raise ValueError(f"editing needs a masked-diffusion (mdlm) checkpoint; {model.name} is of family "
                         f"{model.family!r}")
    if trace.model.get("name") != model.name:
        raise ValueError(f"the trace was generated by {trace.model.get('name')!r}, not by {model.name!r}")
    check_range("index", index, 0, len(trace.frames) - 1)
    return trace.frames[index]


def _checked_edits(model, edits: dict[int, int], gen_length: int) -> dict[int, int]:
    forced = {}
    for pos, tok in edits.items():
        check_range("edit position", int(pos), 0, gen_length - 1)
        check_range("edit token id", int(tok), 0, model.tokenizer.get_vocab_size() - 1)
        if int(tok) == model.mask_id:
            raise ValueError(f"edit token id must be a real token, got the mask token ({tok}) at position {pos}")
        forced[int(pos)] = int(tok)
    return forced


def _noise(trace: Trace, index: int, seed: int | None) -> torch.Generator:
    """The generator for the steps after frame `index`: a given seed starts afresh; None continues the stream that
    made frame `index` (the run's seed, or that of the last earlier resume given one), one draw per step past it."""
    if seed is not None:
        return torch.Generator().manual_seed(int(seed))
    base, since = trace.sampler["seed"], 0
    for edit in trace.sampler.get("edits", []):
        if edit["frame"] < index and edit["seed"] is not None:
            base, since = edit["seed"], edit["at_step"]
    generator = torch.Generator().manual_seed(int(base))
    for _ in range(trace.frames[index].step - since):
        step_seed(generator)
    return generator


def _logged(trace: Trace, index: int, forced: dict[int, int], seed: int | None) -> dict:
    """trace.sampler plus this edit in "edits" (earlier edits past frame `index` were rewound, so dropped)."""
    description = copy.deepcopy(trace.sampler)
    earlier = [e for e in description.get("edits", []) if e["frame"] < index]
    tokens = {str(p): t for p, t in sorted(forced.items())}
    edit = {"frame": index, "at_step": trace.frames[index].step, "tokens": tokens, "seed": seed}
    description["edits"] = earlier + [edit]
    return description


def _padding(paused: Frame, params) -> set[int]:
    """The positions a stop at the end of the answer padded (the blocks after the stopping one): they are masked
    again when the run resumes, so an edit that removes the end of the answer lets the model write on."""
    if paused.stop not in ("eos", "eot"):
        return set()
    end = (paused.block + 1) * (params.block_length or params.gen_length)
    return set(range(end, params.gen_length))


def _edited_frame(paused: Frame, forced: dict[int, int], mask_id: int, reopened: set[int]) -> Frame:
    """Frame `paused` with the edits made by hand and the padded positions masked again: same step and nfe, the
    edited positions committed."""
    edited = copy.deepcopy(paused)
    for pos in reopened:
        edited.tokens[pos] = mask_id
        if edited.proposal is not None:
            edited.proposal[pos] = mask_id
        if edited.confidence is not None:
            edited.confidence[pos] = None
    for pos, tok in forced.items():
        edited.tokens[pos] = tok
        if edited.proposal is not None:
            edited.proposal[pos] = tok
        if edited.confidence is not None:
            edited.confidence[pos] = None  # placed by hand, not scored
    edited.committed, edited.remasked, edited.cache, edited.stop = sorted(forced), [], None, None
    edited.t = round(sum(t == mask_id for t in edited.tokens) / len(edited.tokens), 6)
    return edited


@torch.no_grad()
def _continued(frames: Iterator[Frame], edited: Frame, paused: Frame, kept: dict[int, int]) -> Iterator[Frame]:
    """The edited frame, then the resumed run's steps numbered on from `paused`, with the commit-time confidence of
    the kept tokens (the resumed run only sees them pinned)."""
    yield edited
    for frame in frames:
        if frame.step == 0:
            continue  # the resumed run's initial canvas is the edited frame
        frame.step += paused.step
        frame.nfe += paused.nfe
        if frame.confidence is not None and paused.confidence is not None:
            for pos in kept:
                frame.confidence[pos] = paused.confidence[pos]
        yield frame
