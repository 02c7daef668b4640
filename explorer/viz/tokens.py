"""Tokens of a frame as coloured HTML: by confidence or by the step at which each was committed."""

from __future__ import annotations

import functools
import html
import math

from plotly.colors import sample_colorscale

from explorer.sampling.trace import Trace

COLORSCALE = "Viridis"  # continuous and colour-blind safe
MASK_COLOR = "#d9d9d9"
PROMPT_COLOR = "#f2f2f2"
COLOR_MODES = ("confidence", "commit_step")
LEVELS = 256  # colour steps of the palette every view indexes into (sampling the plotly scale per token is slow)


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
    return html.escape(text).replace(" ", "&nbsp;").replace("\n", "↵<br>")


def frame_values(trace: Trace, step_index: int, color_by: str = "confidence") -> list[float | None]:
    """Per-position value in [0, 1] to colour by (None = no colour: masked or unknown)."""
    if color_by not in COLOR_MODES:
        raise ValueError(f"color_by must be one of {COLOR_MODES}, got {color_by!r}")
    frame = trace.frames[step_index]
    masked = [t == trace.mask_id for t in frame.tokens]
    if color_by == "commit_step":
        last = max(trace.frames[-1].step, 1)
        steps = trace.commit_steps(step_index)
        return [None if m or s is None else s / last for m, s in zip(masked, steps)]
    conf = frame.confidence or [None] * len(frame.tokens)
    return [None if m or c is None or (isinstance(c, float) and math.isnan(c)) else c for m, c in zip(masked, conf)]


def tokens_html(trace: Trace, step_index: int = -1, color_by: str = "confidence", show_prompt: bool = True,
                font_size: int = 16) -> str:
    """An HTML block: the prompt in light grey, then each generated token coloured by its value;
    masked positions are neutral grey boxes. Each span carries data-pos / data-value for tests and tools."""
    frame = trace.frames[step_index]
    values = frame_values(trace, step_index, color_by)
    parts = [f'<div class="dlm-tokens" style="font-family:monospace;line-height:1.9;font-size:{font_size}px">']
    if show_prompt and trace.prompt_ids:
        parts.append(f'<span class="dlm-prompt" style="background:{PROMPT_COLOR};color:#555">'
                     f"{_visible(trace.prompt_text)}</span>")
    for pos, (tok, value) in enumerate(zip(frame.tokens, values)):
        if tok == trace.mask_id:
            parts.append(f'<span class="dlm-mask" data-pos="{pos}" title="position {pos}: masked" '
                         f'style="background:{MASK_COLOR};color:#888;border-radius:3px;margin:0 1px">'
                         '&nbsp;·&nbsp;</span>')
            continue
        text = _visible(trace.token_strings.get(tok, f"<{tok}>"))
        if value is None:
            style, label = f"background:{PROMPT_COLOR}", "fixed"
        else:
            rgb = palette()[level(value)]
            style, label = f"background:{rgb};color:{text_color(rgb)}", f"{color_by} {value:.2f}"
        parts.append(f'<span class="dlm-token" data-pos="{pos}" data-value="{"" if value is None else f"{value:.4f}"}" '
                     f'title="position {pos}: {label}" style="{style};border-radius:3px">{text}</span>')
    parts.append("</div>")
    return "".join(parts)
