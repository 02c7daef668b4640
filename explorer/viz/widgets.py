"""ipywidgets controls for notebooks: a step scrubber over a trace, and sliders that re-run a sampler."""

from __future__ import annotations

from explorer.sampling.trace import Trace
from explorer.viz.panels import canvas_html
from explorer.viz.plots import step_heatmap
from explorer.viz.tokens import COLOR_MODES


def scrubber(trace: Trace, color_by: str = "confidence"):
    """A step slider and a colour toggle over a recorded trace, and the canvas with its colour legend (as wide as the
    output, so its rows wrap); replays without the model."""
    import ipywidgets as w

    step = w.IntSlider(value=len(trace.frames) - 1, min=0, max=len(trace.frames) - 1, description="step",
                       continuous_update=True)
    mode = w.ToggleButtons(options=list(COLOR_MODES), value=color_by, description="colour by")
    view = w.HTML(canvas_html(trace, step.value, mode.value), layout=w.Layout(width="100%"))

    def redraw(_=None):
        view.value = canvas_html(trace, step.value, mode.value)

    step.observe(redraw, "value")
    mode.observe(redraw, "value")
    return w.VBox([w.HBox([step, mode]), view])


def sampler_controls(model, prompt: str = "", sampler: str | None = None, **knobs):
    """Steps and temperature sliders that re-run the sampler on release, with a scrubber and heatmap
    (confidence; entropy for continuous diffusion)."""
    import ipywidgets as w

    from explorer.sampling import generate

    gen_length = knobs.pop("gen_length", 64)
    most = 400 if model.family == "cdcd" else gen_length  # ODE steps are not bounded by the tokens
    steps = w.IntSlider(value=knobs.pop("steps", 200 if model.family == "cdcd" else gen_length), min=1, max=most,
                        description="steps", continuous_update=False)
    default_temperature = 1.0 if model.family == "cdcd" else 0.0  # cdcd: the model's own softmax inside E[x0]
    temperature = w.FloatSlider(value=knobs.pop("temperature", default_temperature), min=0.0, max=2.0, step=0.05,
                                description="temperature", continuous_update=False)
    out = w.Output()
    holder = w.VBox()

    def rerun(_=None):
        trace = generate(model, prompt, sampler, gen_length=gen_length, steps=steps.value,
                         temperature=temperature.value, record="full", **knobs)
        out.clear_output()
        with out:
            from IPython.display import display

            display(step_heatmap(trace))
        holder.children = [scrubber(trace), out]

    steps.observe(rerun, "value")
    temperature.observe(rerun, "value")
    rerun()
    return w.VBox([w.HBox([steps, temperature]), holder])
