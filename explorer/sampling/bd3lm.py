"""Block diffusion sampling (BD3-LM): blocks left to right, masked diffusion inside each block.

A finished block is clean and never attends forward, so the keys/values of finished blocks are
exact: with `kv_cache=True` each step runs only the current block (plus, at the first step of a
block, the block finished just before it, whose keys are then stored); with `kv_cache=False`
every step recomputes the whole visible prefix. Both give identical tokens. A shifted model (output i
predicts token i + 1) reads a block's first position at the last token of the block before: the block's first
cached step runs that clean position too and keeps its logits for the block's later steps.

Generation may run past the model's context with a sliding window: when the next block would not
fit, the window start moves forward by half the context (whole blocks) and the cache is rebuilt
from the blocks still visible. It stops early at `<eos>` or when the unigram entropy of the last
`entropy_window` tokens falls below `min_entropy` (BD3-LM: 256 tokens, 4 nats).
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
from explorer.sampling.mdlm import (
    NOT_CONFIDENCES,
    REMASKING_RULES,
    rule_scores,
    schedule_counts,
    score_switches,
    select_commits,
)
from explorer.sampling.trace import Frame


@dataclass(frozen=True)
class BlockParams(SamplerParams):
    gen_length: int = knob(256, "most tokens to generate (fewer when a stop rule fires)")
    block_length: int | None = knob(None, "tokens per block; None = the checkpoint's training block size")
    steps: int | None = knob(None, "network steps per block; None = block_length (one token per step)")
    remasking: str = knob("random", "which masked positions to commit (random + one per step = first-hitting)")
    temperature: float = knob(1.0, "Gumbel-max temperature of the proposal (0 = argmax)")
    top_k: int | None = knob(None, "keep the k most likely tokens before sampling")
    top_p: float | None = knob(0.9, "nucleus mass kept before sampling (BD3-LM samples with p = 0.9)")
    threshold: float | None = knob(
        None, "Fast-dLLM rule inside a block: commit every token with confidence >= threshold")
    kv_cache: bool = knob(True, "reuse the exact keys/values of finished blocks (False recomputes the prefix)")
    stop_at_eos: bool = knob(True, "stop after the block that produced <eos> (the text ends before it)")
    entropy_window: int = knob(256, "tokens of the recent window for the entropy stop rule")
    min_entropy: float = knob(4.0, "stop when the window's unigram entropy (nats) is below this; 0 disables")

    @classmethod
    def resolve(cls, given: dict) -> dict:
        """BD3-LM's nucleus (top_p 0.9) is the default only while top_k is not given."""
        return ({"top_p": None} if "top_k" in given else {}) | given

    def block(self, model) -> int:
        """The block length in use: the knob, or the checkpoint's training block size."""
        return model.block_size if self.block_length is None else self.block_length  # 0 is no block size

    def validate(self, model) -> None:
        check_int("gen_length", self.gen_length, 1, MAX_GEN_LENGTH)
        block = self.block(model)
        context = model.max_seq_len
        check_int("block_length", block, 1, context)
        if context % block:
            raise ValueError(f"block_length ({block}) must divide the model's context of {context} tokens")
        if self.steps is not None:
            check_int("steps", self.steps, 1, MAX_STEPS)
        if self.remasking not in REMASKING_RULES:
            raise ValueError(f"remasking must be one of {REMASKING_RULES}, got {self.remasking!r}")
        check_sampling_knobs(self.temperature, self.top_k, self.top_p, "none")
        if self.threshold is not None:
            check_range("threshold", self.threshold, 0, 1, low_open=True)
        check_int("entropy_window", self.entropy_window, 1, MAX_GEN_LENGTH)
        check_range("min_entropy", self.min_entropy, 0)
        check_flag("kv_cache", self.kv_cache)
        check_flag("stop_at_eos", self.stop_at_eos)

    def notes(self, model) -> list[str]:
        """What to tell the user before the run: a block size the checkpoint was not trained with; more steps per
        block than tokens in a block (a step commits at least one token, so the steps left over are skipped)."""
        block, said = self.block(model), []
        if block != model.block_size:
            said.append(f"block_length {block} differs from the block size this checkpoint was trained with "
                        f"({model.block_size}); quality may suffer")
        if self.threshold is None and self.steps is not None and self.steps > block:
            said.append(f"steps reduced to fit: {self.steps} steps per block for blocks of {block} tokens, and a "
                        f"step commits at least one token, so at most {block} steps per block run")
        return said


def unigram_entropy(tokens: torch.Tensor) -> float:
    """Entropy (nats) of the empirical token distribution of a 1-D tensor."""
    counts = torch.bincount(tokens).float()
    p = counts[counts > 0] / len(tokens)
    return float(-(p * p.log()).sum())


def stop_reason(sequence: torch.Tensor, generated: torch.Tensor, params: BlockParams, eos_id: int) -> str | None:
    if params.stop_at_eos and bool((generated == eos_id).any()):
        return "eos"
    if params.min_entropy > 0 and len(sequence) >= params.entropy_window:
        if unigram_entropy(sequence[-params.entropy_window :]) < params.min_entropy:
            return "entropy"
    return None


@torch.no_grad()
def block_diffusion(model, prompt_ids: list[int], params: BlockParams, generator: torch.Generator,
                    record: str = "tokens", *, hidden: bool | None = None) -> Iterator[Frame]:
    """Yield the initial canvas, then one Frame per network step (block index and cache use recorded).
    `hidden`: record hidden states (None = at level "full"): each step updates the positions its pass ran."""
    params.validate(model)
    notes = params.notes(model)  # the first frame made takes them
    block = params.block(model)
    mask_id, device = model.mask_id, model.device
    P, G, context = len(prompt_ids), params.gen_length, model.max_seq_len
    stride = max(block, context // 2 // block * block)  # how far the sliding window moves
    sequence = torch.full((P + G,), mask_id, dtype=torch.long, device=device)  # prompt + generated, absolute positions
    sequence[:P] = torch.tensor(prompt_ids, dtype=torch.long)
    confidence = torch.full((G,), float("nan"))
    proposal = torch.full((G,), mask_id, dtype=torch.long)
    cache = model.new_cache() if params.kv_cache else None
    cache_label = "kv" if params.kv_cache else None
    window_start, cached_upto = 0, 0  # absolute: first visible position, end of the cached clean tokens
    nfe = step = 0
    # (G, d) latest hidden state per generated position (NaN = never computed), when recorded
    states = torch.full((G, model.config.backbone.d_model), float("nan")) if record_hidden(record, hidden) else None
    first = make_frame(record, False, 0, sequence[P:].cpu(), [], 0, t=1.0, block=0, proposal=proposal,
                       confidence=confidence, hidden=states, notes=notes)
    if first is not None:
        yield first
    first_block, last_block = P // block, (P + G - 1) // block
    for index, block_no in enumerate(range(first_block, last_block + 1)):
        lo, hi = block_no * block, min((block_no + 1) * block, P + G)
        if hi - window_start > context:
            while hi - window_start > context:
                window_start += stride
            if cache is not None:  # positions restart at the window: rebuild the cache from the visible blocks
                cache, cached_upto = model.new_cache(), window_start
        left = int((sequence[lo:hi] == mask_id).sum())  # the block's masks; a step commits only some of them
        counts = schedule_counts(left, params.steps or (hi - max(lo, P)))
        block_step = 0
        lead_logits = None  # a shifted model's logits of position lo (output lo - 1): clean, so fixed for the block
        while left:
            count = counts[block_step] if block_step < len(counts) else 1
            if params.threshold is None and count == 0:  # more steps than tokens: skip, no network call
                block_step += 1
                continue
            if cache is not None:  # the clean tokens not yet cached (finished blocks) ride along and are stored
                lead = min(lo - window_start, model.logit_shift)  # a shifted model reads lo's logits at lo - 1
                # the block's first step also runs lo - 1 (with the clean tokens not yet cached) and keeps its
                # output; later steps run the block alone and put that row back
                ran_from = lo if lead_logits is not None else min(cached_upto, lo - lead)
                logits, ran = model.window_logits(sequence[None, ran_from:hi], ran_from - window_start, cache,
                                                  store=lo - ran_from, block_size=block,
                                                  logits_from=lo - ran_from, return_hidden=True)
                if lead and lead_logits is None:
                    lead_logits = logits[:, 0].clone()
                elif lead:
                    logits[:, 0] = lead_logits
                cached_upto = lo
            else:
                ran_from = window_start
                logits, ran = model.window_logits(sequence[None, window_start:hi], 0, None, 0, block_size=block,
                                                  logits_from=lo - window_start, return_hidden=True)
            logits = logits[0]  # (hi - lo, V); ran: (1, hi - ran_from, d), the backbone computes it anyway
            if states is not None:
                keep_states(states, ran[0], ran_from, P)
            nfe += 1
            rows = (sequence[lo:hi] == mask_id).nonzero().squeeze(-1)  # (M,) within the block
            seed = step_seed(generator)
            tokens, prob, margin, entropy = kernels.sample_and_score(
                logits, params.temperature, params.top_k, params.top_p, seed=seed, offset=lo * logits.shape[-1],
                rows=rows, **score_switches({params.remasking}),
            )  # each (M,) (the scores the rule does not read: None); noise indexed by absolute position
            scores = rule_scores(params.remasking, prob, margin, entropy, seed, rows + lo)
            chosen = select_commits(scores, torch.ones_like(scores, dtype=torch.bool), count, params.threshold, None)
            committed = rows[chosen] + lo
            sequence[committed] = tokens[chosen]
            left -= len(committed)
            block_step += 1
            step += 1
            reason = None if left else stop_reason(sequence[:hi], sequence[P:hi], params, model.eos_id)
            final = not left and (reason is not None or block_no == last_block)
            if not wants_frame(record, final):
                continue
            gen_pos = (committed - P).cpu()
            confidence[gen_pos] = prob[chosen].cpu()
            proposal[(rows + lo - P).cpu()] = tokens.cpu()
            shown = sequence[P:].cpu()
            if reason == "eos":
                shown = shown[: int((sequence[P:hi] == model.eos_id).nonzero()[0])]
            elif reason == "entropy":
                shown = shown[: hi - P]
            yield make_frame(record, final, step, shown, gen_pos.tolist(), nfe,
                             t=round(float((shown == mask_id).float().mean()) if len(shown) else 0.0, 6),
                             block=index, proposal=proposal[: len(shown)], confidence=confidence[: len(shown)],
                             cache=cache_label, stop=(reason or "length") if final else None,
                             hidden=None if states is None else states[: len(shown)], notes=notes)
            if final:
                return


SAMPLERS = [
    Sampler("bd3lm", "first_hitting", BlockParams, block_diffusion, "BD3-LM's first-hitting sampler",
            fixed={"remasking": "random", "threshold": None}),  # a threshold needs confidences (see mdlm.SAMPLERS)
    *(Sampler("bd3lm", rule, BlockParams, block_diffusion, "LLaDA's rules inside blocks",
              fixed={"remasking": rule} | ({"threshold": None} if rule in NOT_CONFIDENCES else {}))
      for rule in ("low_confidence", "margin", "entropy")),
    Sampler("bd3lm", "threshold", BlockParams, block_diffusion, "Fast-dLLM's threshold rule inside blocks",
            fixed={"remasking": "low_confidence"}, defaults={"threshold": 0.9}),
]
