"""2-D projections of continuous states: reproducible PCA, shared axes, UMAP opt-in with a PCA fallback; the
scatter of CALM's energy-head samples."""

import builtins
import html

import numpy as np
import pytest

import explorer
from explorer.viz import head_samples, project


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
