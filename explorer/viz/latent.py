"""Projections of continuous states (latents, hidden states, embeddings) to 2-D, fitted once.

`project` fits one projection over every point it is given (all steps, all compared runs) so that
trajectories share axes, and returns the parameters needed to reproduce the picture elsewhere:
for PCA the mean and the two components (coords = (x - mean) @ components.T), for UMAP its
settings and seed. UMAP (`pip install umap-learn`) is imported only when asked for; without it
the projection falls back to PCA and says so in `note`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METHODS = ("pca", "umap")


@dataclass
class Projection:
    method: str  # the method actually used: "pca" or "umap"
    coords: np.ndarray | list[np.ndarray]  # (N, 2), or one (N_i, 2) per input array when given a list
    params: dict = field(default_factory=dict)  # what reproduces the picture (see the module docstring)
    note: str | None = None  # e.g. why UMAP fell back to PCA

    def transform(self, points) -> np.ndarray:
        """Map new points into the same axes (PCA only; UMAP's embedding is not a fixed linear map)."""
        if self.method != "pca":
            raise ValueError("transform is available for method='pca' only; refit UMAP over all points instead")
        x = np.asarray(points, dtype=np.float64)
        return (x - self.params["mean"]) @ np.asarray(self.params["components"]).T


def _pca(x: np.ndarray) -> tuple[np.ndarray, dict]:
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = vt[:2]
    # a deterministic sign: the largest-magnitude loading of each component is positive
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    components = components * signs[:, None]
    variance = singular**2
    params = {"mean": mean, "components": components,
              "explained_variance_ratio": (variance[:2] / max(variance.sum(), 1e-30)).tolist()}
    return (x - mean) @ components.T, params


def project(points, method: str = "pca", seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1) -> Projection:
    """Fit one 2-D projection over `points` ((N, D) array, or a list of arrays sharing D)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    parts = [np.asarray(p, dtype=np.float64) for p in points] if isinstance(points, (list, tuple)) else None
    x = np.concatenate(parts) if parts is not None else np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3 or x.shape[1] < 2:
        raise ValueError(f"points must have shape (N, D) with N >= 3 and D >= 2, got {x.shape}")
    note = None
    if method == "umap":
        try:
            import umap  # noqa: PLC0415 (optional, heavy: imported only when asked for)
        except ImportError:
            note = "umap-learn is not installed (pip install umap-learn); showing PCA instead"
            method = "pca"
        else:
            neighbors = min(n_neighbors, x.shape[0] - 1)
            reducer = umap.UMAP(n_components=2, n_neighbors=neighbors, min_dist=min_dist, random_state=seed)
            coords = reducer.fit_transform(x)
            params = {"n_neighbors": neighbors, "min_dist": min_dist, "random_state": seed, "metric": "euclidean",
                      "umap_version": getattr(umap, "__version__", None)}
    if method == "pca":
        coords, params = _pca(x)
    if parts is not None:
        coords = np.split(coords, np.cumsum([len(p) for p in parts])[:-1])
    return Projection(method=method, coords=coords, params=params, note=note)
