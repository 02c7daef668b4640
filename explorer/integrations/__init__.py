"""Other libraries' diffusion-LM runs as our Trace, so the page, the notebooks and the plots show them.

    explorer.integrations.transformers   DiffusionGemma's `generate` recorded through its streamer hook
    explorer.integrations.diffusers      a `callback_on_step_end` recorder for LLaDA2Pipeline and
                                         DiffusionGemmaPipeline; diffusers' animate_sampling JSON in and out

The submodules import their library when imported; `import explorer` imports neither.
"""

from __future__ import annotations

from explorer.data.tokenizer import display_string
from explorer.sampling.trace import Frame, Trace


def token_string(tokenizer, token_id: int) -> str:
    """How one token reads: our `tokenizers` tokenizer's display string, a transformers tokenizer's token, or the
    id itself when there is no tokenizer."""
    if hasattr(tokenizer, "id_to_token"):
        return display_string(tokenizer, token_id)
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return str(tokenizer.convert_ids_to_tokens(int(token_id)))
    return f"<{token_id}>"


def recorded_trace(frames: list[Frame], prompt_ids: list[int], tokenizer, *, model: dict, sampler: dict, source: dict,
                   wall_s: float, mask_id: int | None, answer: list[int] | None = None) -> Trace:
    """A Trace of frames recorded from another library's loop. `answer`: the tokens that are the text (default:
    the final canvas without mask ids); `source`: {library, version, model_class, settings}."""
    answer = [t for t in frames[-1].tokens if t != mask_id] if answer is None else answer
    decode = tokenizer.decode if tokenizer is not None else (lambda toks, **_: " ".join(map(str, toks)))
    return Trace.of_run(frames, prompt_ids, model=model, sampler=sampler, wall_s=wall_s, mask_id=mask_id,
                        answer=answer, decode=decode, token_string=lambda i: token_string(tokenizer, i), source=source)


def plain_settings(settings: dict) -> dict:
    """A library's call settings as the trace's source block holds them: strings, numbers, bools and nulls (anything
    else, e.g. a config object, by its text)."""
    out = {}
    for key, value in settings.items():
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        if isinstance(value, dict):  # private entries ("_cls_name", "_use_default_values") left out
            out[key] = {str(k): v if isinstance(v, (str, int, float, bool, type(None))) else str(v)[:1000]
                        for k, v in value.items() if not str(k).startswith("_")}
        else:
            out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)[:1000]
    return out
