"""The Diagnostics tab: four questions about the session's run, each one picture from `explorer.viz.diagnostics`
(the notebook 08_diagnostics draws the same ones). The reliability diagram and the hidden-state drift read the
stored run; the others re-run the model that made it, a pass per step (small runs only). The cache comparison beside
the drift (`explorer.eval.cache_quality`: the run generated again with each cache) is computed once per run and judge
and kept (`Comparisons`), so drawing the same run again does not generate again."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from types import SimpleNamespace

import gradio as gr

from explorer.eval import cache_quality
from explorer.page.common import RUNS, Session, learn_more, missing, page
from explorer.page.memory import unpacked
from explorer.page.views import Shared, trace_model
from explorer.viz import attention_over_steps, parallel_dependencies, reliability_diagram, state_drift
from explorer.viz.plots import empty_figure

CHOICES = ("confidence vs correctness", "state drift and caches", "parallel dependencies", "attention over steps")
JUDGE = "ar-tiny"  # the AR judge of the reliability diagram and the caches' gen-PPL
BEFORE = ("No run yet. Press Generate on the Denoise tab (it records everything these diagnostics read), then come "
          "back and press Draw.")
LEARN = ("**Diagnostics.** *Confidence vs correctness*: is a token's confidence when committed the chance that it is "
         "right (it survives to the end, or the AR judge agrees)? Confidence-based remasking and threshold decoding "
         "assume so. *State drift*: how much each position's hidden state and keys/values change from one step to the "
         "next; Fast-dLLM's prefix / dual caches and dKV-Cache reuse them as if they did not, and the title says what "
         "that costs on this run. *Parallel dependencies*: for tokens committed in the same step, their joint "
         "probability against the product of their marginals; red pairs were much worse together. *Attention over "
         "steps*: where one head looks from one position at each step. The last three re-run the model once per "
         "step." + learn_more("08_diagnostics"))


class Comparisons:
    """`cache_quality` results by run and judge, the `limit` most recent kept: each costs two generations and the
    judge's passes."""

    def __init__(self, limit: int = 32):
        self.limit, self.results, self.lock = limit, OrderedDict(), threading.Lock()

    def get(self, model, trace, judge, judge_name: str | None) -> dict | None:
        """The run's cache comparison (None where the run has no cache knob: not an mdlm sampler with one)."""
        if model.family != "mdlm" or "cache" not in trace.sampler:
            return None
        key = hashlib.sha256(json.dumps([trace.model, trace.sampler, trace.prompt_ids, trace.final_tokens,
                                         judge_name], sort_keys=True, default=str).encode()).hexdigest()
        with self.lock:
            if key in self.results:
                self.results.move_to_end(key)
                return self.results[key]
        result = cache_quality(model, trace, judge)  # outside the lock: other runs' draws go on meanwhile
        with self.lock:
            self.results[key] = result
            while len(self.results) > self.limit:
                self.results.popitem(last=False)
        return result


COMPARISONS = Comparisons()


def draw(session, which, judge, layer, head, position):
    """The chosen diagnostic for the session's run (a message in the plot when it cannot be drawn)."""
    session = session if session is not None else Session()
    if session.trace is None:
        return empty_figure(missing(session, BEFORE))
    trace = unpacked(session.trace)
    try:
        judge_model = page().model(JUDGE) if judge else None
        if which == CHOICES[0]:
            return reliability_diagram(trace, judge_model)
        model = trace_model(session)
        if which == CHOICES[1]:
            caches = COMPARISONS.get(model, trace, judge_model, JUDGE if judge else None)
            return state_drift(trace, model, caches=caches)
        if which == CHOICES[2]:
            return parallel_dependencies(model, trace)
        return attention_over_steps(model, trace, _int("position", position), _int("layer", layer),
                                    _int("head", head))
    except (ValueError, FileNotFoundError) as err:
        return empty_figure(page().public(str(err)))


def _int(name: str, value) -> int:
    if value is None or float(value) != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def build() -> SimpleNamespace:
    which = gr.Radio(list(CHOICES), value=CHOICES[0], label="diagnostic", elem_id="diagnostic")
    with gr.Row():
        judge = gr.Checkbox(True, label=f"judge with {JUDGE}", elem_id="diagnostic_judge",
                            info="reliability: right = the judge's top-1; caches: its gen-PPL")
        layer = gr.Number(0, precision=0, label="layer", elem_id="diagnostic_layer", info="attention over steps")
        head = gr.Number(0, precision=0, label="head", elem_id="diagnostic_head")
        position = gr.Number(0, precision=0, label="from position", elem_id="diagnostic_position")
    button = gr.Button("Draw", variant="primary", elem_id="diagnostic_draw")
    plot = gr.Plot(elem_id="diagnostic_plot", show_label=False, value=empty_figure(BEFORE))
    gr.Markdown(LEARN, elem_classes="dlm-learn")
    return SimpleNamespace(which=which, judge=judge, layer=layer, head=head, position=position, button=button,
                           plot=plot)


def wire(dg: SimpleNamespace, shared: Shared) -> None:
    """Draw re-runs the model for three of the four: it waits in the runs' queue."""
    dg.button.click(draw, [shared.session, dg.which, dg.judge, dg.layer, dg.head, dg.position], dg.plot,
                    api_name="diagnostic", **RUNS)
