"""2-D projections of continuous states: reproducible PCA, shared axes, UMAP opt-in with a PCA fallback; the
scatter of CALM's energy-head samples."""

import builtins
import html
from dataclasses import replace

import numpy as np
import pytest

import explorer
from explorer.viz import (
    head_samples,
    hidden_state_paths,
    latent_trajectories,
    project,
    step_preview,
)
from explorer.viz.latent import vocabulary_points


def cloud(seed=0, n=50, d=8):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * np.array([4.0, 1.5] + [0.2] * (d - 2))  # most variance along the first axes


def test_pca_params_reproduce_the_coordinates_and_capture_the_main_axes():
    x = cloud()
    proj = project(x, method="pca")
    assert proj.method == "pca" and proj.coords.shape == (50, 2) and proj.note is None
    again = (x - proj.params["mean"]) @ proj.params["components"].T
    assert np.allclose(again, proj.coords)
    assert np.allclose(proj.transform(x), proj.coords)
    assert abs(proj.params["components"][0, 0]) > 0.9  # the high-variance first axis
    ratio = proj.params["explained_variance_ratio"]
    assert ratio[0] > ratio[1] > 0


def test_pca_is_deterministic_up_to_a_fixed_sign():
    x = cloud()
    assert np.array_equal(project(x).coords, project(x.copy()).coords)
    comps = project(x).params["components"]
    assert all(c[np.abs(c).argmax()] > 0 for c in comps)


def test_a_list_of_runs_shares_one_fit():
    a, b = cloud(0, 30), cloud(1, 20) + 5.0
    proj = project([a, b])
    assert [c.shape for c in proj.coords] == [(30, 2), (20, 2)]
    joint = project(np.concatenate([a, b])).coords
    assert np.allclose(np.concatenate(proj.coords), joint)


def test_umap_falls_back_to_pca_with_a_note(monkeypatch):
    real_import = builtins.__import__

    def no_umap(name, *args, **kwargs):
        if name == "umap":
            raise ImportError("no umap here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_umap)
    proj = project(cloud(), method="umap", seed=3)
    assert proj.method == "pca" and "umap-learn" in proj.note


def test_umap_is_installed_with_the_package_and_projects_for_real():
    proj = project(cloud(n=40), method="umap", seed=0)
    assert proj.method == "umap" and proj.note is None and proj.coords.shape == (40, 2)
    assert proj.params["random_state"] == 0 and proj.params["umap_version"]


def test_umap_fits_are_cached_by_points_and_settings(monkeypatch):
    import sys
    import types

    from explorer.viz import latent

    fits = []

    class CountingUMAP:
        def __init__(self, **settings):
            self.settings = settings

        def fit_transform(self, x):
            fits.append(self.settings)
            return x[:, :2] * 2

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=CountingUMAP, __version__="test"))
    monkeypatch.setattr(latent, "_umap_fits", type(latent._umap_fits)())
    x = cloud()
    first = project(x, method="umap", seed=1)
    first.coords[:] = 0  # a caller editing its copy must not change the cache
    again = project(x.copy(), method="umap", seed=1)
    assert len(fits) == 1 and np.allclose(again.coords, x[:, :2] * 2)
    project(x, method="umap", seed=2)  # another seed: another fit
    project(x + 1, method="umap", seed=1)  # other points: another fit
    assert len(fits) == 3
    for shift in range(latent.UMAP_CACHE_SIZE + 2):
        project(x + 10 + shift, method="umap")
    assert len(latent._umap_fits) == latent.UMAP_CACHE_SIZE  # bounded: the oldest fits are dropped


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="method"):
        project(cloud(), method="tsne")
    with pytest.raises(ValueError, match="shape"):
        project(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="pca"):
        proj = project(cloud())
        proj.method = "umap"
        proj.transform(cloud())


@pytest.fixture(scope="module")
def calm_trace(tiny_calm_checkpoints):
    model = explorer.load(tiny_calm_checkpoints / "calm-tiny-k4")
    return explorer.generate(model, "ROMEO:", gen_length=12, record="full", seed=0)


def test_head_samples_draw_one_chunk_on_axes_fitted_over_the_run(calm_trace):
    counts = [[len(d.x) for d in head_samples(calm_trace, upto).data] for upto in (0, 1, 2, -1)]
    assert counts == [[0, 0, 0], [0, 16, 1], [1, 16, 1], [2, 16, 1]]  # earlier chunks, head samples, chosen latent
    first, last = head_samples(calm_trace, 1), head_samples(calm_trace, -1)
    assert first.layout.xaxis.range == last.layout.xaxis.range and first.layout.meta == last.layout.meta
    mean, components = (np.asarray(last.layout.meta["params"][k]) for k in ("mean", "components"))
    chosen = (np.asarray(calm_trace.frames[-1].latent[0]) - mean) @ components.T
    assert np.allclose([last.data[2].x[0], last.data[2].y[0]], chosen)
    assert not np.allclose(first.data[1].x, last.data[1].x)  # the samples move with the step
    text = "".join(calm_trace.token_strings[t] for t in calm_trace.final_tokens[8:])  # the last chunk's tokens
    assert last.data[2].text[0] == html.escape(repr(text), quote=False)  # on the chosen latent's hover


def test_head_samples_labels_and_bad_input(calm_trace, tiny_cdcd):
    fig = head_samples(calm_trace, 1, [f"chunk <{j}>" for j in range(16)])
    assert fig.data[1].text[3] == "'chunk &lt;3&gt;'" and "16 distinct chunks" in fig.layout.title.text
    with pytest.raises(ValueError, match="labels for the 16 head samples"):
        head_samples(calm_trace, 1, ["one"])
    plain = explorer.generate(explorer.load(calm_trace.model["checkpoint"]), gen_length=8, record="tokens")
    with pytest.raises(ValueError, match="record='full'"):
        head_samples(plain, -1)
    with pytest.raises(ValueError, match="calm traces"):
        head_samples(explorer.generate(tiny_cdcd, gen_length=4, steps=2, record="full"), -1)


def test_head_samples_markers_carry_their_frame_index_and_the_step_text(calm_trace):
    fig = head_samples(calm_trace, 2)
    earlier, samples, chosen = fig.data
    assert [c[0] for c in earlier.customdata] == [1] and {c[0] for c in samples.customdata} == {2}
    assert chosen.customdata[0][0] == 2 and chosen.customdata[0][1] == step_preview(calm_trace, 2)


def test_latent_trajectory_markers_carry_their_frame_index_and_the_step_text(tiny_cdcd):
    trace = explorer.generate(tiny_cdcd, steps=4, gen_length=6, record="full", seed=0)
    points, strings = vocabulary_points(tiny_cdcd)
    path = latent_trajectories(trace, points, strings, positions=[2], upto=3).data[1]
    assert [c[0] for c in path.customdata] == [0, 1, 2, 3]
    assert [c[3] for c in path.customdata] == [step_preview(trace, i) for i in range(4)]


def test_the_cdcd_latent_legend_sits_above_the_plot_clear_of_the_colour_bar(tiny_cdcd):
    """The step colour bar takes the right edge: the legend goes in one row above the plot (plotly's default, a column
    at the right, covered the bar's labels)."""
    trace = explorer.generate(tiny_cdcd, steps=4, gen_length=6, record="full", seed=0)
    points, strings = vocabulary_points(tiny_cdcd)
    fig = latent_trajectories(trace, points, strings, positions=[0, 1])
    assert sum(bool(t.marker.showscale) for t in fig.data) == 1  # the one colour bar, at plotly's right edge
    legend = fig.layout.legend
    assert legend.orientation == "h" and legend.y > 1 and legend.yanchor == "bottom"


# --- hidden states of discrete families -------------------------------------------------------

@pytest.fixture(scope="module")
def mdlm_runs(tiny_mdlm):
    return [explorer.generate(tiny_mdlm, "ROMEO:", gen_length=12, steps=6, temperature=1.0, record="full", seed=s)
            for s in (0, 1)]


def marker_traces(fig):
    return [d for d in fig.data if d.mode == "markers"]


def test_hidden_state_paths_share_axes_while_scrubbing_and_across_runs(mdlm_runs):
    first, last = hidden_state_paths(mdlm_runs, upto=1), hidden_state_paths(mdlm_runs, upto=[-1, 6])
    assert first.layout.xaxis.range == last.layout.xaxis.range and first.layout.yaxis.range == last.layout.yaxis.range
    assert first.layout.meta == last.layout.meta
    assert sum(len(d.x) for d in marker_traces(first)) < sum(len(d.x) for d in marker_traces(last))
    mean, components = (np.asarray(last.layout.meta["params"][k]) for k in ("mean", "components"))
    paths, now = marker_traces(last)[2:4]  # the second run: its path points, its current states
    i, pos = paths.customdata[5][:2]
    expected = (np.asarray(mdlm_runs[1].frames[i].hidden[pos]) - mean) @ components.T
    assert np.allclose([paths.x[5], paths.y[5]], expected)
    assert len(now.x) == 12 and paths.marker.color != marker_traces(last)[0].marker.color  # coloured by run
    names = [d.name for d in marker_traces(last)]
    assert names[0] == "mdlm · low_confidence (run 1)" and names[2] == "mdlm · low_confidence (run 2)"
    labelled = hidden_state_paths(mdlm_runs, labels=["a <1>", "b"])
    assert marker_traces(labelled)[0].name == "a <1>"


def test_hidden_state_paths_customdata_jumps_to_frames_with_a_text_preview(mdlm_runs):
    trace = mdlm_runs[0]
    fig = hidden_state_paths(trace, upto=[3])
    paths, now = marker_traces(fig)
    assert {c[0] for c in paths.customdata} == {1, 2, 3}  # frame 0 has no state yet; mdlm recomputes every step
    assert all(c[0] == 3 for c in now.customdata) and [c[1] for c in now.customdata] == list(range(12))
    for index, pos, step, preview in paths.customdata:
        assert step == trace.frames[index].step and preview == step_preview(trace, index)
    assert "·" in step_preview(trace, 1) and "·" not in step_preview(trace, -1)
    assert paths.marker.colorscale is not None  # one run: coloured by step


def test_step_preview_masks_escapes_and_truncates(mdlm_runs):
    trace = replace(mdlm_runs[0], token_strings=mdlm_runs[0].token_strings | {7: "<b>&\n"})
    frame = replace(trace.frames[0], tokens=[trace.mask_id, 7] + [7] * 40)
    trace = replace(trace, frames=[frame])
    preview = step_preview(trace, 0)
    assert preview.startswith("·&lt;b&gt;&amp;↵") and html.unescape(preview).endswith("…")
    assert len(html.unescape(preview)) == 80


def test_hidden_state_paths_bad_input(mdlm_runs, tiny_mdlm, tiny_ar):
    plain = explorer.generate(tiny_mdlm, "ROMEO:", gen_length=8, steps=4, record="tokens")
    with pytest.raises(ValueError, match="record it at level 'full'"):
        hidden_state_paths(plain)
    smaller = replace(mdlm_runs[1], frames=[replace(f, hidden=[None if r is None else r[:16] for r in f.hidden])
                                             for f in mdlm_runs[1].frames])
    with pytest.raises(ValueError, match=r"hidden sizes differ between traces: 32 .*, 16 "):
        hidden_state_paths([mdlm_runs[0], smaller])
    with pytest.raises(ValueError, match="upto has 1 frame indices for 2 traces"):
        hidden_state_paths(mdlm_runs, upto=[1])
    with pytest.raises(ValueError, match="labels has 1 entries"):
        hidden_state_paths(mdlm_runs, labels=["one"])
    ar = explorer.generate(tiny_ar, "ROMEO:", gen_length=6, record="full")  # one point per position (never revised)
    assert [len(d.x) for d in marker_traces(hidden_state_paths(ar))] == [6, 6]


def test_hidden_state_paths_follow_chosen_positions_with_the_rest_faded(mdlm_runs):
    every = hidden_state_paths(mdlm_runs[0])
    followed = hidden_state_paths(mdlm_runs[0], positions=[2, 5])
    assert followed.layout.meta == every.layout.meta  # the same projection: only the drawing changes
    faded, paths, now = marker_traces(followed)
    assert {c[1] for c in paths.customdata} == {2, 5} and {c[1] for c in now.customdata} == {2, 5}
    assert {c[1] for c in faded.customdata} == set(range(12)) - {2, 5} and faded.marker.color == "#cccccc"
    assert len(faded.x) + len(paths.x) == len(marker_traces(every)[0].x)  # every state is still drawn once
    with pytest.raises(ValueError, match=r"positions must be one or more of 0 \.\. 11 .*\[12\]"):
        hidden_state_paths(mdlm_runs[0], positions=[1, 12])
    with pytest.raises(ValueError, match="got none"):
        hidden_state_paths(mdlm_runs[0], positions=[])
