"""The Compare tab: two to four runs (checkpoint and sampler each) on one prompt, side by side at the same fraction of
each run, with when each position was committed."""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr

import explorer
from explorer.page.common import (
    FREE,
    RUNS,
    Session,
    error_box,
    keep,
    learn_more,
    missing,
    page,
    stop,
    user_key,
    with_request,
)
from explorer.page.examples import EXAMPLE_PROMPT
from explorer.page.folders import family_at, sampler_at
from explorer.page.memory import LiveRuns
from explorer.page.requests import EVERY_SAMPLER, Request, check_request, model_prompt, sampler_knobs
from explorer.page.views import Shared
from explorer.sampling import SAMPLERS, Trace, sampler_for
from explorer.viz.compare import progress_plot, side_by_side_html
from explorer.viz.panels import compare_table, text

COMPARE_SLOTS = 4
LEARN = ("**Comparing runs.** Each run's canvas at the same fraction of its own run (its first frame at 0%, its last "
         "at 100%), so a 64-step sampler and a 16-step one line up. The plot shows when each position was committed: "
         "AR draws a diagonal, block diffusion a staircase of blocks, masked diffusion a scatter (confident positions "
         "first), CALM steps of K tokens; continuous diffusion commits everything at its last step (its tokens "
         "settle gradually: see its entropy heatmap)." + learn_more("00_tour|every family on one prompt"))


def default_sampler(choice: str) -> str | None:
    try:
        path = page().path(choice)
        return sampler_for(family_at(path), sampler_at(path)).name
    except (ValueError, FileNotFoundError, KeyError):
        return None


def compare_knobs(family: str, gen_length: int, steps: int, temperature: float) -> Request:
    """One compared run's controls: the shared length, steps and temperature, each family's own block size."""
    n = 1
    if family == "calm":  # its temperature lies in (0, 1]; N is its head samples, at the registry's default
        temperature = min(max(temperature, 0.05), 1.0) if temperature > 0 else 1.0
        n = sampler_for(family).default("n_candidates")
    return Request(None, gen_length, steps, gen_length, temperature, n=n)


def compare(prompt, gen_length, steps, temperature, seed, color_by, *slots, request: gr.Request = None):
    """Run the enabled slots one after another on the same prompt (in the chat template of each checkpoint that has
    one, when the box is ticked); each run's panel fills in live."""
    chat, session_in = slots[-2:]
    slots = slots[:-2]
    session = session_in if session_in is not None else Session()
    user = user_key(request)
    specs = [(slots[i + 1], slots[i + 2]) for i in range(0, 3 * COMPARE_SLOTS, 3) if slots[i] and slots[i + 1]]
    token = None
    try:
        if not 2 <= len(specs) <= COMPARE_SLOTS:
            raise ValueError(f"compare needs 2 to {COMPARE_SLOTS} enabled runs with a checkpoint, got {len(specs)}")
        token = page().registry.start(user)
        done: list[Trace] = []
        for choice, sampler in specs:
            model = page().model(choice)
            if sampler not in SAMPLERS[model.family]:
                raise ValueError(f"sampler must be one of {SAMPLERS[model.family]} for {choice}, got {sampler!r}")
            req = compare_knobs(model.family, int(gen_length), int(steps), float(temperature))
            req.sampler = sampler
            if model.family == "bd3lm":
                req.block_length = req.steps = model.block_size
            check_request(model.family, req, model.config.autoencoder.chunk if model.family == "calm" else 1)
            given = model_prompt(model, prompt or "", bool(chat))
            live = LiveRuns(model, given, sampler, int(seed or 0), 1, sampler_knobs(model.family, req))
            for traces in live:
                yield (side_by_side_html(done + traces, 1.0, color_by), gr.skip(), gr.skip(), "", gr.skip())
            done.append(live.traces[0])
        session.compared = done
        keep(session, request)
    except ValueError as err:
        yield gr.skip(), gr.skip(), gr.skip(), error_box(str(err)), gr.skip()
        return
    finally:
        if token is not None:
            page().registry.finish(user, token)
    yield (side_by_side_html(done, 1.0, color_by), progress_plot(done, 1.0), compare_table(done), "",
           session)


def compare_view(session, progress, color_by):
    """The compared runs at `progress` in [0, 1] of each run (no model call)."""
    if session is None or not session.compared:
        return f"<i>{text(missing(session, 'Run a comparison first.'))}</i>", gr.skip()
    return side_by_side_html(session.compared, float(progress), color_by), progress_plot(session.compared,
                                                                                          float(progress))


def compare_play(session, progress, color_by, fps):
    if session is None or not session.compared:
        yield compare_view(session, progress, color_by) + (gr.skip(),)
        return
    frames = max(len(t.frames) for t in session.compared)
    start = 0 if float(progress) >= 1 else float(progress)
    for k in range(round(start * (frames - 1)), frames):
        value = k / max(frames - 1, 1)
        yield compare_view(session, value, color_by) + (value,)
        time.sleep(1.0 / max(float(fps), 0.5))


def slot_samplers(choice):
    try:
        names = list(SAMPLERS[family_at(page().path(choice))])
    except (ValueError, FileNotFoundError, KeyError):
        return gr.skip()
    return gr.update(choices=names, value=names[0])


def build(names: list[str], compared: list[Trace]) -> SimpleNamespace:
    """The Compare tab's components; the precomputed example comparison shows first."""
    slots = []
    shipped = list(explorer.shipped())
    defaults = [c for c in ("ar-tiny", "mdlm-tiny", "bd3lm-tiny-b16", "calm-tiny-k4") if c in shipped]
    with gr.Row():
        for k in range(COMPARE_SLOTS):
            with gr.Column(min_width=200):
                choice = defaults[k] if k < len(defaults) else None
                on = gr.Checkbox(k < 3, label=f"run {k + 1}", elem_id=f"slot{k}_on")
                checkpoint = gr.Dropdown(names, value=choice, label="checkpoint", elem_id=f"slot{k}_ckpt",
                                         allow_custom_value=True)
                sampler = gr.Dropdown(EVERY_SAMPLER, value=default_sampler(choice) if choice else None,
                                      label="sampler", elem_id=f"slot{k}_sampler")
                checkpoint.change(slot_samplers, checkpoint, sampler, api_visibility="private")
                slots += [on, checkpoint, sampler]
    with gr.Row():
        prompt = gr.Textbox(EXAMPLE_PROMPT, label="prompt", elem_id="c_prompt", scale=2)
        gen_length = gr.Slider(4, 128, 32, step=4, label="gen length", elem_id="c_length")
        steps = gr.Slider(1, 128, 32, step=1, label="steps", elem_id="c_steps")
        temperature = gr.Slider(0, 2, 0, step=0.05, label="temperature", elem_id="c_temperature")
        seed = gr.Number(0, precision=0, label="seed", elem_id="c_seed")
        chat = gr.Checkbox(True, label="chat template", elem_id="c_chat",
                           info="for checkpoints whose tokenizer has one (released Instruct models)")
    with gr.Row():
        run = gr.Button("Compare", variant="primary", elem_id="c_run")
        stop_button = gr.Button("Stop", variant="stop", elem_id="c_stop")
    error = gr.HTML("", elem_id="c_error")
    with gr.Row():
        play = gr.Button("▶ play", elem_id="c_play", elem_classes="dlm-play", min_width=60)
        pause = gr.Button("❚❚ pause", elem_id="c_pause", elem_classes="dlm-pause", min_width=60)
        progress = gr.Slider(0, 1, 1, step=0.01, label="progress through each run", elem_id="progress")
    side = gr.HTML(side_by_side_html(compared, 1.0) if compared else "", elem_id="side_by_side")
    plot = gr.Plot(progress_plot(compared, 1.0) if compared else None, elem_id="progress_plot", show_label=False)
    table = gr.Markdown(compare_table(compared) if compared else "", elem_id="c_table")
    gr.Markdown(LEARN, elem_classes="dlm-learn")
    return SimpleNamespace(slots=slots, prompt=prompt, gen_length=gen_length, steps=steps, temperature=temperature,
                           seed=seed, chat=chat, run=run, stop=stop_button, error=error, play=play, pause=pause,
                           progress=progress, side=side, plot=plot, table=table)


def wire(c: SimpleNamespace, shared: Shared) -> None:
    """The Compare tab's events (the colour and playback speed are the Denoise tab's)."""
    inputs = [c.prompt, c.gen_length, c.steps, c.temperature, c.seed, shared.color_by, *c.slots, c.chat,
              shared.session]
    comparing = c.run.click(with_request(compare), inputs, [c.side, c.plot, c.table, c.error, shared.session],
                            api_name="compare", **RUNS)
    c.stop.click(stop, None, c.error, cancels=[comparing], api_visibility="private")
    c.progress.input(compare_view, [shared.session, c.progress, shared.color_by], [c.side, c.plot],
                     api_name="compare_view", **FREE)
    playing = c.play.click(compare_play, [shared.session, c.progress, shared.color_by, shared.fps],
                           [c.side, c.plot, c.progress], api_name="compare_play", **FREE)
    c.pause.click(None, cancels=[playing])
