"""The Export tab: the session's trace as JSON (loads back here, in a notebook or from the CLI), a standalone HTML
animation and a GIF; a trace JSON loaded here replays without its model."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from explorer.page.common import RUNS, error_box, missing, page
from explorer.page.folders import safe_filename
from explorer.page.memory import MAX_UPLOAD_MB, pack_frame, unpacked
from explorer.page.views import Outputs, Shared, take_trace
from explorer.sampling import Trace
from explorer.viz import trace_animation_html, trace_gif

EXPORT_TTL_S = 600.0  # an export's own copy is deleted after this (Gradio serves the download from its cache)
LEARN = ("**Export.** The trace (JSON, schema 1) holds every frame and knob: load it back here or in a notebook "
         "(`Trace.load`); the CLI writes the same format (`python -m explorer sample --record full --trace F.json`). "
         "The HTML animation replays offline in any browser; the GIF is for slides.")


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
    Denoise view; it replays without its model, and its prompt fills the prompt box. The outputs of /generate, the
    prompt box, then the Export tab's message box: a file that cannot be loaded is named there, where it was
    uploaded, by its base name alone (the server's upload folder stays private), and the Denoise tab keeps its run."""
    path = None if file is None else Path(file if isinstance(file, str) else file.name)
    try:
        if path is None:
            raise ValueError("choose a trace JSON file to load")
        trace = Trace.load(path, max_bytes=int(MAX_UPLOAD_MB * 1e6))
    except (ValueError, OSError) as err:
        said = str(err).replace(str(path), path.name) if path else str(err)
        return Outputs()() + (gr.skip(), error_box(f"could not load the trace: {said}"))
    for frame in trace.frames:
        pack_frame(frame)
    return take_trace(session, trace, color_by, request) + (trace.prompt_text, "")


def build() -> SimpleNamespace:
    """The Export tab's components."""
    gr.Markdown(LEARN, elem_classes="dlm-learn")
    with gr.Row():
        buttons = {kind: gr.Button(label, elem_id=f"export_{kind}")
                   for kind, label in (("json", "Trace JSON"), ("html", "HTML animation"), ("gif", "GIF"))}
    download = gr.File(label="download", elem_id="download", interactive=False)
    upload = gr.File(label="load a trace JSON", file_types=[".json"], elem_id="upload")
    error = gr.HTML("", elem_id="export_error")
    return SimpleNamespace(buttons=buttons, download=download, upload=upload, error=error)


def wire(x: SimpleNamespace, shared: Shared, prompt: gr.Textbox) -> None:
    """The Export tab's events: writing and loading files wait in the runs' queue (they cost as much as a run); a
    loaded trace's prompt fills the Denoise tab's `prompt` box."""
    for kind, button in x.buttons.items():
        button.click(export(kind), [shared.session, shared.color_by], [x.download, x.error], api_name=f"export_{kind}",
                     **RUNS)
    x.upload.upload(load_trace, [x.upload, shared.color_by, shared.session], shared.run_outputs() + [prompt, x.error],
                    api_name="load_trace", **RUNS)
