"""The explorer page: denoise, compare, look at latent space, edit a paused run, export; one tab each.

Thin Gradio wiring: what may be opened and run lives in `explorer.webapp`, generation in `explorer.sampling`, every
picture in `explorer.viz` (the notebooks draw with the same functions). Run `python app.py` and open
http://127.0.0.1:7860. API endpoints (gradio_client): `/generate` (streams), `/replay`, `/play`, `/step_back`,
`/step_forward`, `/compare`, `/compare_view`, `/compare_play`, `/latent`, `/jump`, `/candidates`, `/resume`, `/rewind`,
`/export_json`, `/export_html`, `/export_gif`, `/load_trace`, `/stop`.
"""

from __future__ import annotations

import argparse
import html
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import torch

import explorer
from explorer.data.tokenizer import display_string
from explorer.hub import calm_chunk_sizes, calm_for_chunk
from explorer.models.base import read_config
from explorer.sampling import SAMPLERS, Trace, build_trace
from explorer.sampling.calm import MAX_CANDIDATES
from explorer.sampling.edit import resume, spliced_trace, top_candidates
from explorer.viz import (
    COLOR_MODES,
    head_samples,
    hidden_state_paths,
    latent_trajectories,
    step_heatmap,
    tokens_html,
    trace_animation_html,
    trace_gif,
)
from explorer.viz.compare import frame_at_progress, progress_plot, run_label, side_by_side_html, small_multiples_html
from explorer.viz.latent import vocabulary_points, warm_umap
from explorer.webapp import (
    CACHES,
    DROPPED,
    MAX_LENGTH,
    MAX_REWIND,
    MAX_RUNS,
    MAX_UPLOAD_MB,
    MEMORY_BUDGET_MB,
    LiveRuns,
    ModelCache,
    Request,
    RunRegistry,
    SessionMemory,
    check_request,
    default_roots,
    family_at,
    has_chat_template,
    held_bytes,
    load_examples,
    local_checkpoints,
    model_prompt,
    pack_frame,
    prompt_note,
    public,
    resolve_checkpoint,
    root_names,
    safe_filename,
    sampler_knobs,
    trace_bytes,
    unpacked,
)

EVERY_CACHE = ["none", "prefix", "dual", "kv"]
TEMPERATURE_INFO = "0 = argmax (continuous diffusion: the softmax inside E[x0])"
CALM_TEMPERATURE_INFO = ("CALM: in (0, 1], sharpening the distribution of decoded chunks by sampling; exact: any "
                         "value, batch: 1/n for n <= N only (1, 0.5, 0.25, 0.2, 0.1, 0.05)")
PLOT_EVERY_S = 0.5  # redraw the heatmap at most this often while streaming (the token view updates every step)
COMPARE_SLOTS = 4
RUN_CONCURRENCY = 2  # generations running at once over all users (2 CPU cores here)
STATE_SESSIONS = 500  # sessions Gradio keeps, the least recently used dropped beyond it (its default: 10,000)
OPEN_NOTEBOOKS = (" To open a notebook: install the notebooks extra once (`pip install -c constraints.txt -e "
                  "\".[notebooks]\"` in the repository), then `jupyter lab notebooks/00_tour.ipynb` (any of them).")
LEARN = {
    "denoise": "**What you see.** The canvas after each step: the prompt in light grey, each generated token coloured "
               "by the model's confidence when it was committed (Viridis: dark = unsure, yellow = sure; grey dots are "
               "still masked), or by the step that committed it. The heatmap is confidence per position (x) over "
               "steps (y); red crosses mark commits. Continuous diffusion shows the softmax entropy instead. With N > 1 "
               "the runs below are the same sampler with seeds seed .. seed + N - 1, with how much they differ. "
               "Keys: space plays / pauses, arrows step. Learn more: `notebooks/01_masked_diffusion.ipynb`, "
               "`02_samplers.ipynb` (remasking rules, Fast-dLLM), `03_block_diffusion.ipynb`, "
               "`04_continuous_diffusion.ipynb`, `05_calm.ipynb`, and the tour `00_tour.ipynb`." + OPEN_NOTEBOOKS,
    "compare": "**Comparing runs.** Each run's canvas at the same fraction of its own run (its first frame at 0%, "
               "its last at 100%), so a 64-step sampler and a 16-step one line up. The plot shows when each "
               "position was committed: AR draws a diagonal, block diffusion a staircase of blocks, masked "
               "diffusion a scatter (confident positions first), CALM steps of K tokens; continuous diffusion "
               "commits everything at its last step (its tokens settle gradually: see its entropy heatmap). "
               "Learn more: `notebooks/00_tour.ipynb` (every family on one prompt)." + OPEN_NOTEBOOKS,
    "latent": "**Latent space.** A 2-D projection (PCA or UMAP) fitted once over every state of the "
              "run(s), so the axes never move while you scrub. Continuous diffusion: the paths of positions from "
              "noise to token embeddings over the vocabulary cloud; CALM: the energy head's samples for a chunk "
              "around the latent it chose; masked / block diffusion and AR: each position's final hidden state "
              "over the steps. Hover a point to preview that step's text; click it to jump the scrubber there. "
              "Learn more: `notebooks/04_continuous_diffusion.ipynb`, `05_calm.ipynb`." + OPEN_NOTEBOOKS,
    "edit": "**Editing a run** (masked diffusion). Pause at a step, pick a position, choose one of the model's top "
            "candidates there and continue: the sampler resumes from that canvas with your token fixed. Rewind "
            "undoes the last edit. Word constraints on the Denoise tab (`0:Once, 5:upon`, as in LLaDA's demo) pin "
            "words before the run starts (each word gets a leading space unless it is at position 0). Learn more: "
            "`notebooks/02_samplers.ipynb`." + OPEN_NOTEBOOKS,
    "export": "**Export.** The trace (JSON, schema 1) holds every frame and knob: load it back here or in a notebook "
              "(`Trace.load`); the CLI writes the same format (`python -m explorer sample --record full --trace "
              "F.json`). The HTML animation replays offline in any browser; the GIF is for slides.",
}
CSS = """
#tokens, #edit_tokens, #latent_tokens {min-height: 120px}
#heatmap {min-height: 380px}
#latent {min-height: 540px}
#jump {position: absolute; left: -10000px; width: 1px; height: 1px; overflow: hidden}
.dlm-tokens {font-size: 18px !important}
body, .gradio-container {font-size: 16px}
"""
# Keys: space plays / pauses, arrows step back / forward (in the visible tab); a click on a latent-plot point whose
# customdata starts with a frame index jumps there through the hidden #jump box.
HEAD = """
<script>
(function () {
  let playing = false;
  function visible(cls) {
    return Array.from(document.querySelectorAll('.' + cls)).find(el => el.offsetParent !== null);
  }
  document.addEventListener('click', e => {
    if (e.target.closest('.dlm-play')) playing = true;
    if (e.target.closest('.dlm-pause')) playing = false;
  }, true);
  document.addEventListener('keydown', e => {
    const tag = (e.target.tagName || '').toLowerCase();
    if ((tag === 'input' && e.target.type !== 'range') || tag === 'textarea' || tag === 'select') return;
    const key = {' ': playing ? 'dlm-pause' : 'dlm-play', 'ArrowLeft': 'dlm-back', 'ArrowRight': 'dlm-forward'}[e.key];
    const button = key && visible(key);
    if (button) { e.preventDefault(); button.click(); }
  });
  document.addEventListener('click', e => {  // plotly keeps the points under the pointer in _hoverdata
    const div = e.target.closest && e.target.closest('#latent .js-plotly-plot');
    const point = div && (div._hoverdata || [])[0];
    if (!point || point.customdata === undefined) return;
    const index = Array.isArray(point.customdata) ? point.customdata[0] : point.customdata;
    const box = document.querySelector('#jump textarea, #jump input');
    if (!box) return;
    box.value = index + '|' + Date.now();
    box.dispatchEvent(new Event('input', {bubbles: true}));
  }, true);
})();
</script>
"""


@dataclass
class Session:
    """One browser session's runs: never shared between users. Gradio holds the object (a gr.State per session)
    and the handlers change it in place, so that the page's memory budget (`SessionMemory`), which holds the same
    object, can drop its runs. Traces are kept packed (`pack_frame`) and never changed once stored."""

    trace: Trace | None = None  # the run on the Denoise tab (the first of N)
    runs: list[Trace] = field(default_factory=list)  # all N runs
    history: list[Trace] = field(default_factory=list)  # traces before each hand edit (Rewind pops one)
    compared: list[Trace] = field(default_factory=list)  # the Compare tab's runs
    sample_texts: dict[int, list[str]] = field(default_factory=dict)  # calm: frame -> its head samples decoded
    vocabulary: tuple | None = None  # cdcd: the token embedding cloud and its strings, taken once after the run
    tab: str = "denoise"  # the visible tab (the latent plot is drawn only when its tab is shown)
    model_path: Path | None = None  # the resolved folder of the model that made `trace` (None: loaded or example)
    key: str | None = None  # the browser session (Gradio's session hash) once its runs are counted
    dropped: str = ""  # why the runs are gone (the memory budget dropped them), shown instead of "Generate first"

    def __deepcopy__(self, memo) -> Session:
        """Gradio deep-copies a State's first value for each visitor: share the first paint's (read-only) traces."""
        return replace(self, runs=list(self.runs), history=list(self.history), compared=list(self.compared))

    def nbytes(self) -> int:
        traces = {id(t): t for t in [self.trace, *self.runs, *self.history, *self.compared] if t is not None}
        vocabulary = held_bytes(self.vocabulary[0].numpy()) + 100 * len(self.vocabulary[1]) if self.vocabulary else 0
        return sum(trace_bytes(t) for t in traces.values()) + held_bytes(self.sample_texts) + vocabulary

    def drop(self, why: str = DROPPED) -> None:
        """Let go of every run (the memory budget needs the room, or the tab closed)."""
        self.trace, self.runs, self.history, self.compared = None, [], [], []
        self.sample_texts, self.vocabulary, self.model_path, self.dropped = {}, None, None, why


def missing(session: Session | None, what: str) -> str:
    """What to say when the session has no run: that it was dropped, if it was, else `what`."""
    return session.dropped if session is not None and session.dropped else what


def user_key(request: gr.Request | None) -> str:
    return request.session_hash if request is not None else "local"


def keep(session: Session, request: gr.Request | None) -> Session:
    """Count the session's runs (just changed) against the page's memory budget, as used now."""
    session.key, session.dropped = user_key(request), ""
    page().memory.keep(session.key, session, session.nbytes())
    return session


class Page:
    """The page's server-side state shared by all users: allowed roots, loaded models, runs in flight, the memory
    budget over every session's runs."""

    def __init__(self, roots: list[Path] | None = None, released_options: dict | None = None,
                 memory_mb: float = MEMORY_BUDGET_MB):
        self.roots = [Path(r) for r in (roots or default_roots())]
        self.models = ModelCache(released_options=released_options, roots=self.roots)
        self.registry = RunRegistry()
        self.memory = SessionMemory(memory_mb)
        self.examples = load_examples()
        self.exports = Path(tempfile.mkdtemp(prefix="dlm-export-"))

    def choices(self) -> list[str]:
        """Shipped names first, then the other checkpoint folders under the roots (a shipped one listed once)."""
        shipped = explorer.shipped()
        known = {folder.resolve() for folder in shipped.values()}
        return list(shipped) + [label for label, folder in local_checkpoints(self.roots).items()
                                if folder.resolve() not in known]

    def path(self, choice: str) -> Path:
        return resolve_checkpoint(choice, self.roots)

    def model(self, choice: str):
        return self.models.get(self.path(choice))

    def public(self, message: str) -> str:
        """`message` without the server's paths (see `explorer.webapp.public`)."""
        return public(message, self.roots)


PAGE: Page | None = None


def page() -> Page:
    global PAGE
    if PAGE is None:
        PAGE = Page()
    return PAGE


# --- small HTML pieces -----------------------------------------------------------------------------------------

# Every message and every value from a trace (a loaded file is anyone's) is escaped before it goes into HTML or
# Markdown, and messages name no server path (`Page.public`).

def error_box(message: str) -> str:
    return ('<div class="dlm-error" style="border:1px solid #d62728;background:#fdecea;color:#8a1c1c;'
            f'padding:8px 12px;border-radius:6px"><b>Cannot do that:</b> {text(page().public(message))}</div>')


def notice_box(messages: list[str]) -> str:
    """Warnings that do not stop a run (e.g. a block size the checkpoint was not trained with)."""
    if not messages:
        return ""
    return ('<div class="dlm-warning" style="border:1px solid #b8860b;background:#fff8e1;color:#5c4400;'
            'padding:8px 12px;border-radius:6px"><b>Note:</b> '
            + "<br>".join(text(page().public(m)) for m in messages) + "</div>")


def warn(message: str) -> None:
    """A toast (Gradio renders its message as HTML)."""
    gr.Warning(html.escape(page().public(message), quote=False))


def text(value) -> str:
    """Any value as HTML text."""
    return html.escape(str(value))


def stats_line(trace: Trace, running: bool = False, runs: int = 1) -> str:
    s = trace.stats
    if running:
        return f"step {text(s['steps'])} · nfe {text(s['nfe'])} · {s['wall_s']:.2f} s so far …"
    caches = sorted({f.cache for f in trace.frames if f.cache})
    extra = (f" · cache {'/'.join(caches)}" if caches else "") + (f" · stopped: {s['stop']}" if "stop" in s else "")
    extra += f" · {runs} runs (stats of the first)" if runs > 1 else ""
    return (f"**nfe** {text(s['nfe'])} · **wall** {s['wall_s']:.2f} s · **{s['tokens_per_s']:.1f} tokens/s** · "
            f"{len(trace.frames)} frames · {text(trace.model['name'])} ({text(trace.model['family'])}), sampler "
            f"{text(trace.sampler['name'])}{text(extra)}")


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 15})
    fig.update_layout(height=300, xaxis={"visible": False}, yaxis={"visible": False})
    return fig


# --- what one frame of a session looks like ---------------------------------------------------------------------

def latent_figure(session: Session, index: int, method: str, source: str = "this run"):
    """The Latent tab's plot for frame `index` of the session's run (or the compared runs at the same progress)."""
    if source == "compared runs":
        runs = [unpacked(t) for t in session.compared if t.frames[-1].hidden is not None]
        if len(runs) < 1:
            return empty_figure(missing(session, "No compared run has hidden states: compare runs of the ar, mdlm "
                                                 "or bd3lm families"))
        progress = index / max(len(session.trace.frames) - 1, 1) if session.trace else 1.0
        return hidden_state_paths(runs, method=method, upto=[frame_at_progress(t, progress) for t in runs])
    if session.trace is None:
        return empty_figure(missing(session, "Generate first"))
    trace = unpacked(session.trace)
    family = trace.model["family"]
    if family == "calm" and trace.frames[-1].samples:
        return head_samples(trace, index, session.sample_texts.get(index % len(trace.frames)))
    if family == "cdcd" and trace.frames[-1].latent is not None:
        if session.vocabulary is None:  # a loaded trace: take the cloud from its checkpoint
            session.vocabulary = vocabulary_points(trace_model(session))
        points, strings = session.vocabulary
        return latent_trajectories(trace, points, strings, upto=index, method=method)
    if trace.frames[-1].hidden is not None:
        return hidden_state_paths([trace], method=method, upto=index)
    return empty_figure("This trace has no continuous states (record it at level 'full')")


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


def show(session: Session, index: int, color_by: str, method: str = "pca", source: str = "this run") -> tuple:
    """(canvas, heatmap, step slider, latent-tab canvas, latent slider, latent plot, edit-tab canvas, N runs) for a
    stored frame: replay never runs the model."""
    trace = session.trace
    if session.key:
        page().memory.touch(session.key)
    last = len(trace.frames) - 1
    index = min(max(int(index) if int(index) >= 0 else last + 1 + int(index), 0), last)  # -1 = the last frame
    view = tokens_html(trace, index, color_by)
    latent = latent_figure(session, index, method, source) if session.tab == "latent" else gr.skip()
    multiples = small_multiples_html(session.runs, index, color_by) if len(session.runs) > 1 else ""
    paused = (f'<div class="dlm-paused" style="font-size:15px;color:#555">paused at step '
              f"{text(trace.frames[index].step)} of {text(trace.frames[-1].step)} (frame {index}; scrub on the Denoise "
              "tab)</div>")
    return view, step_heatmap(trace, index), index, view, index, latent, paused + view, multiples


def slider_range(trace: Trace) -> dict:
    last = len(trace.frames) - 1
    return {"minimum": 0, "maximum": max(last, 1), "value": last, "interactive": True}


# --- Denoise -----------------------------------------------------------------------------------------------------

def family_controls(choice):
    """Show the family's samplers and knobs (calm: K, the algorithm, N head samples and a temperature in (0, 1]
    instead of steps, blocks, cache and threshold); block diffusion sets the block size it was trained with.
    A released folder (LLaDA, Dream: no "family" in its config.json) gets the mdlm controls."""
    try:
        path = page().path(choice)
        config = read_config(path)
    except (ValueError, FileNotFoundError):
        return tuple(gr.skip() for _ in range(10))
    try:
        family = family_at(path, config)
    except ValueError as err:  # a config.json of no layout we know: say so rather than show no sampler
        warn(str(err))
        return tuple(gr.skip() for _ in range(10))
    choices = list(SAMPLERS.get(family, ()))
    calm = family == "calm"
    block, steps, temperature = {}, {}, {"minimum": 0, "maximum": 2, "info": TEMPERATURE_INFO}
    if family == "bd3lm":
        block = steps = {"value": config.get("model", config)["block_size"]}  # ours nest it; releases do not
    if family == "cdcd":  # CDCD's ~200 Euler steps; temperature 1 = the model's own softmax in E[x0]
        steps, temperature["value"] = {"value": 200}, 1.0
    if calm:  # temperature 1 decodes one head sample per chunk
        temperature = {"value": 1.0, "minimum": 0.05, "maximum": 1, "info": CALM_TEMPERATURE_INFO}
    n = ({"minimum": 2, "maximum": MAX_CANDIDATES, "value": 200, "label": "N (head samples per chunk)"} if calm else
         {"minimum": 1, "maximum": MAX_RUNS, "value": 1, "label": "N (runs drawn at once, seeds seed .. seed+N-1)"})
    chunk_sizes = calm_chunk_sizes()
    guided = family in ("mdlm", "cdcd")
    return (gr.update(choices=choices, value=choices[0] if choices else None,
                      label="algorithm (temperature below 1)" if calm else "sampler (remasking rule)"),
            gr.update(value=CACHES.get(family, ["none"])[0], visible=not calm),
            gr.update(visible=not calm and family != "cdcd", **block), gr.update(visible=not calm, **steps),
            gr.update(**temperature), gr.update(visible=not calm), gr.update(**n),
            gr.update(choices=sorted(set(chunk_sizes.values())), value=chunk_sizes.get(path.name), visible=calm),
            gr.update(visible=guided), gr.update(visible=guided))


def chat_control(choice):
    """The "chat template" box: shown and ticked for a folder whose tokenizer has a chat template, hidden otherwise."""
    try:
        offered = has_chat_template(page().path(choice))
    except (ValueError, FileNotFoundError):
        offered = False
    return gr.update(visible=offered, value=offered)


def on_chunk_size(chunk_size, choice):
    """Switch to the calm checkpoint that packs `chunk_size` tokens per vector (the current one if it does)."""
    if calm_chunk_sizes().get(choice) == chunk_size:
        return gr.skip()
    return gr.update(value=calm_for_chunk(int(chunk_size)))


def decoded_samples(model, trace: Trace) -> dict[int, list[str]]:
    """calm: the chunk each head sample decodes to (the autoencoder's argmax, as the sampler decodes), per frame;
    computed once after the run so that replay needs no model."""
    out = {}
    with torch.no_grad():
        for index, frame in enumerate(trace.frames):
            if frame.samples is not None and len(frame.samples):
                samples = torch.as_tensor(np.asarray(frame.samples, dtype=np.float32), device=model.device)
                chunks = model.autoencoder.decode(samples).argmax(-1)
                out[index] = ["".join(display_string(model.tokenizer, t) for t in c) for c in chunks.tolist()]
    return out


def generate(checkpoint, prompt, sampler, gen_length, steps, block_length, temperature, threshold, seed, color_by,
             cache=None, n=1, cfg_scale=0.0, constraints="", chat=True, session=None, request: gr.Request = None):
    """Stream a generation (N runs in lockstep): the canvas every step, the heatmap every PLOT_EVERY_S. `chat`: wrap
    the prompt in the checkpoint's chat template, when it has one."""
    session = session if session is not None else Session()
    user = user_key(request)
    out = Outputs()
    token = None
    try:
        token = page().registry.start(user)
        path = page().path(checkpoint)
        model = page().models.get(path)
        chunk = model.config.autoencoder.chunk if model.family == "calm" else 1
        req = Request(sampler, int(gen_length), int(steps), int(block_length), float(temperature),
                      float(threshold), cache, int(n), float(cfg_scale or 0), constraints or "")
        check_request(model.family, req, chunk)
        knobs = sampler_knobs(model.family, req)
        given = model_prompt(model, prompt or "", bool(chat))
        live = LiveRuns(model, given, sampler, int(seed or 0), 1 if model.family == "calm" else req.n, knobs)
        last_plot = 0.0
        for traces in live:
            plot = gr.skip()
            if time.perf_counter() - last_plot > PLOT_EVERY_S:
                plot, last_plot = step_heatmap(traces[0]), time.perf_counter()
            yield out(view=tokens_html(traces[0], -1, color_by), stats=stats_line(traces[0], True),
                      error=notice_box(live.notices), plot=plot, step=gr.update(interactive=False),
                      multiples=small_multiples_html(traces, -1, color_by) if len(traces) > 1 else "")
        traces = live.traces
    except ValueError as err:  # samplers name the bad knob, its value and the allowed range
        warn(str(err))
        yield out(error=error_box(str(err)), step=gr.update(interactive=True))
        return
    finally:
        if token is not None:
            page().registry.finish(user, token)
    for message in live.notices:
        warn(message)
    session.trace, session.runs, session.history, session.model_path = traces[0], traces, [], path
    session.sample_texts = decoded_samples(model, traces[0]) if model.family == "calm" else {}
    session.vocabulary = vocabulary_points(model) if model.family == "cdcd" else None
    keep(session, request)
    view, plot, _step, latent_view, _latent_step, latent, edit_view, multiples = show(session, -1, color_by)
    stats = stats_line(traces[0], False, len(traces)) + prompt_note(prompt or "", given)
    yield out(view=view, stats=stats, error=notice_box(live.notices), plot=plot,
              step=gr.update(**slider_range(traces[0])), session=session, multiples=multiples,
              latent_view=latent_view, latent_step=gr.update(**slider_range(traces[0])), latent=latent,
              edit_view=edit_view)


def rerun_on_release(*args, request: gr.Request = None):
    """A slider was released: re-run (the inputs of `generate`) when the last input, the "re-run when a slider is
    released" box, is ticked; otherwise leave the page as it is."""
    if not args[-1]:
        yield Outputs()()
        return
    yield from generate(*args[:-1], request=request)


def with_request(handler):
    """`handler(*inputs, request=...)` (a generator) as Gradio calls it: Gradio hands the request only to a parameter
    before any *inputs, so without this every user of the handler would be one user ("local")."""
    def event(request: gr.Request, *inputs):
        yield from handler(*inputs, request=request)
    return event


class Outputs:
    """The outputs of /generate, /resume and /load_trace in order; the ones not given are left as they are."""

    names = ("view", "stats", "error", "plot", "step", "session", "multiples", "latent_view", "latent_step", "latent",
             "edit_view")

    def __call__(self, **values) -> tuple:
        unknown = set(values) - set(self.names)
        if unknown:
            raise TypeError(f"unknown outputs {sorted(unknown)}")
        return tuple(values.get(name, gr.skip()) for name in self.names)


def replay(session, step, color_by, method="pca", source="this run"):
    """Redraw a stored frame (no model call)."""
    if session is None or session.trace is None:
        what = missing(session, "Generate first; then the step slider replays the recorded frames.")
        return (f"<i>{text(what)}</i>",) + (gr.skip(),) * 7
    return show(session, step, color_by, method, source)


def step_by(delta: int):
    def handler(session, step, color_by, method="pca", source="this run"):
        """Move the scrubber one frame (no model call)."""
        if session is None or session.trace is None:
            return replay(session, step, color_by)
        return show(session, int(step) + delta, color_by, method, source)
    return handler


def play(session, step, color_by, fps, method="pca", source="this run"):
    """Advance the scrubber frame by frame from `step` to the end (from the start if already there); Pause
    cancels. Replays stored frames only."""
    if session is None or session.trace is None:
        yield replay(session, step, color_by)
        return
    last = len(session.trace.frames) - 1
    start = 0 if int(step) >= last else int(step) + 1
    for index in range(start, last + 1):
        yield show(session, index, color_by, method, source)
        time.sleep(1.0 / max(float(fps), 0.5))


def stop(request: gr.Request = None):
    """The Stop button: cancels the running generation (wired with `cancels`) and frees the user's run slot."""
    page().registry.cancel(user_key(request))
    return notice_box(["run stopped"])


def close_session(request: gr.Request):
    """The tab closed (or reloaded; Gradio hears its heartbeat connection end): let go of its runs now. Gradio keeps
    its own record of the session (the last value of each output, about a megabyte) for reconnects, at most
    STATE_SESSIONS of them."""
    page().memory.forget(user_key(request))


# --- Compare -----------------------------------------------------------------------------------------------------

def default_sampler(choice: str) -> str | None:
    try:
        return SAMPLERS[family_at(page().path(choice))][0]
    except (ValueError, FileNotFoundError, KeyError):
        return None


def compare_knobs(family: str, gen_length: int, steps: int, temperature: float) -> Request:
    """One compared run's controls: the shared length, steps and temperature, each family's own block size."""
    block = gen_length
    if family == "calm":
        temperature = min(max(temperature, 0.05), 1.0) if temperature > 0 else 1.0
    return Request(None, gen_length, steps, block, temperature, n=200 if family == "calm" else 1)


def compare(prompt, gen_length, steps, temperature, seed, color_by, *slots, request: gr.Request = None):
    """Run the enabled slots one after another on the same prompt (in the chat template of each checkpoint that has
    one, when the box is ticked); each run's panel fills in live."""
    chat, session_in = slots[-2:]
    slots = slots[:-2]
    session = session_in if session_in is not None else Session()
    user = user_key(request)
    specs = [(slots[i + 1], slots[i + 2]) for i in range(0, 3 * COMPARE_SLOTS, 3) if slots[i] and slots[i + 1]]
    token = None
    try:
        if not 2 <= len(specs) <= COMPARE_SLOTS:
            raise ValueError(f"compare needs 2 to {COMPARE_SLOTS} enabled runs with a checkpoint, got {len(specs)}")
        token = page().registry.start(user)
        done: list[Trace] = []
        for choice, sampler in specs:
            model = page().model(choice)
            if sampler not in SAMPLERS[model.family]:
                raise ValueError(f"sampler must be one of {SAMPLERS[model.family]} for {choice}, got {sampler!r}")
            req = compare_knobs(model.family, int(gen_length), int(steps), float(temperature))
            req.sampler = sampler
            if model.family == "bd3lm":
                req.block_length = req.steps = model.block_size
            check_request(model.family, req, model.config.autoencoder.chunk if model.family == "calm" else 1)
            given = model_prompt(model, prompt or "", bool(chat))
            live = LiveRuns(model, given, sampler, int(seed or 0), 1, sampler_knobs(model.family, req))
            for traces in live:
                yield (side_by_side_html(done + traces, 1.0, color_by), gr.skip(), gr.skip(), "", gr.skip())
            done.append(live.traces[0])
        session.compared = done
        keep(session, request)
    except ValueError as err:
        yield gr.skip(), gr.skip(), gr.skip(), error_box(str(err)), gr.skip()
        return
    finally:
        if token is not None:
            page().registry.finish(user, token)
    yield (side_by_side_html(done, 1.0, color_by), progress_plot(done, 1.0), compare_table(done), "",
           session)


def compare_table(traces: list[Trace]) -> str:
    rows = ["| run | steps | nfe | wall (s) | tokens/s | text |", "|---|---|---|---|---|---|"]
    for trace in traces:
        s = trace.stats
        said = html.escape(trace.text.replace("\n", " ")[:60]).replace("|", "\\|")
        label = html.escape(run_label(trace)).replace("|", "\\|")
        rows.append(f"| {label} | {text(s['steps'])} | {text(s['nfe'])} | {s['wall_s']:.2f} | "
                    f"{s['tokens_per_s']:.1f} | {said} |")
    return "\n".join(rows)


def compare_view(session, progress, color_by):
    """The compared runs at `progress` in [0, 1] of each run (no model call)."""
    if session is None or not session.compared:
        return f"<i>{text(missing(session, 'Run a comparison first.'))}</i>", gr.skip()
    return side_by_side_html(session.compared, float(progress), color_by), progress_plot(session.compared,
                                                                                          float(progress))


def compare_play(session, progress, color_by, fps):
    if session is None or not session.compared:
        yield compare_view(session, progress, color_by) + (gr.skip(),)
        return
    frames = max(len(t.frames) for t in session.compared)
    start = 0 if float(progress) >= 1 else float(progress)
    for k in range(round(start * (frames - 1)), frames):
        value = k / max(frames - 1, 1)
        yield compare_view(session, value, color_by) + (value,)
        time.sleep(1.0 / max(float(fps), 0.5))


def slot_samplers(choice):
    try:
        names = list(SAMPLERS[family_at(page().path(choice))])
    except (ValueError, FileNotFoundError, KeyError):
        return gr.skip()
    return gr.update(choices=names, value=names[0])


# --- Latent space ------------------------------------------------------------------------------------------------

def on_tab(session, step, color_by, method, source, evt: gr.SelectData):
    """Remember the visible tab; draw the latent plot when its tab opens."""
    session = session if session is not None else Session()
    session.tab = "latent" if "Latent" in str(evt.value) else "other"
    if session.tab != "latent" or session.trace is None:
        return session, gr.skip()
    return session, latent_figure(session, int(step), method, source)


def latent(session, step, method, source):
    """The latent plot for frame `step` (PCA or UMAP, this run or the compared runs)."""
    if session is None or session.trace is None:
        return empty_figure(missing(session, "Generate first"))
    try:
        return latent_figure(session, int(step), method, source)
    except ValueError as err:
        return empty_figure(str(err))


def jump(session, value, color_by, method, source):
    """A click on a latent-plot point (its frame index arrives as 'INDEX|time' in the hidden #jump box)."""
    if session is None or session.trace is None or not value:
        return (gr.skip(),) * 8
    index = value.split("|")[0]
    if not index.lstrip("-").isdigit():
        return (gr.skip(),) * 8
    return show(session, int(index), color_by, method, source)


# --- Edit and infill ---------------------------------------------------------------------------------------------

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
                yield out(view=tokens_html(partial, -1, color_by), edit_view=tokens_html(partial, -1, color_by),
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


def edited_outputs(session: Session, color_by: str) -> tuple:
    view, plot, _step, latent_view, _ls, latent_plot, edit_view, multiples = show(session, -1, color_by)
    rng = slider_range(session.trace)
    return Outputs()(view=view, stats=stats_line(session.trace), error="", plot=plot, step=gr.update(**rng),
                     session=session, multiples=multiples, latent_view=latent_view, latent_step=gr.update(**rng),
                     latent=latent_plot, edit_view=edit_view)


def rewind(session, color_by, request: gr.Request = None):
    """Undo the last hand edit: back to the trace before it (at most MAX_REWIND edits back)."""
    if session is None or not session.history:
        return Outputs()(error=notice_box([missing(session, "nothing to rewind: no hand edit yet")]))
    session.trace, session.history = session.history[-1], session.history[:-1]
    session.runs = [session.trace]
    keep(session, request)
    return edited_outputs(session, color_by)


# --- Export and load ---------------------------------------------------------------------------------------------

EXPORT_TTL_S = 600.0  # an export's own copy is deleted after this (Gradio serves the download from its cache)


def export(kind: str):
    def handler(session, color_by):
        """Write the session's trace as a file to download: 'json', 'html' (animation) or 'gif'."""
        if session is None or session.trace is None:
            return None, error_box(missing(session, "nothing to export: generate or load a trace first"))
        trace = session.trace
        folder = export_folder()
        target = folder / f"{safe_filename(str(trace.model['name']) + '-' + str(trace.sampler['name']))}.{kind}"
        try:
            if kind == "json":
                unpacked(trace).save(target)
            elif kind == "html":
                target.write_text(trace_animation_html(trace, color_by=color_by), encoding="utf-8")
            else:
                trace_gif(trace, target, color_by=color_by)
        except ValueError as err:
            return None, error_box(str(err))
        return str(target), ""
    return handler


def export_folder() -> Path:
    """A fresh folder for one export under the page's, after deleting the exports older than EXPORT_TTL_S."""
    page().exports.mkdir(parents=True, exist_ok=True)  # a temporary-file cleaner may have taken it
    for old in page().exports.iterdir():
        if time.time() - old.stat().st_mtime > EXPORT_TTL_S:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=page().exports))


def load_trace(file, color_by, session, request: gr.Request = None):
    """Load a trace JSON (written here or by the CLI; at most MAX_UPLOAD_MB, checked field by field) into the
    Denoise view; it replays without its model. The outputs of /generate, then the Export tab's message box."""
    try:
        if file is None:
            raise ValueError("choose a trace JSON file to load")
        trace = Trace.load(file if isinstance(file, str) else file.name, max_bytes=int(MAX_UPLOAD_MB * 1e6))
    except (ValueError, OSError) as err:
        message = error_box(f"could not load the trace: {err}")
        return Outputs()(error=message) + (message,)
    for frame in trace.frames:
        pack_frame(frame)
    session = session if session is not None else Session()
    session.trace, session.runs, session.history, session.sample_texts = trace, [trace], [], {}
    session.vocabulary, session.model_path = None, None
    keep(session, request)
    return edited_outputs(session, color_by) + ("",)


# --- layout ------------------------------------------------------------------------------------------------------

def first_paint(examples: dict[str, Trace]) -> tuple[Session, list[Trace]]:
    """The session every visitor starts with: precomputed example traces, drawn before any model runs."""
    denoise = examples.get("mdlm-tiny")
    compared = [examples[k] for k in ("ar-tiny", "mdlm-tiny", "bd3lm-tiny-b16", "calm-tiny-k4") if k in examples]
    return Session(trace=denoise, runs=[denoise] if denoise else [], compared=compared), compared


def build_demo(roots: list[Path] | None = None, released_options: dict | None = None,
               memory_mb: float = MEMORY_BUDGET_MB) -> gr.Blocks:
    """The page. `released_options`: explorer.load's device / dtype / device_map for released folders; `memory_mb`:
    the budget over every session's runs (the least recently used are dropped beyond it)."""
    global PAGE
    PAGE = Page(roots, released_options, memory_mb)
    names = PAGE.choices()
    default = "mdlm-tiny" if "mdlm-tiny" in names else (names[0] if names else None)
    every_sampler = list(dict.fromkeys(name for family in SAMPLERS.values() for name in family))  # the API takes all
    start, compared = first_paint(PAGE.examples)
    trace = start.trace
    # the scrubbers over the first paint's frames (Gradio lets positional arguments win over keywords: none here)
    first_range = slider_range(trace) if trace else {"minimum": 0, "maximum": 1, "value": 0}
    # Gradio's copies of uploads and downloads are deleted once an hour old (checked every 10 minutes)
    with gr.Blocks(title="diffusion-LM explorer", delete_cache=(600, 3600)) as demo:
        gr.Markdown("# diffusion-LM explorer\nWatch a masked canvas turn into text, step by step; compare samplers "
                    "and families; look at the latent space; edit a run; export it. The first view is a "
                    "precomputed example: press **Generate** to run a model.")
        session = gr.State(start)
        with gr.Tabs() as tabs:
            with gr.Tab("Denoise", id="denoise"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=320):
                        checkpoint = gr.Dropdown(names, value=default, label="checkpoint", elem_id="checkpoint",
                                                 allow_custom_value=True,
                                                 info="a shipped checkpoint, or a folder under: "
                                                      + root_names(PAGE.roots))
                        prompt = gr.Textbox("ROMEO:", label="prompt", lines=2, elem_id="prompt")
                        chat = gr.Checkbox(True, label="chat template", elem_id="chat_template", visible=False,
                                           info="wrap the prompt as one user turn in the checkpoint's chat template "
                                                "(what an Instruct model was tuned on)")
                        sampler = gr.Radio(every_sampler, value=SAMPLERS["mdlm"][0], label="sampler (remasking rule)",
                                           elem_id="sampler",
                                           info="masked diffusion: remasking rule, Fast-dLLM threshold / factor, MDLM "
                                                "ancestral, draft_refine; block diffusion: first_hitting or a rule "
                                                "inside each block; ar: left to right; continuous diffusion: euler; "
                                                "CALM: exact (Alg. 1, any T) or batch (N candidates, T = 1/n)")
                        chunk_size = gr.Radio([], label="K (tokens per vector)", elem_id="chunk_size", visible=False,
                                              info="CALM: tokens packed into one latent vector; switches checkpoint")
                        gen_length = gr.Slider(1, MAX_LENGTH, 64, step=1, label="gen length", elem_id="gen_length")
                        steps = gr.Slider(1, 2 * MAX_LENGTH, 64, step=1, label="steps", elem_id="steps",
                                          info="network evaluations, split over the blocks (block diffusion: per block)")
                        block_length = gr.Slider(1, 128, 64, step=1, label="K (block size)", elem_id="block_length",
                                                 info="semi-autoregressive blocks (gen length a multiple); block "
                                                      "diffusion: tokens per block, must divide the context")
                        # the API checks N against this maximum: the largest any family takes (family_controls
                        # narrows the slider; check_request and the calm sampler refuse what a family does not take)
                        n_runs = gr.Slider(1, max(MAX_RUNS, MAX_CANDIDATES), 1, step=1, label="N (runs drawn at "
                                           "once, seeds seed .. seed+N-1)", elem_id="n_runs")
                        temperature = gr.Slider(0, 2, 0, step=0.05, label="temperature", elem_id="temperature",
                                                info=TEMPERATURE_INFO)
                        with gr.Accordion("more knobs", open=False):
                            threshold = gr.Slider(0.05, 1, 0.9, step=0.05, label="threshold", elem_id="threshold",
                                                  info="threshold sampler: commit every token at least this sure")
                            cfg_scale = gr.Slider(0, 4, 0, step=0.25, label="guidance (cfg scale)",
                                                  elem_id="cfg_scale", info="classifier-free guidance (mdlm, cdcd)")
                            cache = gr.Radio(EVERY_CACHE, value="none", label="cache", elem_id="cache",
                                             info="masked diffusion: Fast-dLLM prefix / dual cache (approximate); "
                                                  "block diffusion: exact KV cache or recompute")
                            constraints = gr.Textbox("", label="word constraints", elem_id="constraints",
                                                     placeholder="0:Once, 5:upon",
                                                     info="pin words at generated positions (mdlm, cdcd)")
                            seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
                            auto = gr.Checkbox(False, label="re-run when a slider is released", elem_id="auto")
                        with gr.Row():
                            run = gr.Button("Generate", variant="primary", elem_id="generate")
                            stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                    with gr.Column(scale=2):
                        error = gr.HTML("", elem_id="error")
                        view = gr.HTML(tokens_html(trace) if trace else "<i>Press Generate.</i>", elem_id="tokens")
                        with gr.Row():
                            back = gr.Button("◀ step", elem_id="back", elem_classes="dlm-back", min_width=60)
                            play_button = gr.Button("▶ play", elem_id="play", elem_classes="dlm-play", min_width=60)
                            pause = gr.Button("❚❚ pause", elem_id="pause", elem_classes="dlm-pause", min_width=60)
                            forward = gr.Button("step ▶", elem_id="forward", elem_classes="dlm-forward",
                                                min_width=60)
                            fps = gr.Slider(1, 20, 6, step=1, label="frames / s", elem_id="fps", min_width=120)
                        with gr.Row():
                            step = gr.Slider(step=1, label="step (replays recorded frames)", elem_id="step",
                                             **first_range)
                            color_by = gr.Radio(list(COLOR_MODES), value=COLOR_MODES[0], label="colour by",
                                                elem_id="color_by")
                        stats = gr.Markdown(stats_line(trace) if trace else "", elem_id="stats")
                        multiples = gr.HTML("", elem_id="multiples")
                        plot = gr.Plot(step_heatmap(trace) if trace else None, elem_id="heatmap", show_label=False)
                        gr.Markdown(LEARN["denoise"], elem_classes="dlm-learn")
            with gr.Tab("Compare", id="compare"):
                slot_inputs = []
                shipped = list(explorer.shipped())
                defaults = [c for c in ("ar-tiny", "mdlm-tiny", "bd3lm-tiny-b16", "calm-tiny-k4") if c in shipped]
                with gr.Row():
                    for k in range(COMPARE_SLOTS):
                        with gr.Column(min_width=200):
                            choice = defaults[k] if k < len(defaults) else None
                            on = gr.Checkbox(k < 3, label=f"run {k + 1}", elem_id=f"slot{k}_on")
                            slot_ckpt = gr.Dropdown(names, value=choice, label="checkpoint", elem_id=f"slot{k}_ckpt",
                                                    allow_custom_value=True)
                            slot_sampler = gr.Dropdown(every_sampler, value=default_sampler(choice) if choice else None,
                                                       label="sampler", elem_id=f"slot{k}_sampler")
                            slot_ckpt.change(slot_samplers, slot_ckpt, slot_sampler, api_name=False)
                            slot_inputs += [on, slot_ckpt, slot_sampler]
                with gr.Row():
                    c_prompt = gr.Textbox("ROMEO:", label="prompt", elem_id="c_prompt", scale=2)
                    c_length = gr.Slider(4, 128, 32, step=4, label="gen length", elem_id="c_length")
                    c_steps = gr.Slider(1, 128, 32, step=1, label="steps", elem_id="c_steps")
                    c_temperature = gr.Slider(0, 2, 0, step=0.05, label="temperature", elem_id="c_temperature")
                    c_seed = gr.Number(0, precision=0, label="seed", elem_id="c_seed")
                    c_chat = gr.Checkbox(True, label="chat template", elem_id="c_chat",
                                         info="for checkpoints whose tokenizer has one (released Instruct models)")
                with gr.Row():
                    c_run = gr.Button("Compare", variant="primary", elem_id="c_run")
                    c_stop = gr.Button("Stop", variant="stop", elem_id="c_stop")
                c_error = gr.HTML("", elem_id="c_error")
                with gr.Row():
                    c_play = gr.Button("▶ play", elem_id="c_play", elem_classes="dlm-play", min_width=60)
                    c_pause = gr.Button("❚❚ pause", elem_id="c_pause", elem_classes="dlm-pause", min_width=60)
                    progress = gr.Slider(0, 1, 1, step=0.01, label="progress through each run", elem_id="progress")
                side = gr.HTML(side_by_side_html(compared, 1.0) if compared else "", elem_id="side_by_side")
                c_plot = gr.Plot(progress_plot(compared, 1.0) if compared else None, elem_id="progress_plot",
                                 show_label=False)
                c_table = gr.Markdown(compare_table(compared) if compared else "", elem_id="c_table")
                gr.Markdown(LEARN["compare"], elem_classes="dlm-learn")
            with gr.Tab("Latent space", id="latent_tab"):
                with gr.Row():
                    source = gr.Radio(["this run", "compared runs"], value="this run", label="states of",
                                      elem_id="latent_source")
                    method = gr.Radio(["pca", "umap"], value="pca", label="projection", elem_id="method",
                                      info="UMAP takes a few seconds per fit (cached while you scrub); PCA is instant")
                latent_step = gr.Slider(step=1, label="step", elem_id="latent_step", **first_range)
                latent_view = gr.HTML("", elem_id="latent_tokens")
                latent_plot = gr.Plot(elem_id="latent", show_label=False)
                jump_box = gr.Textbox("", elem_id="jump", show_label=False, container=False)
                gr.Markdown(LEARN["latent"], elem_classes="dlm-learn")
            with gr.Tab("Edit and infill", id="edit"):
                gr.Markdown(LEARN["edit"], elem_classes="dlm-learn")
                edit_view = gr.HTML("", elem_id="edit_tokens")
                with gr.Row():
                    position = gr.Number(0, precision=0, label="position (0 = first generated token)",
                                         elem_id="position")
                    show_candidates = gr.Button("Show candidates", elem_id="show_candidates")
                choices = gr.Radio([], label="the model's top candidates at that position", elem_id="candidates")
                with gr.Row():
                    resume_button = gr.Button("Continue with this token", variant="primary", elem_id="resume")
                    rewind_button = gr.Button("Rewind the last edit", elem_id="rewind")
                edit_error = gr.HTML("", elem_id="edit_error")
            with gr.Tab("Export", id="export"):
                gr.Markdown(LEARN["export"], elem_classes="dlm-learn")
                with gr.Row():
                    json_button = gr.Button("Trace JSON", elem_id="export_json")
                    html_button = gr.Button("HTML animation", elem_id="export_html")
                    gif_button = gr.Button("GIF", elem_id="export_gif")
                download = gr.File(label="download", elem_id="download", interactive=False)
                upload = gr.File(label="load a trace JSON", file_types=[".json"], elem_id="upload")
                export_error = gr.HTML("", elem_id="export_error")

        controls = [sampler, cache, block_length, steps, temperature, threshold, n_runs, chunk_size, cfg_scale,
                    constraints]
        checkpoint.change(family_controls, checkpoint, controls, api_name=False)
        demo.load(family_controls, checkpoint, controls, api_name=False)  # the family's samplers only
        checkpoint.change(chat_control, checkpoint, chat, api_name=False)
        demo.load(chat_control, checkpoint, chat, api_name=False)
        chunk_size.input(on_chunk_size, [chunk_size, checkpoint], checkpoint, api_name=False)
        run_inputs = [checkpoint, prompt, sampler, gen_length, steps, block_length, temperature, threshold, seed,
                      color_by, cache, n_runs, cfg_scale, constraints, chat, session]
        run_outputs = [view, stats, error, plot, step, session, multiples, latent_view, latent_step, latent_plot,
                       edit_view]
        runs = {"concurrency_id": "runs", "concurrency_limit": RUN_CONCURRENCY}
        generation = run.click(generate, run_inputs, run_outputs, api_name="generate", **runs)

        for slider in (gen_length, steps, block_length, n_runs, temperature):
            slider.release(with_request(rerun_on_release), run_inputs + [auto], run_outputs, api_name=False, **runs)
        shown = [view, plot, step, latent_view, latent_step, latent_plot, edit_view, multiples]
        scrub = [session, step, color_by, method, source]
        free = {"concurrency_limit": None}  # replay never waits behind a generation
        step.input(replay, scrub, shown, api_name="replay", **free)
        color_by.change(replay, scrub, shown, api_name=False, **free)
        back.click(step_by(-1), scrub, shown, api_name="step_back", **free)
        forward.click(step_by(+1), scrub, shown, api_name="step_forward", **free)
        playing = play_button.click(play, [session, step, color_by, fps, method, source], shown, api_name="play",
                                    **free)
        pause.click(None, cancels=[playing])
        stop_button.click(stop, None, error, cancels=[generation], api_name="stop")
        compare_inputs = [c_prompt, c_length, c_steps, c_temperature, c_seed, color_by, *slot_inputs, c_chat, session]
        comparing = c_run.click(with_request(compare), compare_inputs, [side, c_plot, c_table, c_error, session],
                                api_name="compare", **runs)
        c_stop.click(stop, None, c_error, cancels=[comparing], api_name=False)
        progress.input(compare_view, [session, progress, color_by], [side, c_plot], api_name="compare_view", **free)
        c_playing = c_play.click(compare_play, [session, progress, color_by, fps], [side, c_plot, progress],
                                 api_name="compare_play", **free)
        c_pause.click(None, cancels=[c_playing])
        tabs.select(on_tab, [session, step, color_by, method, source], [session, latent_plot], api_name=False)
        latent_inputs = [session, latent_step, method, source]
        for control in (method, source):
            control.change(latent, latent_inputs, latent_plot, api_name="latent" if control is method else False)
        latent_step.input(replay, [session, latent_step, color_by, method, source], shown, api_name=False, **free)
        jump_box.change(jump, [session, jump_box, color_by, method, source], shown, api_name="jump", **free)
        show_candidates.click(candidates, [session, step, position], [choices, edit_error], api_name="candidates")
        resume_button.click(continue_with, [session, step, position, choices, color_by], run_outputs,
                            api_name="resume", **runs)
        rewind_button.click(rewind, [session, color_by], run_outputs, api_name="rewind", **free)
        for button, kind in ((json_button, "json"), (html_button, "html"), (gif_button, "gif")):  # as costly as runs
            button.click(export(kind), [session, color_by], [download, export_error], api_name=f"export_{kind}",
                         **runs)
        upload.upload(load_trace, [upload, color_by, session], run_outputs + [export_error], api_name="load_trace",
                      **runs)
        demo.unload(close_session)
    return demo.queue(default_concurrency_limit=1)


def launch_options() -> dict:
    """What `launch` needs besides host and port (Gradio 6 takes the page's CSS and scripts here; Gradio refuses
    larger uploads before they reach the page)."""
    return {"css": CSS, "head": HEAD, "max_file_size": f"{MAX_UPLOAD_MB}mb", "state_session_capacity": STATE_SESSIONS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the diffusion-LM explorer page.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    parser.add_argument("--checkpoint-root", action="append", default=None, metavar="DIR",
                        help="a folder whose checkpoint subfolders the page may open (repeatable; default: the "
                             "shipped checkpoints only)")
    parser.add_argument("--device", default=None, help="released folders: cpu, cuda or cuda:N (default: cuda if "
                        "any, else cpu; our own checkpoints always run on the CPU)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="released folders: the weights' dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    parser.add_argument("--device-map", default=None, choices=["auto", "balanced", "sequential"],
                        help="released folders: spread the blocks over several GPUs with accelerate")
    parser.add_argument("--memory-budget-mb", type=float, default=MEMORY_BUDGET_MB,
                        help="memory for the runs of all sessions together; beyond it the least recently used "
                             f"sessions' runs are dropped (default {MEMORY_BUDGET_MB})")
    args = parser.parse_args(argv)
    if not args.memory_budget_mb > 0:
        parser.error(f"--memory-budget-mb must be > 0, got {args.memory_budget_mb:g}")
    roots = default_roots() + [Path(r) for r in args.checkpoint_root or []]
    from explorer.released import load_options

    released = load_options(args.device, args.dtype, args.device_map)
    warm_umap()  # numba compiles UMAP in the background, before the first latent view asks for it
    build_demo(roots, released, args.memory_budget_mb).launch(server_name=args.host, server_port=args.port,
                                                                share=args.share, **launch_options())


if __name__ == "__main__":
    main()
