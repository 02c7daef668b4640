"""Static copies of plotly figures, drawn with matplotlib: every figure a notebook shows also carries a PNG, so
readers without JavaScript (nbconvert's HTML, GitHub's notebook view) see it. No kaleido, no browser: offline.

`figure_png` draws what our figures use (explorer/viz/*.py and notebooks/): heatmap (colour scale, reversescale,
colour bar), scatter and scattergl (lines, markers, text; marker colour arrays with their colour bar), grouped bars,
subplot grids from the axes' domains, titles, axis titles, ranges and ticks, legends, annotations and line shapes
(add_hline / add_vline). Anything else is left out, and the image says so. `use_png_fallback` makes plotly's
notebook display carry the PNG beside its interactive bundle.
"""

from __future__ import annotations

import base64
import html
import io
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import plotly.io as pio
from matplotlib import transforms
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter
from plotly.colors import get_colorscale
from plotly.io.base_renderers import PlotlyRenderer

DPI = 100
PT = 72 / DPI  # plotly sizes are CSS pixels, matplotlib's are points
WIDTH = 900  # px where the layout names no width (plotly.js fills the notebook's output, about this wide)
HEIGHT = 450  # plotly.js's default height
MARGIN = {"l": 80, "r": 80, "t": 100, "b": 80}  # plotly.js's default margins
COLORBAR_PX = 110  # a colour bar and its tick labels, right of the plot area
COLORWAY = ("#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880", "#FF97FF",
            "#FECB52")  # the "plotly" template's, where a figure carries none
SYMBOLS = {"circle": "o", "square": "s", "diamond": "D", "triangle-up": "^", "triangle-down": "v", "triangle-left": "<",
           "triangle-right": ">", "x": "X", "cross": "P", "star": "*", "hexagon": "h", "pentagon": "p"}
DASHES = {"solid": "-", "dot": ":", "dash": "--", "dashdot": "-.", "longdash": "--", "longdashdot": "-."}
ABOVE = {"top": (1, "bottom"), "middle": (0, "center"), "bottom": (-1, "top")}  # textposition's first word
BESIDE = {"left": (-1, "right"), "center": (0, "center"), "right": (1, "left")}  # and its second


@dataclass
class _Drawing:
    """One figure being drawn: the matplotlib figure, one Axes per plotly (xaxis, yaxis) pair, and what the traces
    leave for the layout pass (colour bars, legend entries, things not drawn)."""

    figure: Figure
    layout: dict
    template: dict
    paper: tuple[float, float, float, float]  # the plot area (left, bottom, width, height) in figure fractions
    axes: dict[tuple[str, str], object]
    categories: dict[str, list]  # axis name ("x", "y2") -> its category labels, for axes of strings
    font_px: float
    colorbars: int = 0
    legend: list[tuple[object, str]] = field(default_factory=list)  # (handle, label)
    skipped: list[str] = field(default_factory=list)

    def paper_transform(self):
        left, bottom, width, height = self.paper
        return transforms.BboxTransformTo(transforms.Bbox.from_bounds(left, bottom, width, height)) \
            + self.figure.transFigure


def figure_png(fig) -> bytes:
    """A PNG of a plotly figure (a `go.Figure` or its dict), drawn with matplotlib at the figure's size."""
    spec = fig.to_dict() if hasattr(fig, "to_dict") else fig
    layout = spec.get("layout", {})
    template = (layout.get("template") or {}).get("layout", {})
    traces = [t for t in spec.get("data", []) if t.get("visible", True) is True]
    width, height = layout.get("width") or WIDTH, layout.get("height") or HEIGHT
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    font_px = (layout.get("font") or {}).get("size") or 12
    entries = _legend_entries(layout, traces)
    paper = _paper(layout, traces, entries, width, height, font_px)
    d = _Drawing(figure, layout, template, paper, {}, _categories(traces), font_px)
    _make_axes(d, traces)
    bars = [t for t in traces if t.get("type") == "bar"]
    colorway = template.get("colorway") or COLORWAY
    for index, trace in enumerate(spec.get("data", [])):
        if trace.get("visible", True) is not True:
            continue
        kind = trace.get("type", "scatter")
        draw = DRAWERS.get(kind)
        if draw is None:
            d.skipped.append(kind)
            continue
        ax = d.axes[(trace.get("xaxis", "x"), trace.get("yaxis", "y"))]
        handle = draw(d, ax, trace, _color(colorway[index % len(colorway)]), bars)
        if handle is not None and id(trace) in entries:
            d.legend.append((handle, _plain(trace.get("name") or f"trace {index}")))
    for shape in layout.get("shapes", []):
        _shape(d, shape)
    _finish_axes(d)
    for note in layout.get("annotations", []):
        _annotation(d, note)
    _draw_legend(d)
    _title(d, width, height)
    if d.skipped:
        figure.text(0.5, 0.5, f"static copy: {', '.join(dict.fromkeys(d.skipped))} not drawn", ha="center",
                    va="center", fontsize=12, color="#b00020", parse_math=False,
                    bbox={"facecolor": "white", "edgecolor": "#b00020"})
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


# --- values ---------------------------------------------------------------------------------------------------------

def _values(v) -> list | np.ndarray:
    """A data array as plotly may hold it: a list, a numpy array, or plotly 6's base64 typed-array dict."""
    if isinstance(v, dict) and "bdata" in v:
        data = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]).newbyteorder("<"))
        shape = [int(s) for s in str(v.get("shape", len(data))).split(",")]
        return data.reshape(shape)
    if v is None:
        return []
    return v if isinstance(v, (list, tuple, np.ndarray)) else [v]


def _is_array(v) -> bool:
    return (isinstance(v, dict) and "bdata" in v) or isinstance(v, (list, tuple, np.ndarray))


def _coords(d: _Drawing, values, axis: str) -> np.ndarray:
    """Positions on an axis: numbers as floats (None = a gap), an axis of strings by category index."""
    values = _values(values)
    if axis in d.categories:
        return np.array([np.nan if v is None else d.categories[axis].index(v) for v in values], dtype=float)
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _categories(traces: list[dict]) -> dict[str, list]:
    """Axes with strings among their values (a bar chart's sampler names): every value of theirs, a category, in
    order of appearance."""
    on_axis = [(trace.get(f"{letter}axis", letter), _values(trace.get(letter))) for trace in traces for letter in "xy"]
    found: dict[str, list] = {axis: [] for axis, values in on_axis if any(isinstance(v, str) for v in values)}
    for axis, values in on_axis:
        if axis in found:
            found[axis] += [v for v in dict.fromkeys(values) if v is not None and v not in found[axis]]
    return found


def _color(c):
    """A plotly colour ("#hex", "rgb(r, g, b)", "rgba(...)", a CSS name) as matplotlib takes it."""
    if isinstance(c, str) and c.startswith("rgb"):
        parts = [float(p) for p in c[c.index("(") + 1 : c.rindex(")")].split(",")]
        return (*[p / 255 for p in parts[:3]], *(parts[3:4] or [1.0]))
    return c


def _colormap(scale, reverse: bool = False) -> LinearSegmentedColormap:
    """A plotly colour scale (a name such as "Viridis" or [[fraction, colour], ...]) as a matplotlib colour map."""
    stops = get_colorscale(scale) if isinstance(scale, str) else scale
    colormap = LinearSegmentedColormap.from_list("plotly", [(float(f), _color(c)) for f, c in stops])
    return colormap.reversed() if reverse else colormap


def _plain(text) -> str:
    """Plotly's label markup as plain text: <br> breaks the line, other tags go, entities are decoded."""
    text = re.sub(r"<br\s*/?>", "\n", str(text), flags=re.IGNORECASE)
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _title_text(title) -> str:
    return _plain((title.get("text") if isinstance(title, dict) else title) or "")


def _font(spec: dict | None, default_px: float) -> float:
    """A plotly font's size in points."""
    return ((spec or {}).get("size") or default_px) * PT


# --- layout ---------------------------------------------------------------------------------------------------------

def _legend_entries(layout: dict, traces: list[dict]) -> set[int]:
    """ids of the traces the legend lists: plotly shows one when two or more traces could be listed (or the
    layout asks); a heatmap is listed only if it says so."""
    listed = [t for t in traces if t.get("showlegend", t.get("type", "scatter") not in ("heatmap",))]
    if not layout.get("showlegend", len(listed) > 1):
        return set()
    return {id(t) for t in listed}


def _has_colorbar(trace: dict) -> bool:
    if trace.get("type") == "heatmap":
        return trace.get("showscale", True)
    marker = trace.get("marker") or {}
    return bool(marker.get("showscale")) and _is_array(marker.get("color"))


def _paper(layout, traces, entries, width, height, font_px) -> tuple[float, float, float, float]:
    """The plot area in figure fractions: the layout's margins, widened (as plotly's automargin does) for the
    colour bars, a legend, the title and the axis labels."""
    margin = {**MARGIN, **(layout.get("margin") or {})}
    legend = layout.get("legend") or {}
    labels = [len(_plain(t.get("name") or "trace 10")) for t in traces if id(t) in entries]
    right = 10 + COLORBAR_PX * sum(map(_has_colorbar, traces))  # plotly.js puts them in the right margin
    legend_px = 0.0  # a horizontal legend's rows, above or below the plot
    if labels and legend.get("orientation") == "h":
        legend_px = _legend_rows(len(labels), max(labels), width, font_px) * font_px * 1.8
    elif labels:
        right += min(50 + max(labels) * font_px * 0.6, width * 0.35)
    above = legend.get("y", -0.1) >= 1
    top = 10 + (1.6 * _title_px(layout.get("title")) if _title_text(layout.get("title")) else 0) + above * legend_px
    if any(n.get("yref") == "paper" and n.get("y", 0) >= 1 for n in layout.get("annotations", [])):
        top += 24  # subplot titles
    titled = {letter: any(_title_text((layout.get(k) or {}).get("title")) for k in _axis_keys(layout, letter))
              for letter in "xy"}
    left = max(margin["l"], 70 if titled["y"] else 50)
    bottom = max(margin["b"], 55 if titled["x"] else 35) + (not above) * legend_px
    right, top = max(right, margin["r"]), max(top, margin["t"])
    return left / width, bottom / height, max(width - left - right, 50) / width, max(height - top - bottom, 50) / height


def _legend_rows(count: int, longest: int, width: float, font_px: float) -> int:
    per_row = max(1, int(width * 0.9 // (40 + longest * font_px * 0.6)))
    return -(-count // per_row)


def _axis_keys(layout: dict, letter: str) -> list[str]:
    return [k for k in layout if re.fullmatch(f"{letter}axis\\d*", k)] or [f"{letter}axis"]


def _axis_layout(d: _Drawing, name: str) -> dict:
    """The layout of axis "x", "y2", ...: layout.xaxis, layout.yaxis2, ..."""
    return d.layout.get(f"{name[0]}axis{name[1:]}") or {}


def _make_axes(d: _Drawing, traces: list[dict]) -> None:
    """One Axes per (xaxis, yaxis) pair the traces use (and each subplot make_subplots laid out), placed by the
    axes' domains inside the plot area."""
    pairs = [(t.get("xaxis", "x"), t.get("yaxis", "y")) for t in traces]
    for key in _axis_keys(d.layout, "x"):
        anchor = (d.layout.get(key) or {}).get("anchor", "y")
        if anchor != "free":
            pairs.append(("x" + key[5:], anchor))
    left, bottom, width, height = d.paper
    background = d.layout.get("plot_bgcolor") or d.template.get("plot_bgcolor") or "#E5ECF6"
    for x, y in dict.fromkeys(pairs or [("x", "y")]):
        x0, x1 = _axis_layout(d, x).get("domain", [0, 1])
        y0, y1 = _axis_layout(d, y).get("domain", [0, 1])
        ax = d.figure.add_axes((left + x0 * width, bottom + y0 * height, (x1 - x0) * width, (y1 - y0) * height))
        ax.set_facecolor(background)
        ax.grid(True, color="white", linewidth=1)
        ax.set_axisbelow(True)
        ax.tick_params(length=0, labelsize=d.font_px * PT, labelcolor="#2a3f5f")
        for spine in ax.spines.values():
            spine.set_visible(False)
        d.axes[(x, y)] = ax


def _finish_axes(d: _Drawing) -> None:
    """Axis titles, ranges (given, reversed), tick values and formats, hidden axes, categories."""
    for (x, y), ax in d.axes.items():
        for name, axis, set_label, set_lim in ((x, ax.xaxis, ax.set_xlabel, ax.set_xlim),
                                               (y, ax.yaxis, ax.set_ylabel, ax.set_ylim)):
            spec = _axis_layout(d, name)
            title = spec.get("title")
            set_label(_title_text(title), fontsize=_font(title.get("font") if isinstance(title, dict) else None,
                                                         d.font_px + 2), color="#2a3f5f", parse_math=False)
            if name in d.categories:
                axis.set_ticks(range(len(d.categories[name])), [_plain(c) for c in d.categories[name]],
                               parse_math=False)
            if spec.get("tickvals") is not None:
                ticks = _values(spec["tickvals"])
                text = spec.get("ticktext")
                axis.set_ticks(ticks, [_plain(t) for t in _values(text)] if text is not None else None)
            percent = re.fullmatch(r"\.(\d+)%", spec.get("tickformat") or "")
            if percent:
                axis.set_major_formatter(PercentFormatter(1.0, decimals=int(percent.group(1))))
            if spec.get("range") is not None:
                set_lim(*spec["range"])
            elif spec.get("autorange") == "reversed":
                set_lim(*reversed(ax.get_xlim() if axis is ax.xaxis else ax.get_ylim()))
            if spec.get("visible") is False:
                axis.set_visible(False)


def _transform(d: _Drawing, ref: str | None, letter: str):
    """The transform of one coordinate of an annotation or shape: "paper", an axis's data ("x2") or its domain
    ("x2 domain")."""
    ref = ref or letter
    if ref == "paper":
        return d.paper_transform()
    name = ref.removesuffix(" domain")
    ax = next(ax for pair, ax in d.axes.items() if pair["xy".index(letter)] == name)
    return ax.transAxes if ref.endswith(" domain") else ax.transData


def _point(d: _Drawing, value, ref: str | None, letter: str) -> float:
    """An annotation's coordinate; a category's name on an axis of strings becomes its index."""
    name = (ref or letter).removesuffix(" domain")
    if name in d.categories and isinstance(value, str):
        return d.categories[name].index(value)
    return float(value)


def _shape(d: _Drawing, shape: dict) -> None:
    if shape.get("type", "line") != "line":
        d.skipped.append(f"shape {shape.get('type')}")
        return
    line = shape.get("line") or {}
    blend = transforms.blended_transform_factory(_transform(d, shape.get("xref"), "x"),
                                                 _transform(d, shape.get("yref"), "y"))
    artist = Line2D([_point(d, shape.get("x0", 0), shape.get("xref"), "x"),
                     _point(d, shape.get("x1", 0), shape.get("xref"), "x")],
                    [_point(d, shape.get("y0", 0), shape.get("yref"), "y"),
                     _point(d, shape.get("y1", 0), shape.get("yref"), "y")],
                    color=_color(line.get("color", "#444444")), linewidth=(line.get("width") or 2) * PT,
                    linestyle=DASHES.get(line.get("dash", "solid"), "-"), transform=blend)
    refs = {(shape.get("xref") or "x").removesuffix(" domain"), (shape.get("yref") or "y").removesuffix(" domain")}
    on = [ax for pair, ax in d.axes.items() if set(pair) == refs]
    if on:  # on one subplot: the line counts in its autorange, as in plotly
        on[0].add_line(artist)
        on[0].autoscale_view()
    else:
        d.figure.add_artist(artist)


def _annotation(d: _Drawing, note: dict) -> None:
    xref, yref = note.get("xref"), note.get("yref")
    transform = transforms.blended_transform_factory(_transform(d, xref, "x"), _transform(d, yref, "y"))
    shift = transforms.ScaledTranslation(note.get("xshift", 0) * PT / 72, note.get("yshift", 0) * PT / 72,
                                         d.figure.dpi_scale_trans)
    font = note.get("font") or {}
    xanchor = {"auto": "center", None: "center"}.get(note.get("xanchor"), note.get("xanchor"))
    yanchor = {"auto": "center", None: "center", "middle": "center"}.get(note.get("yanchor"), note.get("yanchor"))
    d.figure.text(_point(d, note.get("x", 0.5), xref, "x"), _point(d, note.get("y", 0.5), yref, "y"),
                  _plain(note.get("text", "")), transform=transform + shift, ha=xanchor, va=yanchor,
                  fontsize=_font(font, d.font_px), color=_color(font.get("color", "#2a3f5f")), parse_math=False)


def _draw_legend(d: _Drawing) -> None:
    if not d.legend:
        return
    spec = d.layout.get("legend") or {}
    left, bottom, width, height = d.paper
    handles, labels = zip(*d.legend)
    fontsize = _font(spec.get("font"), d.font_px)
    if spec.get("orientation") == "h":  # in rows, in the room _paper left above the plot or at the bottom
        per_row = -(-len(labels) // _legend_rows(len(labels), max(map(len, labels)), d.figure.bbox.width, d.font_px))
        y = bottom + height if spec.get("y", -0.1) >= 1 else 0
        location, anchor = "lower left", (left + spec.get("x", 0) * width, y + 4 / d.figure.bbox.height)
    else:  # a column right of the plot and its colour bars
        per_row, location = 1, "upper left"
        anchor = (left + width + (COLORBAR_PX * d.colorbars + 10) / d.figure.bbox.width, bottom + height)
    d.figure.legend(handles, labels, loc=location, bbox_to_anchor=anchor, ncol=per_row, frameon=False,
                    fontsize=fontsize, borderaxespad=0, handlelength=1.5, columnspacing=1.2, borderpad=0)


def _title_px(title) -> float:
    return ((title.get("font") or {}).get("size") if isinstance(title, dict) else None) or 17  # plotly's default


def _title(d: _Drawing, width: float, height: float) -> None:
    title = d.layout.get("title")
    text = _title_text(title)
    if not text:
        return
    spec = title if isinstance(title, dict) else {}
    x = spec.get("x", d.template.get("title", {}).get("x", 0.05))
    d.figure.text(x, 1 - 8 / height, text, ha="left" if x < 1 / 3 else "center", va="top",
                  fontsize=_title_px(title) * PT, color="#2a3f5f", parse_math=False)


def _colorbar(d: _Drawing, mappable, spec: dict | None) -> None:
    """A colour bar right of the plot area, as tall as it (plotly's default), one beside the other."""
    left, bottom, width, height = d.paper
    x = left + width + (10 + COLORBAR_PX * d.colorbars) / d.figure.bbox.width
    d.colorbars += 1
    cax = d.figure.add_axes((x, bottom, 20 / d.figure.bbox.width, height))
    bar = d.figure.colorbar(mappable, cax=cax)
    bar.outline.set_visible(False)
    cax.tick_params(length=0, labelsize=d.font_px * PT, labelcolor="#2a3f5f")
    title = (spec or {}).get("title")
    if _title_text(title):
        cax.set_title(_title_text(title), fontsize=d.font_px * PT, loc="left", color="#2a3f5f", parse_math=False)


# --- traces ---------------------------------------------------------------------------------------------------------

def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around cell centres (a heatmap's x or y)."""
    if len(centres) == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    middles = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[2 * centres[0] - middles[0]], middles, [2 * centres[-1] - middles[-1]]])


def _heatmap(d: _Drawing, ax, trace: dict, color, bars) -> None:
    rows = [list(_values(row)) for row in _values(trace.get("z"))]
    width = max((len(r) for r in rows), default=0)
    z = np.array([[np.nan if v is None else v for v in r] + [np.nan] * (width - len(r)) for r in rows], dtype=float)
    if z.size == 0:
        return None
    x = _coords(d, trace["x"], trace.get("xaxis", "x")) if trace.get("x") is not None else \
        trace.get("x0", 0) + trace.get("dx", 1) * np.arange(z.shape[1])
    y = _coords(d, trace["y"], trace.get("yaxis", "y")) if trace.get("y") is not None else \
        trace.get("y0", 0) + trace.get("dy", 1) * np.arange(z.shape[0])
    scale = trace.get("colorscale") or (d.template.get("colorscale") or {}).get("sequential") or "Viridis"
    low = trace.get("zmin", np.nanmin(z) if np.isfinite(z).any() else 0)
    high = trace.get("zmax", np.nanmax(z) if np.isfinite(z).any() else 1)
    colormap = _colormap(scale, trace.get("reversescale"))
    mesh = ax.pcolormesh(_edges(x), _edges(y), np.ma.masked_invalid(z), cmap=colormap, vmin=low, vmax=high)
    if _has_colorbar(trace):
        _colorbar(d, mesh, trace.get("colorbar"))
    return None


def _scatter(d: _Drawing, ax, trace: dict, color, bars):
    x_name, y_name = trace.get("xaxis", "x"), trace.get("yaxis", "y")
    y = _coords(d, trace.get("y"), y_name)
    x = _coords(d, trace["x"], x_name) if trace.get("x") is not None else np.arange(len(y), dtype=float)
    mode = trace.get("mode") or ("lines+markers" if len(y) < 20 else "lines")
    opacity = trace.get("opacity", 1.0)
    line, marker = trace.get("line") or {}, trace.get("marker") or {}
    line_color = _color(line.get("color") or color)
    symbol = str(marker.get("symbol", "circle"))
    hollow = symbol.endswith("-open")
    shape = SYMBOLS.get(symbol.removesuffix("-open"), "o")
    handle = {"color": line_color, "linestyle": "none", "marker": None}
    if "lines" in mode:
        style = DASHES.get(line.get("dash", "solid"), "-")
        ax.plot(x, y, color=line_color, linewidth=(line.get("width") or 2) * PT, linestyle=style, alpha=opacity)
        handle["linestyle"] = style
    if "markers" in mode:
        fill = marker.get("color") if marker.get("color") is not None else (line.get("color") or color)
        size = marker.get("size", 6)
        sizes = (np.asarray(_values(size), dtype=float) if _is_array(size) else float(size)) * PT
        edge = marker.get("line") or {}
        colors = {"color": _color(fill)}
        numeric = _is_array(fill) and all(not isinstance(v, str) for v in _values(fill))
        if numeric:
            colors = {"c": np.asarray(_values(fill), dtype=float),
                      "cmap": _colormap(marker.get("colorscale") or "Viridis", marker.get("reversescale")),
                      "vmin": marker.get("cmin"), "vmax": marker.get("cmax")}
        elif _is_array(fill):
            colors = {"color": [_color(c) for c in _values(fill)]}
        if hollow:
            colors = {"facecolors": "none", "edgecolors": colors.get("color", line_color)}
        points = ax.scatter(x, y, s=sizes**2, marker=shape, alpha=marker.get("opacity", 1.0) * opacity,
                            linewidths=(edge.get("width") or (1.5 if hollow else 0)) * PT,
                            **({"edgecolors": _color(edge["color"])} if edge.get("color") and not hollow else {}),
                            zorder=3, **colors)
        if numeric and _has_colorbar(trace):
            _colorbar(d, points, marker.get("colorbar"))
        face = colors["cmap"](0.5) if numeric else line_color if _is_array(fill) else _color(fill)
        handle.update(marker=shape, markersize=float(np.mean(sizes)), markerfacecolor="none" if hollow else face,
                      markeredgecolor=face)
    if "text" in mode:
        _labels(ax, x, y, trace, d.font_px, marker.get("size", 6) if "markers" in mode else 0)
    return Line2D([], [], **handle)


def _labels(ax, x, y, trace: dict, font_px: float, marker_px: float) -> None:
    """A scatter's text mode: each point's text at its textposition ("top center", ...), clear of its marker."""
    vertical, _, horizontal = str(trace.get("textposition", "middle center")).partition(" ")
    dy, va = ABOVE.get(vertical, (0, "center"))
    dx, ha = BESIDE.get(horizontal, (0, "center"))
    font = trace.get("textfont") or {}
    away = (marker_px / 2 + 3) * PT
    ax.margins(y=0.12)  # room for the labels, as plotly's autorange makes
    for xi, yi, text in zip(x, y, _values(trace.get("text"))):
        if np.isfinite(xi) and np.isfinite(yi):
            ax.annotate(_plain(text), (xi, yi), xytext=(away * dx, away * dy), textcoords="offset points", ha=ha,
                        va=va, fontsize=_font(font, font_px),
                        color=_color(font.get("color", "#2a3f5f")), parse_math=False)


def _bar(d: _Drawing, ax, trace: dict, color, bars):
    """Bars, grouped side by side with the other bar traces of their subplot (plotly's barmode "group")."""
    horizontal = trace.get("orientation") == "h"
    where, length = ("y", "x") if horizontal else ("x", "y")
    size = _coords(d, trace.get(length), trace.get(f"{length}axis", length))
    at = _coords(d, trace[where], trace.get(f"{where}axis", where)) if trace.get(where) is not None else \
        np.arange(len(size), dtype=float)
    group = [b for b in bars if (b.get("xaxis", "x"), b.get("yaxis", "y")) == (trace.get("xaxis", "x"),
                                                                                 trace.get("yaxis", "y"))]
    share = 0.8 / len(group)
    offset = (next(k for k, b in enumerate(group) if b is trace) - (len(group) - 1) / 2) * share
    fill = _color((trace.get("marker") or {}).get("color") or color)
    drawn = (ax.barh if horizontal else ax.bar)(at + offset, size, share, color=fill, alpha=trace.get("opacity", 1.0))
    if trace.get("text") is not None:
        inside = trace.get("textposition", "auto") in ("inside", "auto")
        ax.bar_label(drawn, [_plain(t) for t in _values(trace["text"])], label_type="center" if inside else "edge",
                     padding=0 if inside else 2, fontsize=d.font_px * PT, color="#2a3f5f")
        ax.margins(**{length: 0.12})  # room for the labels outside the bars
    return Line2D([], [], color=fill, marker="s", linestyle="none", markersize=8)


DRAWERS = {"heatmap": _heatmap, "scatter": _scatter, "scattergl": _scatter, "bar": _bar}


# --- the notebook renderer ------------------------------------------------------------------------------------------

class PngFallbackRenderer(PlotlyRenderer):
    """plotly's notebook bundle (application/vnd.plotly.v1+json: the interactive figure where a frontend draws it)
    and an image/png copy of the figure for viewers that run no JavaScript."""

    def to_mimebundle(self, fig_dict):
        try:
            png = figure_png(fig_dict)
        except Exception as err:  # the interactive figure must still show where its static copy fails
            warnings.warn(f"this figure's static copy failed ({err!r}): it has no image/png", stacklevel=2)
            png = None
        bundle = super().to_mimebundle(fig_dict)
        if png is not None:
            bundle["image/png"] = base64.b64encode(png).decode("ascii")
        return bundle


def use_png_fallback() -> None:
    """Make every plotly figure shown from here on (fig.show(), a figure as a cell's value) carry a PNG beside its
    interactive bundle: JupyterLab and VS Code still draw the interactive one, while nbconvert's HTML and GitHub show
    the image. Registers the renderer "plotly_mimetype_png" and makes it plotly's default; calling it again changes
    nothing."""
    pio.renderers["plotly_mimetype_png"] = PngFallbackRenderer()
    pio.renderers.default = "plotly_mimetype_png"
