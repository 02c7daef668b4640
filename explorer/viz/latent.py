"""Projections of continuous states (latents, hidden states, embeddings) to 2-D, fitted once.

`project` fits one projection over every point it is given (all steps, all compared runs) so that
trajectories share axes, and returns the parameters needed to reproduce the picture elsewhere:
for PCA the mean and the two components (coords = (x - mean) @ components.T), for UMAP its
settings and seed. UMAP (umap-learn, installed with the package) is imported only when asked for; its
numba functions compile on first use (seconds), so the page calls `warm_umap` in the background at start-up,
and UMAP fits are kept in a small cache keyed by the points (scrubbing through a run re-draws the same fit).
Without umap-learn the projection falls back to PCA and says so in `note`.

Every marker of a step carries `customdata` whose first entry is its frame index (a click can move
the step scrubber there) and hovers a preview of the run's text at that step.
"""

from __future__ import annotations

import hashlib
import html
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

METHODS = ("pca", "umap")
PREVIEW_CHARS = 80  # hover preview of a step's text
UMAP_CACHE_SIZE = 8  # fitted UMAP projections kept (each holds (N, 2) coordinates only)
_umap_fits: OrderedDict = OrderedDict()
_umap_lock = threading.Lock()
RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
# the legend of a plot with a colour bar: one row above the plot (at the right, plotly's default, it covers the bar's
# labels)
TOP_LEGEND = {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0}


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
            coords, params = _umap(umap, x, seed, min(n_neighbors, x.shape[0] - 1), min_dist)
    if method == "pca":
        coords, params = _pca(x)
    if parts is not None:
        coords = np.split(coords, np.cumsum([len(p) for p in parts])[:-1])
    return Projection(method=method, coords=coords, params=params, note=note)


def _umap(umap, x: np.ndarray, seed: int, neighbors: int, min_dist: float) -> tuple[np.ndarray, dict]:
    """UMAP's 2-D fit of `x`, from the cache when the same points and settings were fitted before."""
    key = (hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest(), x.shape, seed, neighbors, min_dist)
    with _umap_lock:
        if key in _umap_fits:
            _umap_fits.move_to_end(key)
            coords, params = _umap_fits[key]
            return coords.copy(), dict(params)
    reducer = umap.UMAP(n_components=2, n_neighbors=neighbors, min_dist=min_dist, random_state=seed, n_jobs=1)
    coords = reducer.fit_transform(x)
    params = {"n_neighbors": neighbors, "min_dist": min_dist, "random_state": seed, "metric": "euclidean",
              "umap_version": getattr(umap, "__version__", None)}
    with _umap_lock:
        _umap_fits[key] = (coords, params)
        while len(_umap_fits) > UMAP_CACHE_SIZE:
            _umap_fits.popitem(last=False)
    return coords.copy(), dict(params)


def warm_umap(background: bool = True) -> threading.Thread | None:
    """Import umap-learn and fit a tiny projection, so numba compiles before anyone asks (off the request path)."""
    def fit():
        try:
            import umap  # noqa: PLC0415
        except ImportError:
            return
        umap.UMAP(n_components=2, n_neighbors=5, random_state=0, n_jobs=1).fit_transform(
            np.random.default_rng(0).normal(size=(32, 8)))

    if not background:
        fit()
        return None
    thread = threading.Thread(target=fit, name="warm-umap", daemon=True)
    thread.start()
    return thread


def _as_traces(traces) -> list:
    return list(traces) if isinstance(traces, (list, tuple)) else [traces]


def vocabulary_points(model) -> tuple[torch.Tensor, list[str]]:
    """A cdcd model's token points (V, De) on the CPU and a display string per token (the embedding cloud)."""
    import torch

    from explorer.data.tokenizer import display_string

    with torch.no_grad():
        points = model.embeddings().float().cpu()
    return points, [display_string(model.tokenizer, i) for i in range(len(points))]


def trajectory_points(trace, position: int) -> np.ndarray:
    """(frames, De) states of one generated position as the network sees them: x_t / sqrt(1 + sigma^2).

    The raw state's scale grows with the noise (sigma up to t_max); the network's input scaling puts
    every step on the scale of the embeddings, so noise and tokens share one picture.
    """
    rows = []
    for frame in trace.frames:
        if frame.latent is None:
            raise ValueError("the trace has no latents; record it at level 'full' (record='full')")
        sigma = frame.noise or 0.0
        rows.append(np.asarray(frame.latent[position], dtype=np.float64) / np.sqrt(1.0 + sigma**2))
    return np.stack(rows)


def latent_trajectories(traces, embeddings, vocab_strings: list[str], positions: list[int] | None = None,
                        method: str = "pca", seed: int = 0, max_positions: int = 8, upto: int = -1):
    """Plotly figure: the vocabulary's embedding cloud and the paths of chosen positions from noise to tokens.

    `traces`: one cdcd Trace recorded at level "full", or a list (compared runs share the axes).
    `embeddings` (V, De): the model's token points (`model.embeddings()`); `vocab_strings[i]` labels token i.
    One projection (`project`) is fitted over the cloud and every plotted step; its method and
    parameters are stored in `fig.layout.meta` so the picture can be reproduced elsewhere. `upto` draws the
    paths up to that frame index only (the fit still covers every step, so the axes stay put while scrubbing).
    """
    import plotly.graph_objects as go

    from explorer.viz.tokens import COLORSCALE

    traces = _as_traces(traces)
    cloud = np.asarray(embeddings, dtype=np.float64)
    generated = len(traces[0].frames[-1].tokens)
    if positions is None:
        positions = range(min(generated, max_positions))
    positions = _check_positions(positions, generated)
    paths = [(r, p, trajectory_points(trace, p)) for r, trace in enumerate(traces) for p in positions]
    projection = project([cloud] + [path for _, _, path in paths], method=method, seed=seed)
    cloud_xy, path_xy = projection.coords[0], projection.coords[1:]
    fig = go.Figure()
    fig.add_trace(go.Scattergl(
        x=cloud_xy[:, 0], y=cloud_xy[:, 1], mode="markers", name="vocabulary", text=vocab_strings,
        marker={"size": 4, "color": "#b0b0b0", "opacity": 0.5},
        hovertemplate="token %{text}<extra>vocabulary</extra>",
    ))
    symbols = ("circle", "diamond", "square", "triangle-up")
    previews = [[step_preview(trace, i) for i in range(len(trace.frames))] for trace in traces]
    for (run, pos, _), xy in zip(paths, path_xy):
        trace = traces[run]
        shown = trace.frames[: upto % len(trace.frames) + 1]
        xy = xy[: len(shown)]
        steps = list(range(len(shown)))  # frame indices, as the page numbers steps
        guesses = [trace.token_strings.get(f.tokens[pos], str(f.tokens[pos])) for f in shown]
        label = f"pos {pos}" + (f" · run {run + 1}" if len(traces) > 1 else "")
        fig.add_trace(go.Scatter(
            x=xy[:, 0], y=xy[:, 1], mode="lines+markers", name=label, line={"width": 1, "color": "#888888"},
            marker={"size": 6, "color": steps, "colorscale": COLORSCALE, "cmin": 0, "cmax": len(trace.frames) - 1,
                    "symbol": symbols[run % len(symbols)], "showscale": (run, pos) == paths[0][:2],
                    "colorbar": {"title": "step"}},
            customdata=[[i, f.noise or 0.0, i, previews[run][i]] for i, f in enumerate(shown)], text=guesses,
            hovertemplate=f"{label}<br>step %{{customdata[2]}} (sigma %{{customdata[1]:.3g}})"
                          "<br>nearest token %{text}<br>%{customdata[3]}<extra></extra>",
        ))
        fig.add_annotation(x=xy[-1, 0], y=xy[-1, 1], text=guesses[-1], showarrow=False, yshift=10, font={"size": 11})
    fig.update_layout(
        title={"text": f"{method.upper()} of the embedding space: paths from noise to tokens"
                       + (f" ({projection.note})" if projection.note else ""), "font": {"size": 13}},
        xaxis_title="component 1", yaxis_title="component 2", height=520, showlegend=True,
        margin={"l": 50, "r": 20, "t": 70, "b": 40}, legend=TOP_LEGEND, title_y=0.98,
        meta={"method": projection.method, "params": _jsonable(projection.params)},
    )
    return fig


def head_samples(trace, upto: int = -1, sample_texts: list[str] | None = None):
    """Plotly figure: the energy head's predictive spread at the CALM chunk generated at frame `upto`.

    `trace`: a calm Trace recorded at level "full". Draws that frame's head samples (`Frame.samples`), the
    latent the sampler chose (a star, labelled with its tokens) and, in grey, the chunks chosen before it.
    One PCA is fitted over every sample and chosen latent of the run and the axis ranges cover them all,
    so the axes stay put while scrubbing. `sample_texts` labels the samples (e.g. each decoded by the
    model's autoencoder); without it they are labelled by index. Frame 0 (no chunk yet) has no samples.
    """
    import plotly.graph_objects as go

    if trace.model["family"] != "calm":
        raise ValueError(f"head_samples draws calm traces, got the {trace.model['family']} family")
    chunks = [i for i, f in enumerate(trace.frames) if f.latent is not None]  # frame index of each chunk
    if not chunks or not all(trace.frames[i].samples for i in chunks):
        raise ValueError("the trace has no head samples; record it at level 'full' (record='full')")
    projection = project([trace.frames[i].samples for i in chunks] + [[trace.frames[i].latent[0] for i in chunks]])
    *samples_xy, chosen_xy = projection.coords
    index = upto % len(trace.frames)
    current = [chunks.index(index)] if index in chunks else []
    earlier = [k for k, i in enumerate(chunks) if i < index]
    texts = [_chunk_text(trace, trace.frames[i]) for i in chunks]
    xy = samples_xy[current[0]] if current else np.zeros((0, 2))
    labels = [f"sample {j}" for j in range(len(xy))] if sample_texts is None else [_quoted(t) for t in sample_texts]
    if len(labels) != len(xy):
        raise ValueError(f"sample_texts has {len(labels)} labels for the {len(xy)} head samples of frame {index}")

    def at(frame_indices: list[int]) -> list[list]:  # customdata: [frame index, the step's text preview]
        return [[i, step_preview(trace, i)] for i in frame_indices]

    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=chosen_xy[earlier, 0], y=chosen_xy[earlier, 1], mode="lines+markers", name="earlier chunks",
        text=[f"step {chunks[k]}: {_quoted(texts[k])}" for k in earlier],
        customdata=at([chunks[k] for k in earlier]), line={"width": 1, "color": "#cccccc"},
        marker={"size": 6, "color": "#a0a0a0"},
        hovertemplate="%{text}<br>%{customdata[1]}<extra>chosen earlier</extra>",
    ))
    fig.add_trace(go.Scatter(
        x=xy[:, 0], y=xy[:, 1], mode="markers", name="head samples", text=labels, customdata=at([index] * len(xy)),
        marker={"size": 8, "color": "#1f77b4", "opacity": 0.7},
        hovertemplate="%{text}<br>%{customdata[1]}<extra>head sample</extra>",
    ))
    fig.add_trace(go.Scatter(
        x=chosen_xy[current, 0], y=chosen_xy[current, 1], mode="markers", name="chosen latent",
        text=[_quoted(texts[k]) for k in current], customdata=at([index] * len(current)),
        marker={"size": 16, "color": "#d62728", "symbol": "star"},
        hovertemplate="%{text}<br>%{customdata[1]}<extra>chosen</extra>",
    ))
    if current:
        k = current[0]
        fig.add_annotation(x=chosen_xy[k, 0], y=chosen_xy[k, 1], text=_quoted(texts[k]), showarrow=False, yshift=14,
                           font={"size": 12, "color": "#d62728"})
        distinct = f" ({len(set(sample_texts))} distinct chunks)" if sample_texts is not None else ""
        title = f"Energy head at step {index}: {len(xy)} samples{distinct} and the chosen latent"
    else:
        title = "Energy head: no chunk generated yet at step 0"
    every = np.concatenate(samples_xy + [chosen_xy])
    low, high = every.min(axis=0), every.max(axis=0)
    pad = 0.08 * np.maximum(high - low, 1e-6)
    fig.update_layout(
        title={"text": f"{title}; PCA of every latent of the run", "font": {"size": 13}},
        xaxis={"title": {"text": "component 1"}, "range": [low[0] - pad[0], high[0] + pad[0]]},
        yaxis={"title": {"text": "component 2"}, "range": [low[1] - pad[1], high[1] + pad[1]]},
        height=480, showlegend=True, margin={"l": 50, "r": 20, "t": 40, "b": 40},
        meta={"method": projection.method, "params": _jsonable(projection.params)},
    )
    return fig


def hidden_state_paths(traces, method: str = "pca", upto=None, labels: list[str] | None = None, seed: int = 0,
                       positions: list[int] | None = None):
    """Plotly figure: each generated position's final hidden state over the steps, as a path.

    `traces`: one discrete Trace (ar, mdlm, bd3lm) recorded at level "full", or a list of runs compared on
    one picture (coloured by run, named by `labels` or "model · sampler"). One projection (`project`) is fitted
    over every distinct state of every run, and the axis ranges cover them all, so scrubbing and comparing
    never move the axes; its method and parameters are in `fig.layout.meta`. A path gets a point each time the
    position's state changes. `upto`: the frame index drawn up to (an int for every run, or one per run; None =
    the last frame); the states as of that frame are highlighted. `positions`: the generated positions whose paths
    are drawn in full, the others faded behind them (None: every path alike; the projection is the same either way).
    """
    import plotly.graph_objects as go

    from explorer.viz.tokens import COLORSCALE

    traces = _as_traces(traces)
    names = [f"{t.model['name']} · {t.sampler['name']}" for t in traces] if labels is None else list(labels)
    if labels is None and len(set(names)) < len(names):
        names = [f"{name} (run {r + 1})" for r, name in enumerate(names)]
    if len(names) != len(traces):
        raise ValueError(f"labels has {len(names)} entries for {len(traces)} traces")
    ends = list(upto) if isinstance(upto, (list, tuple)) else [-1 if upto is None else upto] * len(traces)
    if len(ends) != len(traces):
        raise ValueError(f"upto has {len(ends)} frame indices for {len(traces)} traces")
    ends = [end % len(t.frames) for end, t in zip(ends, traces)]
    runs = [_state_paths(t, name) for t, name in zip(traces, names)]  # per run: per position [(frame index, state)]
    sizes = [len(next(path for path in paths if path)[0][1]) for paths in runs]
    if len(set(sizes)) > 1:
        listed = ", ".join(f"{size} ({name})" for size, name in zip(sizes, names))
        raise ValueError(f"hidden sizes differ between traces: {listed}; compare runs of models with one d_model")
    points = [np.asarray([state for path in paths for _, state in path]) for paths in runs]  # (N_r, d) per run
    projection = project(points, method=method, seed=seed)
    every = np.concatenate(projection.coords)
    several = len(traces) > 1
    fig = go.Figure()
    followed = None if positions is None else set(_check_positions(positions, max(len(paths) for paths in runs)))
    for r, (trace, paths, xy, end, name) in enumerate(zip(traces, runs, projection.coords, ends, names)):
        previews = [step_preview(trace, i) for i in range(len(trace.frames))]
        color = RUN_COLORS[r % len(RUN_COLORS)]
        # per group (the followed paths, the faded rest): line points with None breaks, marks and the states at `end`,
        # each mark as (x, y, customdata)
        groups = {True: ([], [], [], []), False: ([], [], [], [])}
        k = 0
        for pos, path in enumerate(paths):
            drawn = [(i, *xy[k + j]) for j, (i, _) in enumerate(path) if i <= end]  # (frame index, x, y)
            k += len(path)
            if not drawn:
                continue
            line_x, line_y, marks, now = groups[followed is None or pos in followed]
            line_x += [x for _, x, _ in drawn] + [None]
            line_y += [y for _, _, y in drawn] + [None]
            marks += [(x, y, [i, pos, i, previews[i]]) for i, x, y in drawn]  # step: the frame index
            now.append((drawn[-1][1], drawn[-1][2], [end, pos, end, previews[end]]))
        hover = f"{html.escape(name)}<br>position %{{customdata[1]}}, step %{{customdata[2]}}<br>%{{customdata[3]}}"
        group = f"run {r}"
        faded_x, faded_y, faded_marks, _ = groups[False]
        if faded_marks:  # behind the followed paths: thin, pale, still hoverable and clickable
            fig.add_trace(go.Scatter(x=faded_x, y=faded_y, mode="lines", legendgroup=group, showlegend=False,
                                     line={"width": 1, "color": "#dddddd"}, hoverinfo="skip"))
            fig.add_trace(go.Scatter(x=[x for x, _, _ in faded_marks], y=[y for _, y, _ in faded_marks],
                                     mode="markers", name=f"{name}: other positions", legendgroup=group,
                                     marker={"size": 4, "color": "#cccccc", "opacity": 0.5},
                                     customdata=[c for _, _, c in faded_marks],
                                     hovertemplate=hover + "<extra></extra>"))
        line_x, line_y, marks, now = groups[True]
        fig.add_trace(go.Scatter(x=line_x, y=line_y, mode="lines", name=name, legendgroup=group, showlegend=False,
                                 line={"width": 1 if followed is None else 2,
                                       "color": color if several or followed is not None else "#bbbbbb"},
                                 opacity=0.4 if followed is None else 0.8, hoverinfo="skip"))
        marker = {"size": 5, "color": color} if several else {
            "size": 5, "color": [c[2] for _, _, c in marks], "colorscale": COLORSCALE, "cmin": 0,
            "cmax": len(trace.frames) - 1, "showscale": True, "colorbar": {"title": "step"}}
        fig.add_trace(go.Scatter(x=[x for x, _, _ in marks], y=[y for _, y, _ in marks], mode="markers", name=name,
                                 legendgroup=group, marker=marker, customdata=[c for _, _, c in marks],
                                 hovertemplate=hover + "<extra></extra>"))
        fig.add_trace(go.Scatter(x=[x for x, _, _ in now], y=[y for _, y, _ in now], mode="markers",
                                 name=f"{name}: step {end}", legendgroup=group,
                                 marker={"size": 10, "color": color, "line": {"width": 1.5, "color": "#000000"}},
                                 customdata=[c for _, _, c in now], hovertemplate=hover + "<extra>now</extra>"))
    low, high = every.min(axis=0), every.max(axis=0)
    pad = 0.08 * np.maximum(high - low, 1e-6)
    fig.update_layout(
        title={"text": f"{projection.method.upper()} of the final hidden states: each position's path over the steps"
                       + (f" ({projection.note})" if projection.note else ""), "font": {"size": 13}},
        xaxis={"title": {"text": "component 1"}, "range": [low[0] - pad[0], high[0] + pad[0]]},
        yaxis={"title": {"text": "component 2"}, "range": [low[1] - pad[1], high[1] + pad[1]]},
        height=560, showlegend=True, margin={"l": 50, "r": 20, "t": 70, "b": 40},
        legend=TOP_LEGEND, title_y=0.98,
        meta={"method": projection.method, "params": _jsonable(projection.params)},
    )
    return fig


def _check_positions(positions, generated: int) -> list[int]:
    """`positions` as generated-position indices, each in [0, generated - 1]."""
    positions = [int(p) for p in positions]
    bad = [p for p in positions if not 0 <= p < generated]
    if bad or not positions:
        raise ValueError(f"positions must be one or more of 0 .. {generated - 1} (the generated positions), got "
                         f"{bad or 'none'}")
    return positions


def _state_paths(trace, name: str) -> list[list[tuple[int, list[float]]]]:
    """Per generated position, (frame index, state) each time its hidden state changes (None rows skipped)."""
    if all(f.hidden is None for f in trace.frames):
        raise ValueError(f"the trace {name!r} has no hidden states; record it at level 'full' (record='full')")
    paths: list[list[tuple[int, list[float]]]] = [[] for _ in range(max(len(f.hidden or []) for f in trace.frames))]
    for i, frame in enumerate(trace.frames):
        for pos, row in enumerate(frame.hidden or []):
            if row is not None and (not paths[pos] or paths[pos][-1][1] != row):
                paths[pos].append((i, row))
    if not any(paths):
        raise ValueError(f"the trace {name!r} has no hidden states; record it at level 'full' (record='full')")
    return paths


def step_preview(trace, index: int) -> str:
    """The run's generated text at frame `index` for a hover: masked positions as '·', newlines as '↵',
    cut to PREVIEW_CHARS characters, HTML-escaped."""
    tokens = trace.frames[index].tokens or []
    text = "".join("·" if t == trace.mask_id else trace.token_strings.get(t, f"<{t}>") for t in tokens)
    text = text.replace("\n", "↵")
    if len(text) > PREVIEW_CHARS:
        text = text[: PREVIEW_CHARS - 1] + "…"
    return html.escape(text, quote=False)


def _chunk_text(trace, frame) -> str:
    """The tokens a calm frame committed, as text."""
    return "".join(trace.token_strings.get(frame.tokens[p], str(frame.tokens[p])) for p in frame.committed)


def _quoted(text: str) -> str:
    """A chunk's text for plotly labels: quoted (spaces and newlines show) and with its < > & escaped."""
    return html.escape(repr(text), quote=False)


def _jsonable(params: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in params.items()}
