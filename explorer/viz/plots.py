"""Plotly figures of a trace: confidence per position over steps, with the commit step of each token."""

from __future__ import annotations

import html
import math
import textwrap

import plotly.graph_objects as go

from explorer.sampling.trace import Trace
from explorer.viz.tokens import COLORSCALE

EMPTY_WRAP = 70  # characters per line of an empty plot's message


def step_matrix(trace: Trace, field: str = "confidence", upto: int = -1) -> list[list[float | None]]:
    """(steps, positions): a per-position frame field ("confidence" or "entropy") at each recorded step (None =
    unknown)."""
    rows = []
    for frame in trace.frames[: upto % len(trace.frames) + 1]:
        values = getattr(frame, field) or [None] * len(frame.tokens or [])
        rows.append([None if c is None or (isinstance(c, float) and math.isnan(c)) else c for c in values])
    return rows


def confidence_matrix(trace: Trace, upto: int = -1) -> list[list[float | None]]:
    """(steps, positions): confidence of each position's proposal at each recorded step (None = unknown)."""
    return step_matrix(trace, "confidence", upto)


def integer_ticks(low: int, high: int, most: int = 10) -> dict:
    """An axis's ticks at integers from `low` to `high`, at most about `most`, spaced 1, 2 or 5 x 10^k (plotly's own
    pick puts steps at -0.5, 0.5 while a run has one or two frames)."""
    spacing = next(m * 10**k for k in range(12) for m in (1, 2, 5) if (high - low) / (m * 10**k) <= most)
    first = -(-low // spacing) * spacing  # the first multiple of `spacing` from `low` on
    return {"tickmode": "array", "tickvals": list(range(first, high + 1, spacing))}


def _integer_axes(fig: go.Figure, steps: list[int], positions: int) -> None:
    """Integer ticks on a heatmap's axes: positions (x) and steps (y; plotly's own where a step is no int, as in a
    trace that never went through Trace.load's checks)."""
    fig.update_layout(xaxis=integer_ticks(0, max(positions - 1, 0)))
    if all(isinstance(s, int) for s in steps):
        fig.update_layout(yaxis=integer_ticks(min(steps), max(steps)))


def confidence_heatmap(trace: Trace, upto: int = -1) -> go.Figure:
    """Heatmap of confidence (position x step) with a marker where each token was committed.

    Needs a trace recorded at level "full" for the confidences; the commit markers need "tokens".
    """
    frames = trace.frames[: upto % len(trace.frames) + 1]
    steps = list(range(len(frames)))  # frame indices: `Trace.commit_steps` numbers steps so
    fig = go.Figure()
    fig.add_trace(go.Heatmap(
        z=confidence_matrix(trace, upto), y=steps, colorscale=COLORSCALE, zmin=0, zmax=1,
        colorbar={"title": "confidence"},
        hovertemplate="position %{x}<br>step %{y}<br>confidence %{z:.3f}<extra></extra>",
    ))
    commits = trace.commit_steps(upto)
    xs = [pos for pos, s in enumerate(commits) if s is not None]
    fig.add_trace(go.Scatter(
        x=xs, y=[commits[p] for p in xs], mode="markers", name="committed",
        marker={"symbol": "x", "size": 6, "color": "#d62728"},
        text=[trace.token_strings.get(frames[-1].tokens[p], "") for p in xs],
        hovertemplate="position %{x} committed at step %{y}: %{text}<extra></extra>",
    ))
    fig.update_layout(
        xaxis_title="position", yaxis_title="step", yaxis_autorange="reversed", height=360,
        margin={"l": 50, "r": 20, "t": 30, "b": 40}, legend={"orientation": "h", "y": 1.08},
        title={"text": f"{trace.model.get('name')} · {trace.sampler.get('name')}", "font": {"size": 13}},
    )
    _integer_axes(fig, steps, len(frames[-1].tokens or []))
    return fig


def entropy_heatmap(trace: Trace, upto: int = -1) -> go.Figure:
    """Heatmap of the softmax entropy (nats) per position over steps: the superposition of tokens collapsing.

    Needs a continuous-diffusion trace recorded at level "full" (frames carry `entropy`).
    """
    frames = trace.frames[: upto % len(trace.frames) + 1]
    if not any(f.entropy for f in frames):
        raise ValueError("the trace has no entropies; record a cdcd run at level 'full'")
    fig = go.Figure(go.Heatmap(
        z=step_matrix(trace, "entropy", upto), y=list(range(len(frames))), colorscale=COLORSCALE, zmin=0,
        reversescale=True, colorbar={"title": "entropy (nats)"},
        customdata=[[f.noise or 0.0] * len(f.tokens) for f in frames],
        hovertemplate="position %{x}<br>step %{y} (sigma %{customdata:.3g})<br>entropy %{z:.2f} nats<extra></extra>",
    ))
    fig.update_layout(
        xaxis_title="position", yaxis_title="step", yaxis_autorange="reversed", height=360,
        margin={"l": 50, "r": 20, "t": 30, "b": 40},
        title={"text": f"{trace.model.get('name')} · entropy of the softmax per position", "font": {"size": 13}},
    )
    _integer_axes(fig, list(range(len(frames))), len(frames[-1].tokens or []))
    return fig


def step_heatmap(trace: Trace, upto: int = -1) -> go.Figure:
    """The per-step heatmap a viewer shows: softmax entropy for continuous diffusion, confidence otherwise."""
    if any(f.entropy for f in trace.frames):
        return entropy_heatmap(trace, upto)
    return confidence_heatmap(trace, upto)


def empty_figure(message: str) -> go.Figure:
    """A blank plot that says why it is blank (no run yet, no states recorded): the message escaped (plotly reads
    tags in annotations) and wrapped, since an annotation never wraps by itself."""
    fig = go.Figure()
    lines = textwrap.wrap(message, EMPTY_WRAP) or [""]
    fig.add_annotation(text="<br>".join(html.escape(line) for line in lines), showarrow=False, x=0.5, y=0.5,
                       xref="paper", yref="paper", font={"size": 15}, align="left")
    fig.update_layout(height=300, xaxis={"visible": False}, yaxis={"visible": False})
    return fig
