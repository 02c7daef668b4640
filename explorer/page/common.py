"""What every tab of the page shares: the server-side page (allowed roots, loaded models, runs in flight, the memory
budget), each browser session's runs, the queues and the message boxes."""

from __future__ import annotations

import html
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import gradio as gr

import explorer
from explorer.page.examples import load_examples
from explorer.page.folders import ModelCache, default_roots, local_checkpoints, public, resolve_checkpoint
from explorer.page.memory import DROPPED, MEMORY_BUDGET_MB, RunRegistry, SessionMemory, held_bytes, trace_bytes
from explorer.sampling import Trace
from explorer.viz.panels import error_html, notice_html

RUN_CONCURRENCY = 2  # generations running at once over all users (2 CPU cores here)
RUNS = {"concurrency_id": "runs", "concurrency_limit": RUN_CONCURRENCY}  # events as costly as a run share its queue
FREE = {"concurrency_limit": None}  # replay never waits behind a generation
OPEN_NOTEBOOKS = (" To run a notebook yourself: install the notebooks extra once (`pip install -c constraints.txt -e "
                  "\".[notebooks]\"` in the repository), then `jupyter lab notebooks/00_tour.ipynb` (any of them).")
NOTEBOOK_HTML = Path(__file__).resolve().parents[2] / "docs" / "notebooks"  # executed copies (a source checkout)


def learn_more(*notebooks: str) -> str:
    """'Learn more:' and the notebooks (stems, e.g. "01_masked_diffusion", each with what it teaches after a '|'),
    each a link to its executed HTML copy where this checkout has one (the page serves that folder; the link opens
    a new tab), else its path; then how to run one."""
    named = []
    for entry in notebooks:
        stem, _, what = entry.partition("|")
        copy = NOTEBOOK_HTML / f"{stem}.html"
        shown = f"[{stem}](/gradio_api/file={copy.as_posix()})" if copy.is_file() else f"`notebooks/{stem}.ipynb`"
        named.append(shown + (f" ({what})" if what else ""))
    return " Learn more: " + ", ".join(named) + "." + OPEN_NOTEBOOKS


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
    follow: list[int] | None = None  # the Latent tab's followed positions (None: every path alike)
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


def with_request(handler):
    """`handler(*inputs, request=...)` (a generator) as Gradio calls it: Gradio hands the request only to a parameter
    before any *inputs, so without this every user of the handler would be one user ("local")."""
    def event(request: gr.Request, *inputs):
        yield from handler(*inputs, request=request)
    return event


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
        """`message` without the server's paths (see `explorer.page.folders.public`)."""
        return public(message, self.roots)


PAGE: Page | None = None  # the page served by this process (`layout.build_demo` makes it)


def page() -> Page:
    global PAGE
    if PAGE is None:
        PAGE = Page()
    return PAGE


def stop(request: gr.Request = None):
    """A Stop button: cancels the user's running generation or comparison (wired with `cancels`) and frees its run
    slot."""
    page().registry.cancel(user_key(request))
    return notice_box(["run stopped"])


def close_session(request: gr.Request):
    """The tab closed (or reloaded; Gradio hears its heartbeat connection end): let go of its runs now. Gradio keeps
    its own record of the session (the last value of each output, about a megabyte) for reconnects, at most
    `layout.STATE_SESSIONS` of them."""
    page().memory.forget(user_key(request))


def error_box(message: str) -> str:
    return error_html(page().public(message))


def notice_box(messages: list[str]) -> str:
    return notice_html([page().public(m) for m in messages])


def warn(message: str) -> None:
    """A toast (Gradio renders its message as HTML)."""
    gr.Warning(html.escape(page().public(message), quote=False))
