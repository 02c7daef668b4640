"""Samplers are generators yielding one Frame per step; `run` collects them into a Trace."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import torch

from explorer.data.tokenizer import display_string
from explorer.sampling.autoregressive import ARParams, autoregressive
from explorer.sampling.block import BlockParams, block_diffusion
from explorer.sampling.chunks import ALGORITHMS, CALMParams, calm_sampler
from explorer.sampling.common import MAX_SEED, check_int
from explorer.sampling.continuous import ContinuousParams, continuous_diffusion
from explorer.sampling.dream import DreamParams, dream_sampler
from explorer.sampling.masked import (
    REMASKING_RULES,
    AncestralParams,
    MaskedParams,
    ancestral,
    find_stop,
    masked_diffusion,
)
from explorer.sampling.refine import RefineParams, draft_and_refine
from explorer.sampling.trace import RECORD_LEVELS, SCHEMA, Frame, Trace

# sampler name -> (family, builder of (params, frames function)); the defaults each name implies.
# "dream": Dream 7B's own loop (no blocks; alg = origin | maskgit_plus | topk_margin | entropy), the default for
# released Dream models (their `default_sampler`).
MASKED_SAMPLERS = REMASKING_RULES + ("threshold", "factor", "ancestral", "draft_refine", "dream")
AR_SAMPLERS = ("ar",)
# bd3lm: "first_hitting" is BD3-LM's sampler (one random masked token per step, nucleus 0.9).
BLOCK_SAMPLERS = ("first_hitting",) + tuple(r for r in REMASKING_RULES if r != "random") + ("threshold",)
CONTINUOUS_SAMPLERS = ("euler",)  # cdcd: Euler steps of the ODE with score interpolation
CALM_SAMPLERS = ALGORITHMS  # calm: the temperature algorithm ("exact" = CALM's Alg. 1, "batch" = N candidates)
SAMPLERS = {"mdlm": MASKED_SAMPLERS, "ar": AR_SAMPLERS, "bd3lm": BLOCK_SAMPLERS, "cdcd": CONTINUOUS_SAMPLERS,
            "calm": CALM_SAMPLERS}


def build_sampler(family: str, sampler: str | None, *, gen_length: int | None = None, steps: int | None = None,
                  block_length: int | None = None, temperature: float | None = None, top_k=None, top_p=None,
                  cfg_scale: float = 0.0, threshold: float | None = None, factor: float | None = None,
                  pinned: dict[int, int] | None = None, cache: str = "none", kv_cache: bool | None = None,
                  stop_at_eos: bool = True, entropy_window: int = 256, min_entropy: float = 4.0,
                  drafter: str = "ar-tiny", rounds: int = 2, fraction: float = 0.25, schedule: str = "auto",
                  churn: float = 0.0, clamp: float | bool = 0.0, n_candidates: int = 200, max_draws: int = 2000,
                  alg: str | None = None, alg_temp: float | None = None, infill: int = 0):
    """Return (params, frames_fn) for a family and sampler name; raises ValueError naming bad knobs. `infill`: the
    prompt positions from its first [MASK] on, which `stream` moved into the region to fill (mdlm samplers)."""
    names = SAMPLERS.get(family)
    if names is None:
        raise ValueError(f"no samplers for family {family!r}; known families: {sorted(SAMPLERS)}")
    sampler = sampler or names[0]
    if sampler not in names:
        raise ValueError(f"sampler must be one of {names} for family {family!r}, got {sampler!r}")
    pinned = dict(pinned or {})
    if infill and (family != "mdlm" or sampler == "draft_refine"):
        raise ValueError(f"the prompt holds [MASK] tokens: filling them needs a masked-diffusion sampler (the mdlm "
                         f"family's remasking rules, threshold, factor, ancestral or dream), not {family} / {sampler}")
    if sampler != "dream" and (alg is not None or alg_temp is not None):
        raise ValueError("alg and alg_temp are knobs of Dream's sampler (sampler='dream')")
    if kv_cache is not None and family != "bd3lm":
        raise ValueError(f"kv_cache applies to the bd3lm family only (exact cache of finished blocks); the {family} "
                         "family " + ("always caches" if family == "ar" else "has Fast-dLLM's cache='prefix'|'dual'"))
    if cache != "none" and family != "mdlm":
        raise ValueError(f"cache={cache!r} (Fast-dLLM's approximate cache) applies to the mdlm family only"
                         + ("; use kv_cache=True|False" if family == "bd3lm" else ""))
    if family != "cdcd" and (schedule != "auto" or churn or clamp):
        raise ValueError("schedule, churn and clamp are knobs of continuous diffusion (the cdcd family)")
    if family == "calm":
        unsupported = {"steps": steps, "block_length": block_length, "top_k": top_k, "top_p": top_p,
                       "threshold": threshold, "factor": factor}
        given = [k for k, v in unsupported.items() if v is not None] + (["cfg_scale"] if cfg_scale else []) + (
            ["pinned"] if pinned else [])
        if given:
            raise ValueError(f"{', '.join(given)} do not apply to CALM; its knobs are gen_length, temperature, "
                             "n_candidates (N) and max_draws")
        params = CALMParams(64 if gen_length is None else gen_length, 1.0 if temperature is None else temperature,
                            sampler, n_candidates, max_draws)
        return params, calm_sampler
    if family == "cdcd":
        unsupported = {"block_length": block_length, "top_k": top_k, "top_p": top_p, "threshold": threshold,
                       "factor": factor}
        given = [k for k, v in unsupported.items() if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} do not apply to continuous diffusion (cdcd); its knobs are steps, "
                             "schedule, temperature, churn, cfg_scale, clamp and pinned")
        params = ContinuousParams(64 if gen_length is None else gen_length, 200 if steps is None else steps, schedule,
                                  1.0 if temperature is None else temperature, churn, cfg_scale,
                                  float(clamp) if isinstance(clamp, bool) else clamp, pinned)  # True: every step
        return params, continuous_diffusion
    if family == "bd3lm":
        if pinned:
            raise ValueError("pinned tokens are not supported by block diffusion sampling; use an mdlm checkpoint")
        if factor is not None or cfg_scale:
            raise ValueError("factor and cfg_scale are mdlm knobs; bd3lm supports threshold")
        if sampler == "threshold" and threshold is None:
            threshold = 0.9
        rule = "random" if sampler == "first_hitting" else ("low_confidence" if sampler == "threshold" else sampler)
        temp = 1.0 if temperature is None else temperature
        nucleus = 0.9 if top_p is None and top_k is None else top_p
        params = BlockParams(256 if gen_length is None else gen_length, block_length, steps, rule, temp, top_k,
                             nucleus, threshold, True if kv_cache is None else kv_cache, stop_at_eos,
                             entropy_window, min_entropy)
        return params, block_diffusion
    gen_length = 64 if gen_length is None else gen_length
    if family == "ar":
        if pinned:
            raise ValueError("pinned tokens need a masked-diffusion model; the ar family generates left to right")
        temp = 1.0 if temperature is None else temperature
        return ARParams(gen_length, temp, top_k, top_p), autoregressive
    if sampler == "dream":
        unsupported = {"block_length": block_length, "threshold": threshold, "factor": factor}
        given = [k for k, v in unsupported.items() if v is not None] + (["cfg_scale"] if cfg_scale else []) + (
            ["cache"] if cache != "none" else [])
        if given:
            raise ValueError(f"{', '.join(given)} do not apply to Dream's sampler; its knobs are gen_length, steps, "
                             "alg, alg_temp, temperature, top_p, top_k and pinned")
        defaults = DreamParams()
        return DreamParams(gen_length, gen_length if steps is None else steps, alg or defaults.alg,
                           defaults.temperature if temperature is None else temperature,
                           defaults.top_p if top_p is None else top_p, top_k,
                           defaults.alg_temp if alg_temp is None else alg_temp, pinned=pinned,
                           infill=infill), dream_sampler
    if sampler == "draft_refine":
        temp = 1.0 if temperature is None else temperature
        return RefineParams(gen_length, drafter, rounds, fraction, steps, temp, top_k, top_p), draft_and_refine
    steps = gen_length if steps is None else steps
    if sampler == "ancestral":
        temp = 1.0 if temperature is None else temperature
        return AncestralParams(gen_length, steps, block_length, temp, top_k, top_p, pinned, stop_at_eos,
                               infill), ancestral
    rule = sampler if sampler in REMASKING_RULES else "low_confidence"
    if sampler == "threshold" and threshold is None:
        threshold = 0.9
    if sampler == "factor" and factor is None:
        factor = 1.0
    temp = 0.0 if temperature is None else temperature
    params = MaskedParams(gen_length, steps, block_length, rule, temp, top_k, top_p, cfg_scale, threshold, factor,
                          pinned, cache, stop_at_eos, infill)
    return params, masked_diffusion


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


def stream(model, prompt: str | list[int] = "", sampler: str | None = None, seed: int = 0, record: str = "tokens",
           **knobs) -> tuple[dict, list[int], Iterator[Frame]]:
    """(sampler description, prompt ids, frame generator): the building block of live viewers. The frames run
    without autograd whatever the caller's grad mode; bad knobs raise ValueError (the sampler's own at the first
    frame)."""
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
    knobs["pinned"] = pinned
    sampler = sampler or getattr(model, "default_sampler", None)  # e.g. Dream models run Dream's sampler
    params, frames_fn = build_sampler(model.family, sampler, **knobs)
    generator = torch.Generator().manual_seed(int(seed))
    description = {"name": sampler or SAMPLERS[model.family][0], "seed": int(seed), "record": record,
                   **{k: v for k, v in vars(params).items()}}
    description["pinned"] = {str(k): v for k, v in params.pinned.items()} if hasattr(params, "pinned") else {}
    return description, prompt_ids, _without_grad(frames_fn(model, prompt_ids, params, generator, record))


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
    ids = set(prompt_ids) | set(final)
    for frame in frames:
        ids.update(frame.tokens or [])
        ids.update(frame.proposal or [])
    tok = model.tokenizer
    stop = find_stop(model, final)  # a released model's answer ends at its first eos / end of turn
    answer = final[: stop[0]] if stop else final
    text = tok.decode([t for t in answer if t != model.mask_id], skip_special_tokens=True)
    reason = frames[-1].stop or (stop[1] if stop else None)
    gen = len(final)
    return Trace(
        model={"name": model.name, "family": model.family, "params": model.num_parameters(),
               "checkpoint": getattr(model, "checkpoint_path", None)},
        sampler=description,
        prompt_ids=list(prompt_ids),
        frames=frames,
        text=text,
        token_strings={i: display_string(tok, i) for i in sorted(ids)},
        stats={"nfe": frames[-1].nfe, "wall_s": round(wall_s, 4), "tokens_per_s": round(gen / max(wall_s, 1e-9), 2),
               "steps": frames[-1].step, "gen_length": gen, **({"stop": reason} if reason else {})},
        prompt_text=tok.decode(list(prompt_ids), skip_special_tokens=False) if prompt_ids else "",
        mask_id=model.mask_id,
    )


__all__ = ["AR_SAMPLERS", "BLOCK_SAMPLERS", "MASKED_SAMPLERS", "RECORD_LEVELS", "SAMPLERS", "SCHEMA", "Frame", "Trace",
           "build_sampler", "generate", "stream", "build_trace"]
