"""What one frame of a session looks like on every tab at once (the Denoise canvas and heatmap, the latent plot, the
Edit tab's canvas), drawn from stored frames: replay never runs the model."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from explorer.page.common import Session, keep, missing, page
from explorer.page.memory import unpacked
from explorer.sampling import Trace
from explorer.viz import head_samples, hidden_state_paths, latent_trajectories, step_heatmap
from explorer.viz.compare import frame_at_progress, small_multiples_html
from explorer.viz.latent import vocabulary_points
from explorer.viz.panels import canvas_html, paused_html, stats_line, text
from explorer.viz.plots import empty_figure

SHOWN = ("view", "plot", "step", "latent_view", "latent_step", "latent", "edit_view", "multiples")  # `show`'s outputs


@dataclass
class Shared:
    """The components the tabs' events share: the session, what a redraw reads besides the frame (colour, projection,
    whose states) and the outputs a redraw (`SHOWN`) or a finished run (`Outputs.names`) fills, across the tabs."""

    session: gr.State
    step: gr.Slider  # the Denoise scrubber: the frame the other tabs show
    color_by: gr.Radio
    fps: gr.Slider
    method: gr.Radio
    source: gr.Radio
    outputs: dict  # name in Outputs.names -> component

    def run_outputs(self) -> list:
        return [self.outputs[name] for name in Outputs.names]

    def shown(self) -> list:
        return [self.outputs[name] for name in SHOWN]


class Outputs:
    """The outputs of /generate, /resume and /load_trace in order; the ones not given are left as they are."""

    names = ("view", "stats", "error", "plot", "step", "session", "multiples", "latent_view", "latent_step", "latent",
             "edit_view")

    def __call__(self, **values) -> tuple:
        unknown = set(values) - set(self.names)
        if unknown:
            raise TypeError(f"unknown outputs {sorted(unknown)}")
        return tuple(values.get(name, gr.skip()) for name in self.names)


NO_STATES = {  # why the Latent tab has nothing to draw, in plain words
    "example": "This precomputed example was saved without its hidden states, to keep the file small. Press Generate "
               "on the Denoise tab: your run records each position's hidden state at every step, and this view draws "
               "their paths (continuous diffusion: the noise flowing to token embeddings; CALM: the energy head's "
               "samples).",
    "file": "This trace file was recorded without continuous states, so there is nothing to project. Record one with "
            "`python -m explorer sample --record full --trace F.json`, or press Generate on the Denoise tab.",
}


def latent_figure(session: Session, index: int, method: str, source: str = "this run"):
    """The Latent tab's plot for frame `index` of the session's run (or the compared runs at the same progress),
    with the session's followed positions; a request it cannot draw (positions past the run) is said in the plot."""
    try:
        return _latent_figure(session, index, method, source)
    except ValueError as err:
        return empty_figure(str(err))


def _latent_figure(session: Session, index: int, method: str, source: str):
    if source == "compared runs":
        runs = [unpacked(t) for t in session.compared if t.frames[-1].hidden is not None]
        if len(runs) < 1:
            return empty_figure(missing(session, "No compared run has hidden states: compare runs of the ar, mdlm "
                                                 "or bd3lm families"))
        progress = index / max(len(session.trace.frames) - 1, 1) if session.trace else 1.0
        return hidden_state_paths(runs, method=method, upto=[frame_at_progress(t, progress) for t in runs],
                                  positions=session.follow)
    if session.trace is None:
        return empty_figure(missing(session, "Nothing to draw yet: press Generate on the Denoise tab. This view then "
                                             "plots how each position's state moves over the steps."))
    trace = unpacked(session.trace)
    family = trace.model["family"]
    if family == "calm" and trace.frames[-1].samples:
        return head_samples(trace, index, session.sample_texts.get(index % len(trace.frames)))
    if family == "cdcd" and trace.frames[-1].latent is not None:
        if session.vocabulary is None:  # a loaded trace: take the cloud from its checkpoint
            session.vocabulary = vocabulary_points(trace_model(session))
        points, strings = session.vocabulary
        return latent_trajectories(trace, points, strings, positions=session.follow, upto=index, method=method)
    if trace.frames[-1].hidden is not None:
        return hidden_state_paths([trace], method=method, upto=index, positions=session.follow)
    shipped = session.model_path is None and any(session.trace is t for t in page().examples.values())
    return empty_figure(NO_STATES["example" if shipped else "file"])


def trace_model(session: Session):
    """The model behind the session's trace: the folder its run used (kept on the server, so a root folder that
    shares a shipped checkpoint's name is never mistaken for it); for a loaded trace or the first-paint example
    the checkpoint it names (else its model name), resolved inside the roots like a typed choice, its token ids
    checked against that model's vocabulary."""
    if session.model_path is not None:
        return page().models.get(session.model_path)
    trace = session.trace
    names = [n for n in (trace.model.get("checkpoint"), trace.model["name"]) if n]
    for k, name in enumerate(names):
        try:
            model = page().model(name)
            break
        except (ValueError, FileNotFoundError):
            if k == len(names) - 1:
                raise
    trace.check_token_ids(model.tokenizer.get_vocab_size())
    return model


def frame_index(trace: Trace, index) -> int:
    """A scrubber value as a frame index of `trace`: -1 = the last frame, out-of-range values clamped."""
    last = len(trace.frames) - 1
    return min(max(int(index) if int(index) >= 0 else last + 1 + int(index), 0), last)


def show(session: Session, index: int, color_by: str, method: str = "pca", source: str = "this run") -> tuple:
    """The `SHOWN` outputs for a stored frame: replay never runs the model."""
    trace = session.trace
    if session.key:
        page().memory.touch(session.key)
    index = frame_index(trace, index)
    view = canvas_html(trace, index, color_by)
    latent = latent_figure(session, index, method, source) if session.tab == "latent" else gr.skip()
    multiples = small_multiples_html(session.runs, index, color_by) if len(session.runs) > 1 else ""
    return view, step_heatmap(trace, index), index, view, index, latent, paused_html(trace, index) + view, multiples


def replay(session, step, color_by, method="pca", source="this run"):
    """Redraw a stored frame (no model call)."""
    if session is None or session.trace is None:
        what = missing(session, "Generate first; then the step slider replays the recorded frames.")
        return (f"<i>{text(what)}</i>",) + (gr.skip(),) * 7
    return show(session, step, color_by, method, source)


def slider_range(trace: Trace) -> dict:
    last = len(trace.frames) - 1
    return {"minimum": 0, "maximum": max(last, 1), "value": last, "interactive": True}


def take_trace(session: Session | None, trace: Trace, color_by: str, request: gr.Request | None) -> tuple:
    """Make a stored `trace` (a loaded file, a shipped example) the session's run, replayed without its model:
    the outputs of a finished run (`edited_outputs`)."""
    session = session if session is not None else Session()
    session.trace, session.runs, session.history, session.sample_texts = trace, [trace], [], {}
    session.vocabulary, session.model_path = None, None
    keep(session, request)
    return edited_outputs(session, color_by)


def edited_outputs(session: Session, color_by: str) -> tuple:
    """Every output of a finished run for the session's (new) trace, shown at its last frame."""
    view, plot, _step, latent_view, _ls, latent_plot, edit_view, multiples = show(session, -1, color_by)
    rng = slider_range(session.trace)
    return Outputs()(view=view, stats=stats_line(session.trace), error="", plot=plot, step=gr.update(**rng),
                     session=session, multiples=multiples, latent_view=latent_view, latent_step=gr.update(**rng),
                     latent=latent_plot, edit_view=edit_view)
