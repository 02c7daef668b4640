"""Samplers are generators yielding one Frame per step; `generate` collects them into a Trace.

`stream` and `generate` take the sampler's name and its knobs as keywords; `explorer.sampling.registry` lists every
sampler with its family, its knobs (default, help) and the generator that runs it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Iterator

import torch

from explorer.data.tokenizer import display_string
from explorer.sampling.common import MAX_SEED, check_int
from explorer.sampling.mdlm import find_stop
from explorer.sampling.registry import SAMPLERS, build_sampler, sampler_for, user_knobs
from explorer.sampling.trace import RECORD_LEVELS, SCHEMA, Frame, Trace


def encode_text(model, knob: str, text: str) -> list[int]:
    """Token ids of text. Text that is not valid Unicode (lone surrogates: what undecodable command-line bytes
    become) is refused rather than passed to the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{knob} is not valid UTF-8 text: {text[err.start:err.end]!r} at character {err.start} "
                         f"({err.reason}; bytes that are not UTF-8?)") from None
    return model.tokenizer.encode(text).ids if text else []


def encode_prompt(model, prompt: str | list[int]) -> list[int]:
    """Token ids of a prompt given as text or as token ids (a list, tensor or array), each in [0, vocab size)."""
    if isinstance(prompt, str):
        return encode_text(model, "prompt", prompt)
    if isinstance(prompt, (bytes, bytearray)):
        raise ValueError("prompt must be text (str) or a list of token ids, got bytes; decode them first, e.g. "
                         "prompt.decode('utf-8')")
    if not isinstance(prompt, Iterable):
        raise ValueError(f"prompt must be text (str) or a list of token ids, got {type(prompt).__name__}")
    ids = prompt.tolist() if hasattr(prompt, "tolist") else list(prompt)  # (P,) tensor / array -> list
    vocab = model.tokenizer.get_vocab_size()
    for i, token in enumerate(ids):
        check_int(f"prompt token id (position {i})", token, 0, vocab - 1)
    return [int(t) for t in ids]


def split_at_mask(model, prompt_ids: list[int]) -> tuple[list[int], list[int]]:
    """(the prompt up to its first [MASK], the rest of it). LLaDA's loop fills every mask of the canvas, those the
    user put in the prompt too (the usual way to ask a masked model to infill); so do we: the rest of the prompt
    becomes the start of the region the sampler fills and the frames show, its tokens pinned, its masks filled
    with the first block and counted in its schedule. Pinned positions then count from that first mask."""
    first = prompt_ids.index(model.mask_id)
    return prompt_ids[:first], prompt_ids[first:]


def encode_pinned(model, pinned: dict[int, int | str] | None) -> dict[int, int]:
    """{position: token id or text}; text fills consecutive positions with its tokens (the sampler checks the ids
    and that the positions lie inside the canvas)."""
    ids: dict[int, int] = {}
    for pos, value in (pinned or {}).items():
        pos = int(pos) if isinstance(pos, str) and pos.isdigit() else pos  # JSON keys (a saved trace) are strings
        check_int("pinned position", pos, 0)
        toks = encode_text(model, f"pinned text at {pos}", value) if isinstance(value, str) else [value]
        for k, tok in enumerate(toks):
            ids[pos + k] = tok
    return ids


@torch.no_grad()  # on a generator function torch turns autograd off for each step, never across a yield
def _without_grad(frames: Iterator[Frame]) -> Iterator[Frame]:
    """A sampler's frames, each computed with autograd off; between frames the caller's grad mode holds."""
    yield from frames


def _warn_notes(frames: Iterator[Frame]) -> Iterator[Frame]:
    """A sampler's frames; the notes each carries (e.g. steps reduced to fit) are also raised as UserWarnings, the
    way Python code hears of them. The page reads `Frame.notes` instead: it never catches the process's warnings,
    which hold other users' too."""
    for frame in frames:
        for note in frame.notes or []:
            warnings.warn(note, stacklevel=2)
        yield frame


def stream(model, prompt: str | list[int] = "", sampler: str | None = None, seed: int = 0, record: str = "tokens",
           **knobs) -> tuple[dict, list[int], Iterator[Frame]]:
    """(sampler description, prompt ids, frame generator): the building block of live viewers. The frames run
    without autograd whatever the caller's grad mode and carry the sampler's notes (`Frame.notes`, also raised as
    warnings); bad knobs raise ValueError (the sampler's own at the first frame)."""
    if record not in RECORD_LEVELS:
        raise ValueError(f"record must be one of {RECORD_LEVELS}, got {record!r}")
    check_int("seed", seed, 0, MAX_SEED)
    prompt_ids = encode_prompt(model, prompt)
    pinned = encode_pinned(model, knobs.get("pinned"))
    if model.mask_id in prompt_ids:  # masks in the prompt are positions to fill (see split_at_mask)
        prompt_ids, infill = split_at_mask(model, prompt_ids)
        knobs["infill"] = len(infill)
        pinned = {p: t for p, t in enumerate(infill) if t != model.mask_id} | {
            len(infill) + p: t for p, t in pinned.items()}
    knobs["pinned"] = pinned or None  # None: not given (samplers without pinned tokens take an empty one)
    spec = sampler_for(model.family, sampler or model.default_sampler)  # Dream models: Dream's
    if "infill" in knobs and "infill" not in spec.knobs:
        raise ValueError(f"the prompt holds [MASK] tokens: filling them needs a masked-diffusion sampler (the mdlm "
                         f"family's remasking rules, threshold, factor, ancestral or dream), not {model.family} / "
                         f"{spec.name}")
    params, frames_fn = build_sampler(model.family, spec.name, **knobs)
    generator = torch.Generator().manual_seed(int(seed))
    description = {"name": spec.name, "seed": int(seed), "record": record,
                   # a model knob (the drafter) is recorded by its name
                   **{k: v.name if isinstance(v, torch.nn.Module) else v for k, v in vars(params).items()}}
    description["pinned"] = {str(k): v for k, v in params.pinned.items()} if hasattr(params, "pinned") else {}
    return description, prompt_ids, _warn_notes(_without_grad(frames_fn(model, prompt_ids, params, generator, record)))


def generate(model, prompt: str | list[int] = "", sampler: str | None = None, seed: int = 0, record: str = "tokens",
             **knobs) -> Trace:
    """Run a sampler to the end and return its Trace. Knobs: gen_length, steps, block_length, temperature,
    top_k, top_p, cfg_scale, threshold, factor, pinned ({position: token id or text}); mdlm: cache
    ("none" | "prefix" | "dual"), stop_at_eos (True: a released model with `stop_ids` skips the blocks after
    the one that ends its answer at eos / end of turn; False runs every block); bd3lm: kv_cache, stop_at_eos,
    entropy_window, min_entropy."""
    description, prompt_ids, frames_iter = stream(model, prompt, sampler, seed, record, **knobs)
    started = time.perf_counter()
    frames = list(frames_iter)
    wall = time.perf_counter() - started
    return build_trace(model, prompt_ids, description, frames, wall)


def build_trace(model, prompt_ids: list[int], description: dict, frames: list[Frame], wall_s: float) -> Trace:
    final = frames[-1].tokens
    stop = find_stop(model, final)  # a released model's answer ends at its first eos / end of turn
    answer = [t for t in (final[: stop[0]] if stop else final) if t != model.mask_id]
    return Trace.of_run(
        frames, prompt_ids, sampler=description, wall_s=wall_s, mask_id=model.mask_id, answer=answer,
        model={"name": model.name, "family": model.family, "params": model.num_parameters(),
               "checkpoint": model.checkpoint_path},
        decode=model.tokenizer.decode, token_string=lambda i: display_string(model.tokenizer, i),
        stop=frames[-1].stop or (stop[1] if stop else None),
        source=getattr(model, "source", None))  # another library's loop made it (e.g. transformers' DiffusionGemma)


__all__ = ["RECORD_LEVELS", "SAMPLERS", "SCHEMA", "Frame", "Trace", "build_sampler", "build_trace", "generate",
           "sampler_for", "stream", "user_knobs"]
