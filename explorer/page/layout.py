"""The explorer page: denoise, compare, look at latent space, edit a paused run, export; one tab each.

This module builds the page from the tabs (`explorer.page.denoise`, `compare`, `latent`, `edit`, `export`: each
builds its components and wires its events) and serves it. What may be opened and run lives in the Gradio-free
rules (`explorer.page.folders`, `requests`, `memory`, `examples`), generation in `explorer.sampling`, every picture
in `explorer.viz` (the notebooks draw with the same functions). Run `python app.py` and open http://127.0.0.1:7860.
API endpoints (gradio_client): `/generate` (streams), `/replay`, `/play`, `/step_back`, `/step_forward`, `/compare`,
`/compare_view`, `/compare_play`, `/latent`, `/jump`, `/candidates`, `/resume`, `/rewind`, `/export_json`,
`/export_html`, `/export_gif`, `/load_trace`, `/stop`.
"""

from __future__ import annotations

from pathlib import Path

# plotly imports pandas on first use: two sessions drawing their first figures at once could see it half-imported
# (plotly 6.0: "partially initialized module 'pandas'"), so the page imports it once, before any request
import gradio as gr
import pandas  # noqa: F401

from explorer.page import common, compare, denoise, edit, export, latent
from explorer.page.common import Page, Session, close_session
from explorer.page.memory import MAX_UPLOAD_MB, MEMORY_BUDGET_MB
from explorer.page.views import Shared, slider_range
from explorer.sampling import Trace

STATE_SESSIONS = 500  # sessions Gradio keeps, the least recently used dropped beyond it (its default: 10,000)
INTRO = ("# diffusion-LM explorer\nWatch a masked canvas turn into text, step by step; compare samplers and families; "
         "look at the latent space; edit a run; export it. The first view is a precomputed example: press "
         "**Generate** to run a model.")
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


def first_paint(examples: dict[str, Trace]) -> tuple[Session, list[Trace]]:
    """The session every visitor starts with: precomputed example traces, drawn before any model runs."""
    first = examples.get("mdlm-tiny")
    compared = [examples[k] for k in ("ar-tiny", "mdlm-tiny", "bd3lm-tiny-b16", "calm-tiny-k4") if k in examples]
    return Session(trace=first, runs=[first] if first else [], compared=compared), compared


def build_demo(roots: list[Path] | None = None, released_options: dict | None = None,
               memory_mb: float = MEMORY_BUDGET_MB) -> gr.Blocks:
    """The page. `released_options`: explorer.load's device / dtype / device_map for released folders; `memory_mb`:
    the budget over every session's runs (the least recently used are dropped beyond it)."""
    common.PAGE = Page(roots, released_options, memory_mb)
    names = common.PAGE.choices()
    start, compared = first_paint(common.PAGE.examples)
    # the scrubbers over the first paint's frames (Gradio lets positional arguments win over keywords: none here)
    first_range = slider_range(start.trace) if start.trace else {"minimum": 0, "maximum": 1, "value": 0}
    # Gradio's copies of uploads and downloads are deleted once an hour old (checked every 10 minutes)
    with gr.Blocks(title="diffusion-LM explorer", delete_cache=(600, 3600)) as demo:
        gr.Markdown(INTRO)
        session = gr.State(start)
        with gr.Tabs() as tabs:
            with gr.Tab("Denoise", id="denoise"):
                d = denoise.build(names, "mdlm-tiny" if "mdlm-tiny" in names else next(iter(names), None),
                                  start.trace, first_range)
            with gr.Tab("Compare", id="compare"):
                c = compare.build(names, compared)
            with gr.Tab("Latent space", id="latent_tab"):
                lat = latent.build(first_range)
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
        edit.wire(e, shared)
        export.wire(x, shared, d.prompt)
        demo.unload(close_session)
    return demo.queue(default_concurrency_limit=1)


def launch_options() -> dict:
    """What `launch` needs besides host and port (Gradio 6 takes the page's CSS and scripts here; Gradio refuses
    larger uploads before they reach the page)."""
    return {"css": CSS, "head": HEAD, "max_file_size": f"{MAX_UPLOAD_MB}mb", "state_session_capacity": STATE_SESSIONS}
