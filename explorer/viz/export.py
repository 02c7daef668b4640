"""A trace as a file for slides: one offline HTML page that replays it, or an animated GIF."""

from __future__ import annotations

import html
import json
from pathlib import Path

from explorer.sampling.trace import Trace
from explorer.viz.tokens import (
    COLOR_MODES,
    MASK_COLOR,
    PROMPT_COLOR,
    TOKEN_BOX,
    frame_values,
    level,
    palette,
    step_label,
    text_color,
)

MODE_LABELS = {"confidence": "confidence", "commit_step": "commit step"}


def _check(color_by: str, fps: float) -> None:
    if color_by not in COLOR_MODES:
        raise ValueError(f"color_by must be one of {COLOR_MODES}, got {color_by!r}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")


def _rgb(color: str) -> tuple[int, int, int]:
    """'rgb(r, g, b)', '#rrggbb' or '#rgb' as an (r, g, b) tuple."""
    if color.startswith("rgb"):
        return tuple(round(float(c)) for c in color[color.index("(") + 1 : -1].split(","))
    color = color.lstrip("#")
    if len(color) == 3:
        color = "".join(c * 2 for c in color)
    return tuple(int(color[i : i + 2], 16) for i in (0, 2, 4))


def _token_frames(trace: Trace) -> list[int]:
    """Indices of the frames that carry a canvas (a trace recorded at level "none" has only the last)."""
    indices = [i for i, frame in enumerate(trace.frames) if frame.tokens is not None]
    if not indices:
        raise ValueError("the trace has no canvas to show; record it with record='tokens' or 'full'")
    return indices


def _codes(trace: Trace, index: int, color_by: str) -> list[int]:
    """Palette index per position of frame `index` (-1 = no colour: masked, fixed without a score, or unknown)."""
    values = frame_values(trace, index, color_by)
    codes = [-1 if v is None else level(v) for v in values]
    return codes + [-1] * (len(trace.frames[index].tokens) - len(codes))


def legend_ends(trace: Trace, color_by: str) -> tuple[str, str]:
    """The labels at the two ends of the colour scale of `color_by`."""
    return ("0", "1") if color_by == "confidence" else ("step 0", f"step {max(len(trace.frames) - 1, 1)}")


def _caption(trace: Trace, index: int) -> str:
    return (f"{trace.model.get('name')} · {trace.sampler.get('name')} · {step_label(trace, index)}"
            f" · nfe {trace.frames[index].nfe}")


def sample_frame_indices(n_frames: int, max_frames: int) -> list[int]:
    """At most `max_frames` evenly spaced indices into `n_frames` frames, always the first and the last."""
    if max_frames < 2:
        raise ValueError(f"max_frames must be >= 2, got {max_frames}")
    if n_frames <= max_frames:
        return list(range(n_frames))
    return [round(i * (n_frames - 1) / (max_frames - 1)) for i in range(max_frames)]


_STYLE = """
body{margin:0;background:#fff;color:#222;font:22px/1.4 system-ui,sans-serif}
main{max-width:1400px;margin:0 auto;padding:24px 32px}
#caption{font-size:28px;font-weight:600;margin:0 0 16px}
#controls{display:flex;flex-wrap:wrap;align-items:center;gap:12px;margin-bottom:12px}
button{font-size:22px;padding:8px 18px;border:1px solid #888;border-radius:8px;background:#f6f6f6;cursor:pointer}
button:hover{background:#e8e8e8}
#play{min-width:140px}
#scrub{flex:1 1 300px;height:28px}
fieldset{border:1px solid #ccc;border-radius:8px;padding:4px 12px;margin:0}
fieldset label{margin-right:12px;cursor:pointer}
#legend{display:flex;flex-wrap:wrap;align-items:center;gap:10px;margin-bottom:18px;font-size:20px}
#bar{width:280px;height:22px;border-radius:4px;border:1px solid #aaa}
.swatch{display:inline-block;width:28px;height:22px;border-radius:4px;border:1px solid #aaa;vertical-align:middle}
#canvas{font:26px/1.5 ui-monospace,Menlo,Consolas,monospace}
#canvas .prompt{color:#555}
#canvas .mask{color:#888}
.keys{color:#666;font-size:18px;margin-top:24px}
"""
_STYLE += "#canvas span{" + TOKEN_BOX + "}\n"  # the page's token boxes: the rows wrap alike

_SCRIPT = """
const D = JSON.parse(document.getElementById('trace-data').textContent);
const $ = id => document.getElementById(id);
let index = 0, mode = D.color_by, timer = null;
function piece(text, bg, fg, cls) {
  const parts = text.split('\\n');
  const span = document.createElement('span');
  span.className = cls;
  span.style.background = bg;
  span.style.color = fg;
  span.textContent = parts.join('\\u21b5');
  const out = [span];
  for (let i = 1; i < parts.length; i++) out.push(document.createElement('br'));
  return out;
}
function render() {
  const frame = D.frames[index], codes = frame.colors[mode], nodes = [];
  for (const id of D.prompt) nodes.push(...piece(D.strings[id], D.neutral, '#555', 'prompt'));
  frame.tokens.forEach((id, pos) => {
    if (id < 0) { nodes.push(...piece('\\u00b7', D.mask, '#888', 'mask')); return; }
    const c = codes[pos];
    const known = c !== undefined && c >= 0;
    const out = piece(D.strings[id], known ? D.palette[c] : D.neutral, known ? D.ink[c] : '#000', 'token');
    const value = mode === 'confidence' ? (c / 255).toFixed(2) : Math.round(c / 255 * D.last_step);
    out[0].title = 'position ' + pos + ': ' + (known ? D.labels[mode] + ' ' + value : 'no colour');
    nodes.push(...out);
  });
  $('canvas').replaceChildren(...nodes);
  $('caption').textContent = D.model + ' \\u00b7 ' + D.sampler + ' \\u00b7 step ' + frame.step + ' of ' + D.last_step
    + ' \\u00b7 nfe ' + frame.nfe;
  $('scrub').value = index;
  $('low').textContent = D.ends[mode][0];
  $('high').textContent = D.ends[mode][1];
}
function go(i) { index = Math.max(0, Math.min(D.frames.length - 1, i)); render(); }
function pause() { clearInterval(timer); timer = null; $('play').textContent = '\\u25b6 play'; }
function play() {
  if (index === D.frames.length - 1) go(0);
  $('play').textContent = '\\u275a\\u275a pause';
  timer = setInterval(() => { go(index + 1); if (index === D.frames.length - 1) pause(); }, 1000 / D.fps);
}
function toggle() { if (timer) pause(); else play(); }
$('play').onclick = toggle;
$('back').onclick = () => { pause(); go(index - 1); };
$('fwd').onclick = () => { pause(); go(index + 1); };
$('scrub').max = D.frames.length - 1;
$('scrub').oninput = e => { pause(); go(Number(e.target.value)); };
for (const radio of document.querySelectorAll('input[name=mode]')) {
  radio.checked = radio.value === mode;
  radio.onchange = e => { mode = e.target.value; render(); };
}
document.addEventListener('keydown', e => {
  if (e.key === ' ') { e.preventDefault(); if (!e.repeat) toggle(); }
  else if (e.key === 'ArrowLeft') { e.preventDefault(); pause(); go(index - 1); }
  else if (e.key === 'ArrowRight') { e.preventDefault(); pause(); go(index + 1); }
});
document.addEventListener('keyup', e => { if (e.key === ' ') e.preventDefault(); });
const stops = D.palette.filter((_, i) => i % 32 === 0 || i === 255);
$('bar').style.background = 'linear-gradient(to right,' + stops.join(',') + ')';
$('mask-swatch').style.background = D.mask;
$('neutral-swatch').style.background = D.neutral;
render();
"""


def _json_for_script(data: dict) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' survives to end the element early."""
    return json.dumps(data, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def trace_animation_html(trace: Trace, color_by: str = "confidence", fps: float = 4) -> str:
    """One standalone, offline HTML page replaying the trace: the canvas coloured per token as in `tokens_html`
    (by confidence or commit step, switchable), play / pause, step buttons, a step scrubber and the keyboard
    (space = play / pause, left / right = step). Every frame with a canvas is embedded as JSON."""
    _check(color_by, fps)
    indices = _token_frames(trace)
    colours = palette()
    strings: dict[int, int] = {}

    def sid(token: int) -> int:
        return strings.setdefault(token, len(strings))

    frames = [{"step": i, "nfe": trace.frames[i].nfe,
               "tokens": [-1 if t == trace.mask_id else sid(t) for t in trace.frames[i].tokens],
               "colors": {mode: _codes(trace, i, mode) for mode in COLOR_MODES}} for i in indices]
    data = {"model": str(trace.model.get("name")), "sampler": str(trace.sampler.get("name")),
            "last_step": len(trace.frames) - 1, "fps": fps, "color_by": color_by,
            "prompt": [sid(t) for t in trace.prompt_ids], "frames": frames,
            "palette": ["#{:02x}{:02x}{:02x}".format(*_rgb(rgb)) for rgb in colours],
            "ink": [text_color(rgb) for rgb in colours],
            "mask": MASK_COLOR, "neutral": PROMPT_COLOR, "labels": MODE_LABELS,
            "ends": {mode: legend_ends(trace, mode) for mode in COLOR_MODES}}
    data["strings"] = [trace.token_strings.get(t, f"<{t}>") for t in strings]
    modes = "".join(f'<label><input type="radio" name="mode" value="{m}"> {MODE_LABELS[m]}</label>'
                    for m in COLOR_MODES)
    title = html.escape(_caption(trace, indices[-1]))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{_STYLE}</style>
</head>
<body>
<main>
<h1 id="caption">{title}</h1>
<div id="controls">
<button id="back" title="step back (left arrow)">&#9664; step</button>
<button id="play" title="play / pause (space)">&#9654; play</button>
<button id="fwd" title="step forward (right arrow)">step &#9654;</button>
<input id="scrub" type="range" min="0" value="0" step="1" aria-label="step">
<fieldset><legend>colour by</legend>{modes}</fieldset>
</div>
<div id="legend"><span id="low"></span><span id="bar"></span><span id="high"></span>
<span><span class="swatch" id="mask-swatch"></span> masked</span>
<span><span class="swatch" id="neutral-swatch"></span> prompt / no score</span></div>
<div id="canvas"></div>
<p class="keys">space: play / pause · &larr; &rarr;: step · &#8629; marks a newline</p>
</main>
<script type="application/json" id="trace-data">{_json_for_script(data)}</script>
<script>{_SCRIPT}</script>
</body>
</html>
"""


class _Painter:
    """Lays out and draws token boxes for one GIF size (fonts and metrics fixed at construction)."""

    def __init__(self, trace: Trace, color_by: str, width: int):
        from PIL import ImageFont

        self.trace, self.color_by, self.width = trace, color_by, width
        self.size = max(12, round(22 * width / 900))
        self.font = ImageFont.load_default(size=self.size)
        self.small = ImageFont.load_default(size=max(10, round(self.size * 0.8)))
        self.pad, self.gap = max(2, self.size // 6), 2
        self.line = round(self.size * 1.7)
        self.margin = round(self.size * 0.8)
        self.arrow = round(self.size * 0.6)  # width of the drawn newline arrow (the default font has no glyph for it)
        colours = palette()
        self.palette = [_rgb(c) for c in colours]
        self.ink = [_rgb(text_color(c)) for c in colours]

    def items(self, index: int) -> list[tuple[str, tuple, tuple]]:
        """(text, box colour, text colour) of the prompt and every position of frame `index`."""
        trace, out = self.trace, []
        for t in trace.prompt_ids:
            out.append((trace.token_strings.get(t, f"<{t}>"), _rgb(PROMPT_COLOR), _rgb("#555")))
        for t, c in zip(trace.frames[index].tokens, _codes(trace, index, self.color_by)):
            if t == trace.mask_id:
                out.append(("·", _rgb(MASK_COLOR), _rgb("#888")))
            elif c < 0:
                out.append((trace.token_strings.get(t, f"<{t}>"), _rgb(PROMPT_COLOR), (0, 0, 0)))
            else:
                out.append((trace.token_strings.get(t, f"<{t}>"), self.palette[c], self.ink[c]))
        return out

    def layout(self, items) -> tuple[list[tuple[int, int, int]], int]:
        """Box (x, y, width) per item, wrapped to the image width; and the y below the last line."""
        x = y = self.margin
        boxes = []
        for text, _, _ in items:
            w = sum(self.font.getlength(p) for p in text.split("\n")) + self.arrow * text.count("\n")
            w = max(round(w) + 2 * self.pad, self.size // 2)
            if x + w > self.width - self.margin and x > self.margin:
                x, y = self.margin, y + self.line
            boxes.append((x, y, w))
            x += w + self.gap
            for _ in range(text.count("\n")):
                x, y = self.margin, y + self.line
        return boxes, y + self.line

    def draw_tokens(self, draw, items, boxes, top: int) -> None:
        for (text, fill, ink), (x, y, w) in zip(items, boxes):
            y += top
            draw.rounded_rectangle((x, y + 2, x + w, y + self.line - 2), radius=4, fill=fill)
            cx, mid = x + self.pad, y + self.line // 2
            for i, part in enumerate(text.split("\n")):
                if i:  # a return arrow: down, then left to an arrowhead
                    a, s = self.arrow, max(2, self.size // 5)
                    draw.line([(cx + a - 2, mid - s), (cx + a - 2, mid + s // 2), (cx + 1, mid + s // 2)], fill=ink,
                              width=2)
                    draw.line([(cx + s, mid), (cx + 1, mid + s // 2), (cx + s, mid + s)], fill=ink, width=2)
                    cx += a
                draw.text((cx, mid), part, font=self.font, fill=ink, anchor="lm")
                cx += self.font.getlength(part)

    def draw_legend(self, draw, y: int) -> None:
        low, high = legend_ends(self.trace, self.color_by)
        x = self.margin
        draw.text((x, y + self.line // 2), f"{MODE_LABELS[self.color_by]}:  {low}", font=self.small, fill=(60, 60, 60),
                  anchor="lm")
        x += round(self.small.getlength(f"{MODE_LABELS[self.color_by]}:  {low}")) + self.pad * 2
        bar = max(60, self.width // 4)
        for i in range(bar):
            color = self.palette[level(i / (bar - 1))]
            draw.line([(x + i, y + self.line // 4), (x + i, y + 3 * self.line // 4)], fill=color)
        x += bar + self.pad * 2
        draw.text((x, y + self.line // 2), high, font=self.small, fill=(60, 60, 60), anchor="lm")
        x += round(self.small.getlength(high)) + self.size
        for color, label in ((MASK_COLOR, "masked"), (PROMPT_COLOR, "prompt / no score")):
            draw.rounded_rectangle((x, y + self.line // 4, x + self.size, y + 3 * self.line // 4), radius=3,
                                   fill=_rgb(color), outline=(170, 170, 170))
            x += self.size + self.pad * 2
            draw.text((x, y + self.line // 2), label, font=self.small, fill=(60, 60, 60), anchor="lm")
            x += round(self.small.getlength(label)) + self.size


def trace_gif(trace: Trace, path: str | Path, color_by: str = "confidence", fps: float = 4, width: int = 900,
              max_frames: int = 120) -> Path:
    """An animated GIF of the trace for slides: per frame the caption, the canvas as wrapped coloured token boxes
    and a colour bar. At most `max_frames` frames, evenly sampled (first and last kept); the last is held longer."""
    _check(color_by, fps)
    if width < 300:
        raise ValueError(f"width must be >= 300 pixels, got {width}")
    from PIL import Image, ImageDraw
    from tqdm.auto import tqdm

    available = _token_frames(trace)
    indices = [available[i] for i in sample_frame_indices(len(available), max_frames)]
    painter = _Painter(trace, color_by, width)
    pages = [(i, painter.items(i)) for i in indices]
    layouts = [painter.layout(items) for _, items in pages]
    top = painter.line + painter.margin // 2  # the caption line
    canvas = max(bottom for _, bottom in layouts)
    height = top + canvas + painter.line + painter.margin
    images = []
    for (index, items), (boxes, _) in tqdm(zip(pages, layouts), total=len(pages), desc="gif frames", leave=False):
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        draw.text((painter.margin, painter.margin // 2 + painter.line // 2), _caption(trace, index), font=painter.font,
                  fill=(20, 20, 20), anchor="lm")
        painter.draw_tokens(draw, items, boxes, top - painter.margin)
        painter.draw_legend(draw, top + canvas - painter.margin // 2)
        images.append(image)
    shared = images[-1].quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    images = [image.quantize(palette=shared, dither=Image.Dither.NONE) for image in images]  # legend: every colour
    step_ms = max(20, round(1000 / fps))
    durations = [step_ms] * (len(images) - 1) + [max(2000, 4 * step_ms)]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    tmp.replace(path)
    return path
