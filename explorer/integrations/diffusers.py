"""diffusers' discrete-diffusion pipelines recorded as our Trace, and diffusers' animate_sampling JSON in and out.

    from explorer.integrations.diffusers import record_pipeline
    output, trace = record_pipeline(pipe, input_ids=ids, gen_length=32, block_length=8, num_inference_steps=8)

`StepRecorder` is a `callback_on_step_end` for LLaDA2Pipeline (BlockRefinementScheduler): the pipeline calls it after
every model call with the block it refines (`block_x`), the positions the scheduler unmasked (`transfer_index`) and
re-wrote (`editing_transfer_index`) and the probabilities of its samples (`sampled_probs`); it keeps one Frame per
call over the generated region [prompt_length, prompt_length + gen_length). DiffusionGemmaPipeline is not recorded
here (its last per-canvas replacement happens after the callback): record DiffusionGemma with
`explorer.integrations.transformers`.

animate_sampling JSON (diffusers' example `animate_sampling.py`, which feeds an HTML player): `to_animate_json(trace)`
and `from_animate_json(data)`. The example was not at hand; the format written here is the one its description
gives, `{"frames": [{"step": int, "ids": [int, ...]}], "vocab": {"id": "token"}}`, with ids the generated region, plus
optional "prompt_ids" and "mask_token_id" (read when present, written always).
"""

from __future__ import annotations

import time

import diffusers
import torch

from explorer.integrations import plain_settings, recorded_trace
from explorer.sampling.trace import MAX_ID, Frame, Trace

__all__ = ["StepRecorder", "from_animate_json", "record_pipeline", "to_animate_json"]

MAX_FRAMES, MAX_IDS, MAX_VOCAB_TEXT = 100_000, 65_536, 200  # bounds of an animate_sampling file we read


class StepRecorder:
    """LLaDA2Pipeline's `callback_on_step_end` keeping one Frame per model call in `frames` (batch size 1). Pass it
    with `callback_on_step_end_tensor_inputs=StepRecorder.tensor_inputs`."""

    tensor_inputs = ["block_x", "transfer_index", "editing_transfer_index", "sampled_tokens", "sampled_probs"]

    def __init__(self, prompt_length: int, gen_length: int, mask_id: int, record: str = "tokens"):
        self.prompt_length, self.mask_id, self.full = prompt_length, mask_id, record == "full"
        self.tokens = [mask_id] * gen_length
        self.confidence: list[float | None] = [None] * gen_length  # commit-time probability
        self.frames = [Frame(step=0, tokens=list(self.tokens), nfe=0, t=1.0, block=0,
                             confidence=list(self.confidence) if self.full else None)]

    def __call__(self, pipe, step: int, timestep: int, kwargs: dict) -> dict:
        block_x = kwargs["block_x"]
        if block_x.shape[0] != 1:
            raise ValueError(f"StepRecorder records one sequence at a time (batch size 1), got {block_x.shape[0]}")
        width = kwargs["transfer_index"].shape[1]  # block_length
        start = block_x.shape[1] - width  # absolute position of the block's first token
        P, G = self.prompt_length, len(self.tokens)
        lo, hi = max(start, P), min(start + width, P + G)  # the block's part of the generated region

        def region(index: torch.Tensor) -> list[int]:  # (1, width) bool -> region positions
            return [start + int(i) - P for i in index[0].nonzero().flatten() if lo <= start + int(i) < hi]

        committed, edited = region(kwargs["transfer_index"]), region(kwargs["editing_transfer_index"])
        if hi > lo:
            self.tokens[lo - P : hi - P] = block_x[0, lo:hi].tolist()
        proposal = None
        if self.full:
            probs = kwargs["sampled_probs"][0].float().tolist()
            for pos in committed + edited:
                self.confidence[pos] = probs[pos + P - start]
            proposal = list(self.tokens)
            if hi > lo:
                proposal[lo - P : hi - P] = kwargs["sampled_tokens"][0, lo - start : hi - start].tolist()
        self.frames.append(Frame(step=len(self.frames), tokens=list(self.tokens), committed=committed,
                                 revised=edited or None, nfe=len(self.frames), block=start // width,
                                 proposal=proposal, confidence=list(self.confidence) if self.full else None))
        return {}


def record_pipeline(pipe, input_ids: torch.Tensor, gen_length: int, record: str = "tokens", tokenizer=None,
                    **call_kwargs) -> tuple[object, Trace]:
    """(the pipeline's output, its Trace) of one LLaDA2Pipeline call on `input_ids` (1, P) with `gen_length`;
    `call_kwargs` are the pipeline's own (block_length, num_inference_steps, threshold, generator, ...); its
    mask_token_id defaults to the tokenizer's, as the pipeline's does."""
    if type(pipe).__name__ != "LLaDA2Pipeline":
        raise ValueError(f"record_pipeline records LLaDA2Pipeline runs, got {type(pipe).__name__}; record "
                         "DiffusionGemma with explorer.integrations.transformers.record_generate")
    mask_id = call_kwargs.get("mask_token_id", pipe.mask_token_id)
    if mask_id is None:
        raise ValueError("mask_token_id must be given (or set on the pipeline's tokenizer)")
    recorder = StepRecorder(input_ids.shape[-1], gen_length, int(mask_id), record)
    started = time.perf_counter()
    output = pipe(input_ids=input_ids, gen_length=gen_length, output_type="seq", callback_on_step_end=recorder,
                  callback_on_step_end_tensor_inputs=StepRecorder.tensor_inputs, **call_kwargs)
    wall = time.perf_counter() - started
    settings = {k: v for k, v in call_kwargs.items() if k != "generator"} | {"gen_length": gen_length}
    source = {"library": "diffusers", "version": diffusers.__version__, "model_class": type(pipe.model).__name__,
              "pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__,
              **plain_settings({"settings": settings, "scheduler_config": dict(pipe.scheduler.config)})}
    frames = recorder.frames if record != "none" else recorder.frames[-1:]
    tokenizer = tokenizer if tokenizer is not None else pipe.tokenizer
    trace = recorded_trace(
        frames, input_ids[0].tolist(), tokenizer,
        model={"name": type(pipe.model).__name__, "family": "mdlm",
               "params": sum(p.numel() for p in pipe.model.parameters()), "checkpoint": None},
        sampler={"name": type(pipe.scheduler).__name__, "seed": None, "record": record, "gen_length": gen_length,
                 "steps": call_kwargs.get("num_inference_steps"), "block_length": call_kwargs.get("block_length")},
        source=source, wall_s=wall, mask_id=int(mask_id))
    return output, trace


def to_animate_json(trace: Trace) -> dict:
    """The trace as diffusers' animate_sampling JSON: one {step, ids} per frame (the generated region) and the
    vocabulary of every id shown."""
    return {"frames": [{"step": index, "ids": list(frame.tokens)} for index, frame in enumerate(trace.frames)
                       if frame.tokens is not None],
            "vocab": {str(k): v for k, v in sorted(trace.token_strings.items())},
            "prompt_ids": list(trace.prompt_ids), "mask_token_id": trace.mask_id}


def from_animate_json(data, name: str = "animate_sampling") -> Trace:
    """A Trace from animate_sampling JSON (parsed; hostile until checked): every frame's ids are token ids of one
    length, the vocabulary maps decimal ids to short strings. Frames hold tokens only (no commits: the format has
    none; a position counts as committed at the frame where it takes its final token and keeps it)."""
    if not isinstance(data, dict):
        raise ValueError(f"{name}: animate_sampling JSON must be an object, got {type(data).__name__}")
    frames, vocab = data.get("frames"), data.get("vocab", {})
    if not isinstance(frames, list) or not 1 <= len(frames) <= MAX_FRAMES:
        raise ValueError(f"{name}: frames must be a list of 1 to {MAX_FRAMES} frames")
    rows = []
    for i, frame in enumerate(frames):
        ids = frame.get("ids") if isinstance(frame, dict) else None
        if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_IDS:
            raise ValueError(f"{name}: frames[{i}].ids must be a list of 1 to {MAX_IDS} token ids")
        if len(ids) != len(rows[0] if rows else ids):
            raise ValueError(f"{name}: frames[{i}].ids has {len(ids)} ids; frames[0] has {len(rows[0])}")
        if not all(type(t) is int and 0 <= t <= MAX_ID for t in ids):
            raise ValueError(f"{name}: frames[{i}].ids must hold token ids (ints in [0, {MAX_ID}])")
        rows.append(ids)
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and k.isascii() and k.isdigit() and
                                              isinstance(v, str) and len(v) <= MAX_VOCAB_TEXT
                                              for k, v in vocab.items()):
        raise ValueError(f"{name}: vocab must map decimal token ids to strings of at most {MAX_VOCAB_TEXT} characters")
    mask_id, prompt = data.get("mask_token_id"), data.get("prompt_ids", [])
    strings = {str(t): vocab.get(str(t), f"<{t}>") for ids in rows + [prompt if isinstance(prompt, list) else []]
               for t in ids if type(t) is int}
    settled = [_settled_at(rows, p) for p in range(len(rows[0]))]
    out = [{"step": i, "tokens": ids, "committed": [p for p, s in enumerate(settled) if s == i and
                                                    rows[-1][p] != mask_id], "nfe": i}
           for i, ids in enumerate(rows)]
    trace = {"schema": 1, "model": {"name": name, "family": "imported"},
             "sampler": {"name": "animate_sampling"}, "stats": {"nfe": len(rows) - 1, "steps": len(rows) - 1,
                                                                "wall_s": 0, "tokens_per_s": 0},
             "prompt_ids": prompt, "frames": out, "mask_id": mask_id, "token_strings": strings,
             "text": "".join(strings[str(t)] for t in rows[-1] if t != mask_id),
             "source": {"library": "diffusers", "format": "animate_sampling"}}
    return Trace.from_dict(trace)  # checks every field again, prompt_ids and mask_token_id included


def _settled_at(rows: list[list[int]], pos: int) -> int:
    """The first frame from which position `pos` holds its final token without change."""
    k = len(rows) - 1
    while k > 0 and rows[k - 1][pos] == rows[-1][pos]:
        k -= 1
    return k
