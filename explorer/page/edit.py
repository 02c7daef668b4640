"""The Edit and infill tab: pause a run at a step, pick one of the model's top candidates at a position and continue
from that canvas with the token fixed; Rewind undoes the edit."""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr
import torch

from explorer.page.common import (
    FREE,
    RUNS,
    Session,
    error_box,
    keep,
    learn_more,
    missing,
    notice_box,
    page,
    user_key,
)
from explorer.page.memory import MAX_REWIND, pack_frame
from explorer.page.views import Outputs, Shared, edited_outputs, frame_index, trace_model
from explorer.sampling import build_trace
from explorer.sampling.edit import resume, spliced_trace, top_candidates
from explorer.sampling.trace import MAX_ID
from explorer.viz.panels import canvas_html, paused_html, stats_line

LEARN = ("**Editing a run** (masked diffusion). Pause at a step, click a token (or type its position), choose one "
         "of the model's top candidates there and continue: the sampler resumes from that canvas with your token "
         "fixed. Rewind undoes the last edit. Word constraints on the Denoise tab (`0:Once, 5:upon`, as in LLaDA's "
         "demo) pin words before the run starts (each word gets a leading space unless it is at position 0)."
         + learn_more("02_samplers"))


def pick(value):
    """A click on a token of the Edit tab's canvas: its position arrives as 'POSITION|time' in the hidden #pick box
    (the time makes a second click on the same token a new input). Anything else leaves the position as it is."""
    head = str(value or "").split("|")[0]
    return int(head) if head.isdigit() and int(head) <= MAX_ID else gr.skip()


def picked_view(session, step, position, color_by):
    """The Edit tab's canvas at frame `step` with `position` (clicked or typed) outlined and named above it."""
    if session is None or session.trace is None:
        return gr.skip()
    trace, index = session.trace, frame_index(session.trace, step)
    position = int(position) if position is not None else None
    return paused_html(trace, index, position) + canvas_html(trace, index, color_by, selected=position)


def candidates(session, step, position):
    """The model's top candidates at `position` given the canvas at frame `step` (one network call)."""
    try:
        if session is None or session.trace is None:
            raise ValueError(missing(session, "generate first, then pause at a step and pick a position"))
        options = top_candidates(trace_model(session), session.trace, int(step), int(position), k=8)
    except ValueError as err:
        return gr.update(choices=[], value=None), error_box(str(err))
    labels = [(f"{o['text']!r}  p={o['prob']:.3f}", str(o["id"])) for o in options]
    return gr.update(choices=labels, value=labels[0][1]), ""


def continue_with(session, step, position, token, color_by, request: gr.Request = None):
    """Resume the run from frame `step` with `token` forced at `position`; the previous trace is kept for Rewind."""
    session = session if session is not None else Session()
    user = user_key(request)
    out = Outputs()
    token_slot = None
    try:
        if session.trace is None:
            raise ValueError(missing(session, "generate first, then pause at a step and pick a position"))
        if token in (None, ""):
            raise ValueError("pick a candidate token first (Show candidates)")
        token_slot = page().registry.start(user)
        model = trace_model(session)
        index = min(max(int(step), 0), len(session.trace.frames) - 1)
        description, prompt_ids, frames_iter = resume(model, session.trace, index, {int(position): int(token)})
        head, frames, started = session.trace.frames[: index + 1], [], time.perf_counter()
        with torch.no_grad():
            for frame in frames_iter:
                frames.append(frame)  # streamed views share the frames; the kept trace is spliced (copied) once
                partial = build_trace(model, prompt_ids, description, head + frames, time.perf_counter() - started)
                yield out(view=canvas_html(partial, -1, color_by), edit_view=canvas_html(partial, -1, color_by),
                          stats=stats_line(partial, True))
        edited = spliced_trace(model, session.trace, index, frames, time.perf_counter() - started)
    except ValueError as err:
        yield out(error=error_box(str(err)))
        return
    finally:
        if token_slot is not None:
            page().registry.finish(user, token_slot)
    for frame in edited.frames:
        pack_frame(frame)
    session.history = (session.history + [session.trace])[-MAX_REWIND:]  # the oldest edits can no longer be undone
    session.trace, session.runs = edited, [edited]
    keep(session, request)
    yield edited_outputs(session, color_by)


def rewind(session, color_by, request: gr.Request = None):
    """Undo the last hand edit: back to the trace before it (at most MAX_REWIND edits back)."""
    if session is None or not session.history:
        return Outputs()(error=notice_box([missing(session, "nothing to rewind: no hand edit yet")]))
    session.trace, session.history = session.history[-1], session.history[:-1]
    session.runs = [session.trace]
    keep(session, request)
    return edited_outputs(session, color_by)


def build() -> SimpleNamespace:
    """The Edit tab's components (its canvas is the Denoise scrubber's frame)."""
    gr.Markdown(LEARN, elem_classes="dlm-learn")
    view = gr.HTML("", elem_id="edit_tokens")
    pick_box = gr.Textbox("", elem_id="pick", show_label=False, container=False)  # a click's position (layout.HEAD)
    with gr.Row():
        position = gr.Number(0, precision=0, label="position (0 = first generated token)", elem_id="position")
        show_candidates = gr.Button("Show candidates", elem_id="show_candidates")
    choices = gr.Radio([], label="the model's top candidates at that position", elem_id="candidates")
    with gr.Row():
        resume_button = gr.Button("Continue with this token", variant="primary", elem_id="resume")
        rewind_button = gr.Button("Rewind the last edit", elem_id="rewind")
    error = gr.HTML("", elem_id="edit_error")
    return SimpleNamespace(view=view, pick=pick_box, position=position, show_candidates=show_candidates,
                           choices=choices, resume=resume_button, rewind=rewind_button, error=error)


def wire(e: SimpleNamespace, shared: Shared) -> None:
    """The Edit tab's events: a click on a token picks its position; a continued or rewound run redraws every tab,
    like a generation."""
    e.pick.change(pick, e.pick, e.position, api_name="pick", **FREE)
    e.position.change(picked_view, [shared.session, shared.step, e.position, shared.color_by], e.view,
                      api_name="picked_view", **FREE)
    e.show_candidates.click(candidates, [shared.session, shared.step, e.position], [e.choices, e.error],
                            api_name="candidates")
    e.resume.click(continue_with, [shared.session, shared.step, e.position, e.choices, shared.color_by],
                   shared.run_outputs(), api_name="resume", **RUNS)
    e.rewind.click(rewind, [shared.session, shared.color_by], shared.run_outputs(), api_name="rewind", **FREE)
