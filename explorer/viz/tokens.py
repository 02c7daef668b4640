"""Tokens of a frame as coloured HTML: by confidence or by the step at which each was committed."""

from __future__ import annotations

import functools
import html
import math
import re

from plotly.colors import sample_colorscale

from explorer.sampling.trace import Trace

COLORSCALE = "Viridis"  # continuous and colour-blind safe
MASK_COLOR = "#d9d9d9"
PROMPT_COLOR = "#f2f2f2"
COLOR_MODES = ("confidence", "commit_step")
LEVELS = 256  # colour steps of the palette every view indexes into (sampling the plotly scale per token is slow)
# one token's box, also the exported page's stylesheet rule: boxes (not bare inline spans, which have no break between
# them) wrap the rows inside any container, a token too wide for its container breaks inside its box
TOKEN_BOX = ("display:inline-block;max-width:100%;white-space:pre-wrap;overflow-wrap:anywhere;border-radius:4px;"
             "margin:3px 1px;padding:0 3px")
SELECTED_BOX = "outline:3px solid #d62728;outline-offset:1px"  # the position picked for an edit


@functools.lru_cache(maxsize=1)
def palette() -> tuple[str, ...]:
    """LEVELS colours of COLORSCALE as 'rgb(r, g, b)' strings, index i for the value i / (LEVELS - 1)."""
    return tuple(sample_colorscale(COLORSCALE, [i / (LEVELS - 1) for i in range(LEVELS)]))


def level(value: float) -> int:
    """The palette index of a value in [0, 1] (clipped)."""
    return round(min(max(value, 0.0), 1.0) * (LEVELS - 1))


def text_color(rgb: str) -> str:
    r, g, b = (int(float(c)) for c in rgb[rgb.index("(") + 1 : -1].split(","))
    return "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"


def _visible(text: str) -> str:
    """A piece of text in its box: escaped, spaces kept, each newline shown as ↵; a newline inside the piece breaks
    the row there, the ones it ends with break it after the box (`_breaks`)."""
    shown = html.escape(text).replace(" ", "&nbsp;")
    return re.sub(r"\n+", lambda m: "↵" * len(m.group()) + ("<br>" if m.end() < len(m.string) else ""), shown)


def _breaks(texts: list[str]) -> list[bool]:
    """Whether the row breaks after each piece of text: after one that ends with a newline, once per run of newlines
    (a piece of newlines only after it keeps the break for itself), so "\n\n" between speeches costs one row."""
    return [text.endswith("\n") and not (following and not following.strip("\n"))
            for text, following in zip(texts, texts[1:] + [None])]


def step_label(trace: Trace, index: int) -> str:
    """Frame `index` as the page numbers it everywhere: step `index` of the last frame's index, the scrubber's number
    (one step per recorded frame, so the canvas an edit placed by hand counts as a step of its own and the resumed
    steps number on from it)."""
    last = len(trace.frames) - 1
    index = index if index >= 0 else last + 1 + index
    edited = any(edit.get("frame") == index - 1 for edit in trace.sampler.get("edits", []))
    return f"step {index} of {last}" + (" (your edit)" if edited else "")


def frame_values(trace: Trace, step_index: int, color_by: str = "confidence") -> list[float | None]:
    """Per-position value in [0, 1] to colour by (None = no colour: masked or unknown)."""
    if color_by not in COLOR_MODES:
        raise ValueError(f"color_by must be one of {COLOR_MODES}, got {color_by!r}")
    frame = trace.frames[step_index]
    masked = [t == trace.mask_id for t in frame.tokens]
    if color_by == "commit_step":
        last = max(len(trace.frames) - 1, 1)
        steps = trace.commit_steps(step_index)
        return [None if m or s is None else s / last for m, s in zip(masked, steps)]
    conf = frame.confidence or [None] * len(frame.tokens)
    return [None if m or c is None or (isinstance(c, float) and math.isnan(c)) else c for m, c in zip(masked, conf)]


def tokens_html(trace: Trace, step_index: int = -1, color_by: str = "confidence", show_prompt: bool = True,
                font_size: int = 16, selected: int | None = None) -> str:
    """An HTML block: the prompt in light grey, then each generated token coloured by its value;
    masked positions are neutral grey boxes. Each token is a box (`TOKEN_BOX`) so the rows wrap inside any container;
    each span carries data-pos / data-value for tests and tools. Position `selected` (if any) is outlined and
    carries data-selected."""
    frame = trace.frames[step_index]
    values = frame_values(trace, step_index, color_by)
    texts, spans = [], []  # the text of each piece (for the row breaks) and its HTML
    if show_prompt and trace.prompt_ids:
        texts.append(trace.prompt_text)
        spans.append(f'<span class="dlm-prompt" style="background:{PROMPT_COLOR};color:#555;overflow-wrap:anywhere">'
                     f"{_visible(trace.prompt_text)}</span>")
    for pos, (tok, value) in enumerate(zip(frame.tokens, values)):
        mark = ' data-selected="true"' if pos == selected else ""
        box = TOKEN_BOX + (";" + SELECTED_BOX if pos == selected else "")
        if tok == trace.mask_id:
            texts.append("·")
            spans.append(f'<span class="dlm-mask" data-pos="{pos}"{mark} title="position {pos}: masked" '
                         f'style="{box};background:{MASK_COLOR};color:#888">·</span>')
            continue
        texts.append(trace.token_strings.get(tok, f"<{tok}>"))
        if value is None:
            style, label = f"background:{PROMPT_COLOR}", "fixed"
        else:
            rgb = palette()[level(value)]
            style, label = f"background:{rgb};color:{text_color(rgb)}", f"{color_by} {value:.2f}"
        spans.append(f'<span class="dlm-token" data-pos="{pos}"{mark} '
                     f'data-value="{"" if value is None else f"{value:.4f}"}" '
                     f'title="position {pos}: {label}" style="{box};{style}">{_visible(texts[-1])}</span>')
    rows = "".join(span + ("<br>" if brk else "") for span, brk in zip(spans, _breaks(texts)))
    return (f'<div class="dlm-tokens" style="font-family:monospace;line-height:1.5;font-size:{font_size}px">'
            f"{rows}</div>")
