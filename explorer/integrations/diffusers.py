"""diffusers' discrete-diffusion pipelines recorded as our Trace, and diffusers' animate_sampling JSON in and out.

    from explorer.integrations.diffusers import record_pipeline
    output, trace = record_pipeline(pipe, input_ids=ids, gen_length=32, block_length=8, num_inference_steps=8)
    output, trace = record_pipeline(dg_pipe, prompt="Why is the sky blue?", gen_length=64, num_inference_steps=8)

`StepRecorder` is a `callback_on_step_end` for LLaDA2Pipeline (BlockRefinementScheduler): the pipeline calls it after
every model call with the block it refines (`block_x`), the positions the scheduler unmasked (`transfer_index`) and
re-wrote (`editing_transfer_index`) and the probabilities of its samples (`sampled_probs`); it keeps one Frame per
call over the generated region [prompt_length, prompt_length + gen_length).

`CanvasRecorder` records DiffusionGemmaPipeline from its scheduler, not from its callback: the pipeline replaces a
canvas that converged by its argmax after `callback_on_step_end`, and runs corrector sweeps the callback never sees.
`record_pipeline` wraps the scheduler's `step` (and `step_correct`) for the call, one Frame per model call, and takes
each canvas's final tokens from the pipeline's return value (the canvases it appends to the sequence).

animate_sampling JSON (diffusers' example `examples/discrete_diffusion/animate_sampling.py`: `capture` saves a
pipeline's run as a trajectory file, `render` draws files side by side in an HTML player): `to_animate_json(trace)`
writes one (the header its player reads: label, subtitle, prompt, gen_length, block_length, mask_token_id; then
`frames: [{step, ids}]` over the generated region and `vocab: {"id": text}`), `from_animate_json(data)` reads one,
their DiffusionGemma files included (ids -1 where a canvas is not drawn yet, no mask token).
"""

from __future__ import annotations

import functools
import math
import time
from contextlib import contextmanager

import diffusers
import torch

from explorer.integrations import plain_settings, recorded_trace
from explorer.sampling.trace import MAX_ID, Frame, Trace

__all__ = ["CanvasRecorder", "StepRecorder", "from_animate_json", "record_pipeline", "to_animate_json"]

MAX_FRAMES, MAX_IDS, MAX_VOCAB_TEXT = 100_000, 65_536, 200  # bounds of an animate_sampling file we read
MAX_HEADER_TEXT = 10_000  # its prompt, label and model_id
PENDING = -1  # animate_sampling's id for a position whose canvas is not drawn yet (DiffusionGemma trajectories)


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


class CanvasRecorder:
    """One Frame per model call of DiffusionGemmaPipeline (batch size 1), from its scheduler's outputs: `record` is
    called with each `step` / `step_correct` output, `finish` with the sequence the pipeline returned. `gen_length`
    is the call's; canvases not drawn show `placeholder` (the pad id: the model has no mask token)."""

    def __init__(self, canvas_length: int, gen_length: int, placeholder: int, record: str = "tokens"):
        self.canvas_length, self.placeholder, self.full = canvas_length, placeholder, record == "full"
        region = math.ceil(gen_length / canvas_length) * canvas_length  # the pipeline draws whole canvases
        self.tokens = [placeholder] * region
        self.confidence: list[float | None] = [None] * region
        self.entropy: list[float | None] = [None] * region
        self.committed: set[int] = set()
        self.prompt_ids: list[int] | None = None
        self.frames = [Frame(step=0, tokens=list(self.tokens), nfe=0, t=1.0, block=0,
                             proposal=list(self.tokens) if self.full else None,
                             confidence=list(self.confidence) if self.full else None,
                             entropy=list(self.entropy) if self.full else None)]
        self.last_frames: list[int] = []  # per canvas drawn: the frame of its last model call
        self.block = -1

    def record(self, output, timestep, steps: int, corrector: bool = False) -> None:
        """One scheduler output: the canvas after the step (`prev_sample`, (1, canvas_length)), the positions it
        committed (`transfer_index`) or re-wrote (`editing_transfer_index`) where the scheduler says (a corrector sweep:
        the positions it changed), and with record="full" its samples, their probabilities and the entropy of
        `pred_logits`. `steps`: the scheduler's
        predictor steps per canvas (for t)."""
        sample = output.prev_sample if hasattr(output, "prev_sample") else output[0]
        if sample.dim() != 2 or sample.shape[0] != 1:
            raise ValueError(f"CanvasRecorder records one sequence at a time (batch size 1), got a canvas of shape "
                             f"{tuple(sample.shape)}")
        step = int(timestep)
        if step == 0 and not corrector:  # the scheduler starts each canvas at timestep 0
            self.block += 1
            self.last_frames.append(0)
        start = self.block * self.canvas_length
        if start + sample.shape[1] > len(self.tokens):
            raise ValueError(f"the pipeline drew past the {len(self.tokens)} positions the recorder was sized for: "
                             f"give it the call's gen_length")
        window = slice(start, start + sample.shape[1])
        before, self.tokens[window] = self.tokens[window], sample[0].tolist()

        def positions(name: str) -> list[int]:  # a (1, canvas_length) bool output -> region positions
            index = getattr(output, name, None)
            return [] if index is None else [start + int(i) for i in index[0].nonzero().flatten()]

        committed, edited = positions("transfer_index"), positions("editing_transfer_index")
        if corrector:  # a corrector sweep resamples a few positions: those it changed are revised
            edited = [start + i for i, (a, b) in enumerate(zip(before, self.tokens[window])) if a != b]
        self.committed.update(committed)
        proposal = None
        if self.full:
            proposal = list(self.tokens)
            if output.sampled_tokens.shape == sample.shape:  # a sample per position (not a corrector's few)
                proposal[window] = output.sampled_tokens[0].tolist()
                self.confidence[window] = output.sampled_probs[0].float().tolist()
            logp = output.pred_logits[0].float().log_softmax(-1)  # (canvas_length, V)
            self.entropy[window] = (-(logp.exp() * logp).nan_to_num().sum(-1)).tolist()
        nfe = len(self.frames)
        self.last_frames[-1] = nfe
        self.frames.append(Frame(
            step=nfe, tokens=list(self.tokens), committed=committed, revised=edited or None, nfe=nfe,
            t=round(max(0.0, 1 - (step + 1) / steps), 6), block=self.block, proposal=proposal,
            confidence=list(self.confidence) if self.full else None,
            entropy=list(self.entropy) if self.full else None))

    def finish(self, sequence: list[int]) -> None:
        """Put in each canvas as the pipeline appended it (`sequence`: its generated tokens): a canvas that converged
        is replaced by its argmax after the step. At a canvas's last model call its positions not committed yet are
        committed, and those whose token the replacement changed are revised."""
        C = self.canvas_length
        if len(sequence) != len(self.last_frames) * C:
            raise ValueError(f"the pipeline returned {len(sequence)} tokens for {len(self.last_frames)} canvases of "
                             f"{C} recorded")
        for block, last in enumerate(self.last_frames):
            lo, hi = block * C, (block + 1) * C
            final, frame = sequence[lo:hi], self.frames[last]
            changed = [p for p in range(lo, hi) if frame.tokens[p] != final[p - lo]]
            frame.revised = sorted(set(frame.revised or []) | set(changed)) or None
            frame.committed = sorted(set(frame.committed) | (set(range(lo, hi)) - self.committed))
            self.committed.update(range(lo, hi))
            for later in self.frames[last:]:
                later.tokens[lo:hi] = final


@contextmanager
def scheduler_recorded(scheduler, recorder: CanvasRecorder):
    """Inside the block, the scheduler's `step` and `step_correct` (where it has one) hand each output to
    `recorder`; their signatures stay the scheduler's (the pipeline passes keywords by them)."""
    names = [name for name in ("step", "step_correct") if hasattr(scheduler, name)]
    for name in names:
        original = getattr(scheduler, name)

        @functools.wraps(original)
        def call(*args, _original=original, _corrector=name == "step_correct", **kwargs):
            output = _original(*args, **kwargs)
            timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
            recorder.record(output, timestep, scheduler.num_inference_steps, corrector=_corrector)
            return output

        setattr(scheduler, name, call)  # an instance attribute shadows the class's method
    try:
        yield
    finally:
        for name in names:
            delattr(scheduler, name)


def record_pipeline(pipe, input_ids: torch.Tensor | None = None, gen_length: int = 256, record: str = "tokens",
                    tokenizer=None, **call_kwargs) -> tuple[object, Trace]:
    """(the pipeline's output, its Trace) of one call of LLaDA2Pipeline on `input_ids` (1, P), or of
    DiffusionGemmaPipeline on its own prompt arguments (prompt / messages / image in `call_kwargs`), with
    `gen_length`; `call_kwargs` are the pipeline's own (block_length, num_inference_steps, threshold, generator, ...).
    LLaDA2's mask_token_id defaults to the tokenizer's, as the pipeline's does."""
    if type(pipe).__name__ == "DiffusionGemmaPipeline":
        if input_ids is not None:
            raise ValueError("DiffusionGemmaPipeline takes its prompt as prompt= or messages= (its processor "
                             "tokenizes it), not input_ids")
        return _record_diffusion_gemma(pipe, gen_length, record, tokenizer, call_kwargs)
    if type(pipe).__name__ != "LLaDA2Pipeline":
        raise ValueError(f"record_pipeline records LLaDA2Pipeline and DiffusionGemmaPipeline runs, got "
                         f"{type(pipe).__name__}")
    if input_ids is None:
        raise ValueError("LLaDA2Pipeline needs input_ids, the prompt's token ids (1, P)")
    mask_id = call_kwargs.get("mask_token_id", pipe.mask_token_id)
    if mask_id is None:
        raise ValueError("mask_token_id must be given (or set on the pipeline's tokenizer)")
    recorder = StepRecorder(input_ids.shape[-1], gen_length, int(mask_id), record)
    started = time.perf_counter()
    output = pipe(input_ids=input_ids, gen_length=gen_length, output_type="seq", callback_on_step_end=recorder,
                  callback_on_step_end_tensor_inputs=StepRecorder.tensor_inputs, **call_kwargs)
    wall = time.perf_counter() - started
    frames = recorder.frames if record != "none" else recorder.frames[-1:]
    trace = recorded_trace(
        frames, input_ids[0].tolist(), tokenizer if tokenizer is not None else pipe.tokenizer,
        model=_model_entry(pipe.model, "mdlm"),
        sampler={"name": type(pipe.scheduler).__name__, "seed": None, "record": record, "gen_length": gen_length,
                 "steps": call_kwargs.get("num_inference_steps"), "block_length": call_kwargs.get("block_length")},
        source=_source(pipe, call_kwargs, gen_length), wall_s=wall, mask_id=int(mask_id))
    return output, trace


def _record_diffusion_gemma(pipe, gen_length: int, record: str, tokenizer, call_kwargs: dict):
    """record_pipeline for DiffusionGemmaPipeline: the scheduler's outputs recorded (CanvasRecorder), the prompt
    taken from the encoder's first call (the pipeline tokenizes it inside)."""
    if "callback_on_step_end" in call_kwargs:
        raise ValueError("record_pipeline records DiffusionGemmaPipeline from its scheduler; pass no "
                         "callback_on_step_end")
    pad = pipe.model.config.get_text_config().pad_token_id
    recorder = CanvasRecorder(pipe.model.config.canvas_length, gen_length, 0 if pad is None else int(pad), record)

    def keep_prompt(module, args, kwargs):  # the first encoder call reads the whole prompt
        if recorder.prompt_ids is None:
            ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            recorder.prompt_ids = ids[0].tolist()

    hook = pipe.model.model.encoder.register_forward_pre_hook(keep_prompt, with_kwargs=True)
    started = time.perf_counter()
    try:
        with scheduler_recorded(pipe.scheduler, recorder):
            output = pipe(gen_length=gen_length, output_type="seq", **call_kwargs)
    finally:
        hook.remove()
    wall = time.perf_counter() - started
    sequence = output.sequences[0].tolist()
    recorder.finish(sequence)
    frames = recorder.frames if record != "none" else recorder.frames[-1:]
    tokenizer = tokenizer if tokenizer is not None else getattr(pipe.processor, "tokenizer", None)
    trace = recorded_trace(
        frames, recorder.prompt_ids or [], tokenizer, model=_model_entry(pipe.model, "diffusion_gemma"),
        sampler={"name": type(pipe.scheduler).__name__, "seed": None, "record": record, "gen_length": gen_length,
                 "steps": call_kwargs.get("num_inference_steps")},
        source=_source(pipe, call_kwargs, gen_length), wall_s=wall, mask_id=recorder.placeholder, answer=sequence)
    return output, trace


def _model_entry(network, family: str) -> dict:
    name = getattr(network.config, "_name_or_path", "") or None
    return {"name": name or type(network).__name__, "family": family,
            "params": sum(p.numel() for p in network.parameters()), "checkpoint": name}


def _source(pipe, call_kwargs: dict, gen_length: int) -> dict:
    settings = {k: v for k, v in call_kwargs.items() if k not in ("generator", "prompt", "messages", "image")}
    return {"library": "diffusers", "version": diffusers.__version__, "model_class": type(pipe.model).__name__,
            "pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__,
            **plain_settings({"settings": settings | {"gen_length": gen_length},
                              "scheduler_config": dict(pipe.scheduler.config)})}


def to_animate_json(trace: Trace) -> dict:
    """The trace as a trajectory file of diffusers' animate_sampling.py (its `render` draws it beside theirs): one
    {step, ids} per frame (the generated region), the vocabulary of every id shown, and the header fields its player
    reads (label, subtitle, prompt, block_length, mask_token_id); `prompt_ids` is ours (read back when present)."""
    frames = [frame for frame in trace.frames if frame.tokens is not None]
    name, sampler = str(trace.model.get("name")), str(trace.sampler.get("name"))
    return {"method": str((trace.source or {}).get("pipeline") or trace.model.get("family")),
            "label": f"{name} · {sampler}", "subtitle": f"{trace.stats.get('nfe')} network evaluations (dlm-explorer)",
            "model_id": trace.model.get("checkpoint") or name, "prompt": trace.prompt_text,
            "gen_length": len(frames[-1].tokens), "block_length": trace.sampler.get("block_length"),
            "mask_token_id": trace.mask_id,
            "frames": [{"step": index, "ids": list(frame.tokens)} for index, frame in enumerate(frames)],
            "vocab": {str(k): v for k, v in sorted(trace.token_strings.items())},
            "prompt_ids": list(trace.prompt_ids)}


def from_animate_json(data, name: str = "animate_sampling") -> Trace:
    """A Trace from an animate_sampling trajectory (parsed; hostile until checked): every frame's ids are token ids
    of one length, or PENDING (-1: a canvas not drawn yet, in DiffusionGemma's files), the vocabulary maps decimal ids
    to short strings. PENDING becomes the mask id where the file has one, else a placeholder id shown as "·" (the
    trace's mask id). Frames hold tokens only (no commits: the format has none; a position counts as committed at the
    frame where it takes its final token and keeps it)."""
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
        if not all(type(t) is int and (0 <= t < MAX_ID or t == PENDING) for t in ids):
            raise ValueError(f"{name}: frames[{i}].ids must hold token ids (ints in [0, {MAX_ID - 1}]) or "
                             f"{PENDING} (not drawn yet)")
        rows.append(ids)
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and k.isascii() and k.isdigit() and
                                              isinstance(v, str) and len(v) <= MAX_VOCAB_TEXT
                                              for k, v in vocab.items()):
        raise ValueError(f"{name}: vocab must map decimal token ids to strings of at most {MAX_VOCAB_TEXT} characters")
    header = {key: data.get(key) for key in ("prompt", "label", "model_id")}
    for key, value in header.items():
        if value is not None and (not isinstance(value, str) or len(value) > MAX_HEADER_TEXT):
            raise ValueError(f"{name}: {key} must be a string of at most {MAX_HEADER_TEXT} characters")
    block = data.get("block_length")
    if block is not None and (type(block) is not int or not 1 <= block <= MAX_IDS):
        raise ValueError(f"{name}: block_length must be an int in [1, {MAX_IDS}]")
    mask_id, prompt = data.get("mask_token_id"), data.get("prompt_ids", [])
    if any(PENDING in ids for ids in rows):
        if mask_id is None:  # no mask token (DiffusionGemma): a placeholder id past every id the file uses
            mask_id = max(t for ids in rows for t in ids) + 1
            vocab = {**vocab, str(mask_id): "·"}
        rows = [[mask_id if t == PENDING else t for t in ids] for ids in rows]
    strings = {str(t): vocab.get(str(t), f"<{t}>") for ids in rows + [prompt if isinstance(prompt, list) else []]
               for t in ids if type(t) is int}
    settled = [_settled_at(rows, p) for p in range(len(rows[0]))]
    out = [{"step": i, "tokens": ids, "committed": [p for p, s in enumerate(settled) if s == i and
                                                    rows[-1][p] != mask_id], "nfe": i}
           for i, ids in enumerate(rows)]
    trace = {"schema": 1, "model": {"name": header["model_id"] or header["label"] or name, "family": "imported"},
             "sampler": {"name": "animate_sampling", **({"block_length": block} if block else {})},
             "stats": {"nfe": len(rows) - 1, "steps": len(rows) - 1, "wall_s": 0, "tokens_per_s": 0},
             "prompt_ids": prompt, "prompt_text": header["prompt"] or "", "frames": out, "mask_id": mask_id,
             "token_strings": strings, "text": "".join(strings[str(t)] for t in rows[-1] if t != mask_id),
             "source": {"library": "diffusers", "format": "animate_sampling",
                        **({"label": header["label"]} if header["label"] else {})}}
    return Trace.from_dict(trace)  # checks every field again, prompt_ids and mask_token_id included


def _settled_at(rows: list[list[int]], pos: int) -> int:
    """The first frame from which position `pos` holds its final token without change."""
    k = len(rows) - 1
    while k > 0 and rows[k - 1][pos] == rows[-1][pos]:
        k -= 1
    return k
