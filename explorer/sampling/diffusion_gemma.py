"""DiffusionGemma's own loop (`generate` of transformers' DiffusionGemmaForBlockDiffusion), recorded as our frames.

DiffusionGemma is block diffusion with uniform noise, not masks: the answer is written one canvas of
`canvas_length` tokens at a time (an encoder reads the prompt and the finished canvases once, into a KV cache); each
canvas starts as random tokens, and at every denoising step the decoder proposes a token per position, the
entropy-bound sampler keeps the proposals of lowest entropy whose summed entropy (minus the largest) stays under
`entropy_bound` and redraws the rest at random. A canvas ends after `steps` steps, or earlier once the argmax has not
changed for `stability_threshold` steps and the mean entropy is under `confidence_threshold`; its output is the
argmax of the last step, and the next canvas follows (none after an end of sequence).

We do not re-implement that loop: `DraftRecorder` is a streamer, the hook `generate` offers (`put` for the prompt and
each finished canvas, `put_draft` after every decoder pass), and keeps one Frame per decoder pass. A frame's canvas
is what the library calls the draft, the argmax of the step's logits (its temperature schedule applied), over the
current canvas; finished canvases keep their tokens, canvases not drawn yet show `placeholder` (the model has no mask
token; the loaders use the pad id). A canvas's positions are committed at its last step, the only point where the
library fixes tokens (positions it accepts mid-canvas may be redrawn the next step). Level "full" adds each position's
argmax probability (confidence) and entropy, from the same logits, and its hidden state: the decoder's last hidden
state (after its final norm, what the LM head reads), taken by a forward hook on that norm during the pass.

The sampler streams: generate runs in a worker thread and each frame is yielded once it is final (the next pass began,
or generate ended), so a live view moves while the library's loop runs.
"""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from explorer.sampling.common import MAX_GEN_LENGTH, MAX_STEPS, Sampler, SamplerParams, check_int, check_range, knob
from explorer.sampling.trace import RECORD_LEVELS, Frame

QUEUED_FRAMES = 4  # frames the worker running generate may be ahead of the reader (then generate waits)


@dataclass(frozen=True)
class EntropyBoundParams(SamplerParams):
    gen_length: int = knob(64, "tokens to generate, rounded up to whole canvases of the model's canvas_length")
    steps: int = knob(48, "max_denoising_steps: at most this many decoder passes per canvas (transformers: 48)")
    entropy_bound: float = knob(0.1, "keep the lowest-entropy proposals while their summed entropy minus the largest "
                                     "stays below this; the rest are redrawn at random (transformers: 0.1)")
    t_min: float = knob(0.4, "temperature of the last step; it falls linearly from t_max (transformers: 0.4)")
    t_max: float = knob(0.8, "temperature of the first step (transformers: 0.8)")
    stability_threshold: int = knob(1, "end a canvas early once its argmax is unchanged for this many steps and "
                                       "confident (transformers: 1)")
    confidence_threshold: float = knob(0.005, "... and its mean entropy (nats) is below this (transformers: 0.005)")

    def validate(self, model) -> None:
        check_int("gen_length", self.gen_length, 1, MAX_GEN_LENGTH)
        check_int("steps", self.steps, 1, MAX_STEPS)
        check_range("entropy_bound", self.entropy_bound, 0, low_open=True)
        check_range("t_min", self.t_min, 0)
        check_range("t_max", self.t_max, 0)
        if not self.t_max > self.t_min:
            raise ValueError(f"t_max must be greater than t_min, got t_max {self.t_max} and t_min {self.t_min}")
        check_int("stability_threshold", self.stability_threshold, 0, MAX_STEPS)
        check_range("confidence_threshold", self.confidence_threshold, 0, low_open=True)

    def settings(self) -> dict:
        """The knobs as DiffusionGemma's `generate` keywords (its config classes insist on floats)."""
        from transformers.models.diffusion_gemma import EntropyBoundSamplerConfig

        return {"max_new_tokens": self.gen_length, "max_denoising_steps": self.steps,
                "sampler_config": EntropyBoundSamplerConfig(entropy_bound=float(self.entropy_bound)),
                "t_min": float(self.t_min), "t_max": float(self.t_max),
                "stability_threshold": self.stability_threshold,
                "confidence_threshold": float(self.confidence_threshold)}


class DraftRecorder:
    """A streamer for DiffusionGemma's `generate` (batch size 1) that keeps one Frame per decoder pass in `frames`.
    `gen_length` and `steps` are the call's max_new_tokens and max_denoising_steps; `record` "full" adds confidence,
    entropy and hidden state per position (the hidden states arrive through `keep_hidden`, a forward hook on the
    decoder's final norm that run_recorded sets). `on_frame`, when set, receives each frame once it is final."""

    _takes_logits = True  # generate then hands put_draft the step's processed logits instead of their argmax

    def __init__(self, canvas_length: int, gen_length: int, steps: int, placeholder: int, record: str = "tokens"):
        if record not in RECORD_LEVELS:
            raise ValueError(f"record must be one of {RECORD_LEVELS}, got {record!r}")
        self.canvas_length, self.steps, self.full = canvas_length, steps, record == "full"
        self.region = math.ceil(gen_length / canvas_length) * canvas_length  # generate draws whole canvases
        self.placeholder = placeholder
        self.tokens = [placeholder] * self.region
        self.confidence: list[float | None] = [None] * self.region
        self.entropy: list[float | None] = [None] * self.region
        self.hidden: list[list[float] | None] = [None] * self.region
        self.pass_hidden: torch.Tensor | None = None  # (canvas_length, d) of the decoder pass just run
        self.prompt_ids: list[int] | None = None
        self.frames: list[Frame] = []
        self.on_frame: Callable[[Frame], None] | None = None
        self.block = self.step_in_block = 0

    def keep_hidden(self, module, args, output: torch.Tensor) -> None:
        """A forward hook on the decoder's final norm: keeps the pass's last hidden state, (1, L, d), for the frame
        put_draft makes next (the norm's output is left as it is)."""
        self.pass_hidden = output[0].detach().float().cpu()

    def _append(self, frame: Frame) -> None:
        """A new frame; the one before it is final now (put changes only the last frame)."""
        if self.frames and self.on_frame is not None:
            self.on_frame(self.frames[-1])
        self.frames.append(frame)

    def put(self, value: torch.Tensor) -> None:
        """The prompt (first call), then each finished canvas: its positions are committed in the last frame."""
        ids = self._row(value)
        if self.prompt_ids is None:
            self.prompt_ids = ids
            self._append(Frame(step=0, tokens=list(self.tokens), nfe=0, t=1.0, block=0,
                               proposal=list(self.tokens) if self.full else None,
                               confidence=list(self.confidence) if self.full else None,
                               hidden=list(self.hidden) if self.full else None))
            return
        start = self._window(len(ids))
        self.tokens[start : start + len(ids)] = ids  # the argmax, with pads after an eos when generate pads
        last = self.frames[-1]
        last.tokens = list(self.tokens)
        last.committed = list(range(start, start + len(ids)))
        self.block, self.step_in_block = self.block + 1, 0

    def put_draft(self, value: torch.Tensor | None = None, logits: torch.Tensor | None = None) -> None:
        """One decoder pass: its draft (the argmax of `logits`, (1, canvas_length, V), or `value` itself)."""
        if logits is not None:
            z = logits[0].float()  # (L, V)
            draft = z.argmax(-1)
            logp = z.log_softmax(-1)
            confidence = logp.max(-1).values.exp().tolist()
            entropy = (-(logp.exp() * logp).nan_to_num().sum(-1)).tolist()
        else:
            draft, confidence, entropy = torch.as_tensor(self._row(value)), None, None
        start = self._window(len(draft))
        window = slice(start, start + len(draft))
        before = self.tokens[window]
        self.tokens[window] = draft.tolist()
        revised = [start + i for i, (a, b) in enumerate(zip(before, self.tokens[window])) if a != b]
        if self.full and confidence is not None:
            self.confidence[window], self.entropy[window] = confidence, entropy
        if self.full and self.pass_hidden is not None:
            self.hidden[window], self.pass_hidden = self.pass_hidden.tolist(), None
        self.step_in_block += 1
        nfe = len(self.frames)  # frame 0 is the prompt's: frame k follows the k-th decoder pass
        self._append(Frame(
            step=nfe, tokens=list(self.tokens), nfe=nfe, t=round(max(0.0, 1 - self.step_in_block / self.steps), 6),
            block=self.block, revised=revised if self.step_in_block > 1 else None,
            proposal=list(self.tokens) if self.full else None,
            confidence=list(self.confidence) if self.full else None,
            entropy=list(self.entropy) if self.full else None,
            hidden=list(self.hidden) if self.full else None))

    def end(self) -> None:
        """generate is done: the last frame is final."""
        if self.frames and self.on_frame is not None:
            self.on_frame(self.frames[-1])

    def _window(self, length: int) -> int:
        """Where the current canvas starts; refused past the region sized from gen_length."""
        start = self.block * self.canvas_length
        if start + length > self.region:
            raise ValueError(f"generate wrote past the {self.region} positions the recorder was sized for: give the "
                             f"recorder the call's max_new_tokens as gen_length")
        return start

    @staticmethod
    def _row(value: torch.Tensor) -> list[int]:
        if value.dim() != 2 or value.shape[0] != 1:
            raise ValueError(f"DraftRecorder records one sequence at a time (batch size 1), got ids of shape "
                             f"{tuple(value.shape)}")
        return value[0].tolist()


def run_recorded(network, input_ids: torch.Tensor, recorder: DraftRecorder, settings: dict, seed: int | None = None):
    """DiffusionGemma's `generate` with `recorder` as its streamer (never compiled: the streamer sees every step);
    with `seed`, generate's draws (it uses torch's global generator) come from it and the caller's state is kept.
    At level "full" the decoder's final norm hands each pass's hidden states to the recorder."""
    devices = [input_ids.device] if input_ids.device.type == "cuda" else []
    hook = network.model.decoder.norm.register_forward_hook(recorder.keep_hidden) if recorder.full else None
    try:
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            return network.generate(input_ids, streamer=recorder, disable_compile=True,
                                    return_dict_in_generate=True, **settings)
    finally:
        if hook is not None:
            hook.remove()


class _ReaderGone(Exception):
    """Raised in generate's streamer once the reader stopped reading: it ends the worker's generate."""


_DONE = object()  # the worker's last message: generate returned


def stream_recorded(network, input_ids: torch.Tensor, recorder: DraftRecorder, settings: dict,
                    seed: int | None = None) -> Iterator[Frame]:
    """run_recorded in a worker thread, yielding each frame as soon as it is final; at most QUEUED_FRAMES wait for
    the reader (then generate waits too). An error in generate is raised here; closing this iterator ends generate
    at its next decoder pass."""
    frames: queue.Queue = queue.Queue(maxsize=QUEUED_FRAMES)
    gone = threading.Event()

    def send(item) -> None:
        while not gone.is_set():
            try:
                frames.put(item, timeout=0.05)
                return
            except queue.Full:
                continue
        raise _ReaderGone

    def work() -> None:
        try:
            run_recorded(network, input_ids, recorder, settings, seed)
            send(_DONE)
        except _ReaderGone:
            pass
        except BaseException as err:  # handed to the reader, who raises it
            try:
                send(err)
            except _ReaderGone:
                pass

    recorder.on_frame = send
    worker = threading.Thread(target=work, name="diffusion-gemma-generate", daemon=True)
    worker.start()
    try:
        while (item := frames.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        gone.set()
        worker.join()


def entropy_bound_sampler(model, prompt_ids: list[int], params: EntropyBoundParams, generator: torch.Generator,
                          record: str = "tokens") -> Iterator[Frame]:
    """The library's loop in a worker thread, its frames (the initial canvas, one per decoder pass) yielded as they
    become final; at level "none" only the last, once generate returns."""
    params.validate(model)
    if not prompt_ids:
        raise ValueError("prompt must hold at least one token: DiffusionGemma's encoder reads it before any canvas")
    if len(prompt_ids) + params.gen_length > model.max_seq_len:
        raise ValueError(f"prompt ({len(prompt_ids)} tokens) + gen_length ({params.gen_length}) exceeds the model's "
                         f"context of {model.max_seq_len} tokens")
    recorder = DraftRecorder(model.canvas_length, params.gen_length, params.steps, model.mask_id, record)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    ids = torch.tensor([prompt_ids], device=model.device)
    if record == "none":
        run_recorded(model.network, ids, recorder, params.settings(), seed)
        yield recorder.frames[-1]
        return
    yield from stream_recorded(model.network, ids, recorder, params.settings(), seed)


SAMPLERS = [Sampler("diffusion_gemma", "entropy_bound", EntropyBoundParams, entropy_bound_sampler,
                    "DiffusionGemma's entropy-bound loop (transformers)")]
