"""Masked-diffusion samplers (LLaDA / MDLM / Fast-dLLM) as generators that yield one Frame per step.

`MaskedDiffusion` is LLaDA's semi-autoregressive loop: a canvas of `gen_length` masks after the
prompt, split into blocks; each step runs the model once, proposes x0 by Gumbel-max at
`temperature`, scores every masked position by the remasking rule and commits the best ones of the
current block (a fixed count per step, or Fast-dLLM's `threshold` / `factor` rules).
Fast-dLLM's approximate caches (`cache="prefix"` or `"dual"`) run one full pass at each block start
and keep its keys/values; the other steps of the block recompute only the block (dual) or the block
and everything after it (prefix).
`Ancestral` is MDLM's sampler: each masked token unmasks with probability (t - s) / t, and a step
whose canvas did not change reuses the previous logits (no network call).
With `stop_at_eos`, a model that names `stop_ids` (released LLaDA / Dream: end of text, end of turn) stops
once a finished block holds one: the later blocks, which an Instruct model only fills with padding, are
not computed; they are filled with the model's pad id and the last frame says why it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from explorer import kernels
from explorer.sampling.common import (
    MAX_GEN_LENGTH,
    MAX_STEPS,
    Sampler,
    SamplerParams,
    TokenPerStepParams,
    check_flag,
    check_int,
    check_range,
    check_sampling_knobs,
    keep_states,
    knob,
    make_frame,
    record_hidden,
    step_seed,
    wants_frame,
)
from explorer.sampling.trace import Frame

REMASKING_RULES = ("low_confidence", "random", "margin", "entropy")
CACHE_MODES = ("none", "prefix", "dual")


@dataclass(frozen=True)
class MaskedParams(TokenPerStepParams):
    gen_length: int = knob(64, "tokens to generate after the prompt")
    steps: int = knob(64, "network evaluations for the fixed schedule (split evenly over blocks)")
    block_length: int | None = knob(None, "semi-autoregressive block size; None = gen_length (one block)")
    remasking: str = knob("low_confidence", "which masked positions to commit: see REMASKING_RULES",
                          choices=REMASKING_RULES)
    temperature: float = knob(0.0, "Gumbel-max temperature of the proposal (0 = argmax)")
    top_k: int | None = knob(None, "keep the k most likely tokens before sampling")
    top_p: float | None = knob(None, "nucleus mass kept before sampling, in (0, 1]")
    cfg_scale: float = knob(0.0, "classifier-free guidance: uncond + (s + 1)(cond - uncond), uncond masks the prompt")
    threshold: float | None = knob(None, "Fast-dLLM: commit every masked token with confidence >= threshold")
    factor: float | None = knob(None, "Fast-dLLM factor rule: longest prefix with c_n >= 1 - factor / (n + 1)")
    pinned: dict[int, int] = knob({}, "canvas position (after the prompt) -> token id, fixed")
    cache: str = knob("none", 'Fast-dLLM approximate cache refreshed once per block: "none", "prefix" or "dual"',
                      choices=CACHE_MODES)
    stop_at_eos: bool = knob(True, "skip the blocks after one that holds a stop id (models with `stop_ids` only)")
    infill: int = knob(0, "prompt positions from its first [MASK] on, filled with the first block (see _masked_loop)",
                       user=False)

    @property
    def blocks(self) -> int:
        return self.gen_length // (self.block_length or self.gen_length)

    def validate(self, model) -> None:
        vocab_size = model.tokenizer.get_vocab_size()
        check_int("gen_length", self.gen_length, 1, MAX_GEN_LENGTH)
        check_int("steps", self.steps, 1, MAX_STEPS)
        if self.block_length is not None:  # None (not 0) means one block
            check_int("block_length", self.block_length, 1, self.gen_length)
        block = self.block_length or self.gen_length
        if self.gen_length % block:
            raise ValueError(f"gen_length ({self.gen_length}) must be a multiple of block_length ({block})")
        if self.steps % self.blocks:
            raise ValueError(f"steps ({self.steps}) must be divisible by the number of blocks ({self.blocks})")
        if self.remasking not in REMASKING_RULES:
            raise ValueError(f"remasking must be one of {REMASKING_RULES}, got {self.remasking!r}")
        check_sampling_knobs(self.temperature, self.top_k, self.top_p, "none")
        check_range("cfg_scale", self.cfg_scale, 0)
        if self.threshold is not None:
            check_range("threshold", self.threshold, 0, 1, low_open=True)
        if self.factor is not None:
            check_range("factor", self.factor, 0, low_open=True)
        if self.threshold is not None and self.factor is not None:
            raise ValueError("threshold and factor are alternative rules; set at most one")
        check_int("infill", self.infill, 0, MAX_GEN_LENGTH)
        for pos, tok in self.pinned.items():
            check_int("pinned position", pos, 0, self.infill + self.gen_length - 1)
            check_int("pinned token id", tok, 0, vocab_size - 1)
        if self.cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {self.cache!r}")
        if self.cache != "none" and self.cfg_scale > 0:
            raise ValueError("cache='prefix'/'dual' cannot be combined with cfg_scale > 0 (the guided pass has no "
                             "cache)")
        check_flag("stop_at_eos", self.stop_at_eos)


@dataclass(frozen=True)
class AncestralParams(SamplerParams):
    gen_length: int = knob(64, "tokens to generate after the prompt")
    steps: int = knob(64, "time steps from t = 1 to t = 0 (split evenly over blocks)")
    block_length: int | None = knob(None, "semi-autoregressive block size; None = gen_length")
    temperature: float = knob(1.0, "temperature of the x0 proposal (0 = argmax)")
    top_k: int | None = knob(None, "keep the k most likely tokens before sampling")
    top_p: float | None = knob(None, "nucleus mass kept before sampling")
    pinned: dict[int, int] = knob({}, "canvas position (after the prompt) -> token id, fixed")
    stop_at_eos: bool = knob(True, "skip the blocks after one that holds a stop id (models with `stop_ids` only)")
    infill: int = knob(0, "prompt positions from its first [MASK] on, filled with the first block (see _masked_loop)",
                       user=False)

    blocks = MaskedParams.blocks
    resolve = MaskedParams.resolve

    def validate(self, model) -> None:
        MaskedParams(self.gen_length, self.steps, self.block_length, pinned=self.pinned,
                     stop_at_eos=self.stop_at_eos, infill=self.infill).validate(model)
        check_sampling_knobs(self.temperature, self.top_k, self.top_p, "none")


def find_stop(model, tokens) -> tuple[int, str] | None:
    """(index, "eos" or "eot") of the first of the model's `stop_ids` in `tokens` (1-D tensor or list), None when
    there is none or the model names no stop ids (our own checkpoints)."""
    stops = model.stop_ids
    if not stops:
        return None
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    hits = torch.isin(tokens, torch.tensor(stops, device=tokens.device)).nonzero()
    if len(hits) == 0:
        return None
    index = int(hits[0])
    return index, "eos" if int(tokens[index]) == model.eos_id else "eot"


def schedule_counts(masked: int, steps: int) -> list[int]:
    """LLaDA's per-step commit counts: masked // steps each, the remainder spread over the first steps."""
    base, extra = divmod(masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def guided_logits(model, canvas: torch.Tensor, prompt_len: int, cfg_scale: float, return_hidden: bool = False,
                  t: float | None = None):
    """The denoiser's logits (L, V) of the canvas with the mask token excluded, guided if cfg_scale > 0; the NFE
    used; and with `return_hidden` the conditional pass's hidden states (L, d) (else None). `t`: the sampler's noise
    level, for time-conditioned models (None: the sampler has no time). Samplers read masked rows only, where SUBS
    logits equal these, so the carry-over of the unmasked rows (`model.forward`) is not computed."""
    mask_id = model.mask_id
    time = {} if t is None else {"t": t}
    logits, hidden = model.denoiser_logits(canvas[None], return_hidden=True, **time)
    logits, hidden = logits[0], hidden[0] if return_hidden else None  # (L, V), (L, d)
    if cfg_scale > 0 and prompt_len > 0:
        uncond_canvas = canvas.clone()
        uncond_canvas[:prompt_len] = mask_id
        uncond = model.denoiser_logits(uncond_canvas[None], **time)[0]
        logits[:, mask_id] = 0.0
        uncond[:, mask_id] = 0.0
        logits = uncond.lerp_(logits, cfg_scale + 1)  # uncond + (s + 1)(cond - uncond)
        logits[:, mask_id] = float("-inf")
        return logits, 2, hidden
    return logits, 1, hidden


def _cached_logits(model, canvas: torch.Tensor, cache, refresh: bool, mode: str, lo: int, hi: int,
                   return_hidden: bool = False):
    """Fast-dLLM: (logits (l, V), offset of the window, cache label), plus the window's hidden states (l, d) with
    `return_hidden`. A refresh is one full pass whose keys/values are kept; later steps recompute [lo, end)
    (prefix) or [lo, hi) (dual) against them."""
    lead = 0  # extra positions computed before the window and dropped
    if refresh:
        cache.crop(0)
        offset, label, window = 0, "refresh", dict(start=0)
    else:
        end = len(canvas) if mode == "prefix" else hi
        lead = min(lo, model.logit_shift)  # a shifted model reads position lo's logits at lo - 1
        offset, label, window = lo, mode, dict(start=lo - lead, store=0)
        canvas = canvas[lo - lead:end]
    logits, hidden = model.denoiser_logits(canvas[None], return_hidden=True, cache=cache, **window)
    logits, hidden = logits[0, lead:], hidden[0, lead:]  # (l, V), (l, d)
    if return_hidden:
        return logits, offset, label, hidden
    return logits, offset, label


def score_switches(reads) -> dict[str, bool]:
    """The kernel's `margin=` / `entropy=` for a rule that ranks by the scores named in `reads` (rule_scores' names):
    the others come back None and cost nothing on the CPU."""
    return {"margin": "margin" in reads, "entropy": "entropy" in reads}


def rule_scores(rule: str, prob, margin, entropy, seed: int, rows: torch.Tensor) -> torch.Tensor:
    if rule == "low_confidence":
        return prob
    if rule == "margin":
        return margin
    if rule == "entropy":
        return -entropy  # higher = surer
    return kernels.counter_uniform(rows.long(), seed ^ 0x5BD1E995)  # random


def select_commits(scores: torch.Tensor, eligible: torch.Tensor, count: int, threshold, factor) -> torch.Tensor:
    """Indices (into scores) to commit among eligible ones: top-`count`, or Fast-dLLM's threshold / factor rule."""
    candidates = eligible.nonzero().squeeze(-1)
    if len(candidates) == 0:
        return candidates
    ranked = candidates[scores[candidates].argsort(descending=True, stable=True)]
    if threshold is not None:
        keep = (scores[ranked] >= threshold).sum().clamp(min=1)  # always at least the most confident
        return ranked[:keep]
    if factor is not None:
        n = torch.arange(1, len(ranked) + 1, device=scores.device)
        ok = scores[ranked] >= 1 - factor / (n + 1)
        ok[0] = True
        prefix = int(ok.long().cumprod(0).sum())
        return ranked[:prefix]
    return ranked[:count]


@dataclass(frozen=True)
class Scores:
    """The sampled rows of one step: their proposals and the scores of the model's distribution there."""

    rows: torch.Tensor  # (M,) canvas positions sampled this step
    tokens: torch.Tensor  # (M,) proposed tokens
    prob: torch.Tensor  # (M,) softmax probability of each proposal
    margin: torch.Tensor | None  # (M,) top-1 minus top-2 probability (None unless the margin rule reads it)
    entropy: torch.Tensor | None  # (M,) entropy (nats) (None unless the entropy rule reads it)
    eligible: torch.Tensor  # (M,) bool: inside the current block (may commit)
    seed: int  # the step's noise seed


class LLaDARule:
    """LLaDA's commit rule (a scheduler's step): each step commits a fixed count of the block's masks (LLaDA's
    schedule), the best-scoring eligible ones by the remasking rule; with Fast-dLLM's threshold or factor, as many
    as are confident (at least one), until the block is filled."""

    reuses_logits = False  # every step runs the model

    def __init__(self, params: MaskedParams, steps_per_block: int):
        self.params, self.steps = params, steps_per_block
        self.fixed_schedule = params.threshold is None and params.factor is None
        self.reads = {params.remasking}  # the scores `commit` ranks by (the kernel skips margin / entropy otherwise)

    def start_block(self, masked: int) -> None:
        self.counts = schedule_counts(masked, self.steps)

    def plan(self, block_step: int) -> str:
        """"run" the step, "skip" it (LLaDA would spend a forward pass committing nothing) or "end" the block."""
        if not self.fixed_schedule:
            return "run"
        if block_step >= self.steps:
            return "end"
        return "run" if self.counts[block_step] else "skip"

    def time(self, block_step: int) -> float | None:
        return None  # LLaDA's loop has no time: a time-conditioned model takes the masked fraction

    def notes(self, masked: list[int]) -> list[str]:
        """What to tell the user before the run (`masked`: masks per block): a fixed schedule with more steps than
        masks skips the steps left over, since a step commits at least one token."""
        ran = sum(min(self.steps, m) for m in masked)
        if not self.fixed_schedule or ran == self.steps * len(masked):
            return []
        return [f"steps reduced to fit: {self.params.steps} steps for {sum(masked)} masked tokens, and a step "
                f"commits at least one token, so {ran} steps run"]

    def commit(self, block_step: int, scores: Scores) -> torch.Tensor:
        """Indices into scores.rows that commit this step."""
        p = self.params
        ranked = rule_scores(p.remasking, scores.prob, scores.margin, scores.entropy, scores.seed, scores.rows)
        count = self.counts[block_step] if block_step < len(self.counts) else 1
        return select_commits(ranked, scores.eligible, count, p.threshold, p.factor)


class AncestralRule:
    """MDLM's ancestral step from t to s on linspace(1, 0, steps + 1): each eligible masked position unmasks with
    probability (t - s) / t. The model has no time conditioning, so a step whose canvas did not change reuses the
    previous logits (no network call)."""

    reuses_logits = True
    reads = frozenset()  # draws its own uniforms; reads no score

    def __init__(self, params: AncestralParams, steps_per_block: int):
        self.steps = steps_per_block

    def start_block(self, masked: int) -> None:
        self.times = torch.linspace(1.0, 0.0, self.steps + 1).tolist()

    def plan(self, block_step: int) -> str:
        return "end" if block_step >= self.steps else "run"  # "end" is unreachable: s = 0 unmasks everything left

    def time(self, block_step: int) -> float:
        return self.times[block_step]

    def notes(self, masked: list[int]) -> list[str]:
        """Nothing to say: more time steps than masks is a finer time grid (unchanged canvases reuse the logits)."""
        return []

    def commit(self, block_step: int, scores: Scores) -> torch.Tensor:
        t, s = self.times[block_step], self.times[block_step + 1]
        unmask_prob = 1.0 if s == 0 else (t - s) / t
        u = kernels.counter_uniform(scores.rows.long(), scores.seed ^ 0x68E31DA4)
        return (scores.eligible & (u < unmask_prob)).nonzero().squeeze(-1)


def masked_diffusion(model, prompt_ids: list[int], params: MaskedParams, generator: torch.Generator,
                     record: str = "tokens", *, hidden: bool | None = None) -> Iterator[Frame]:
    """LLaDA / Fast-dLLM sampling loop; yields the initial canvas, then one Frame per network step.
    `hidden`: record hidden states (None = at level "full"); with cfg_scale > 0, those of the conditional pass."""
    return _masked_loop(model, prompt_ids, params, generator, record, LLaDARule, hidden)


def ancestral(model, prompt_ids: list[int], params: AncestralParams, generator: torch.Generator,
              record: str = "tokens", *, hidden: bool | None = None) -> Iterator[Frame]:
    """MDLM's ancestral sampler with the cached step; yields one Frame per time step."""
    return _masked_loop(model, prompt_ids, params, generator, record, AncestralRule, hidden)


def fill_region(model, prompt_ids: list[int], length: int, pinned: dict[int, int]) -> torch.Tensor:
    """The canvas (P + length,): the prompt, then `length` masks with the `pinned` tokens placed at their positions
    (counted from the prompt's end)."""
    P = len(prompt_ids)
    canvas = torch.full((P + length,), model.mask_id, dtype=torch.long, device=model.device)
    canvas[:P] = torch.tensor(prompt_ids, dtype=torch.long)
    for pos, tok in pinned.items():
        canvas[P + pos] = tok
    return canvas


def _masked_loop(model, prompt_ids, params, generator, record, rule_class, hidden: bool | None
                 ) -> Iterator[Frame]:
    """The semi-autoregressive loop every masked sampler shares (blocks, caches, guidance, stop rules, frames); the
    commit rule (LLaDARule, AncestralRule) decides which positions each step commits. `prompt_ids` is the fixed
    prompt. With `params.infill` > 0 the prompt had masks: `stream` moved the prompt from
    its first [MASK] on into the region the run fills (`infill` positions before the generated ones, its tokens
    pinned), and the first block fills those masks too, counted in its schedule."""
    params.validate(model)
    mask_id, P, I, G = model.mask_id, len(prompt_ids), params.infill, params.gen_length
    R = I + G  # the region the frames show: the prompt's infill part, then the generated positions
    if P + R > model.max_seq_len:
        raise ValueError(
            f"prompt ({P + I} tokens) + gen_length ({G}) exceeds the model's context of {model.max_seq_len} tokens"
        )
    device = model.device
    canvas = fill_region(model, prompt_ids, R, params.pinned)  # (P + R,)
    confidence = torch.full((R,), float("nan"))  # commit-time probability per region position
    proposal = canvas[P:].clone().cpu()
    block_len = params.block_length or G
    # the first block also owns the prompt's masks: counted in its schedule, eligible with its positions
    bounds = [(P + (0 if block == 0 else I + block * block_len), P + I + (block + 1) * block_len)
              for block in range(params.blocks)]
    rule = rule_class(params, params.steps // params.blocks)
    notes = rule.notes([int((canvas[lo:hi] == mask_id).sum()) for lo, hi in bounds])  # the first frame takes them
    step = 0
    # (R, d) latest hidden state per region position (NaN = never computed), when recorded
    states = torch.full((R, model.config.backbone.d_model), float("nan")) if record_hidden(record, hidden) else None
    nothing_to_do = not bool((canvas[P:] == mask_id).any())
    first = make_frame(record, nothing_to_do, 0, canvas[P:], [], 0, t=_mask_rate(canvas[P:], mask_id), block=0,
                       proposal=proposal, confidence=confidence, hidden=states, notes=notes)
    if first is not None:
        yield first
    denoise = _Denoiser(model, params, P, rule.reuses_logits, want_hidden=states is not None)
    full = record == "full"
    for block, (lo, hi) in enumerate(bounds):
        in_block = torch.zeros(P + R, dtype=torch.bool, device=device)
        in_block[lo:hi] = True
        left = int((canvas[lo:hi] == mask_id).sum())  # the block's masks; a step commits only some of them
        rule.start_block(left)
        block_step = 0
        while left:
            plan = rule.plan(block_step)
            if plan == "end":
                break
            if plan == "skip":
                block_step += 1
                continue
            logits, offset, cache_label, pass_hidden = denoise(canvas, block_step == 0, lo, hi, rule.time(block_step))
            if states is not None:
                keep_states(states, pass_hidden, offset, P)
            # Positions to sample: the current block's masked ones (all masked ones in the window when
            # recording proposals). Noise is indexed by position, so both give the same tokens in the block.
            sampled = in_block
            if full:
                sampled = torch.zeros_like(in_block)
                sampled[offset : offset + len(logits)] = True
            rows = ((canvas == mask_id) & sampled).nonzero().squeeze(-1)  # (M,)
            seed = step_seed(generator)
            tokens, prob, margin, entropy = kernels.sample_and_score(
                logits, params.temperature, params.top_k, params.top_p, seed=seed,
                offset=offset * logits.shape[-1], rows=rows - offset,
                **score_switches(rule.reads),
            )  # each (M,) (the scores the rule does not read: None); noise indexed by absolute position
            chosen = rule.commit(block_step, Scores(rows, tokens, prob, margin, entropy, in_block[rows], seed))
            committed = rows[chosen]  # masked positions of the block
            canvas[committed] = tokens[chosen]
            left -= len(committed)
            gen_pos = committed - P
            step_conf = None
            if full:  # confidences and proposals are shown at level "full" only
                confidence[gen_pos.cpu()] = prob[chosen].cpu()
                proposal = canvas[P:].clone().cpu()
                proposal[(rows - P).cpu()] = tokens.cpu()
                step_conf = confidence.clone()
                step_conf[(rows - P).cpu()] = prob.cpu()
            block_step += 1
            step += 1
            stop = find_stop(model, canvas[P + I:hi]) if not left and params.stop_at_eos else None
            if stop is not None:  # the answer has ended: pad the blocks left instead of computing them
                stop = (stop[0] + I, stop[1])  # a region position
                padding, fill = _pad_after_stop(model, canvas, P, stop[0])
                gen_pos = torch.cat([gen_pos, padding])
                if full:  # padding is placed, not proposed or scored
                    proposal[padding.cpu()] = fill
                    step_conf[padding.cpu()] = float("nan")
            done = stop is not None or (block == params.blocks - 1 and not left)
            if wants_frame(record, done):
                yield make_frame(record, done, step, canvas[P:], gen_pos.tolist(), denoise.nfe,
                                 t=_mask_rate(canvas[P:], mask_id), block=block, proposal=proposal,
                                 confidence=step_conf, cache=cache_label, stop=stop[1] if stop else None,
                                 hidden=states, notes=notes)
            if stop is not None:
                return


class _Denoiser:
    """Where a step's logits come from: the last pass's, when the canvas has not changed since (the ancestral rule,
    without time conditioning); the KV cache's window (prefix / dual cache); else a full pass, with classifier-free
    guidance when asked. Counts the forward passes (NFE)."""

    def __init__(self, model, params, prompt_len: int, reuses_logits: bool, want_hidden: bool):
        self.model, self.prompt_len, self.want_hidden = model, prompt_len, want_hidden
        self.cfg_scale = getattr(params, "cfg_scale", 0.0)
        self.cache_mode = getattr(params, "cache", "none")
        self.kv = model.new_cache() if self.cache_mode != "none" else None
        self.reuses = reuses_logits and not model.time_conditioned  # no time input: same canvas, same logits
        self.last = None  # (canvas, logits, hidden) of the last full pass
        self.nfe = 0

    def __call__(self, canvas: torch.Tensor, block_start: bool, lo: int, hi: int, t: float | None):
        """(logits (W, V) for canvas[offset:offset + W], offset, the cache's label, hidden states (W, d) or None)."""
        if self.reuses and self.last is not None and torch.equal(self.last[0], canvas):
            return self.last[1], 0, None, self.last[2]
        if self.kv is not None:  # the hidden states come at no extra cost
            self.nfe += 1
            return _cached_logits(self.model, canvas, self.kv, block_start, self.cache_mode, lo, hi,
                                  return_hidden=True)
        logits, used, hidden = guided_logits(self.model, canvas, self.prompt_len, self.cfg_scale,
                                             return_hidden=self.want_hidden, t=t)
        self.nfe += used
        if self.reuses:
            self.last = (canvas.clone(), logits, hidden)
        return logits, 0, None, hidden


def _pad_after_stop(model, canvas: torch.Tensor, prompt_len: int, stop_at: int) -> tuple[torch.Tensor, int]:
    """Fill every still-masked generated position once the answer has stopped at region position `stop_at`;
    returns those positions (F,) and the fill token."""
    padding = (canvas[prompt_len:] == model.mask_id).nonzero().squeeze(-1)  # (F,) generated positions
    fill = _pad_id(model, int(canvas[prompt_len + stop_at]))
    canvas[prompt_len + padding] = fill
    return padding, fill


def _pad_id(model, stop_token: int) -> int:
    """What fills the canvas after the answer ends: the pad id (LLaDA's is its eos), else eos, else the stop token."""
    for token in (model.pad_id, model.eos_id):
        if token is not None:
            return token
    return stop_token


def _mask_rate(region: torch.Tensor, mask_id: int) -> float:
    return round(float((region == mask_id).float().mean()), 6)


# Fast-dLLM's threshold and factor compare a confidence in (0, 1]: the random rule's scores are uniform draws and the
# entropy rule's are negative nats, so those names fix both off and `build_sampler` refuses them by name
NOT_CONFIDENCES = ("random", "entropy")
NO_CONFIDENCE_RULES = {"threshold": None, "factor": None}

SAMPLERS = [
    *(Sampler("mdlm", rule, MaskedParams, masked_diffusion, "LLaDA's loop",
              fixed={"remasking": rule} | (NO_CONFIDENCE_RULES if rule in NOT_CONFIDENCES else {}))
      for rule in REMASKING_RULES),
    Sampler("mdlm", "threshold", MaskedParams, masked_diffusion, "Fast-dLLM's threshold rule",
            fixed={"remasking": "low_confidence"}, defaults={"threshold": 0.9}),
    Sampler("mdlm", "factor", MaskedParams, masked_diffusion, "Fast-dLLM's factor rule",
            fixed={"remasking": "low_confidence"}, defaults={"factor": 1.0}),
    Sampler("mdlm", "ancestral", AncestralParams, ancestral, "MDLM's ancestral sampler"),
]
