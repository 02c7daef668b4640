"""What one run on the page may ask for, and how the page's controls become a sampler's knobs.

The knobs themselves (names, defaults, help, choices, which sampler takes which) are the sampler registry's
(`explorer.sampling.registry`): each registry knob has one control on the Denoise tab, a few shaped for the page
(`CONTROLS`: sliders, the cache radio, word constraints), every other one (`EXTRA_KNOBS`) a box of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from explorer.sampling.common import Sampler
from explorer.sampling.registry import SAMPLERS, every_knob, sampler_for, user_knobs

MAX_WORK = 65_536  # gen_length x steps x N runs (calm: chunks x N head samples) one request may ask for
MAX_RUNS = 8  # N runs drawn at once for the families other than calm
MAX_LENGTH = 256  # ar and bd3lm slide their window past the 128-token context; other families' samplers refuse clearly
SLIDING = ("ar", "bd3lm")  # families that generate past the model's context; the others' whole canvas must fit it
LENGTH_NOTE = ("ar and bd3lm generate past the model's context with a sliding window; mdlm, cdcd and calm cannot "
               "(prompt and generated text must fit it)")

CONTROLS = {  # registry knob -> the Denoise control (elem_id) that sets it; each other knob has a box `knob_<name>`
    "gen_length": "gen_length", "steps": "steps", "block_length": "block_length", "temperature": "temperature",
    "threshold": "threshold", "cfg_scale": "cfg_scale", "cache": "cache", "kv_cache": "cache", "pinned": "constraints",
    "n_candidates": "n_runs",
}
EXTRA_KNOBS = {name: f for name, f in every_knob().items() if name not in CONTROLS}  # empty box = sampler's default
EVERY_SAMPLER = list(dict.fromkeys(n for names in SAMPLERS.values() for n in names))  # the page's API takes each
MODEL_KNOBS = [name for name, f in EXTRA_KNOBS.items() if "SamplerModel" in str(f.type)]  # e.g. draft_refine's drafter


def control_of(knob: str) -> str:
    """The elem_id of the Denoise control that sets a registry knob."""
    return CONTROLS.get(knob, f"knob_{knob}")


def shown_knobs(spec: Sampler) -> list[str]:
    """The knobs of a sampler that the page shows and sends: its user knobs, but a threshold only where the sampler's
    default sets one (the slider always holds a number; LLaDA's rules take one as the "threshold" sampler)."""
    return [name for name in user_knobs(spec) if name != "threshold" or spec.default(name) is not None]


def family_takes(family: str, knob: str) -> bool:
    return any(knob in shown_knobs(sampler_for(family, name)) for name in SAMPLERS[family])


def _caches(family: str) -> list[str]:
    """The cache radio's choices for a family, its default first: mdlm's `cache` (Fast-dLLM's approximate caches),
    bd3lm's `kv_cache` as "kv" / "none"; none where no sampler of the family has a cache knob."""
    for spec in (sampler_for(family, name) for name in SAMPLERS[family]):
        if "cache" in spec.knobs:
            default = spec.default("cache")
            return [default] + [c for c in spec.knobs["cache"].metadata["choices"] if c != default]
        if "kv_cache" in spec.knobs:
            return ["kv", "none"] if spec.default("kv_cache") else ["none", "kv"]
    return []


CACHES = {family: _caches(family) for family in SAMPLERS if _caches(family)}


# --- the sliders' ranges follow the checkpoint --------------------------------------------------------------------

CONTEXT_FIELDS = ("max_sequence_length", "model_length", "max_position_embeddings")  # LLaDA, the DiTs, Dream


def _positive_int(config: dict, *keys: str) -> int | None:
    """config[keys[0]][keys[1]]...: a positive int, else None (a field missing or not a number)."""
    for key in keys:
        config = config.get(key) if isinstance(config, dict) else None
    return config if type(config) is int and config > 0 else None


def checkpoint_shape(config: dict) -> tuple[int | None, int, int | None]:
    """(context in tokens, tokens per step K, trained block size) read from a checkpoint folder's config.json
    without loading it: ours nest the backbone under "model" (calm: chunk positions x K tokens); a released layout
    names its context in one of CONTEXT_FIELDS (the loader may cap it; the page caps gen length lower anyway). None:
    not given."""
    model = config.get("model", config)
    chunk = _positive_int(model, "autoencoder", "chunk") or 1
    positions = _positive_int(model, "backbone", "max_seq_len")
    context = positions * chunk if positions else next(
        filter(None, (_positive_int(config, name) for name in CONTEXT_FIELDS)), None)
    return context, chunk, _positive_int(model, "block_size")


# What the page starts our own checkpoints of each family with, where it is not the API's (published) default: the
# best-reading settings on the shipped checkpoints, the lowest generative perplexity at a unigram entropy within 25%
# of the corpus's (`python -m explorer bench defaults`, bench_results/defaults.md). Knobs not named keep the
# registry's defaults.
SHOWCASE = {"mdlm": ("low_confidence", {"block_length": 16, "temperature": 0.7}),
            "ar": ("ar", {"temperature": 0.7}),
            "bd3lm": ("low_confidence", {"temperature": 0.7})}


def page_sampler(family: str, released: str | None = None, own: bool = True) -> tuple[Sampler, dict]:
    """The sampler the page starts a checkpoint of `family` with and its SHOWCASE knobs. Released checkpoints
    (`own` False) keep the papers' defaults, and `released` names the sampler their folder asks for (Dream's)."""
    if released or not own:
        return sampler_for(family, released), {}
    name, knobs = SHOWCASE.get(family, (None, {}))
    return sampler_for(family, name), knobs


def slider_settings(family: str, spec: Sampler, config: dict, preset: dict | None = None) -> dict[str, dict]:
    """The Denoise sliders for a checkpoint of `family` run by `spec`, as gr.update keywords. Ranges follow the
    checkpoint: gen length up to its context (ar and bd3lm slide their window past it: MAX_LENGTH; calm in whole
    chunks of K), LLaDA's steps up to the gen length (more would be skipped), steps per block and block size of
    bd3lm up to the context, cdcd's Euler steps up to 2 x MAX_LENGTH, temperature to 2 (calm: to 1, its registry
    help says what 0 means). Values are the `preset` knobs (SHOWCASE), else the registry defaults of `spec` (bd3lm:
    the block size it was trained with), so nothing carries over from another checkpoint's family; a family without
    a steps knob (ar, calm) takes one per token."""
    preset = preset or {}
    context, chunk, block_size = checkpoint_shape(config)
    longest = MAX_LENGTH if family in SLIDING or context is None else min(context, MAX_LENGTH)
    longest -= longest % chunk
    length = min(spec.default("gen_length"), longest)
    length -= length % chunk
    steps = spec.default("steps") if "steps" in spec.knobs else None
    block = preset.get("block_length", spec.default("block_length")) if "block_length" in spec.knobs else None
    if family == "bd3lm":  # the registry's None: the checkpoint's own block size (ours nest it; releases do not)
        block = steps = block_size or block or longest
    most_steps = {"cdcd": 2 * MAX_LENGTH, "bd3lm": context or MAX_LENGTH}.get(family, longest)
    return {
        "gen_length": {"minimum": chunk, "maximum": longest, "step": chunk, "value": length},
        "steps": {"minimum": 1, "maximum": most_steps, "value": min(steps or length, most_steps)},
        "block_length": {"minimum": 1, "maximum": (context or MAX_LENGTH) if family == "bd3lm" else longest,
                         "value": block or length},
        "temperature": {"minimum": 0, "maximum": 1 if family == "calm" else 2,
                        "value": preset.get("temperature", spec.default("temperature"))},
    }


@dataclass
class Request:
    """The Denoise controls of one run."""

    sampler: str | None
    gen_length: int
    steps: int
    block_length: int  # K for masked (semi-autoregressive blocks) and block diffusion
    temperature: float
    threshold: float = 0.9
    cache: str | None = None
    n: int = 1  # N: runs drawn at once (calm: head samples per chunk of the batch algorithm)
    cfg_scale: float = 0.0  # classifier-free guidance (mdlm, cdcd)
    constraints: str = ""  # word constraints "POS:TEXT, POS:TEXT" (mdlm, cdcd)
    pinned: dict = field(default_factory=dict)
    knobs: dict = field(default_factory=dict)  # EXTRA_KNOBS as `read_knobs` gives them (None: the sampler's default)


def parse_constraints(text: str) -> dict[int, str]:
    """LLaDA's word constraints: "0:Once, 5:upon" -> {0: "Once", 5: " upon"} (positions in the generated region)."""
    pins = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        pos, sep, word = item.partition(":")
        if not sep or not pos.strip().isdigit() or not word.strip():
            raise ValueError(f"word constraints must look like 0:Once, 5:upon (position:text), got {item!r}")
        pins[int(pos)] = word.strip() if int(pos) == 0 else " " + word.strip()
    return pins


def parse_positions(text: str) -> list[int] | None:
    """The Latent tab's "follow positions" box: "2, 5-7" -> [2, 5, 6, 7]; empty -> None (every path alike). Each
    position is checked against the run when drawn."""
    positions: list[int] = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        low, dash, high = item.partition("-")
        if not low.strip().isdigit() or (dash and not high.strip().isdigit()):
            raise ValueError(f"follow positions must look like 2, 5-7 (generated positions from 0), got {item[:40]!r}")
        first, last = int(low), int(high) if dash else int(low)
        if last < first or last - first >= MAX_LENGTH:
            raise ValueError(f"follow positions: the range {item[:40]!r} must run upwards, at most {MAX_LENGTH} long")
        positions += range(first, last + 1)
    return sorted(set(positions)) or None


def read_knobs(values: dict) -> dict:
    """The EXTRA_KNOBS boxes as knob values: text as its knob's type (empty: None, the sampler's default; a model
    knob stays a checkpoint name for the page to load), a checkbox or a choice as given."""
    knobs = {}
    for name, value in values.items():
        kind = str(EXTRA_KNOBS[name].type)
        if isinstance(value, str):
            value = value.strip() or None
        if isinstance(value, str) and not EXTRA_KNOBS[name].metadata["choices"] and name not in MODEL_KNOBS:
            number = int if "int" in kind.split("|")[0] else float
            try:
                value = number(value)
            except ValueError:
                raise ValueError(f"{name} must be {'an integer' if number is int else 'a number'} (empty: the "
                                 f"sampler's default), got {value!r}") from None
        knobs[name] = value
    return knobs



def request_work(family: str, request: Request, chunk: int = 1) -> int:
    """What a request costs in token-steps: gen_length x steps x N (ar: one step per token; calm: one step per
    chunk of K tokens, N head samples each; draft_refine: its steps again in each refinement round)."""
    if family == "calm":
        return -(-request.gen_length // max(chunk, 1)) * request.n
    steps = request.gen_length if family == "ar" else request.steps
    spec = sampler_for(family, request.sampler)
    if "rounds" in spec.knobs:
        steps *= max(request.knobs.get("rounds") or spec.default("rounds"), 1)
    return request.gen_length * steps * request.n


def check_request(family: str, request: Request, chunk: int = 1) -> None:
    if family != "calm" and not 1 <= request.n <= MAX_RUNS:
        raise ValueError(f"N (runs) must be in [1, {MAX_RUNS}], got {request.n}")
    work = request_work(family, request, chunk)
    if work > MAX_WORK:
        chunks = -(-request.gen_length // max(chunk, 1))
        what = (f"{chunks} chunks x N {request.n} head samples" if family == "calm" else
                f"gen_length {request.gen_length} x steps {request.gen_length if family == 'ar' else request.steps}"
                f" x N {request.n} runs")
        raise ValueError(f"request too large: {what} = {work:,}; this server allows at most {MAX_WORK:,} "
                         "(lower gen length, steps or N)")


def sampler_knobs(family: str, request: Request) -> dict:
    """The page's controls as the knobs of the chosen sampler (None: the family's default), each sent only to a
    sampler that takes it (`shown_knobs`: the page hides the others' controls). `cache` is Fast-dLLM's cache for
    mdlm, the exact KV cache for bd3lm; N is calm's head samples. Word constraints and guidance on a family that has
    none are refused."""
    spec = sampler_for(family, request.sampler)
    pins = parse_constraints(request.constraints) | request.pinned
    if pins and not family_takes(family, "pinned"):
        raise ValueError(f"word constraints need a masked-diffusion (mdlm) or continuous-diffusion (cdcd) "
                         f"checkpoint; the {family} family generates in order")
    if request.cfg_scale and not family_takes(family, "cfg_scale"):
        guided = " and ".join(f for f in SAMPLERS if family_takes(f, "cfg_scale"))
        raise ValueError(f"guidance (cfg_scale) applies to the {guided} families, not {family}")
    values = {"gen_length": int(request.gen_length), "steps": int(request.steps),
              "block_length": int(request.block_length), "temperature": float(request.temperature),
              "threshold": float(request.threshold), "cfg_scale": float(request.cfg_scale), "pinned": pins,
              "n_candidates": int(request.n)}
    if family in CACHES:
        cache = request.cache or CACHES[family][0]
        if cache not in CACHES[family]:
            raise ValueError(f"cache must be one of {CACHES[family]} for the {family} family, got {cache!r}")
        values |= {"cache": cache, "kv_cache": cache == "kv"}
    values |= {name: value for name, value in request.knobs.items() if value is not None}
    return {name: values[name] for name in shown_knobs(spec) if name in values}


def model_prompt(model, prompt: str, chat: bool) -> str:
    """The prompt the model is given: one user turn in the checkpoint's chat template when `chat` is ticked and the
    checkpoint has a template (what an Instruct model was tuned on), else the prompt as typed."""
    if not chat or not model.chat_template:
        return prompt
    from jinja2 import TemplateError

    from explorer.released import chat_prompt

    try:
        return chat_prompt(model, prompt)
    except TemplateError as err:  # the page shows ValueErrors; the folder's template is not ours to fix
        raise ValueError(f"the chat template of {model.name} could not be rendered ({err}); untick "
                         "'chat template' to send the prompt as typed") from None
