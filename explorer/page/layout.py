"""The explorer page: denoise, compare, look at latent space, diagnose a run, edit a paused run, export; one tab each.

This module builds the page from the tabs (`explorer.page.denoise`, `compare`, `latent`, `diagnostics`, `edit`,
`export`: each builds its components and wires its events) and serves it. What may be opened and run lives in the
Gradio-free rules (`explorer.page.folders`, `requests`, `memory`, `examples`), generation in `explorer.sampling`,
every picture in `explorer.viz` (the notebooks draw with the same functions). Run `python app.py` and open http://127.0.0.1:7860.
API endpoints (gradio_client): `/generate` (streams), `/example`, `/replay`, `/play`, `/step_back`, `/step_forward`,
`/compare`, `/compare_view`, `/compare_play`, `/latent`, `/follow`, `/jump`, `/diagnostic`, `/pick`, `/picked_view`,
`/candidates`, `/resume`, `/rewind`, `/export_json`, `/export_html`, `/export_gif`, `/load_trace`, `/stop`.
"""

from __future__ import annotations

from pathlib import Path

# plotly imports pandas on first use: two sessions drawing their first figures at once could see it half-imported
# (plotly 6.0: "partially initialized module 'pandas'"), so the page imports it once, before any request
import gradio as gr
import pandas  # noqa: F401

from explorer.page import common, compare, denoise, diagnostics, edit, export, latent
from explorer.page.common import NOTEBOOK_HTML, Page, Session, close_session
from explorer.page.examples import COMPARED, EXAMPLE_RUNS
from explorer.page.memory import MAX_UPLOAD_MB, MEMORY_BUDGET_MB
from explorer.page.views import Shared, slider_range
from explorer.sampling import Trace

STATE_SESSIONS = 500  # sessions Gradio keeps, the least recently used dropped beyond it (its default: 10,000)
INTRO = ("Watch a masked canvas turn into text, step by step; compare samplers and families; look at the latent space; "
         "edit a run; export it. The first view is a precomputed example: press **Generate** to run a model.")
# Generate sits above the knobs and stays on screen while they scroll (sticky); the canvas's height is capped so that
# both are in view on a laptop screen (1280 x 800). "Presentation" (a class on <body>, set by HEAD's script) hides the
# rarely used controls and the explanations, and enlarges the type and the canvas for the back of a room. Gradio adds
# a more specific copy of each rule scoped to its container, which a body class cannot outrank: the sizes are
# variables set on <body> (Gradio's own type sizes are variables of :root, which <body> overrides for the page). Its
# container clips rather than hides its overflow: "hidden" makes it a scroll box, inside which nothing ever sticks.
CSS = """
body {--dlm-canvas-font: 18px; --dlm-small-font: 13px; --dlm-canvas-min: 120px;
      --dlm-canvas-max: max(240px, calc(100vh - 230px))}
body.dlm-present {--dlm-canvas-font: 34px; --dlm-small-font: 20px; --dlm-canvas-min: 50vh;
                  --dlm-canvas-max: calc(100vh - 150px); --text-sm: 16px; --text-md: 20px; --text-lg: 22px;
                  --body-text-size: 20px; --block-label-text-size: 18px; --block-info-text-size: 16px;
                  --block-title-text-size: 20px; --checkbox-label-text-size: 20px; --input-text-size: 20px;
                  --section-header-text-size: 20px; --button-large-text-size: 24px}
#tokens, #edit_tokens, #latent_tokens {min-height: 120px}
#tokens {min-height: var(--dlm-canvas-min); max-height: var(--dlm-canvas-max); overflow-y: auto}
#heatmap {min-height: 380px}
#latent {min-height: 540px}
#jump, #pick {position: absolute; left: -10000px; width: 1px; height: 1px; overflow: hidden}
#actions {position: sticky; top: 0; z-index: 20; background: var(--background-fill-primary)}
.gradio-container {overflow: clip !important}
#tokens .dlm-tokens, #edit_tokens .dlm-tokens, #latent_tokens .dlm-tokens {font-size: var(--dlm-canvas-font) !important}
#multiples .dlm-tokens {font-size: var(--dlm-small-font) !important}
.dlm-present .dlm-tokens {font-size: 24px !important}
.dlm-present .dlm-legend {font-size: 20px !important}
.dlm-present #controls {flex: 0 0 380px !important}
.dlm-present .dlm-rare, .dlm-present .dlm-learn, .dlm-present #intro, .dlm-present .info-text {display: none !important}
body, .gradio-container {font-size: 16px}
#title h1 {margin: 0}
#presentation {flex: 0 0 auto !important; width: auto !important; align-self: center}
"""
# Keys: space plays / pauses, arrows step back / forward (in the visible tab); a click on a latent-plot point whose
# customdata starts with a frame index jumps there through the hidden #jump box; a click on a token of the Edit
# tab's canvas sends its data-pos through the hidden #pick box.
HEAD = """
<script>
(function () {
  let playing = false;
  function send(id, value) {  // into a hidden Gradio textbox; the time makes a repeated value a new input
    const box = document.querySelector(id + ' textarea, ' + id + ' input');
    if (!box) return;
    box.value = value + '|' + Date.now();
    box.dispatchEvent(new Event('input', {bubbles: true}));
  }
  function visible(cls) {
    return Array.from(document.querySelectorAll('.' + cls)).find(el => el.offsetParent !== null);
  }
  document.addEventListener('change', e => {  // the presentation box: large type, fewer knobs
    const box = e.target.closest && e.target.closest('#presentation input');
    if (box) document.body.classList.toggle('dlm-present', box.checked);
  }, true);
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
    send('#jump', index);
  }, true);
  document.addEventListener('click', e => {
    const token = e.target.closest && e.target.closest('#edit_tokens [data-pos]');
    if (token) send('#pick', token.dataset.pos);
  }, true);
})();
</script>
"""


def first_paint(examples: dict[str, Trace]) -> tuple[Session, list[Trace]]:
    """The session every visitor starts with: precomputed example traces, drawn before any model runs."""
    first = examples.get(next(iter(EXAMPLE_RUNS)))
    compared = [examples[k] for k in COMPARED if k in examples]
    return Session(trace=first, runs=[first] if first else [], compared=compared), compared


def build_demo(roots: list[Path] | None = None, released_options: dict | None = None,
               memory_mb: float = MEMORY_BUDGET_MB) -> gr.Blocks:
    """The page. `released_options`: explorer.load's device / dtype / device_map for released folders; `memory_mb`:
    the budget over every session's runs (the least recently used are dropped beyond it)."""
    common.PAGE = Page(roots, released_options, memory_mb)
    if NOTEBOOK_HTML.is_dir():  # the executed notebooks the "Learn more" notes link to
        gr.set_static_paths([NOTEBOOK_HTML])
    names = common.PAGE.choices()
    start, compared = first_paint(common.PAGE.examples)
    # the scrubbers over the first paint's frames (Gradio lets positional arguments win over keywords: none here)
    first_range = slider_range(start.trace) if start.trace else {"minimum": 0, "maximum": 1, "value": 0}
    # Gradio's copies of uploads and downloads are deleted once an hour old (checked every 10 minutes)
    with gr.Blocks(title="diffusion-LM explorer", delete_cache=(600, 3600)) as demo:
        with gr.Row(equal_height=True):
            gr.Markdown("# diffusion-LM explorer", elem_id="title")
            gr.Checkbox(False, label="presentation (large type, fewer knobs)", elem_id="presentation",
                        container=False)
        gr.Markdown(INTRO, elem_id="intro")
        session = gr.State(start)
        with gr.Tabs() as tabs:
            with gr.Tab("Denoise", id="denoise"):
                d = denoise.build(names, "mdlm-tiny" if "mdlm-tiny" in names else next(iter(names), None),
                                  start.trace, first_range)
            with gr.Tab("Compare", id="compare"):
                c = compare.build(names, compared)
            with gr.Tab("Latent space", id="latent_tab"):
                lat = latent.build(first_range)
            with gr.Tab("Diagnostics", id="diagnostics"):
                dg = diagnostics.build()
            with gr.Tab("Edit and infill", id="edit"):
                e = edit.build()
            with gr.Tab("Export", id="export"):
                x = export.build()
        shared = Shared(session, d.step, d.color_by, d.fps, lat.method, lat.source, outputs={
            "view": d.view, "stats": d.stats, "error": d.error, "plot": d.plot, "step": d.step, "session": session,
            "multiples": d.multiples, "latent_view": lat.view, "latent_step": lat.step, "latent": lat.plot,
            "edit_view": e.view})
        denoise.wire(demo, d, shared)
        compare.wire(c, shared)
        latent.wire(tabs, lat, shared)
        diagnostics.wire(dg, shared)
        edit.wire(e, shared)
        export.wire(x, shared, d.prompt)
        demo.unload(close_session)
    return demo.queue(default_concurrency_limit=1)


def launch_options() -> dict:
    """What `launch` needs besides host and port (Gradio 6 takes the page's CSS and scripts here; Gradio refuses
    larger uploads before they reach the page)."""
    return {"css": CSS, "head": HEAD, "max_file_size": f"{MAX_UPLOAD_MB}mb", "state_session_capacity": STATE_SESSIONS}
