"""The Latent space tab: continuous states projected once (PCA or UMAP) over the whole run, so the axes stay put
while the scrubber moves; a click on a point jumps there."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from explorer.page.common import FREE, Session, error_box, learn_more
from explorer.page.requests import parse_positions
from explorer.page.views import Shared, latent_figure, replay, show

LEARN = ("**Latent space.** A 2-D projection (PCA or UMAP) fitted once over every state of the run(s), so the axes "
         "never move while you scrub. Continuous diffusion: the paths of positions from noise to token embeddings "
         "over the vocabulary cloud; CALM: the energy head's samples for a chunk around the latent it chose; masked / "
         "block diffusion and AR: each position's final hidden state over the steps. Hover a point to preview that "
         "step's text; click it to jump the scrubber there." + learn_more("04_continuous_diffusion", "05_calm"))


def on_tab(session, step, color_by, method, source, evt: gr.SelectData):
    """Remember the visible tab; draw the latent plot when its tab opens."""
    session = session if session is not None else Session()
    session.tab = "latent" if "Latent" in str(evt.value) else "other"
    if session.tab != "latent" or session.trace is None:
        return session, gr.skip()
    return session, latent_figure(session, int(step), method, source)


def latent(session, step, method, source):
    """The latent plot for frame `step` (PCA or UMAP, this run or the compared runs)."""
    return latent_figure(session if session is not None else Session(), int(step), method, source)


def follow(session, text, step, method, source):
    """The "follow positions" box: those positions' paths in full, the rest faded (empty: every path alike). A box
    that cannot be read keeps the positions followed before and says why beside it."""
    session = session if session is not None else Session()
    try:
        session.follow = parse_positions(text)
    except ValueError as err:
        return session, gr.skip(), error_box(str(err))
    return session, latent_figure(session, int(step), method, source), ""


def jump(session, value, color_by, method, source):
    """A click on a latent-plot point (its frame index arrives as 'INDEX|time' in the hidden #jump box)."""
    if session is None or session.trace is None or not value:
        return (gr.skip(),) * 8
    index = value.split("|")[0]
    if not index.lstrip("-").isdigit():
        return (gr.skip(),) * 8
    return show(session, int(index), color_by, method, source)


def build(first_range: dict) -> SimpleNamespace:
    """The Latent tab's components (the plot is drawn when the tab opens)."""
    with gr.Row():
        source = gr.Radio(["this run", "compared runs"], value="this run", label="states of", elem_id="latent_source")
        method = gr.Radio(["pca", "umap"], value="pca", label="projection", elem_id="method",
                          info="UMAP takes a few seconds per fit (cached while you scrub); PCA is instant")
    positions = gr.Textbox("", label="follow positions", elem_id="follow", placeholder="e.g. 0, 5-7 then Enter",
                           info="draw these generated positions' paths in full and fade the rest (empty: all alike; "
                                "continuous diffusion: the positions whose paths are drawn, first 8 by default)")
    error = gr.HTML("", elem_id="latent_error")
    step = gr.Slider(step=1, label="step", elem_id="latent_step", **first_range)
    view = gr.HTML("", elem_id="latent_tokens")
    plot = gr.Plot(elem_id="latent", show_label=False)
    jump_box = gr.Textbox("", elem_id="jump", show_label=False, container=False)
    gr.Markdown(LEARN, elem_classes="dlm-learn")
    return SimpleNamespace(source=source, method=method, positions=positions, error=error, step=step, view=view,
                           plot=plot, jump=jump_box)


def wire(tabs: gr.Tabs, lat: SimpleNamespace, shared: Shared) -> None:
    """The Latent tab's events: its own scrubber and a click on a point move every view, like the Denoise one."""
    tabs.select(on_tab, [shared.session, shared.step, shared.color_by, lat.method, lat.source],
                [shared.session, lat.plot], api_visibility="private")
    lat.method.change(latent, [shared.session, lat.step, lat.method, lat.source], lat.plot, api_name="latent")
    lat.source.change(latent, [shared.session, lat.step, lat.method, lat.source], lat.plot,
                      api_visibility="private")
    lat.positions.submit(follow, [shared.session, lat.positions, lat.step, lat.method, lat.source],
                         [shared.session, lat.plot, lat.error], api_name="follow")
    redraw = [shared.session, lat.step, shared.color_by, lat.method, lat.source]
    lat.step.input(replay, redraw, shared.shown(), api_visibility="private", **FREE)
    lat.jump.change(jump, [shared.session, lat.jump, shared.color_by, lat.method, lat.source], shared.shown(),
                    api_name="jump", **FREE)
