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


def commit_points(trace: Trace) -> list[tuple[float, int, int]]:
    """(progress in [0, 1], position, frame index) of each commit of a run, the last commit of a position winning
    (remasking can undo earlier ones); continuous diffusion commits every position at its last step."""
    n = len(trace.frames)
    last: dict[int, int] = {}
    for index, frame in enumerate(trace.frames):
        for pos in frame.committed:
            last[pos] = index
        for pos in frame.remasked:
            last.pop(pos, None)
    return sorted((index / max(n - 1, 1), pos, index) for pos, index in last.items())


def progress_plot(traces: list[Trace], progress: float | None = None, labels: list[str] | None = None) -> go.Figure:
    """When each position was committed, against progress through its run (shared x axis in [0, 1]): AR draws a
    diagonal, block diffusion a staircase of blocks, masked diffusion a scatter, CALM steps of K; a vertical line
    marks `progress`. Continuous diffusion commits everything at the end (its tokens settle gradually: see its
    entropy heatmap)."""
    labels = labels or [run_label(t) for t in traces]
    symbols = ("circle", "square", "diamond", "triangle-up", "x", "cross", "star", "hexagon")
    fig = go.Figure()
    for k, (trace, label) in enumerate(zip(traces, labels)):
        points = commit_points(trace)
        fig.add_trace(go.Scatter(
            x=[p[0] for p in points], y=[p[1] for p in points], mode="markers",
            name=label if points else f"{label} (no commits)",
            marker={"color": RUN_COLORS[k % len(RUN_COLORS)], "size": 9, "symbol": symbols[k % len(symbols)],
                    "opacity": 0.8},
            customdata=[[p[2], trace.frames[p[2]].step, trace.token_strings.get(trace.final_tokens[p[1]], "")]
                        for p in points],
            hovertemplate=f"{html.escape(label)}<br>position %{{y}} committed at step %{{customdata[1]}}"
                          "<br>%{customdata[2]}<extra></extra>",
        ))
    if progress is not None:
        fig.add_vline(x=progress, line={"color": "#555", "dash": "dash"})
    fig.update_layout(
        xaxis={"title": {"text": "progress through the run"}, "range": [-0.02, 1.02], "tickformat": ".0%"},
        yaxis={"title": {"text": "position committed"}, "autorange": "reversed"},
        height=360, margin={"l": 60, "r": 20, "t": 30, "b": 50}, legend={"orientation": "h", "y": 1.12},
        font={"size": 14},
    )
    return fig


def side_by_side_html(traces: list[Trace], progress: float, color_by: str = "confidence",
                      labels: list[str] | None = None) -> str:
    """Canvases of 2-4 runs at the same progress, in a grid; each panel names its run, step and nfe (every value
    from a trace is escaped: a loaded trace is anyone's)."""
    labels = labels or [run_label(t) for t in traces]
    panels = []
    for k, (trace, label) in enumerate(zip(traces, labels)):
        index = frame_at_progress(trace, progress)
        frame = trace.frames[index]
        colour = RUN_COLORS[k % len(RUN_COLORS)]
        panels.append(
            f'<div class="dlm-panel" data-run="{k}" data-frame="{index}" style="border:2px solid {colour};'
            f'border-radius:8px;padding:8px;min-height:140px"><div style="font-weight:600;color:{colour}">'
            f"{html.escape(label)}</div><div style='font-size:13px;color:#555'>step {index} of "
            f"{len(trace.frames) - 1} · nfe {_text(frame.nfe)} of "
            f"{_text(trace.stats.get('nfe', trace.frames[-1].nfe))}</div>"
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
                     'border-radius:6px;padding:4px"><div style="color:#555">'
                     f'seed {_text(trace.sampler.get("seed"))}</div>'
                     f"{tokens_html(trace, i, color_by, show_prompt=False, font_size=11)}"
                     "</div>")
    header = (f'<div class="dlm-diversity" style="font-size:14px;margin-bottom:4px"><b>{stats["runs"]} runs</b>: '
              f'{stats["distinct_outputs"]} distinct outputs · distinct-2 {stats["distinct_2"]:.2f} · positions that '
              f'differ between two runs {stats["pairwise_differing"]:.0%}</div>')
    return (header + '<div class="dlm-multiples" style="display:grid;grid-template-columns:repeat(auto-fill,'
            f'minmax(220px,1fr));gap:6px">{"".join(cells)}</div>')


def _text(value) -> str:
    """A trace's value as HTML text."""
    return html.escape(str(value))
