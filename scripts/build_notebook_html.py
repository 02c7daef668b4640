"""Run the notebooks and publish each as HTML a browser shows without JavaScript or an install:
docs/notebooks/<notebook stem>.html, every figure as its PNG (explorer.viz.use_png_fallback in each notebook's
setup cell), no plotly.js inlined.

    python scripts/build_notebook_html.py                      # every notebook under notebooks/ (subfolders too)
    python scripts/build_notebook_html.py notebooks/00_tour.ipynb --out /tmp/html

Each notebook runs in a fresh kernel started in its own folder, one at a time, with this process's environment
(PYTHONPATH included). The build fails, naming the notebook and the cell, when an output holds a plotly figure
without an image/png (shown before use_png_fallback, or by a renderer that draws none). Each HTML's head records
what it was built from (BUILD_META): a hash of the notebook's cells and how many figures and images its run showed,
which tests/test_static_figures.py checks against the notebooks and the HTML.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "notebooks"
PLOTLY = "application/vnd.plotly.v1+json"
BUILD_META = "dlm-explorer-build"  # <meta name=...> in each HTML's head: its build record, as JSON
TIMEOUT_S = 600  # per cell: the slowest (notebook 07's training) takes about two minutes


class BuildError(Exception):
    """A notebook could not be published: a cell failed or timed out, or a figure has no image."""


class MissingImage(BuildError):
    """A plotly figure in a notebook's outputs has no image/png: static viewers would show nothing."""


def notebooks(paths: list[str] | None = None) -> list[Path]:
    """The notebooks named (checked to exist), or every one under notebooks/."""
    if not paths:
        return sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    found = [Path(p).resolve() for p in paths]
    for path in found:
        if path.suffix != ".ipynb" or not path.is_file():
            raise ValueError(f"{path} is not a notebook file (.ipynb)")
    return found


def source_hash(nb) -> str:
    """sha256 of a notebook's cells (type and source): what its HTML must have been built from."""
    cells = [[cell.cell_type, cell.source] for cell in nb.cells]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode()).hexdigest()


def is_plotly(output) -> bool:
    """An output that is a plotly figure: plotly's mime type, or HTML that draws with plotly.js."""
    data = output.get("data", {})
    return PLOTLY in data or "Plotly.newPlot" in str(data.get("text/html", ""))


def widget_outputs(nb):
    """The outputs of a notebook's ipywidgets Output widgets (kept in its widget state, not in a cell)."""
    widgets = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    for model in widgets.get("state", {}).values():
        yield from model.get("state", {}).get("outputs", [])


def check_images(nb, name: str) -> dict:
    """Raise MissingImage naming the cell (or widget) of the first plotly figure without an image/png; else the
    counts of the cells' plotly figures and PNG outputs (matplotlib's, IPython.display.Image's and the figures')."""
    figures = images = 0
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            has_png = "image/png" in output.get("data", {})
            if is_plotly(output) and not has_png:
                raise MissingImage(f"{name}: cell {index} shows a plotly figure without an image/png: call "
                                   "explorer.viz.use_png_fallback() in the notebook's first code cell")
            figures += is_plotly(output)
            images += has_png
    if any(is_plotly(output) and "image/png" not in output.get("data", {}) for output in widget_outputs(nb)):
        raise MissingImage(f"{name}: an ipywidgets Output shows a plotly figure without an image/png")
    return {"plotly_figures": figures, "images": images}


def execute(path: Path):
    """Run a notebook in a kernel started in its folder; returns the notebook with its outputs."""
    nb = nbformat.read(path, as_version=4)
    running = [None]  # the index of the cell being run, for the error

    def start(cell, cell_index):
        running[0] = cell_index

    try:
        # IPC sockets under a fresh folder (absolute: the kernel runs in the notebook's folder), not TCP ports: a
        # kernel started while another program starts one (nbmake, a second build) can be handed the same ports and
        # then waits forever
        with tempfile.TemporaryDirectory() as sockets:
            kernel = AsyncKernelManager(kernel_name="python3", transport="ipc", ip=str(Path(sockets) / "kernel"))
            NotebookClient(nb, km=kernel, timeout=TIMEOUT_S, on_cell_start=start,
                           resources={"metadata": {"path": str(path.parent)}}).execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
        raise BuildError(f"{path.name}: cell {running[0]} failed: {err}") from err
    return nb


def to_html(nb, record: dict, stems: set[str]) -> str:
    """nbconvert's HTML of a run notebook: the figures' plotly JSON dropped (their PNG stays), links to the other
    notebooks pointed at their HTML, the build record in the head."""
    for output in [*(out for cell in nb.cells for out in cell.get("outputs", [])), *widget_outputs(nb)]:
        output.get("data", {}).pop(PLOTLY, None)
    body, _ = HTMLExporter().from_notebook_node(nb)

    def relink(match: re.Match) -> str:  # href="02_samplers.ipynb" -> href="02_samplers.html" (all in one folder)
        stem = Path(match.group(1)).stem
        return f'href="{stem}.html"' if stem in stems and "://" not in match.group(1) else match.group(0)

    body = re.sub(r'href="([^"#]+\.ipynb)"', relink, body)
    meta = f'<meta name="{BUILD_META}" content="{html.escape(json.dumps(record))}">'
    return body.replace("<head>", f"<head>\n{meta}", 1)


def build_meta(page: str) -> dict | None:
    """The build record of an HTML written by to_html (None when it has none)."""
    match = re.search(f'<meta name="{BUILD_META}" content="([^"]*)">', page)
    return json.loads(html.unescape(match.group(1))) if match else None


def build(path: Path, out: Path, stems: set[str]) -> dict:
    """Run one notebook, check its figures and write out/<stem>.html; returns its build record."""
    nb = execute(path)
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    record = {"notebook": name, "cells_sha256": source_hash(nbformat.read(path, as_version=4)),
              **check_images(nb, name)}
    (out / f"{path.stem}.html").write_text(to_html(nb, record, stems), encoding="utf-8")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebook files (default: every one under notebooks/)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder of the HTML files (default: {OUT})")
    args = parser.parse_args(argv)
    try:
        paths = notebooks(args.notebooks)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    stems = {p.stem for p in notebooks()} | {p.stem for p in paths}
    for k, path in enumerate(paths, 1):
        print(f"[{k}/{len(paths)}] {path.name} ...", end=" ", flush=True)
        started = time.perf_counter()
        try:
            record = build(path, args.out, stems)
        except BuildError as err:
            print(f"\nerror: {err}", file=sys.stderr)
            return 1
        size = (args.out / f"{path.stem}.html").stat().st_size
        print(f"{time.perf_counter() - started:.0f} s, {record['plotly_figures']} plotly figures, "
              f"{record['images']} images, {size / 2**20:.2f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
