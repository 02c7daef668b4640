"""The Denoise tab: a checkpoint, a sampler and its knobs (read from the sampler registry), a live run of N seeds,
and a scrubber that replays the recorded frames."""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr
import numpy as np
import torch

from explorer.data.tokenizer import display_string
from explorer.hub import calm_chunk_sizes, calm_for_chunk
from explorer.models.base import read_config
from explorer.page.common import (
    FREE,
    RUNS,
    Session,
    error_box,
    keep,
    learn_more,
    notice_box,
    page,
    stop,
    user_key,
    warn,
    with_request,
)
from explorer.page.examples import EXAMPLE_PROMPT, EXAMPLE_RUNS, example_label
from explorer.page.folders import family_at, has_chat_template, root_names, sampler_at
from explorer.page.memory import LiveRuns
from explorer.page.requests import (
    CACHES,
    EVERY_SAMPLER,
    EXTRA_KNOBS,
    LENGTH_NOTE,
    MAX_LENGTH,
    MAX_RUNS,
    MODEL_KNOBS,
    Request,
    check_request,
    control_of,
    model_prompt,
    page_sampler,
    read_knobs,
    sampler_knobs,
    shown_knobs,
    slider_settings,
)
from explorer.page.views import Outputs, Shared, replay, show, slider_range, take_trace
from explorer.sampling import SAMPLERS, Trace, sampler_for
from explorer.sampling.calm import MAX_CANDIDATES
from explorer.sampling.registry import REGISTRY
from explorer.viz import COLOR_MODES, step_heatmap
from explorer.viz.compare import small_multiples_html
from explorer.viz.latent import vocabulary_points
from explorer.viz.panels import canvas_html, prompt_note, stats_line

RARE = "dlm-rare"  # the class of the controls presentation mode hides (the page's CSS)
PLOT_EVERY_S = 0.5  # redraw the heatmap at most this often while streaming (the token view updates every step)
DEFAULT_FAMILY = "mdlm"  # whose sampler and knobs the page shows first (the default checkpoint is mdlm-tiny)
SAMPLER_CONTROLS = ("gen_length", "steps", "block_length", "temperature", "threshold", "cfg_scale", "cache",
                    "constraints")  # the sliders and boxes shown, and explained, for the sampler that takes them
FAMILY_CONTROLS = ("sampler", "cache", "block_length", "steps", "temperature", "threshold", "n_runs", "gen_length",
                   "chunk_size", "cfg_scale", "constraints")  # what `family_controls` sets when a checkpoint is chosen
LEARN = ("**What you see.** The canvas after each step: the prompt in light grey, each generated token coloured by the "
         "model's confidence when it was committed (Viridis: dark = unsure, yellow = sure; grey dots are still "
         "masked), or by the step that committed it. The heatmap is confidence per position (x) over steps (y); red "
         "crosses mark commits. Continuous diffusion shows the softmax entropy instead. With N > 1 the runs below "
         "are the same sampler with seeds seed .. seed + N - 1, with how much they differ. Keys: space plays / "
         "pauses, arrows step." + learn_more("00_tour|the tour", "01_masked_diffusion",
                                               "02_samplers|remasking rules, Fast-dLLM", "03_block_diffusion",
                                               "04_continuous_diffusion", "05_calm",
                                               "07_train_and_sample_by_hand|train one, write the sampler"))


# --- controls read from the sampler registry ---------------------------------------------------------------------

def sampler_info(family: str) -> str:
    """The family's samplers, grouped by what they are (the registry's titles)."""
    groups: dict[str, list[str]] = {}
    for name in SAMPLERS[family]:
        groups.setdefault(sampler_for(family, name).title, []).append(name)
    return "; ".join(f"{title}: {', '.join(names)}" for title, names in groups.items())


def knob_help(spec, knob: str) -> str:
    """The registry's help of a knob; gen length's also says which families may run past the model's context."""
    text = spec.knobs[knob].metadata["help"]
    return f"{text}; {LENGTH_NOTE}" if knob == "gen_length" else text


def knob_default(spec, knob: str):
    """`spec`'s default of a knob; for a knob it lacks, the first registered sampler's that has it (what the box of
    a hidden knob holds, and what an API call that leaves the box out sends)."""
    owner = spec if knob in spec.knobs else next(s for s in REGISTRY.values() if knob in s.knobs)
    return owner.default(knob)


def box_value(spec, knob: str) -> dict:
    """What the box of an EXTRA_KNOBS knob holds for `spec`: its default in a choice or a tick box; a text box is
    left empty (the sampler's default, shown as its placeholder)."""
    definition = EXTRA_KNOBS[knob]
    if definition.metadata["choices"] or str(definition.type) == "bool":
        return {"value": knob_default(spec, knob)}
    return {"value": "", "placeholder": f"default: {knob_default(spec, knob)}"}


def knob_box(knob: str, spec) -> gr.components.Component:
    """The control of a registry knob the page has no slider for: a choice, a tick box, else a text box."""
    definition = EXTRA_KNOBS[knob]
    shown = {"label": knob, "elem_id": control_of(knob), "visible": knob in shown_knobs(spec),
             "info": definition.metadata["help"]} | box_value(spec, knob)
    if definition.metadata["choices"]:
        return gr.Dropdown(list(definition.metadata["choices"]), **shown)
    return (gr.Checkbox if str(definition.type) == "bool" else gr.Textbox)(**shown)


def family_controls(choice):
    """The controls of FAMILY_CONTROLS for a checkpoint: the family's samplers and the knobs of its default sampler
    at their registry defaults, each slider's range from the checkpoint (`slider_settings`: nothing carries over
    from another family); calm: K, the algorithm, N head samples and a temperature in [0, 1] instead of steps,
    blocks, cache and threshold. A released folder (LLaDA, Dream: no "family" in its config.json) gets the mdlm
    controls."""
    try:
        path = page().path(choice)
        config = read_config(path)
    except (ValueError, FileNotFoundError):
        return tuple(gr.skip() for _ in FAMILY_CONTROLS)
    try:
        family = family_at(path, config)
    except ValueError as err:  # a config.json of no layout we know: say so rather than show no sampler
        warn(str(err))
        return tuple(gr.skip() for _ in FAMILY_CONTROLS)
    choices = list(SAMPLERS[family])
    # our checkpoints start at SHOWCASE; released ones at the papers' defaults (Dream's folders: Dream's own loop)
    spec, preset = page_sampler(family, sampler_at(path, config), own="family" in config)
    shown = {control_of(k) for k in shown_knobs(spec)}
    calm = family == "calm"
    sliders = slider_settings(family, spec, config, preset)
    n = ({"minimum": 2, "maximum": MAX_CANDIDATES, "value": spec.default("n_candidates"),
          "label": "N (head samples per chunk)"} if calm else
         {"minimum": 1, "maximum": MAX_RUNS, "value": 1, "label": "N (runs drawn at once, seeds seed .. seed+N-1)"})
    chunk_sizes = calm_chunk_sizes()
    cache = {"value": CACHES[family][0]} if family in CACHES else {}
    return (gr.update(choices=choices, value=spec.name, info=sampler_info(family),
                      label="algorithm (temperature below 1)" if calm else "sampler (remasking rule)"),
            gr.update(visible="cache" in shown, **cache),
            gr.update(visible="block_length" in shown, **sliders["block_length"]),
            gr.update(visible="steps" in shown, **sliders["steps"]), gr.update(**sliders["temperature"]),
            gr.update(visible="threshold" in shown), gr.update(**n), gr.update(**sliders["gen_length"]),
            gr.update(choices=sorted(set(chunk_sizes.values())), value=chunk_sizes.get(path.name), visible=calm),
            gr.update(visible="cfg_scale" in shown), gr.update(visible="constraints" in shown))


def sampler_controls(choice, sampler):
    """Show the knobs the chosen sampler takes, each explained by its registry help, and hide the others (the page
    sends a sampler only its own knobs); the registry's other knobs (`EXTRA_KNOBS`) start at its defaults."""
    try:
        path = page().path(choice)
        spec = sampler_for(family_at(path), sampler)
    except (ValueError, FileNotFoundError):  # family_controls names a folder of no known layout
        return tuple(gr.skip() for _ in range(len(SAMPLER_CONTROLS) + len(EXTRA_KNOBS)))
    knobs = {control_of(k): k for k in shown_knobs(spec)}
    updates = []
    for control in SAMPLER_CONTROLS:  # word constraints keep the page's own help: they are text, not token ids
        explained = {"info": knob_help(spec, knobs[control])} if control in knobs and control != "constraints" else {}
        updates.append(gr.update(visible=control in knobs, **explained))
    for knob in EXTRA_KNOBS:
        explained = {"info": knob_help(spec, knob)} if knob in knobs.values() else {}
        updates.append(gr.update(visible=knob in knobs.values(), **explained, **box_value(spec, knob)))
    return tuple(updates)


def chat_control(choice):
    """The "chat template" box: shown and ticked for a folder whose tokenizer has a chat template, hidden otherwise."""
    try:
        offered = has_chat_template(page().path(choice))
    except (ValueError, FileNotFoundError):
        offered = False
    return gr.update(visible=offered, value=offered)


def on_chunk_size(chunk_size, choice):
    """Switch to the calm checkpoint that packs `chunk_size` tokens per vector (the current one if it does)."""
    if calm_chunk_sizes().get(choice) == chunk_size:
        return gr.skip()
    return gr.update(value=calm_for_chunk(int(chunk_size)))


# --- a run and its replay ----------------------------------------------------------------------------------------

def decoded_samples(model, trace: Trace) -> dict[int, list[str]]:
    """calm: the chunk each head sample decodes to (the autoencoder's argmax, as the sampler decodes), per frame;
    computed once after the run so that replay needs no model."""
    out = {}
    with torch.no_grad():
        for index, frame in enumerate(trace.frames):
            if frame.samples is not None and len(frame.samples):
                samples = torch.as_tensor(np.asarray(frame.samples, dtype=np.float32), device=model.device)
                chunks = model.autoencoder.decode(samples).argmax(-1)
                out[index] = ["".join(display_string(model.tokenizer, t) for t in c) for c in chunks.tolist()]
    return out


def generate(checkpoint, prompt, sampler, gen_length, steps, block_length, temperature, threshold, seed, color_by,
             cache=None, n=1, cfg_scale=0.0, constraints="", chat=True, session=None, *knob_values,
             request: gr.Request = None):
    """Stream a generation (N runs in lockstep): the canvas every step, the heatmap every PLOT_EVERY_S. `chat`: wrap
    the prompt in the checkpoint's chat template, when it has one. `knob_values`: the EXTRA_KNOBS boxes, in order."""
    session = session if session is not None else Session()
    user = user_key(request)
    out = Outputs()
    token = None
    try:
        token = page().registry.start(user)
        path = page().path(checkpoint)
        model = page().models.get(path)
        chunk = model.config.autoencoder.chunk if model.family == "calm" else 1
        req = Request(sampler, int(gen_length), int(steps), int(block_length), float(temperature),
                      float(threshold), cache, int(n), float(cfg_scale or 0), constraints or "",
                      knobs=read_knobs(dict(zip(EXTRA_KNOBS, knob_values))))
        check_request(model.family, req, chunk)
        knobs = sampler_knobs(model.family, req)
        for name in MODEL_KNOBS:  # e.g. draft_refine's drafter: a checkpoint the page may open, loaded
            if name in knobs:
                knobs[name] = page().model(knobs[name])
        given = model_prompt(model, prompt or "", bool(chat))
        live = LiveRuns(model, given, sampler, int(seed or 0), 1 if model.family == "calm" else req.n, knobs)
        last_plot = 0.0
        for traces in live:
            plot = gr.skip()
            if time.perf_counter() - last_plot > PLOT_EVERY_S:
                plot, last_plot = step_heatmap(traces[0]), time.perf_counter()
            yield out(view=canvas_html(traces[0], -1, color_by), stats=stats_line(traces[0], True),
                      error=notice_box(live.notices), plot=plot, step=gr.update(interactive=False),
                      multiples=small_multiples_html(traces, -1, color_by) if len(traces) > 1 else "")
        traces = live.traces
    except ValueError as err:  # samplers name the bad knob, its value and the allowed range
        warn(str(err))
        yield out(error=error_box(str(err)), step=gr.update(interactive=True))
        return
    finally:
        if token is not None:
            page().registry.finish(user, token)
    for message in live.notices:
        warn(message)
    session.trace, session.runs, session.history, session.model_path = traces[0], traces, [], path
    session.sample_texts = decoded_samples(model, traces[0]) if model.family == "calm" else {}
    session.vocabulary = vocabulary_points(model) if model.family == "cdcd" else None
    keep(session, request)
    view, plot, _step, latent_view, _latent_step, latent, edit_view, multiples = show(session, -1, color_by)
    stats = stats_line(traces[0], False, len(traces)) + prompt_note(prompt or "", given)
    yield out(view=view, stats=stats, error=notice_box(live.notices), plot=plot,
              step=gr.update(**slider_range(traces[0])), session=session, multiples=multiples,
              latent_view=latent_view, latent_step=gr.update(**slider_range(traces[0])), latent=latent,
              edit_view=edit_view)


def rerun_on_release(*args, request: gr.Request = None):
    """A slider was released: re-run (the inputs of `generate`) when the last input, the "re-run when a slider is
    released" box, is ticked; otherwise leave the page as it is."""
    if not args[-1]:
        yield Outputs()()
        return
    yield from generate(*args[:-1], request=request)


def step_by(delta: int):
    def handler(session, step, color_by, method="pca", source="this run"):
        """Move the scrubber one frame (no model call)."""
        if session is None or session.trace is None:
            return replay(session, step, color_by)
        return show(session, int(step) + delta, color_by, method, source)
    return handler


def play(session, step, color_by, fps, method="pca", source="this run"):
    """Advance the scrubber frame by frame from `step` to the end (from the start if already there); Pause
    cancels. Replays stored frames only."""
    if session is None or session.trace is None:
        yield replay(session, step, color_by)
        return
    last = len(session.trace.frames) - 1
    start = 0 if int(step) >= last else int(step) + 1
    for index in range(start, last + 1):
        yield show(session, index, color_by, method, source)
        if index < last:  # no wait after the last frame: the event ends with it, so a colour switch right then is
            time.sleep(1.0 / max(float(fps), 0.5))  # not overwritten by the run's closing update in the old colours


def show_example(name, color_by, session, request: gr.Request = None):
    """A shipped example run replaces the session's run (replayed, no model call); its prompt and checkpoint fill
    their boxes (the checkpoint's sampler and knobs follow, as when it is chosen). The outputs of /generate, then
    the prompt box and the checkpoint. (Gradio refuses a name that is not one of the picker's choices.)"""
    trace = page().examples[name]
    checkpoint = trace.model.get("checkpoint")
    return (take_trace(session, trace, color_by, request)
            + (trace.prompt_text, checkpoint if checkpoint in page().choices() else gr.skip()))


# --- the tab -----------------------------------------------------------------------------------------------------

def build(names: list[str], default: str | None, trace: Trace | None, first_range: dict) -> SimpleNamespace:
    """The Denoise tab's components: the run's controls beside what it shows."""
    with gr.Row():
        with gr.Column(scale=1, min_width=320, elem_id="controls"):
            controls = build_controls(names, default)
        with gr.Column(scale=2):
            views = build_views(trace, first_range)
    return SimpleNamespace(**controls, **views)


def build_controls(names: list[str], default: str | None) -> dict:
    """The checkpoint, the prompt, the sampler and its knobs, for the default family's default sampler (the page
    narrows them to the checkpoint's family once loaded)."""
    spec, preset = page_sampler(DEFAULT_FAMILY)
    with gr.Row(elem_id="actions"):  # above the knobs (and sticky): in view with the canvas on a laptop screen
        run = gr.Button("Generate", variant="primary", elem_id="generate")
        stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
    checkpoint = gr.Dropdown(names, value=default, label="checkpoint", elem_id="checkpoint", allow_custom_value=True,
                             info="a shipped checkpoint, or a folder under: " + root_names(page().roots))
    prompt = gr.Textbox(EXAMPLE_PROMPT, label="prompt", lines=2, elem_id="prompt")
    examples = [name for name in EXAMPLE_RUNS if name in page().examples]
    example = gr.Dropdown([(example_label(name, page().examples[name]), name) for name in examples],
                          value=examples[0] if examples else None, label="example run (precomputed)",
                          elem_id="example", info="replays a shipped run without the model; Generate runs your own")
    chat = gr.Checkbox(True, label="chat template", elem_id="chat_template", visible=False,
                       info="wrap the prompt as one user turn in the checkpoint's chat template (what an Instruct "
                            "model was tuned on)")
    sampler = gr.Radio(EVERY_SAMPLER, value=spec.name, label="sampler (remasking rule)", elem_id="sampler",
                       info=sampler_info(DEFAULT_FAMILY))
    chunk_size = gr.Radio([], label="K (tokens per vector)", elem_id="chunk_size", visible=False,
                          info="CALM: tokens packed into one latent vector; switches checkpoint")
    gen_length = gr.Slider(1, MAX_LENGTH, spec.default("gen_length"), step=1, label="gen length",
                           elem_id="gen_length", info=knob_help(spec, "gen_length"))
    steps = gr.Slider(1, 2 * MAX_LENGTH, spec.default("steps"), step=1, label="steps", elem_id="steps",
                      info=knob_help(spec, "steps"))
    block_length = gr.Slider(1, 128, preset.get("block_length", spec.default("gen_length")), step=1,
                             label="K (block size)", elem_id="block_length",
                             info=knob_help(spec, "block_length"))  # None: gen_length
    # the API checks N against this maximum: the largest any family takes (family_controls narrows the slider;
    # check_request and the calm sampler refuse what a family does not take)
    n_runs = gr.Slider(1, max(MAX_RUNS, MAX_CANDIDATES), 1, step=1,
                       label="N (runs drawn at once, seeds seed .. seed+N-1)", elem_id="n_runs", elem_classes=RARE)
    temperature = gr.Slider(0, 2, preset.get("temperature", spec.default("temperature")), step=0.05,
                            label="temperature", elem_id="temperature",
                            info=knob_help(spec, "temperature"))
    with gr.Accordion("more knobs", open=False, elem_classes=RARE):
        thresholded = sampler_for(DEFAULT_FAMILY, "threshold")  # shown for the samplers whose default sets one
        threshold = gr.Slider(0.05, 1, thresholded.default("threshold"), step=0.05, label="threshold",
                              elem_id="threshold", visible=False, info=knob_help(thresholded, "threshold"))
        cfg_scale = gr.Slider(0, 4, spec.default("cfg_scale"), step=0.25, label="guidance (cfg scale)",
                              elem_id="cfg_scale", info=knob_help(spec, "cfg_scale"))
        cache = gr.Radio(list(dict.fromkeys(c for caches in CACHES.values() for c in caches)),
                         value=CACHES[DEFAULT_FAMILY][0], label="cache", elem_id="cache", info=knob_help(spec, "cache"))
        constraints = gr.Textbox("", label="word constraints", elem_id="constraints", placeholder="0:Once, 5:upon",
                                 info="pin words at generated positions (mdlm, cdcd)")
        knobs = [knob_box(knob, spec) for knob in EXTRA_KNOBS]
        seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
        auto = gr.Checkbox(False, label="re-run when a slider is released", elem_id="auto")
    return dict(checkpoint=checkpoint, prompt=prompt, example=example, chat=chat, sampler=sampler,
                chunk_size=chunk_size, gen_length=gen_length, steps=steps, block_length=block_length, n_runs=n_runs,
                temperature=temperature, threshold=threshold, cfg_scale=cfg_scale, cache=cache,
                constraints=constraints, knobs=knobs, seed=seed, auto=auto, run=run, stop=stop_button)


def build_views(trace: Trace | None, first_range: dict) -> dict:
    """The canvas, its playback and scrubber, the stats, the N runs and the heatmap (the first paint's example)."""
    error = gr.HTML("", elem_id="error")
    view = gr.HTML(canvas_html(trace, -1, COLOR_MODES[0]) if trace else "<i>Press Generate.</i>", elem_id="tokens")
    with gr.Row():
        back = gr.Button("◀ step", elem_id="back", elem_classes="dlm-back", min_width=60)
        play_button = gr.Button("▶ play", elem_id="play", elem_classes="dlm-play", min_width=60)
        pause = gr.Button("❚❚ pause", elem_id="pause", elem_classes="dlm-pause", min_width=60)
        forward = gr.Button("step ▶", elem_id="forward", elem_classes="dlm-forward", min_width=60)
        fps = gr.Slider(1, 20, 6, step=1, label="frames / s", elem_id="fps", min_width=120, elem_classes=RARE)
    with gr.Row():
        step = gr.Slider(step=1, label="step (replays recorded frames)", elem_id="step", **first_range)
        color_by = gr.Radio(list(COLOR_MODES), value=COLOR_MODES[0], label="colour by", elem_id="color_by")
    stats = gr.Markdown(stats_line(trace) if trace else "", elem_id="stats")
    multiples = gr.HTML("", elem_id="multiples")
    plot = gr.Plot(step_heatmap(trace) if trace else None, elem_id="heatmap", show_label=False)
    gr.Markdown(LEARN, elem_classes="dlm-learn")
    return dict(error=error, view=view, back=back, play=play_button, pause=pause, forward=forward, fps=fps, step=step,
                color_by=color_by, stats=stats, multiples=multiples, plot=plot)


def wire(demo: gr.Blocks, d: SimpleNamespace, shared: Shared) -> None:
    """The Denoise tab's events."""
    family = [getattr(d, control) for control in FAMILY_CONTROLS]
    by_sampler = [getattr(d, control) for control in SAMPLER_CONTROLS] + d.knobs
    for event in (d.checkpoint.change, demo.load):  # the family's samplers only, then the default sampler's knobs
        (event(family_controls, d.checkpoint, family, api_visibility="private")
         .then(sampler_controls, [d.checkpoint, d.sampler], by_sampler, api_visibility="private")
         .then(chat_control, d.checkpoint, d.chat, api_visibility="private"))
    d.example.input(show_example, [d.example, d.color_by, shared.session],
                    shared.run_outputs() + [d.prompt, d.checkpoint], api_name="example", **RUNS)
    d.sampler.input(sampler_controls, [d.checkpoint, d.sampler], by_sampler, api_visibility="private")
    d.chunk_size.input(on_chunk_size, [d.chunk_size, d.checkpoint], d.checkpoint, api_visibility="private")
    run_inputs = [d.checkpoint, d.prompt, d.sampler, d.gen_length, d.steps, d.block_length, d.temperature,
                  d.threshold, d.seed, d.color_by, d.cache, d.n_runs, d.cfg_scale, d.constraints, d.chat,
                  shared.session, *d.knobs]
    generation = d.run.click(with_request(generate), run_inputs, shared.run_outputs(), api_name="generate", **RUNS)
    for slider in (d.gen_length, d.steps, d.block_length, d.n_runs, d.temperature):
        # unprocessed values: a number typed past a slider's range (the box then keeps to it) is not Gradio's raw
        # "greater than maximum" toast; unticked, nothing happens, ticked, the run names the knob
        slider.release(with_request(rerun_on_release), run_inputs + [d.auto], shared.run_outputs(),
                       api_visibility="private", preprocess=False,
                       **RUNS)
    scrub = [shared.session, d.step, d.color_by, shared.method, shared.source]
    d.step.input(replay, scrub, shared.shown(), api_name="replay", **FREE)
    d.color_by.change(replay, scrub, shared.shown(), api_visibility="private", **FREE)
    d.back.click(step_by(-1), scrub, shared.shown(), api_name="step_back", **FREE)
    d.forward.click(step_by(+1), scrub, shared.shown(), api_name="step_forward", **FREE)
    playing = d.play.click(play, [shared.session, d.step, d.color_by, d.fps, shared.method, shared.source],
                           shared.shown(), api_name="play", **FREE)
    d.pause.click(None, cancels=[playing])
    d.stop.click(stop, None, d.error, cancels=[generation], api_name="stop")
