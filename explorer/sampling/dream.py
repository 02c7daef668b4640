"""Dream's sampler (`diffusion_generate` of Dream 7B) as a generator that yields one Frame per step.

No blocks: the canvas is [prompt | gen_length masks]; time runs over `linspace(1, eps, steps + 1)`, and at the step
from t to s every masked position is scored at once. The algorithms differ in which positions commit:

    origin        each masked position unmasks with probability 1 - s/t (all at the last step): MDLM's ancestral
                  step; its token is a sample of the tempered distribution
    maskgit_plus  the int(n_masked * (1 - s/t)) positions (all at the last step) of highest probability of their
                  sampled token
    topk_margin   the same count, by the margin top1 - top2
    entropy       the same count, by negative entropy (higher = surer)

with `alg_temp > 0` the positions are drawn from softmax(confidence / alg_temp) without replacement instead of the
top-k. Scores come from Dream's tempered and filtered distribution: logits / temperature, then top-p, then top-k,
then the softmax (unlike the LLaDA rules in mdlm.py, which score the untempered distribution). Randomness is the
project's counter-based noise: a categorical sample is Gumbel-max and a draw without replacement is Gumbel-top-k,
equal in distribution to Dream's `Categorical` / `multinomial` calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from explorer.kernels import reference
from explorer.sampling.common import (
    MAX_GEN_LENGTH,
    MAX_STEPS,
    Sampler,
    TokenPerStepParams,
    check_int,
    check_range,
    check_sampling_knobs,
    keep_states,
    knob,
    make_frame,
    record_hidden,
    step_seed,
)
from explorer.sampling.mdlm import fill_region
from explorer.sampling.trace import Frame

ALGORITHMS = ("entropy", "maskgit_plus", "topk_margin", "origin")
ROW_CHUNK_ELEMENTS = 1 << 22  # masked rows x vocabulary scored at once (16 MB of float32)


@dataclass(frozen=True)
class DreamParams(TokenPerStepParams):
    gen_length: int = knob(64, "tokens to generate after the prompt")
    steps: int = knob(64, "network evaluations: time runs from 1 to eps in this many steps")
    alg: str = knob("entropy", "which positions commit (Dream's README uses entropy)", choices=ALGORITHMS)
    temperature: float = knob(0.2, "temperature of the proposals (0 = argmax); Dream's README: 0.2")
    top_p: float | None = knob(0.95, "nucleus of the tempered distribution, in (0, 1]; Dream's README: 0.95")
    top_k: int | None = knob(None, "keep the k most likely tokens (after top-p, as Dream does)")
    alg_temp: float = knob(0.0, "> 0: draw the positions from softmax(confidence / alg_temp) instead of the top-k")
    eps: float = knob(1e-3, "the last time step (Dream's default)")
    pinned: dict[int, int] = knob({}, "canvas position (after the prompt) -> token id, fixed")
    infill: int = knob(0, "prompt positions from its first [MASK] on, filled like generated ones (see split_at_mask)",
                       user=False)

    def validate(self, model) -> None:
        vocab_size = model.tokenizer.get_vocab_size()
        check_int("gen_length", self.gen_length, 1, MAX_GEN_LENGTH)
        check_int("infill", self.infill, 0, MAX_GEN_LENGTH)
        for pos, tok in self.pinned.items():
            check_int("pinned position", pos, 0, self.infill + self.gen_length - 1)
            check_int("pinned token id", tok, 0, vocab_size - 1)
        check_int("steps", self.steps, 1, MAX_STEPS)
        if self.alg not in ALGORITHMS:
            raise ValueError(f"alg must be one of {ALGORITHMS}, got {self.alg!r}")
        check_sampling_knobs(self.temperature, self.top_k, self.top_p, "none")
        check_range("alg_temp", self.alg_temp, 0)
        check_range("eps", self.eps, 0, 1, low_open=True, high_open=True)


def commit_count(n_masked: int, t: torch.Tensor, s: torch.Tensor, last: bool) -> int:
    """Dream's count: int(n_masked * (1 - s / t)) in float32 as its loop computes it, everything at the last step."""
    return n_masked if last else int(torch.tensor(float(n_masked)) * (1 - s / t))


def score_rows(logits: torch.Tensor, params: DreamParams, seed: int, offset: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens, probability of each token, confidence) of rows (M, V) of logits under Dream's tempered and
    filtered distribution; confidence by `params.alg` (for origin: the probability). Row chunks keep the
    intermediates small; the noise of row r is indexed by offset + r, so chunks do not change the samples."""
    n, vocab = logits.shape
    tokens = torch.empty(n, dtype=torch.long, device=logits.device)
    prob, confidence = (torch.empty(n, device=logits.device) for _ in range(2))
    step = max(1, ROW_CHUNK_ELEMENTS // vocab)
    for start in range(0, n, step):
        z = logits[start : start + step].float()  # (c, V)
        if params.temperature > 0:
            z = z / params.temperature
        z = reference.filter_top_k_top_p(z, None, params.top_p)  # Dream: top-p first, then top-k
        z = reference.filter_top_k_top_p(z, params.top_k, None)
        p = z.softmax(-1)
        if params.temperature > 0:
            counters = (torch.arange(start, start + len(z), device=z.device)[:, None] + offset) * vocab
            choice = reference.gumbel_argmax(z, counters + torch.arange(vocab, device=z.device), seed)
        else:
            choice = p.argmax(-1)
        chosen = p.gather(-1, choice[:, None]).squeeze(-1)
        if params.alg == "topk_margin":
            top2 = p.topk(min(2, vocab), dim=-1).values
            score = top2[:, 0] - (top2[:, 1] if vocab > 1 else 0.0)
        elif params.alg == "entropy":
            score = (p * (p + 1e-10).log()).sum(-1)  # negative entropy, with Dream's 1e-10
        else:
            score = chosen
        sl = slice(start, start + len(z))
        tokens[sl], prob[sl], confidence[sl] = choice, chosen, score
    return tokens, prob, confidence


def pick_positions(confidence: torch.Tensor, count: int, alg_temp: float, seed: int) -> torch.Tensor:
    """Indices of `count` rows: the top-k confidences, or (alg_temp > 0) a draw without replacement from
    softmax(confidence / alg_temp) by Gumbel-top-k."""
    if alg_temp > 0:
        noise = reference.counter_gumbel(torch.arange(len(confidence), device=confidence.device), seed ^ 0x2545F491)
        confidence = confidence / alg_temp + noise
    return confidence.topk(count).indices


def dream_sampler(model, prompt_ids: list[int], params: DreamParams, generator: torch.Generator,
                  record: str = "tokens", *, hidden: bool | None = None) -> Iterator[Frame]:
    """Dream's loop; yields the initial canvas, then one Frame per network evaluation."""
    params.validate(model)
    mask_id, P, R = model.mask_id, len(prompt_ids), params.infill + params.gen_length  # R: the region shown
    if P + R > model.max_seq_len:
        raise ValueError(f"prompt ({P + params.infill} tokens) + gen_length ({params.gen_length}) exceeds the "
                         f"model's context of {model.max_seq_len} tokens")
    canvas = fill_region(model, prompt_ids, R, params.pinned)  # (P + R,)
    confidence = torch.full((R,), float("nan"))  # commit-time probability per region position
    proposal = canvas[P:].clone().cpu()
    states = torch.full((R, model.config.backbone.d_model), float("nan")) if record_hidden(record, hidden) else None
    times = torch.linspace(1, params.eps, params.steps + 1)  # float32, as Dream computes them
    first = make_frame(record, False, 0, canvas[P:], [], 0, t=1.0, proposal=proposal, confidence=confidence,
                       hidden=states)
    if first is not None:
        yield first
    nfe = 0
    for i in range(params.steps):
        rows = (canvas == mask_id).nonzero().squeeze(-1)  # (M,) every masked position (the prompt's are in the region)
        if len(rows) == 0:
            break
        seed = step_seed(generator)  # one per time step, drawn whether or not the step runs the model
        last = i == params.steps - 1
        t, s = times[i], times[i + 1]
        if params.alg == "origin":  # which positions unmask does not depend on the logits: decide first
            p_transfer = 1.0 if last else float(1 - s / t)
            transfer = reference.counter_uniform(rows, seed ^ 0x68E31DA4) < p_transfer  # (M,)
            count = int(transfer.sum())
        else:
            count = commit_count(len(rows), t, s, last)
        if count == 0:  # Dream would run the model and commit nothing: skip the network call
            continue
        logits, pass_hidden = model(canvas[None], return_hidden=True, t=float(t))
        nfe += 1
        if states is not None:
            keep_states(states, pass_hidden[0], 0, P)
        logits = logits[0, rows]  # (M, V)
        logits[:, mask_id] = float("-inf")  # the mask is never a proposal
        tokens, prob, scores = score_rows(logits, params, seed, 0)
        if params.alg == "origin":
            chosen = transfer.nonzero().squeeze(-1)
        else:
            chosen = pick_positions(scores, count, params.alg_temp, seed)
        committed = rows[chosen]
        canvas[committed] = tokens[chosen]
        gen = committed >= P
        confidence[(committed[gen] - P).cpu()] = prob[chosen][gen].cpu()
        if record == "full":
            in_gen = rows >= P
            proposal = canvas[P:].clone().cpu()
            proposal[(rows[in_gen] - P).cpu()] = tokens[in_gen].cpu()
            step_conf = confidence.clone()
            step_conf[(rows[in_gen] - P).cpu()] = prob[in_gen].cpu()
        else:
            step_conf = None
        done = last or not bool((canvas == mask_id).any())
        frame = make_frame(record, done, i + 1, canvas[P:], (committed[gen] - P).tolist(), nfe, t=float(s),
                           proposal=proposal, confidence=step_conf, hidden=states)
        if frame is not None:
            yield frame
        if done:
            return


SAMPLERS = [Sampler("mdlm", "dream", DreamParams, dream_sampler, "Dream's sampler")]
