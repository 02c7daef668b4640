"""Small HTML and Markdown pieces of the explorer page: message boxes, the stats line, the canvas with its colour
legend (the notebook widget's too), the comparison table.

Every message and every value from a trace (a loaded file is anyone's) is escaped before it goes into HTML or
Markdown; the page takes the server's paths out of messages before they get here.
"""

from __future__ import annotations

import html

from explorer.sampling.trace import Trace
from explorer.viz.compare import run_label
from explorer.viz.export import MODE_LABELS, legend_ends
from explorer.viz.tokens import COLOR_MODES, LEVELS, MASK_COLOR, PROMPT_COLOR, palette, step_label, tokens_html

SWATCH = "display:inline-block;width:1.6em;height:1em;border-radius:3px;border:1px solid #aaa;vertical-align:middle"


def text(value) -> str:
    """Any value as HTML text."""
    return html.escape(str(value))


def error_html(message: str) -> str:
    return ('<div class="dlm-error" style="border:1px solid #d62728;background:#fdecea;color:#8a1c1c;'
            f'padding:8px 12px;border-radius:6px"><b>Cannot do that:</b> {text(message)}</div>')


def notice_html(messages: list[str]) -> str:
    """Warnings that do not stop a run (e.g. a block size the checkpoint was not trained with)."""
    if not messages:
        return ""
    return ('<div class="dlm-warning" style="border:1px solid #b8860b;background:#fff8e1;color:#5c4400;'
            'padding:8px 12px;border-radius:6px"><b>Note:</b> ' + "<br>".join(text(m) for m in messages) + "</div>")


def legend_html(trace: Trace, color_by: str = "confidence") -> str:
    """What the canvas's colours mean, in one line: the colour scale of `color_by` between its ends, and the masked
    and the prompt colours named."""
    if color_by not in COLOR_MODES:
        raise ValueError(f"color_by must be one of {COLOR_MODES}, got {color_by!r}")
    low, high = legend_ends(trace, color_by)
    meaning = "dark = unsure, yellow = sure" if color_by == "confidence" else "dark = early, yellow = late"
    stops = ",".join(palette()[i] for i in range(0, LEVELS, LEVELS // 8)) + "," + palette()[-1]
    return (f'<div class="dlm-legend" data-color-by="{color_by}" style="display:flex;flex-wrap:wrap;align-items:center;'
            'gap:2px 8px;font-size:14px;color:#444;margin-bottom:4px">'
            f"<b>{text(MODE_LABELS[color_by])}</b><span>{text(low)}</span>"
            f'<span class="dlm-legend-bar" style="{SWATCH};width:140px;background:linear-gradient(to right,{stops})">'
            f"</span><span>{text(high)}</span><span>({meaning})</span>"
            f'<span><span class="dlm-legend-masked" style="{SWATCH};background:{MASK_COLOR}"></span> masked (grey ·, '
            f'not yet decided)</span><span><span style="{SWATCH};background:{PROMPT_COLOR}"></span> prompt / no '
            "score</span></div>")


def canvas_html(trace: Trace, index: int = -1, color_by: str = "confidence", selected: int | None = None) -> str:
    """The canvas of frame `index` under its step and its colour legend (position `selected` outlined)."""
    step = f'<div class="dlm-step" style="font-size:14px;color:#444">{text(step_label(trace, index))}</div>'
    tokens = tokens_html(trace, index, color_by, selected=selected)
    return f'<div class="dlm-canvas">{step}{legend_html(trace, color_by)}{tokens}</div>'


def stats_line(trace: Trace, running: bool = False, runs: int = 1) -> str:
    s = trace.stats
    if running:
        return f"step {len(trace.frames) - 1} · nfe {text(s['nfe'])} · {s['wall_s']:.2f} s so far …"
    caches = sorted({f.cache for f in trace.frames if f.cache})
    extra = (f" · cache {'/'.join(caches)}" if caches else "") + (f" · stopped: {s['stop']}" if "stop" in s else "")
    extra += f" · {runs} runs (stats of the first)" if runs > 1 else ""
    return (f"**nfe** {text(s['nfe'])} · **wall** {s['wall_s']:.2f} s · **{s['tokens_per_s']:.1f} tokens/s** · "
            f"{len(trace.frames)} frames · {text(trace.model['name'])} ({text(trace.model['family'])}), sampler "
            f"{text(trace.sampler['name'])}{text(extra)}")


def prompt_note(prompt: str, given: str) -> str:
    """A collapsible line for the stats showing what the model got, when the chat template changed the prompt."""
    if given == prompt:
        return ""
    return ("\n\n<details class=\"dlm-chat\"><summary>chat template applied: the prompt the model got</summary>"
            f"<pre>{html.escape(given)}</pre></details>")


def paused_html(trace: Trace, index: int, position: int | None = None) -> str:
    """Above the Edit tab's canvas (which names its step): how to move and pick, and the position picked (if any)."""
    picked = "click a token to pick its position"
    tokens = trace.frames[index].tokens
    if position is not None and tokens is not None and 0 <= position < len(tokens):
        tok = tokens[position]
        said = "masked" if tok == trace.mask_id else repr(trace.token_strings.get(tok, f"<{tok}>"))
        picked = f"position {position} picked: {said}"
    return (f'<div class="dlm-paused" style="font-size:15px;color:#555">paused here (scrub on the Denoise tab); '
            f"{text(picked)}</div>")


def compare_table(traces: list[Trace]) -> str:
    """The compared runs' cost and text, one Markdown row each."""
    rows = ["| run | steps | nfe | wall (s) | tokens/s | text |", "|---|---|---|---|---|---|"]
    for trace in traces:
        s = trace.stats
        said = html.escape(trace.text.replace("\n", " ")[:60]).replace("|", "\\|")
        label = html.escape(run_label(trace)).replace("|", "\\|")
        rows.append(f"| {label} | {text(s['steps'])} | {text(s['nfe'])} | {s['wall_s']:.2f} | "
                    f"{s['tokens_per_s']:.1f} | {said} |")
    return "\n".join(rows)
