"""DiffusionGemma runs of transformers (`transformers.models.diffusion_gemma`) recorded as our Trace.

    from explorer.integrations.transformers import record_generate
    output, trace = record_generate(network, input_ids, tokenizer, max_new_tokens=64, max_denoising_steps=16)

`record_generate` calls the network's own `generate` with a `DraftRecorder` as its streamer (the hook DiffusionGemma
offers: `put` for the prompt and each finished canvas, `put_draft` after each decoder pass) and returns the library's
output with the trace: one frame per decoder pass, committed positions at the end of each canvas, confidence and
entropy from the step's logits with record="full". `explorer.load(FOLDER)` loads a DiffusionGemma folder through
transformers' own classes; `explorer.generate(model, ...)` then runs this same recorder (see
explorer.sampling.diffusion_gemma).
"""

from __future__ import annotations

import time

import torch
import transformers

from explorer.integrations import plain_settings, recorded_trace
from explorer.sampling.diffusion_gemma import DraftRecorder, run_recorded
from explorer.sampling.trace import Trace

__all__ = ["DraftRecorder", "record_generate"]


def _setting(network, kwargs: dict, name: str):
    """A generate setting as the call resolves it: the keyword, else the model's generation config, else the
    library's default."""
    from transformers.models.diffusion_gemma import DiffusionGemmaGenerationConfig

    for value in (kwargs.get(name), getattr(network.generation_config, name, None)):
        if value is not None:
            return value
    return DiffusionGemmaGenerationConfig._get_default_generation_params()[name]


def record_generate(network, input_ids: torch.Tensor, tokenizer=None, record: str = "tokens", seed: int | None = None,
                    **generate_kwargs) -> tuple[object, Trace]:
    """(generate's output, its Trace) of one DiffusionGemma `generate` call on `input_ids` (1, P). `tokenizer` (ours or
    a transformers one) names the tokens; `seed` seeds generate's draws and keeps the caller's random state;
    `generate_kwargs` are generate's own (max_new_tokens, max_denoising_steps, sampler_config, t_min, ...)."""
    if "streamer" in generate_kwargs or "max_length" in generate_kwargs:
        raise ValueError("record_generate sets generate's streamer and sizes the canvas from max_new_tokens; pass "
                         "max_new_tokens instead of max_length, and no streamer")
    settings = {name: _setting(network, generate_kwargs, name) for name in
                ("max_new_tokens", "max_denoising_steps", "sampler_config", "t_min", "t_max", "stability_threshold",
                 "confidence_threshold")}
    pad = network.config.get_text_config().pad_token_id
    recorder = DraftRecorder(network.config.canvas_length, settings["max_new_tokens"],
                             settings["max_denoising_steps"], 0 if pad is None else pad, record)
    started = time.perf_counter()
    output = run_recorded(network, input_ids, recorder, generate_kwargs | settings, seed)
    wall = time.perf_counter() - started
    if record == "none":
        recorder.frames = recorder.frames[-1:]
    shown = {k: v for k, v in settings.items() if k != "sampler_config"}
    shown["entropy_bound"] = settings["sampler_config"].entropy_bound  # the sampler's one setting, not its object
    source = {"library": "transformers", "version": transformers.__version__,
              "model_class": type(network).__name__, "settings": plain_settings(shown)}
    trace = recorded_trace(
        recorder.frames, recorder.prompt_ids, tokenizer,
        model={"name": getattr(network.config, "_name_or_path", "") or type(network).__name__,
               "family": "diffusion_gemma", "params": sum(p.numel() for p in network.parameters()),
               "checkpoint": getattr(network.config, "_name_or_path", None) or None},
        sampler={"name": "entropy_bound", "seed": seed, "record": record, "gen_length": settings["max_new_tokens"],
                 "steps": settings["max_denoising_steps"]},
        source=source, wall_s=wall, mask_id=recorder.placeholder)
    return output, trace
