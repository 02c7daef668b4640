"""Figures that survive a static viewer: every plotly figure also as a PNG drawn by matplotlib
(explorer/viz/static.py), and the notebooks' published HTML (scripts/build_notebook_html.py, docs/notebooks/)."""

import ast
import base64
import importlib.util
import io

import nbformat
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from matplotlib.image import imread
from plotly.subplots import make_subplots

import explorer
from explorer.viz import confidence_heatmap, entropy_heatmap, head_samples, hidden_state_paths, latent_trajectories
from explorer.viz.compare import progress_plot
from explorer.viz.diagnostics import (
    attention_over_steps,
    parallel_dependencies,
    reliability_diagram,
    state_drift,
)
from explorer.viz.latent import vocabulary_points
from explorer.viz.plots import empty_figure
from explorer.viz.static import figure_png, use_png_fallback
from support import ROOT

spec = importlib.util.spec_from_file_location("build_notebook_html", ROOT / "scripts" / "build_notebook_html.py")
build_html = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_html)


def pixels(png: bytes) -> np.ndarray:
    """(H, W, 4) floats in [0, 1]."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return imread(io.BytesIO(png), format="png")


def ink(image: np.ndarray) -> int:
    """Pixels that are neither white (the paper) nor plotly's plot background #E5ECF6."""
    rgb = image[..., :3]
    background = [np.abs(rgb - np.array(c) / 255).max(-1) < 0.05 for c in ((255, 255, 255), (0xE5, 0xEC, 0xF6))]
    return int((~background[0] & ~background[1]).sum())


@pytest.fixture(scope="module")
def traces(tiny_mdlm, tiny_cdcd, tiny_calm_checkpoints):
    mdlm = [explorer.generate(tiny_mdlm, "ROMEO:", "low_confidence", gen_length=8, steps=4, temperature=1.0, seed=s,
                              record="full") for s in (0, 1)]
    cdcd = explorer.generate(tiny_cdcd, "ROMEO:", steps=4, gen_length=6, record="full", seed=0)
    calm = explorer.generate(explorer.load(tiny_calm_checkpoints / "calm-tiny-k4"), "ROMEO:", gen_length=12,
                             record="full", seed=0)
    return {"mdlm": mdlm, "cdcd": cdcd, "calm": calm, "vocabulary": vocabulary_points(tiny_cdcd),
            "mdlm model": tiny_mdlm}


def nfe_bars() -> go.Figure:
    """Notebook 01's grouped bars (categories on x, labels outside the bars)."""
    fig = go.Figure()
    for label, nfe in (("mdlm-tiny", [64, 64, 40]), ("toy: logits x 3", [64, 64, 20])):
        fig.add_trace(go.Bar(x=["random", "low_confidence", "threshold"], y=nfe, name=label, text=nfe,
                             textposition="outside"))
    fig.update_layout(title="network evaluations for 64 tokens", yaxis_title="nfe", height=340)
    return fig


def speed_against_quality() -> go.Figure:
    """Notebook 02's two subplots: lines, markers and text, a legend group, add_hline with its annotation."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("generative perplexity", "unigram entropy"))
    for kind, symbol in (("fixed", "circle"), ("threshold", "diamond")):
        for col in (1, 2):
            fig.add_trace(go.Scatter(x=[12, 24, 48], y=[3.0 * col, 2.0, 1.5], mode="lines+markers+text",
                                     text=["12", "24", "48"], textposition="top center", name=kind,
                                     legendgroup=kind, showlegend=col == 1, marker_symbol=symbol), 1, col)
        fig.add_hline(1.0, line_dash="dot", annotation_text="the plays", row=1, col=1)
    fig.update_xaxes(title_text="NFE")
    return fig


FIGURES = {  # every figure-building function of explorer/viz, and the notebooks' own figures
    "confidence_heatmap": lambda t: confidence_heatmap(t["mdlm"][0]),
    "entropy_heatmap": lambda t: entropy_heatmap(t["cdcd"]),
    "head_samples": lambda t: head_samples(t["calm"], 2),
    "latent_trajectories": lambda t: latent_trajectories(t["cdcd"], *t["vocabulary"], positions=[0, 1]),
    "hidden_state_paths": lambda t: hidden_state_paths(t["mdlm"][0]),
    "hidden_state_paths, two runs": lambda t: hidden_state_paths(t["mdlm"]),
    "progress_plot": lambda t: progress_plot(t["mdlm"] + [t["cdcd"]], progress=0.5),
    "empty_figure": lambda t: empty_figure("no run yet"),
    "reliability_diagram": lambda t: reliability_diagram(t["mdlm"][0]),
    "state_drift": lambda t: state_drift(t["mdlm"][0], t["mdlm model"]),
    "parallel_dependencies": lambda t: parallel_dependencies(t["mdlm model"], t["mdlm"][0]),
    "attention_over_steps": lambda t: attention_over_steps(t["mdlm model"], t["mdlm"][0], position=2),
    "notebook 01 bars": lambda t: nfe_bars(),
    "notebook 02 subplots": lambda t: speed_against_quality(),
}


@pytest.mark.parametrize("name", FIGURES)
def test_figure_png_draws_each_figure_as_a_picture_that_is_not_blank(name, traces):
    fig = FIGURES[name](traces)
    image = pixels(figure_png(fig))
    assert image.shape[:2] == (fig.layout.height or 450, fig.layout.width or 900)
    assert ink(image) > 300  # drawn: not only the paper and the plot's background
    assert figure_png(fig.to_dict()) == figure_png(fig)  # the renderer hands over the figure's dict


def test_every_figure_building_function_of_explorer_viz_is_drawn_above():
    """A new figure in explorer/viz (a function calling go.Figure) must join FIGURES."""
    builders = set()
    for path in (ROOT / "explorer" / "viz").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(call, ast.Call) and ast.unparse(call.func) == "go.Figure" for call in ast.walk(node)):
                builders.add(node.name)
    assert builders and builders <= {name.split(",")[0] for name in FIGURES}


def heatmap_png(z, **style) -> np.ndarray:
    fig = go.Figure(go.Heatmap(z=z, zmin=0, zmax=1, colorscale="Viridis", showscale=False, **style))
    fig.update_layout(width=300, height=300, margin={"l": 50, "r": 50, "t": 50, "b": 50})
    return pixels(figure_png(fig))


def test_a_heatmap_is_coloured_by_its_z_and_colour_scale_reversescale_flipping_it():
    """One cell fills the plot area: its colour is Viridis at z, or at 1 - z under reversescale."""
    dark, light = np.array([0x44, 0x01, 0x54]) / 255, np.array([0xfd, 0xe7, 0x25]) / 255  # Viridis at 0 and at 1
    centre = (150, 150)
    np.testing.assert_allclose(heatmap_png([[0.0]])[centre][:3], dark, atol=0.02)
    np.testing.assert_allclose(heatmap_png([[1.0]])[centre][:3], light, atol=0.02)
    np.testing.assert_allclose(heatmap_png([[0.0]], reversescale=True)[centre][:3], light, atol=0.02)
    assert not np.array_equal(heatmap_png([[0.0, 1.0], [None, 0.5]]), heatmap_png([[0.5, 1.0], [None, 0.0]]))


def test_plotly_typed_arrays_are_read_as_the_lists_they_encode():
    """plotly 6 stores numpy arrays as base64 'bdata' in the figure's dict: drawn as the same values."""
    z = np.arange(6.0).reshape(2, 3)
    assert "bdata" in str(go.Figure(go.Heatmap(z=z)).to_dict())
    assert figure_png(go.Figure(go.Heatmap(z=z))) == figure_png(go.Figure(go.Heatmap(z=z.tolist())))


def test_an_unknown_trace_type_is_left_out_with_a_note_and_the_rest_still_drawn():
    line = go.Scatter(y=[1, 3, 2])
    with_pie = pixels(figure_png(go.Figure([go.Pie(values=[1, 2]), line])))
    without = pixels(figure_png(go.Figure([line, go.Scatter(y=[1, 3, 2], visible=False)])))
    red = (with_pie[..., 0] > 0.6) & (with_pie[..., 1] < 0.1) & (with_pie[..., 2] < 0.25)  # the note's #b00020 box
    assert red.sum() > 100 and not np.array_equal(with_pie, without)


def test_the_renderer_bundles_plotlys_own_json_and_a_png(monkeypatch):
    monkeypatch.setattr(pio.renderers, "default", pio.renderers.default)  # restored after the test
    use_png_fallback()
    use_png_fallback()  # idempotent
    assert pio.renderers.default == "plotly_mimetype_png"
    fig = nfe_bars()
    bundle = fig._repr_mimebundle_()  # what Jupyter asks a figure that ends a cell
    assert set(bundle) == {build_html.PLOTLY, "image/png"}
    assert bundle[build_html.PLOTLY] == pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict())[build_html.PLOTLY]
    assert pixels(base64.b64decode(bundle["image/png"])).shape[:2] == (340, 900)


def plotly_output(png: bool) -> dict:
    data = {build_html.PLOTLY: {"data": [], "layout": {}}, **({"image/png": "iVBORw0KGgo="} if png else {})}
    return nbformat.v4.new_output("display_data", data=data)


def test_the_build_names_the_cell_of_a_figure_without_an_image():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# x"), nbformat.v4.new_code_cell("fig")])
    nb.cells[1].outputs = [plotly_output(png=True)]
    assert build_html.check_images(nb, "x.ipynb") == {"plotly_figures": 1, "images": 1}
    nb.cells[1].outputs.append(plotly_output(png=False))
    with pytest.raises(build_html.MissingImage, match=r"x\.ipynb: cell 1 shows a plotly figure without an image/png"):
        build_html.check_images(nb, "x.ipynb")
    nb.cells[1].outputs.pop()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"a1": {
        "model_name": "OutputModel", "state": {"outputs": [plotly_output(png=False)]}}}}}
    with pytest.raises(build_html.MissingImage, match="x.ipynb: an ipywidgets Output shows a plotly figure"):
        build_html.check_images(nb, "x.ipynb")


def test_the_tour_runs_with_an_image_for_every_figure():
    """CI: notebook 00 run as the build runs it (kernel in notebooks/), every plotly output with its image/png,
    and the HTML has no plotly JSON left and shows one image per PNG output."""
    path = ROOT / "notebooks" / "00_tour.ipynb"
    nb = build_html.execute(path)
    counts = build_html.check_images(nb, path.name)
    assert counts["plotly_figures"] >= 6  # three confidence heatmaps, entropy, head samples, progress
    page = build_html.to_html(nb, counts, {"00_tour", "01_masked_diffusion"})
    assert build_html.PLOTLY not in page and page.count('src="data:image/png') == counts["images"]
    assert 'href="01_masked_diffusion.html"' in page and build_html.build_meta(page) == counts


@pytest.mark.parametrize("path", build_html.notebooks(), ids=lambda p: p.stem)
def test_each_notebook_has_its_html_built_from_its_current_cells(path):
    """docs/notebooks/<stem>.html is current (built from the notebook as it is: rerun
    scripts/build_notebook_html.py after editing one), small, and shows as many images as its run had."""
    html_path = build_html.OUT / f"{path.stem}.html"
    assert html_path.is_file(), f"{html_path} is missing: run scripts/build_notebook_html.py {path.relative_to(ROOT)}"
    page = html_path.read_text(encoding="utf-8")
    record = build_html.build_meta(page)
    assert record is not None and record["notebook"] == str(path.relative_to(ROOT))
    assert record["cells_sha256"] == build_html.source_hash(nbformat.read(path, as_version=4)), (
        f"{html_path.name} is stale: run scripts/build_notebook_html.py {path.relative_to(ROOT)}")
    assert page.count('src="data:image/png') == record["images"] >= record["plotly_figures"]
    assert build_html.PLOTLY not in page and "Plotly.newPlot" not in page
    assert html_path.stat().st_size < 2 * 2**20
