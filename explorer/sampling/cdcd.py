"""CDCD sampling: Euler steps of the probability-flow ODE with score interpolation, as a generator of Frames.

Every position starts as Gaussian noise `x = t_max * eps`. At each step the model's softmax over the
vocabulary gives the expected embedding `E[x0] = softmax(logits / T) @ E` (the superposition of tokens),
and the Euler step `x <- x + (t_next - t) (x - E[x0]) / t` moves x toward it; the last step lands on
t = 0, where x = E[x0], and rounding `argmax(x . E^T)` (the nearest embedding) gives the tokens.

Options: stochastic churn (Karras et al.: add noise to raise t before each step), classifier-free
guidance (a second pass with no clean positions), and Diffusion-LM's clamping (snap E[x0] to its
nearest embedding), over the whole trajectory or only its last part (`clamp` = the fraction of the steps,
counted from the end, that clamp: early steps then keep the blended estimates that explore, late steps commit).
The prompt and pinned tokens stay clean, as the model was trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from explorer import kernels
from explorer.sampling.common import (
    MAX_GEN_LENGTH,
    MAX_STEPS,
    Sampler,
    SamplerParams,
    check_flag,
    check_int,
    check_range,
    knob,
    make_frame,
)
from explorer.sampling.trace import Frame

SCHEDULES = ("auto", "warped", "log")
# CDCD's own sampler, the plain probability-flow ODE: what the cards, BrierLM and `bench continuous` run, and what
# these knobs restore over the API's defaults (which read better on the shipped models: docs/samplers.md)
CDCD_SAMPLER = {"clamp": 0.0, "temperature": 1.0, "churn": 0.0}


@dataclass(frozen=True)
class ContinuousParams(SamplerParams):
    gen_length: int = knob(64, "tokens to generate after the prompt")
    # defaults 400 steps, churn 2, clamping at temperature 0.6: the best generative perplexity at a reasonable unigram
    # entropy on the shipped checkpoints (docs/samplers.md, bench_results/cdcd_churn*.md)
    steps: int = knob(400, "Euler steps (network evaluations without guidance)")
    schedule: str = knob("auto", "step placement: warped (the learned warping CDF), log (even in log t), auto",
                         choices=SCHEDULES)
    temperature: float = knob(0.6, "softmax temperature inside score interpolation (< 1 sharpens E[x0]; 0 = argmax; "
                                   "1 = CDCD's; 0.6 with clamping reads best, `bench defaults`)")
    churn: float = knob(2.0, "stochastic churn S_churn (fresh noise raises t by a factor 1 + S_churn / steps before "
                             "each step): 0 = the deterministic ODE")
    self_condition: bool = knob(True, "feed each step's E[x0] back as an input (self-conditioning) where the model "
                                      "was trained with it; False = plain passes (far worse on cdcd-tiny)")
    cfg_scale: float = knob(0.0, "classifier-free guidance: uncond + (s + 1)(cond - uncond), uncond sees nothing clean")
    clamp: float = knob(1.0, "Diffusion-LM clamping (snap E[x0] to the nearest embedding) over this last fraction of "
                             "the steps: 0 = never (CDCD's plain ODE), 1 (or True) = every step, 0.3 = the last 30%",
                        flag={"nargs": "?", "const": 1.0, "metavar": "FRACTION"})
    pinned: dict[int, int] = knob({}, "generated position -> token id kept clean (infilling)")

    def __post_init__(self):
        if isinstance(self.clamp, bool):  # clamp=True (every step) as before the fraction existed
            object.__setattr__(self, "clamp", float(self.clamp))

    def validate(self, model) -> None:
        check_int("gen_length", self.gen_length, 1, MAX_GEN_LENGTH)
        check_int("steps", self.steps, 1, MAX_STEPS)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        check_range("temperature", self.temperature, 0)
        check_range("churn", self.churn, 0)
        check_flag("self_condition", self.self_condition)
        check_range("cfg_scale", self.cfg_scale, 0)
        check_range("clamp", self.clamp, 0, 1)
        vocab = model.tokenizer.get_vocab_size()
        for pos, tok in self.pinned.items():
            check_int("pinned position", pos, 0, self.gen_length - 1)
            check_int("pinned token id", tok, 0, vocab - 1)


def _guidance_check(model, params: ContinuousParams, has_clean: bool) -> None:
    if params.cfg_scale == 0:
        return
    if model.config.cond_dropout == 0:
        raise ValueError(f"cfg_scale={params.cfg_scale} needs a model trained with conditioning dropout "
                         f"(cond_dropout > 0); {model.name} has cond_dropout=0, so use cfg_scale=0")
    if not has_clean:
        raise ValueError(f"cfg_scale={params.cfg_scale} guides toward a prompt or pinned tokens; give one, "
                         "or use cfg_scale=0")


def continuous_diffusion(model, prompt_ids: list[int], params: ContinuousParams, generator: torch.Generator,
                         record: str = "tokens") -> Iterator[Frame]:
    """Yield the initial state (frame 0), then one Frame per Euler step; the last frame holds the rounded tokens."""
    params.validate(model)
    P, G = len(prompt_ids), params.gen_length
    if P + G > model.max_seq_len:
        raise ValueError(f"prompt ({P} tokens) + gen_length ({G}) exceeds the model's context of "
                         f"{model.max_seq_len} tokens")
    device = model.device
    ids = torch.zeros(P + G, dtype=torch.long, device=device)  # clean token ids where known
    clean = torch.zeros(P + G, dtype=torch.bool, device=device)
    ids[:P] = torch.tensor(prompt_ids, dtype=torch.long)
    clean[:P] = True
    for pos, tok in params.pinned.items():
        ids[P + pos], clean[P + pos] = tok, True
    _guidance_check(model, params, bool(clean.any()))
    times = model.sampling_times(params.steps, params.schedule).tolist()  # t_max ... t_min, 0
    E = model.embeddings()  # (V, De)
    gen = slice(P, P + G)

    def nearest(points: torch.Tensor) -> torch.Tensor:
        """Rounding: argmax(points . E^T) over the vocabulary (the nearest embedding: rows of E share one norm)."""
        return kernels.head_sample_and_score(points, E, temperature=0.0, margin=False, entropy=False)[0]

    noise = torch.randn(P + G, model.config.embed_dim, generator=generator).to(device)
    x = times[0] * noise  # (P + G, De)
    x[clean] = E[ids[clean]]
    tokens = torch.where(clean, ids, nearest(x))
    first = _frame(record, False, 0, tokens[gen], x[gen], times[0], 0, model)
    if first is not None:
        yield first
    self_cond = torch.zeros_like(x) if params.self_condition and model.config.self_conditioning > 0 else None
    gamma = min(params.churn / params.steps, math.sqrt(2) - 1)
    clamp_from = params.steps - round(params.clamp * params.steps)  # the first step that clamps
    nfe = 0
    for k in range(params.steps):
        t, t_next = times[k], times[k + 1]
        if gamma > 0:  # churn: raise the noise level to t_hat by adding fresh noise (generated positions only)
            t_hat = t * (1 + gamma)
            fresh = torch.randn(x.shape, generator=generator).to(device)
            x = torch.where(clean[:, None], x, x + math.sqrt(t_hat**2 - t**2) * fresh)
            t = t_hat
        t_row = torch.tensor([t], device=device)
        logits = model(x[None], t_row, clean[None], None if self_cond is None else self_cond[None])[0]  # (L, V)
        nfe += 1
        if params.cfg_scale > 0:  # the unconditional pass sees the prompt noised to level t like everything else
            x_uncond = torch.where(clean[:, None], E[ids] + t * noise, x)
            uncond = model(x_uncond[None], t_row, torch.zeros_like(clean)[None],
                           None if self_cond is None else self_cond[None])[0]
            nfe += 1
            finite = torch.isfinite(logits)  # the mask token is -inf in both passes: keep it out of the lerp
            logits = torch.where(finite, uncond.lerp(logits, params.cfg_scale + 1), logits)
        x0_hat, entropy = model.expected_embedding(logits, params.temperature)  # (L, De), (L,)
        proposal = nearest(x0_hat)
        if k >= clamp_from:
            x0_hat = E[proposal]
        if self_cond is not None:
            self_cond = x0_hat
        x = x + (t_next - t) * (x - x0_hat) / t  # Euler step of dx/dt = (x - E[x0]) / t
        x = torch.where(clean[:, None], E[ids], x)
        previous = tokens
        tokens = torch.where(clean, ids, proposal)  # at the last step x = E[x0], so this is the rounding of x
        final = k == params.steps - 1
        if record == "none" and not final:
            continue  # the fast path builds no frame
        mode, prob = None, None
        if record == "full":  # the softmax's argmax and its probability, in one pass over the vocabulary
            mode, prob, _, _ = kernels.sample_and_score(logits[gen], temperature=0.0, margin=False, entropy=False)
        yield _frame(record, final, k + 1, tokens[gen], x[gen], t_next, nfe, model, proposal=mode,
                     confidence=prob, entropy=entropy[gen],
                     revised=(tokens[gen] != previous[gen]).nonzero().squeeze(-1).tolist(),
                     committed=range(G) if final else ())


def _frame(record: str, final: bool, step: int, tokens, x, t: float, nfe: int, model, *, proposal=None,
           confidence=None, entropy=None, revised=None, committed=()) -> Frame | None:
    frame = make_frame(record, final, step, tokens, committed, nfe, t=_progress(model, t), proposal=proposal,
                       confidence=confidence, revised=revised)
    if frame is None:
        return None
    frame.noise = round(float(t), 6)
    if record == "full":
        frame.latent = [[round(v, 4) for v in row] for row in x.tolist()]
        if entropy is not None:
            frame.entropy = [round(v, 5) for v in entropy.tolist()]
    return frame


def _progress(model, t: float) -> float:
    """The noise level as the trace's t in [0, 1]: normalised log t (1 = t_max), 0 once the state is clean."""
    if t <= 0:
        return 0.0
    return round(float(model.s_from_t(torch.tensor(t))), 6)


SAMPLERS = [Sampler("cdcd", "euler", ContinuousParams, continuous_diffusion, "continuous diffusion (cdcd)")]
