"""Autoregressive sampling with a KV cache: temperature, top-k, top-p; left-to-right or right-to-left.

Generation may run past the model's context with a sliding window: once `<bos>` + prompt + generated tokens
no longer fit, each step reads `<bos>` and the last max_seq_len - 1 tokens (model order: the nearest ones for a
right-to-left model too), re-run without a cache, as the model was trained (every window read after `<bos>`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from explorer import kernels
from explorer.sampling.common import (
    MAX_GEN_LENGTH,
    Sampler,
    SamplerParams,
    check_int,
    check_sampling_knobs,
    knob,
    make_frame,
    record_hidden,
    step_seed,
)
from explorer.sampling.trace import Frame


@dataclass(frozen=True)
class ARParams(SamplerParams):
    gen_length: int = knob(64, "tokens to generate (past the context: a sliding window)")
    temperature: float = knob(1.0, "softmax temperature (0 = greedy)")
    top_k: int | None = knob(None, "keep the k most likely tokens")
    top_p: float | None = knob(None, "nucleus mass kept, in (0, 1]")

    def validate(self, model) -> None:
        check_int("gen_length", self.gen_length, 1, MAX_GEN_LENGTH)
        check_sampling_knobs(self.temperature, self.top_k, self.top_p, "none")


@torch.no_grad()
def autoregressive(model, prompt_ids: list[int], params: ARParams, generator: torch.Generator,
                   record: str = "tokens", *, hidden: bool | None = None) -> Iterator[Frame]:
    """Yield the empty canvas, then one Frame per generated token.

    For a right-to-left model the prompt is the *end* of the text and the canvas fills from its
    last position backwards; frames always index positions in reading order. `hidden`: record hidden
    states (None = at level "full"); a position's state is the one the head read to predict its token.
    """
    params.validate(model)
    G = params.gen_length
    backwards = model.config.direction == "r2l"
    context = prompt_ids[::-1] if backwards else list(prompt_ids)  # model order, without <bos>
    window = model.max_seq_len - 1  # tokens read after <bos> once the context is full
    canvas = torch.full((G,), model.mask_id, dtype=torch.long)  # reading order
    confidence = torch.full((G,), float("nan"))
    # (G, d) hidden state that predicted each position's token (NaN = not generated yet), when recorded
    states = torch.full((G, model.config.backbone.d_model), float("nan")) if record_hidden(record, hidden) else None
    first = make_frame(record, False, 0, canvas, [], 0, proposal=canvas, confidence=confidence, hidden=states)
    if first is not None:
        yield first
    cache = model.new_cache() if len(context) <= window else None  # None: past the context, re-run each window
    logits, state = model(torch.tensor([[model.bos_id] + context[-window:]], device=model.device), cache=cache,
                          return_hidden=True)
    logits, state = logits[0, -1:], state[0, -1]  # (1, V), (d,): the backbone computes the state anyway
    for i in range(G):
        tokens, prob, _, _ = kernels.sample_and_score(
            logits.float(), params.temperature, params.top_k, params.top_p, seed=step_seed(generator),
            margin=False, entropy=False,
        )
        pos = G - 1 - i if backwards else i
        canvas[pos] = int(tokens[0])
        confidence[pos] = float(prob[0])
        if states is not None:
            states[pos] = state.float().cpu()
        frame = make_frame(record, i == G - 1, i + 1, canvas, [pos], i + 1, proposal=canvas, confidence=confidence,
                           hidden=states)
        if frame is not None:
            yield frame
        if i == G - 1:
            break
        context.append(int(tokens[0]))
        if len(context) > window:  # the window slides: positions restart at <bos>, so the cache cannot be reused
            cache, ids = None, [model.bos_id] + context[-window:]
        else:
            ids = context[-1:]
        logits, state = model(torch.tensor([ids], device=model.device), cache=cache, return_hidden=True)
        logits, state = logits[0, -1:], state[0, -1]


SAMPLERS = [Sampler("ar", "ar", ARParams, autoregressive, "autoregressive decoding")]
