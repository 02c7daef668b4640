"""2-D projections of continuous states: reproducible PCA, shared axes, UMAP opt-in with a PCA fallback."""

import builtins

import numpy as np
import pytest

from explorer.viz import project


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
