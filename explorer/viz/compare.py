"""Several traces at once: runs compared on a timeline normalised to progress, and N runs as small multiples."""

from __future__ import annotations

import html
from itertools import combinations, zip_longest

import plotly.graph_objects as go

from explorer.sampling.trace import Trace
from explorer.viz.tokens import tokens_html

RUN_COLORS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")  # Okabe-Ito


def frame_at_progress(trace: Trace, progress: float) -> int:
    """The frame index a fraction `progress` in [0, 1] of the way through a run (0 = first frame, 1 = last)."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    return round(progress * (len(trace.frames) - 1))


def run_label(trace: Trace) -> str:
    return f"{trace.model.get('name')} · {trace.sampler.get('name')}"


def filled_fraction(trace: Trace) -> list[float]:
    """Per frame, the fraction of generated positions that hold a token (not the mask): how far the canvas is."""
    return [sum(t != trace.mask_id for t in f.tokens) / max(len(f.tokens), 1) for f in trace.frames]


def progress_plot(traces: list[Trace], progress: float | None = None, labels: list[str] | None = None) -> go.Figure:
    """Fraction of the canvas filled against progress through each run (shared x axis in [0, 1]); a vertical line
    marks `progress`. Continuous diffusion fills every position from the start (its tokens are the nearest
    embeddings), so its curve is flat at 1: its progress shows in the entropy heatmap instead."""
    labels = labels or [run_label(t) for t in traces]
    fig = go.Figure()
    for k, (trace, label) in enumerate(zip(traces, labels)):
        n = len(trace.frames)
        x = [i / max(n - 1, 1) for i in range(n)]
        fig.add_trace(go.Scatter(
            x=x, y=filled_fraction(trace), mode="lines", name=label, line={"color": RUN_COLORS[k % len(RUN_COLORS)],
                                                                           "width": 3},
            customdata=[[i, f.step, f.nfe] for i, f in enumerate(trace.frames)],
            hovertemplate=f"{html.escape(label)}<br>step %{{customdata[1]}} (nfe %{{customdata[2]}})"
                          "<br>filled %{y:.0%}<extra></extra>",
        ))
    if progress is not None:
        fig.add_vline(x=progress, line={"color": "#555", "dash": "dash"})
    fig.update_layout(
        xaxis={"title": {"text": "progress through the run"}, "range": [0, 1], "tickformat": ".0%"},
        yaxis={"title": {"text": "canvas filled"}, "range": [0, 1.05], "tickformat": ".0%"},
        height=300, margin={"l": 60, "r": 20, "t": 30, "b": 50}, legend={"orientation": "h", "y": 1.15},
        font={"size": 14},
    )
    return fig


def side_by_side_html(traces: list[Trace], progress: float, color_by: str = "confidence",
                      labels: list[str] | None = None) -> str:
    """Canvases of 2-4 runs at the same progress, in a grid; each panel names its run, step and nfe."""
    labels = labels or [run_label(t) for t in traces]
    panels = []
    for k, (trace, label) in enumerate(zip(traces, labels)):
        index = frame_at_progress(trace, progress)
        frame = trace.frames[index]
        colour = RUN_COLORS[k % len(RUN_COLORS)]
        panels.append(
            f'<div class="dlm-panel" data-run="{k}" data-frame="{index}" style="border:2px solid {colour};'
            f'border-radius:8px;padding:8px;min-height:140px"><div style="font-weight:600;color:{colour}">'
            f"{html.escape(label)}</div><div style='font-size:13px;color:#555'>step {frame.step} of "
            f"{trace.frames[-1].step} · nfe {frame.nfe} of {trace.stats.get('nfe', trace.frames[-1].nfe)}</div>"
            f"{tokens_html(trace, index, color_by)}</div>")
    return ('<div class="dlm-compare" style="display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));'
            f'gap:10px">{"".join(panels)}</div>')


def diversity(traces: list[Trace]) -> dict:
    """How different N runs are: distinct bigrams over all runs (distinct-2), the mean fraction of positions at
    which two runs differ, and the number of distinct outputs."""
    finals = [tr.final_tokens for tr in traces]
    bigrams = [tuple(seq[i : i + 2]) for seq in finals for i in range(len(seq) - 1)]
    pairs = list(combinations(finals, 2))  # a position only one run reached counts as differing
    differing = [sum(a != b for a, b in zip_longest(x, y)) / max(len(x), len(y), 1) for x, y in pairs]
    return {"runs": len(traces), "distinct_outputs": len({tuple(s) for s in finals}),
            "distinct_2": round(len(set(bigrams)) / max(len(bigrams), 1), 4),
            "pairwise_differing": round(sum(differing) / len(differing), 4) if differing else 0.0}


def small_multiples_html(traces: list[Trace], index: int = -1, color_by: str = "confidence") -> str:
    """N runs of one sampler (different seeds) as small canvases at frame `index` (clipped to each run's length),
    headed by their diversity."""
    stats = diversity(traces)
    cells = []
    for k, trace in enumerate(traces):
        i = min(index % len(trace.frames) if index < 0 else index, len(trace.frames) - 1)
        cells.append(f'<div class="dlm-multiple" data-run="{k}" style="font-size:11px;border:1px solid #ccc;'
                     f'border-radius:6px;padding:4px"><div style="color:#555">seed {trace.sampler.get("seed")}</div>'
                     f"{tokens_html(trace, i, color_by, show_prompt=False, font_size=11)}"
                     "</div>")
    header = (f'<div class="dlm-diversity" style="font-size:14px;margin-bottom:4px"><b>{stats["runs"]} runs</b>: '
              f'{stats["distinct_outputs"]} distinct outputs · distinct-2 {stats["distinct_2"]:.2f} · positions that '
              f'differ between two runs {stats["pairwise_differing"]:.0%}</div>')
    return (header + '<div class="dlm-multiples" style="display:grid;grid-template-columns:repeat(auto-fill,'
            f'minmax(220px,1fr));gap:6px">{"".join(cells)}</div>')
