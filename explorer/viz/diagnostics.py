"""Diagnostics of a recorded run: does confidence predict correctness, how much the states drift between steps (why
caches work), where committing tokens together breaks their dependencies, and where a head attends over the steps.

Each function returns a plotly Figure whose `layout.meta` holds the numbers it shows (e.g. the ECE). The reliability
diagram and the hidden-state drift read the Trace alone (recorded at level "full"); the others re-run, for each step,
the network pass that step made, on the canvas it read (exactly, without the run's approximate cache if it had one),
so they need the model and stay small: at most `max_passes` passes.

What a re-run needs from a model, `_step_pass`, is the logits (and hidden states) of one step's pass: our mdlm and
bd3lm models give them, and so does a DiffusionGemma model (`canvas_pass`: its decoder over the step's canvas after
the prompt and the finished canvases; the trace holds the library's draft, not the random canvas the decoder read nor
its self-conditioning logits, so the pass re-run on a DiffusionGemma run is an approximation of the one it made).
Keys, values and attention per layer come from the model's probe (`_probe`: our Transformer's, or a DiffusionGemma
model's hooks on its decoder's attention); a step's pass reads keys of the last positions up to its end
(`_pass_end`) and computes queries of the last ones (all positions for ours, the step's canvas for DiffusionGemma),
so the other positions' cells stay empty. The cache comparison beside the drift (`explorer.eval.cache_quality`)
re-runs the sampler; `state_drift` draws its numbers.
"""

from __future__ import annotations

import html
import math

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from explorer.sampling.trace import Trace
from explorer.viz.plots import empty_figure, integer_ticks
from explorer.viz.tokens import COLORSCALE

MAX_PASSES = 256  # network passes a diagnostic may re-run by default
RERUN_FAMILIES = ("mdlm", "bd3lm", "diffusion_gemma")  # whose step passes `_step_pass` re-runs
MARGIN = {"l": 50, "r": 20, "t": 60, "b": 40}


# --- re-running a step's pass -------------------------------------------------------------------------------------

def _pass_end(model, trace: Trace, step: int) -> int:
    """Where the pass frame `step` (>= 1) made ends, counted from the prompt's first token: mdlm, the canvas's end;
    bd3lm, the end of the step's block; diffusion_gemma, the end of the step's canvas. The pass's logits, queries and
    keys are of the last positions before it."""
    P, G = len(trace.prompt_ids), len(trace.frames[0].tokens)
    block = trace.frames[step].block or 0
    if model.family == "diffusion_gemma":
        return P + (block + 1) * model.canvas_length
    if model.family == "bd3lm":  # the run's blocks are aligned on absolute positions
        size = trace.sampler.get("block_length") or model.block_size
        return min((P // size + block + 1) * size, P + G)
    return P + G


def _step_pass(model, trace: Trace, step: int, canvas: list[int] | None = None,
               hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits (L, V), with `hidden` the last hidden states (L, d), else None) of the pass frame `step` (>= 1) made,
    re-run on the canvas it read (frame step - 1's, or `canvas`); L counts from the prompt's first token. mdlm: one
    pass over prompt + canvas; bd3lm: prompt + canvas up to the end of the step's block (block-causal, as its exact
    KV cache sees it); diffusion_gemma: the step's canvas after the prompt and the canvases before it, the rows of
    other positions NaN. mdlm and bd3lm: the mask token's logit is -inf."""
    P, end = len(trace.prompt_ids), _pass_end(model, trace, step)
    canvas = trace.frames[step - 1].tokens if canvas is None else canvas
    if model.family == "diffusion_gemma":
        lo = end - P - model.canvas_length  # the canvas this pass denoised
        logits, states = model.canvas_pass(trace.prompt_ids + list(canvas[:lo]), list(canvas[lo : end - P]))
        out = [x.new_full((P + len(canvas), x.shape[-1]), float("nan")) for x in (logits, states)]
        for full, part in zip(out, (logits, states)):
            full[P + lo : end] = part
        return out[0], out[1] if hidden else None
    ids = torch.tensor([trace.prompt_ids + list(canvas)], dtype=torch.long, device=model.device)  # (1, P + G)
    if model.family == "mdlm":
        logits, states = model(ids, return_hidden=True)
    else:  # bd3lm: prompt + canvas up to the end of the step's block
        block = trace.sampler.get("block_length") or model.block_size
        logits, states = model.window_logits(ids[:, :end], 0, None, 0, block_size=block, return_hidden=True)
    logits = logits[0].float()
    logits[:, model.mask_id] = float("-inf")
    return logits, states[0].float() if hidden else None


def _probe(model):
    """The model's recorder of per-layer keys, values and attention (`with probe(layers, attention=...) as p:` then
    p.keys / p.values / p.probs by layer): our Transformer's (model.backbone.probe) or a DiffusionGemma model's
    (model.probe); None for a model without one."""
    for owner in (getattr(model, "backbone", None), model):
        if callable(probe := getattr(owner, "probe", None)):
            return probe
    return None


def _check_rerun(model, trace: Trace, passes: int, max_passes: int, reads: str | None = None) -> None:
    """Refuse what cannot or should not be re-run: another family, a model without what the diagnostic `reads`
    (None: the logits of a step's pass; else per-layer tensors from the probe, named), a run past the context, too
    many passes."""
    if model.family not in RERUN_FAMILIES or (model.family != "diffusion_gemma" and _probe(model) is None):
        raise ValueError(f"this diagnostic re-runs masked (mdlm) or block (bd3lm) diffusion models of this project, "
                         f"or DiffusionGemma; got a {model.family} model")
    if reads is not None and _probe(model) is None:
        raise ValueError(f"this diagnostic reads each layer's {reads}, which a model records with a probe (this "
                         f"project's Transformer and DiffusionGemma models have one); this {model.family} model "
                         f"({type(getattr(model, 'network', model)).__name__}) has none. parallel_dependencies and "
                         f"state_drift's hidden-state drift work with it")
    if trace.model.get("family") != model.family:
        raise ValueError(f"the trace was made by a {trace.model.get('family')} model, not this {model.family} one")
    if len(trace.prompt_ids) + len(trace.frames[0].tokens) > model.max_seq_len:
        raise ValueError(f"prompt + canvas ({len(trace.prompt_ids) + len(trace.frames[0].tokens)} tokens) exceed the "
                         f"model's context of {model.max_seq_len}; runs with a sliding window are not re-run")
    if passes > max_passes:
        raise ValueError(f"this needs {passes} network passes; max_passes is {max_passes}: record a shorter run "
                         f"(fewer steps) or raise max_passes")


def _title(trace: Trace, text: str) -> dict:
    return {"text": f"{html.escape(str(trace.model.get('name')))} · {html.escape(str(trace.sampler.get('name')))}"
                    f"<br><sup>{text}</sup>", "font": {"size": 13}}


def _token(trace: Trace, token: int) -> str:
    return html.escape(trace.token_strings.get(token, str(token)))


def _block_starts(trace: Trace) -> list[int]:
    """Generated positions where a block after the first starts: the leftmost position committed in each block."""
    firsts: dict[int, int] = {}
    for frame in trace.frames:
        if frame.block is not None and frame.committed:
            firsts[frame.block] = min(firsts.get(frame.block, frame.committed[0]), *frame.committed)
    return sorted(p for p in firsts.values() if p > 0)


# --- does confidence predict correctness -------------------------------------------------------------------------

def _judge_logprobs(judge, trace: Trace, tokens: list[int]) -> torch.Tensor:
    """Log-probabilities (G, V) an AR judge gives each generated position after <bos> + prompt + the tokens
    before it."""
    if judge.family != "ar" or getattr(judge.config, "direction", "l2r") != "l2r":
        raise ValueError(f"judge must be a left-to-right ar model, got a {judge.family} one")
    ids = [judge.bos_id] + trace.prompt_ids + list(tokens)
    if max(ids) >= judge.tokenizer.get_vocab_size():
        raise ValueError(f"the run's token ids go up to {max(ids)}, past the judge's vocabulary: judge with a model "
                         f"of the run's tokenizer")
    if len(ids) - 1 > judge.max_seq_len:
        raise ValueError(f"<bos> + prompt + output ({len(ids) - 1} tokens) exceed the judge's context of "
                         f"{judge.max_seq_len}")
    with torch.no_grad():
        logits = judge(torch.tensor([ids[:-1]], device=judge.device))[0].float()  # (P + G, V)
    return logits[len(trace.prompt_ids):].log_softmax(-1)


def reliability_diagram(trace: Trace, judge=None, bins: int = 10) -> go.Figure:
    """Each committed token's confidence at the step it was committed against whether it is right: it survives to
    the end (without `judge`), or it is the AR `judge`'s top-1 after the final text before it. Bars: the accuracy of
    each confidence bin; the diagonal is perfect calibration. meta: ece, tokens, against, bins."""
    if type(bins) is not int or not 2 <= bins <= 50:
        raise ValueError(f"bins must be an int in [2, 50], got {bins!r}")
    final = trace.final_tokens
    top1 = _judge_logprobs(judge, trace, final).argmax(-1).tolist() if judge is not None else None
    events = []  # (confidence, right) of every commit with a score (padding after a stop has none)
    for frame in trace.frames:
        for pos in frame.committed:
            conf = frame.confidence[pos] if frame.confidence else None
            if conf is None or math.isnan(conf) or pos >= len(final):
                continue
            token = frame.tokens[pos]
            events.append((conf, token == top1[pos] if top1 is not None else token == final[pos]))
    if not events:
        return empty_figure("No committed token of this run has a confidence: record the run at level 'full' with "
                            "a sampler that scores its tokens (ar, mdlm or bd3lm).")
    against = "agrees with the judge's top-1" if judge is not None else "survives to the end"
    table = []
    for b in range(bins):
        inside = [(c, ok) for c, ok in events if min(int(c * bins), bins - 1) == b]
        table.append({"low": b / bins, "high": (b + 1) / bins, "count": len(inside),
                      "confidence": sum(c for c, _ in inside) / len(inside) if inside else None,
                      "accuracy": sum(ok for _, ok in inside) / len(inside) if inside else None})
    ece = sum(row["count"] / len(events) * abs(row["accuracy"] - row["confidence"]) for row in table if row["count"])
    filled = [row for row in table if row["count"]]
    fig = go.Figure()
    fig.add_trace(go.Bar(
        x=[(row["low"] + row["high"]) / 2 for row in filled], y=[row["accuracy"] for row in filled], width=1 / bins,
        name="accuracy", marker={"color": "#1f77b4", "line": {"color": "white", "width": 1}},
        customdata=[[row["low"], row["high"], row["count"], row["confidence"]] for row in filled],
        hovertemplate="confidence %{customdata[0]:.2f}-%{customdata[1]:.2f}: %{customdata[2]} tokens<br>mean "
                      "confidence %{customdata[3]:.3f}<br>accuracy %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line={"dash": "dash", "color": "#7f7f7f"}, hoverinfo="skip"))
    fig.update_layout(
        xaxis={"title": "confidence when committed", "range": [0, 1]},
        yaxis={"title": f"fraction that {against}", "range": [0, 1.02]}, height=380, margin=MARGIN,
        legend={"orientation": "h", "y": -0.2}, bargap=0,
        title=_title(trace, f"ECE {ece:.3f} over {len(events)} committed tokens · right = {against}"),
        meta={"ece": ece, "tokens": len(events), "against": "judge" if judge is not None else "final", "bins": table})
    return fig


# --- why caches work, and where they break -----------------------------------------------------------------------

def _relative_change(new, old) -> float | None:
    """`_relative` of two vectors given as lists: None when either is unknown or old is zero."""
    if new is None or old is None:
        return None
    change = float(_relative(torch.as_tensor(new, dtype=torch.float64), torch.as_tensor(old, dtype=torch.float64)))
    return None if math.isnan(change) else change


def hidden_drift(trace: Trace, states: list[list | None] | None = None) -> list[list[float | None]]:
    """(steps, positions): how much each generated position's hidden state changed at each step, relative to its
    norm (row 0, the initial canvas, is all None; None where a state is unknown). `states`: per frame, the hidden
    states (one row per position, None where unknown) when not the trace's recorded ones."""
    states = [frame.hidden for frame in trace.frames] if states is None else states
    G = len(trace.frames[0].tokens)
    rows = [[None] * G]
    for old, new in zip(states, states[1:]):
        old, new = old or [], new or []
        rows.append([_relative_change(new[p], old[p]) if p < min(len(old), len(new)) else None for p in range(G)])
    return rows


def rerun_hidden(model, trace: Trace, max_passes: int = MAX_PASSES) -> list[list[list[float] | None]]:
    """Per frame, each generated position's last hidden state as known after that step, from re-running every
    step's pass (`_step_pass`): for a run recorded without them (a library's run, a level below "full"). A position
    a pass did not compute keeps its latest state; None where none was computed yet."""
    _check_rerun(model, trace, len(trace.frames) - 1, max_passes)
    P, G = len(trace.prompt_ids), len(trace.frames[0].tokens)
    latest: list[list[float] | None] = [None] * G
    states = [list(latest)]
    with torch.no_grad():
        for step in range(1, len(trace.frames)):
            _, hidden = _step_pass(model, trace, step, hidden=True)  # (L, d), NaN rows where not computed
            for p, row in enumerate(hidden[P : P + G]):
                if not torch.isnan(row).any():
                    latest[p] = row.tolist()
            states.append(list(latest))
    return states


def kv_drift(model, trace: Trace, layers: list[int] | None = None,
             max_passes: int = MAX_PASSES) -> tuple[list[list[float | None]], list[list[float | None]]]:
    """Each step's pass re-run with `layers`' keys and values recorded by the model's probe: ((steps, prompt +
    positions) relative change of each position's keys and values (concatenated over heads, averaged over the layers
    whose passes read the position both times) since the previous step's pass; (steps, layers) the same averaged over
    the prompt's positions). Row 0 (no pass yet) and step 1 are None, and so is a position that one of the two passes
    did not read (bd3lm's later blocks; DiffusionGemma's later canvases, and context before a sliding window)."""
    _check_rerun(model, trace, len(trace.frames) - 1, max_passes, reads="keys and values")
    P, width = len(trace.prompt_ids), len(trace.prompt_ids) + len(trace.frames[0].tokens)
    per_position, previous = [[None] * width], None
    with torch.no_grad(), _probe(model)(layers) as probe:
        prompt = [[None] * len(probe.layers)]
        for step in range(1, len(trace.frames)):
            _step_pass(model, trace, step)
            end, states = _pass_end(model, trace, step), []  # per layer (width, 2 H Dh), NaN where not read
            for layer in sorted(probe.layers):
                kv = torch.cat([probe.keys[layer][0], probe.values[layer][0]], -1)  # (H, Lk, 2 Dh)
                kv = kv.transpose(0, 1).flatten(1)  # (Lk, 2 H Dh)
                states.append(kv.new_full((width, kv.shape[1]), float("nan"), dtype=torch.float32))
                states[-1][end - len(kv) : end] = kv.float()  # the pass's keys are its last Lk positions
            if previous is None:
                per_position.append([None] * width)
                prompt.append([None] * len(states))
            else:
                change = torch.stack([_relative(new, old) for new, old in zip(states, previous)])  # (layers, width)
                per_position.append(_values(change.nanmean(0)))
                prompt.append(_values(change[:, :P].nanmean(1)) if P else [None] * len(states))
            previous = states
    return per_position, prompt


def _relative(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """||new - old|| / ||old|| over the last dim: NaN where either is unknown (NaN) or old is zero (DiffusionGemma's
    pad embedding is zero, and a canvas's first pass is re-run on the pad ids that stand for its random start)."""
    norm = old.norm(dim=-1)
    return (new - old).norm(dim=-1) / norm.where(norm > 0, float("nan"))


def _values(t: torch.Tensor) -> list[float | None]:
    """A 1-D tensor as a list, None for NaN (unknown)."""
    return [None if math.isnan(v) else v for v in t.tolist()]


def state_drift(trace: Trace, model=None, layers: list[int] | None = None, caches: dict | None = None,
                max_passes: int = MAX_PASSES) -> go.Figure:
    """Heatmaps over positions x steps of how much each state changed since the previous step (relative to its
    norm), with the block boundaries: the hidden states (recorded at level "full"; else, with `model`, re-run); with
    a `model` of our Transformer, also `layers`' keys and values re-run for every position, the prompt's included (at
    negative positions; a DiffusionGemma model's decoder reads the prompt's and finished canvases' from the
    encoder's cache; a model without a probe says so in the title).
    `caches`: `explorer.eval.cache_quality`'s numbers for this run, shown in the title (token agreement and gen-PPL
    of cache="prefix" / "dual"). meta: mean_hidden_drift, hidden ("recorded" | "re-run"), prompt_kv_drift (per step,
    per layer), caches."""
    hidden = hidden_drift(trace)
    has_hidden = any(v is not None for row in hidden for v in row)
    meta = {"hidden": "recorded" if has_hidden else None, "caches": caches}
    if not has_hidden and model is not None and model.family in RERUN_FAMILIES:
        hidden = hidden_drift(trace, rerun_hidden(model, trace, max_passes))
        has_hidden, meta["hidden"] = True, "re-run"
    if not has_hidden and model is None:
        return empty_figure("This run has no hidden states: record it at level 'full' (the page does for its runs), "
                            "or pass the model to re-run them.")
    P, steps = len(trace.prompt_ids), list(range(len(trace.frames)))
    panels = [("hidden state (last layer)", hidden, 0)] if has_hidden else []
    meta["mean_hidden_drift"] = _mean(hidden) if has_hidden else None
    notes = []
    if model is not None and _probe(model) is not None:
        per_position, prompt = kv_drift(model, trace, layers, max_passes)
        chosen = "all layers" if layers is None else "layers " + ", ".join(map(str, layers))
        read = "; the context's from the encoder's cache" if model.family == "diffusion_gemma" else ""
        panels.append((f"keys and values ({chosen}, mean{read})", per_position, -P))
        meta["prompt_kv_drift"] = prompt
        meta["mean_prompt_kv_drift"] = _mean(prompt)
    elif model is not None:
        notes.append(f"keys/values not shown: a {html.escape(str(model.family))} model has no probe of its "
                     f"per-layer keys and values")
    for mode, quality in (caches or {}).items():
        if mode != "none":
            ppl = (f", gen-PPL {quality['gen_ppl']:.1f} vs {caches['none']['gen_ppl']:.1f}"
                   if "gen_ppl" in quality else "")
            notes.append(f"cache={html.escape(str(mode))}: {quality['agreement']:.0%} of tokens as without{ppl}")
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=[title for title, _, _ in panels])
    top = max((max((v for row in z for v in row if v is not None), default=0) for _, z, _ in panels), default=0)
    for row, (title, z, first) in enumerate(panels, start=1):
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(first, first + len(z[0]))), y=steps, colorscale=COLORSCALE, reversescale=True,
            zmin=0, zmax=max(top, 1e-6), colorbar={"title": "relative change"},
            hovertemplate=f"{title}<br>position %{{x}}<br>step %{{y}}<br>changed by %{{z:.3f}}<extra></extra>"),
            row=row, col=1)
        for start in _block_starts(trace) + ([0] if first < 0 else []):
            fig.add_vline(x=start - 0.5, line={"color": "#222", "width": 1, "dash": "dot" if start else "solid"},
                          row=row, col=1)
        fig.update_yaxes(title="step", autorange="reversed", row=row, col=1, **integer_ticks(0, steps[-1]))
    fig.update_xaxes(title="position (negative: prompt)", row=len(panels), col=1)
    mean = "mean change per step:"
    if has_hidden:
        mean += f" hidden {meta['mean_hidden_drift']:.3f}" + (" (re-run)" if meta["hidden"] == "re-run" else "")
    if meta.get("mean_prompt_kv_drift") is not None:
        mean += f", prompt keys/values {meta['mean_prompt_kv_drift']:.3f}"
    fig.update_layout(height=260 + 220 * len(panels), margin={**MARGIN, "t": 90}, meta=meta,
                      title=_title(trace, "<br>".join([mean, *notes])))
    return fig


def _mean(rows: list[list[float | None]]) -> float | None:
    values = [v for row in rows for v in row if v is not None]
    return sum(values) / len(values) if values else None


# --- where parallel decoding breaks dependencies -----------------------------------------------------------------

def dependency_pairs(model, trace: Trace, max_passes: int = MAX_PASSES) -> list[dict]:
    """Every pair (i < j) of tokens committed at the same step, with log p(x_i) + log p(x_j) (the product of the
    marginals the step sampled from, temperature 1) and log p(x_i, x_j): the model re-queried with one of them
    fixed, the mean of its two chain-rule orders (log p(x_i) + log p(x_j | x_i) and the other way; the model's
    conditionals need not agree). One pass per step and one per token of those steps."""
    groups = []  # (step, committed positions that the step scored): steps that committed two or more
    for step in range(1, len(trace.frames)):
        frame = trace.frames[step]
        scored = [p for p in frame.committed
                  if not frame.confidence or (frame.confidence[p] is not None and not math.isnan(frame.confidence[p]))]
        if len(scored) > 1:
            groups.append((step, sorted(scored)))
    _check_rerun(model, trace, sum(1 + len(c) for _, c in groups), max_passes)
    P, pairs = len(trace.prompt_ids), []
    with torch.no_grad():
        for step, committed in groups:
            tokens = trace.frames[step].tokens
            marginal = _step_pass(model, trace, step)[0].log_softmax(-1)  # (L, V)
            given = {}  # i -> log-probabilities with x_i fixed
            for i in committed:
                canvas = list(trace.frames[step - 1].tokens)
                canvas[i] = tokens[i]
                given[i] = _step_pass(model, trace, step, canvas)[0].log_softmax(-1)
            for a, i in enumerate(committed):
                for j in committed[a + 1:]:
                    li, lj = float(marginal[P + i, tokens[i]]), float(marginal[P + j, tokens[j]])
                    joint = (li + float(given[i][P + j, tokens[j]]) + lj + float(given[j][P + i, tokens[i]])) / 2
                    pairs.append({"step": step, "i": i, "j": j, "log_product": li + lj, "log_joint": joint})
    return pairs


def parallel_dependencies(model, trace: Trace, worse: float = 1.0, max_passes: int = MAX_PASSES) -> go.Figure:
    """For tokens committed in the same step: the joint probability (re-queried) against the product of their
    marginals (what committing them together assumes). Pairs whose joint is more than `worse` nats below the
    product are marked: committing them one at a time would have let the second see the first. meta: pairs,
    marked (step, i, j), mean_log_ratio."""
    if not isinstance(worse, (int, float)) or not 0 <= worse <= 50:
        raise ValueError(f"worse must be a number of nats in [0, 50], got {worse!r}")
    pairs = dependency_pairs(model, trace, max_passes)
    if not pairs:
        return empty_figure("Every step of this run committed one token: nothing was decoded in parallel. Use fewer "
                            "steps than tokens, or the threshold / factor rules.")
    marked = [p for p in pairs if p["log_joint"] < p["log_product"] - worse]
    tokens = trace.final_tokens
    fig = go.Figure()
    low = min(min(p["log_product"], p["log_joint"]) for p in pairs)
    fig.add_trace(go.Scatter(x=[low, 0], y=[low, 0], mode="lines", name="joint = product (independent)",
                             line={"dash": "dash", "color": "#7f7f7f"}, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=[low, 0], y=[low - worse, -worse], mode="lines", name=f"{worse:g} nats worse",
                             line={"dash": "dot", "color": "#d62728"}, hoverinfo="skip"))
    for name, group, color in (("pairs", [p for p in pairs if p not in marked], "#1f77b4"),
                               ("worse together", marked, "#d62728")):
        fig.add_trace(go.Scatter(
            x=[p["log_product"] for p in group], y=[p["log_joint"] for p in group], mode="markers", name=name,
            marker={"color": color, "size": 8},
            text=[f"step {p['step']}: {p['i']} {_token(trace, tokens[p['i']])!r} and {p['j']} "
                  f"{_token(trace, tokens[p['j']])!r}" for p in group],
            hovertemplate="%{text}<br>log product %{x:.2f}<br>log joint %{y:.2f}<extra></extra>"))
    ratio = sum(p["log_joint"] - p["log_product"] for p in pairs) / len(pairs)
    fig.update_layout(
        xaxis_title="log p(x_i) + log p(x_j)  (committed together)", yaxis_title="log p(x_i, x_j)  (re-queried)",
        height=400, margin=MARGIN, legend={"orientation": "h", "y": -0.2},
        title=_title(trace, f"{len(pairs)} pairs committed together, {len(marked)} more than {worse:g} nats worse "
                            f"than one at a time · mean log(joint / product) {ratio:+.3f}"),
        meta={"pairs": len(pairs), "marked": [(p["step"], p["i"], p["j"]) for p in marked], "mean_log_ratio": ratio})
    return fig


# --- attention across steps --------------------------------------------------------------------------------------

def attention_over_steps(model, trace: Trace, position: int, layer: int = 0, head: int = 0,
                         max_passes: int = MAX_PASSES) -> go.Figure:
    """Heatmap (keys x steps) of `head` of `layer`'s attention from generated `position` in each step's pass
    (re-run; prompt keys at negative positions); a row is empty where the pass did not compute the position (bd3lm's
    later blocks, DiffusionGemma's other canvases), a cell where the pass read no key there. Our models' attention is
    self-attention over prompt + canvas; DiffusionGemma's decoder attends in one softmax to the encoder's cached
    context (prompt and finished canvases: the part transformers calls cross-attention) and the canvas (self), and
    the title says so. Crosses mark where each token was committed. meta: layer, head, position, steps, attention."""
    _check_rerun(model, trace, len(trace.frames) - 1, max_passes, reads="attention probabilities")
    G, P = len(trace.frames[0].tokens), len(trace.prompt_ids)
    dg = model.family == "diffusion_gemma"
    n_heads = model.network.config.text_config.num_attention_heads if dg else model.config.backbone.n_heads
    if type(position) is not int or not 0 <= position < G:
        raise ValueError(f"position must be an int in [0, {G - 1}] (the generated positions), got {position!r}")
    if type(head) is not int or not 0 <= head < n_heads:
        raise ValueError(f"head must be an int in [0, {n_heads - 1}] (the model's heads), got {head!r}")
    rows = [[None] * (P + G)]  # the initial canvas: no pass yet
    with torch.no_grad(), _probe(model)([layer], attention=True) as probe:
        for step in range(1, len(trace.frames)):
            _step_pass(model, trace, step)
            end, probs = _pass_end(model, trace, step), probe.probs[layer][0, head]  # (Lq, Lk): the last positions
            query, row = P + position - (end - probs.shape[0]), [None] * (P + G)
            if 0 <= query < probs.shape[0]:
                row[end - probs.shape[1] : end] = probs[query].tolist()
            rows.append(row)
    commits = trace.commit_steps()
    fig = go.Figure(go.Heatmap(
        z=rows, x=list(range(-P, G)), y=list(range(len(rows))), colorscale=COLORSCALE, zmin=0,
        colorbar={"title": "attention"},
        hovertemplate="key position %{x}<br>step %{y}<br>attention %{z:.3f}<extra></extra>"))
    xs = [p for p, s in enumerate(commits) if s is not None]
    fig.add_trace(go.Scatter(
        x=xs, y=[commits[p] for p in xs], mode="markers", name="committed",
        marker={"symbol": "x", "size": 6, "color": "#d62728"}, text=[_token(trace, trace.final_tokens[p]) for p in xs],
        hovertemplate="position %{x} committed at step %{y}: %{text}<extra></extra>"))
    fig.add_vline(x=position, line={"color": "#2ca02c", "width": 1})
    fig.add_vline(x=-0.5, line={"color": "#222", "width": 1})
    token = _token(trace, trace.final_tokens[position]) if position < len(trace.final_tokens) else ""
    attention = ("decoder attention over the cached context (cross) and the canvas (self), one softmax" if dg
                 else "self-attention over prompt + canvas")
    fig.update_layout(
        xaxis={"title": "key position (negative: prompt)", **integer_ticks(-P, G - 1)},
        yaxis={"title": "step", "autorange": "reversed", **integer_ticks(0, len(rows) - 1)}, height=420,
        margin={**MARGIN, "t": 80}, legend={"orientation": "h", "y": -0.2},
        title=_title(trace, f"layer {layer}, head {head}: where position {position} ({token!r} at the end) looks, "
                            f"step by step<br>{attention}"),
        meta={"layer": layer, "head": head, "position": position, "steps": len(rows) - 1, "attention": attention})
    return fig
