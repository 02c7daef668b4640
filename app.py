"""The explorer page: pick a checkpoint and a sampler, watch the canvas denoise step by step, replay any step.

Thin Gradio wiring: models come from `explorer.hub`, generation from `explorer.sampling.stream`, and every
picture from `explorer.viz`. Run `python app.py` and open http://127.0.0.1:7860.
API endpoints (gradio_client): `/generate` (streams; `.predict` returns the final outputs) and `/replay`.
"""

from __future__ import annotations

import argparse
import html
import time
import warnings

import gradio as gr
import torch

import explorer
from explorer.data.tokenizer import display_string
from explorer.hub import calm_chunk_sizes, calm_for_chunk, describe
from explorer.models.base import read_config
from explorer.sampling import SAMPLERS, build_trace, stream
from explorer.models.cdcd import vocabulary_points
from explorer.viz import COLOR_MODES, head_samples, latent_trajectories, step_heatmap, tokens_html

MAX_LENGTH = 256  # bd3lm slides its window past the 128-token context; other families' samplers refuse clearly
CACHES = {"mdlm": ["none", "prefix", "dual"], "bd3lm": ["kv", "none"], "ar": ["kv"], "cdcd": ["none"],
          "calm": ["kv"]}  # the first is the default
EVERY_CACHE = ["none", "prefix", "dual", "kv"]
TEMPERATURE_INFO = "0 = argmax (continuous diffusion: the softmax inside E[x0])"
CALM_TEMPERATURE_INFO = ("CALM: in (0, 1], sharpening the distribution of decoded chunks by sampling; exact: any "
                         "value, batch: 1/n for n <= N only (1, 0.5, 0.25, 0.2, 0.1, 0.05)")
PLOT_EVERY_S = 0.5  # redraw the heatmap at most this often while streaming (the token view updates every step)
_models: dict[str, tuple[int, object]] = {}  # name -> (mtime of its weights, model): reload when retrained


def family_of(name: str | None) -> str | None:
    path = explorer.shipped().get(name or "")
    return describe(path)["family"] if path else None


def sampler_choices(name: str | None) -> list[str]:
    return list(SAMPLERS.get(family_of(name), ()))


def get_model(name: str):
    path = explorer.shipped().get(name or "")
    if path is None:
        raise ValueError(f"checkpoint must be one of {sorted(explorer.shipped())}, got {name!r}")
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    if name in _models and _models[name][0] == stamp:
        return _models[name][1]
    for attempt in range(3):  # a training run may be rewriting the checkpoint right now
        try:
            model = explorer.load(name).eval()
            break
        except Exception as err:  # noqa: BLE001 (a half-written file fails in many ways)
            if attempt == 2:
                raise ValueError(f"could not load checkpoint {name!r}: {err}") from None
            time.sleep(1.0)
    _models[name] = (stamp, model)
    return model


def error_box(message: str) -> str:
    return ('<div class="dlm-error" style="border:1px solid #d62728;background:#fdecea;color:#8a1c1c;'
            f'padding:8px 12px;border-radius:6px"><b>Cannot generate:</b> {html.escape(message)}</div>')


def notice_box(messages: list[str]) -> str:
    """Warnings that do not stop a run (e.g. a block size the checkpoint was not trained with)."""
    if not messages:
        return ""
    return ('<div class="dlm-warning" style="border:1px solid #b8860b;background:#fff8e1;color:#5c4400;'
            'padding:8px 12px;border-radius:6px"><b>Note:</b> '
            + "<br>".join(html.escape(m) for m in messages) + "</div>")


def stats_line(trace, running: bool) -> str:
    s = trace.stats
    if running:
        return f"step {s['steps']} · nfe {s['nfe']} · {s['wall_s']:.2f} s so far …"
    caches = sorted({f.cache for f in trace.frames if f.cache})
    extra = (f" · cache {'/'.join(caches)}" if caches else "") + (f" · stopped: {s['stop']}" if "stop" in s else "")
    return (f"**nfe** {s['nfe']} · **wall** {s['wall_s']:.2f} s · **{s['tokens_per_s']:.1f} tokens/s** · "
            f"{len(trace.frames)} frames · {trace.model['name']} ({trace.model['family']}), sampler "
            f"{trace.sampler['name']}{extra}")


def sampler_knobs(family: str | None, sampler, gen_length, steps, block_length, temperature, threshold,
                  cache, n_candidates=200) -> dict:
    """The page's controls as sampler knobs; `cache` means Fast-dLLM's cache for mdlm, the exact KV cache for bd3lm;
    for calm the sampler is the temperature algorithm and `n_candidates` its N."""
    knobs = {"gen_length": int(gen_length), "steps": int(steps), "block_length": int(block_length),
             "temperature": float(temperature)}
    if sampler == "threshold":
        knobs["threshold"] = float(threshold)
    allowed = CACHES.get(family, ["none"])
    cache = cache or allowed[0]
    if family == "ar":
        return knobs  # AR decoding always uses its KV cache
    if family == "calm":  # one chunk per step with a KV cache; temperature in (0, 1] without likelihoods
        return {"gen_length": knobs["gen_length"], "temperature": knobs["temperature"],
                "n_candidates": int(n_candidates)}
    if family == "cdcd":  # Euler steps of the ODE: no blocks, no commit rule, no cache
        return {k: knobs[k] for k in ("gen_length", "steps", "temperature")}
    if cache not in allowed:
        raise ValueError(f"cache must be one of {allowed} for the {family} family, got {cache!r}")
    if family == "mdlm":
        knobs["cache"] = cache
    elif family == "bd3lm":
        knobs["kv_cache"] = cache == "kv"
    return knobs


def generate(checkpoint, prompt, sampler, gen_length, steps, block_length, temperature, threshold, seed,
             color_by, cache=None, n_candidates=200):
    """Stream a generation: one update of the token view per sampler step, the heatmap every PLOT_EVERY_S."""
    frames, busy, last_plot, notices = [], 0.0, 0.0, []
    try:
        model = get_model(checkpoint)
        knobs = sampler_knobs(model.family, sampler, gen_length, steps, block_length, temperature, threshold, cache,
                              n_candidates)
        description, prompt_ids, frames_iter = stream(model, prompt or "", sampler, int(seed or 0), record="full",
                                                      **knobs)
        while True:
            started = time.perf_counter()
            with torch.no_grad(), warnings.catch_warnings(record=True) as caught:  # grad mode is per thread
                warnings.simplefilter("always")  # and Gradio may resume us on another one
                frame = next(frames_iter, None)
            busy += time.perf_counter() - started
            for warning in caught:
                notices.append(str(warning.message))
                gr.Warning(str(warning.message))
            if frame is None:
                break
            frames.append(frame)
            trace = build_trace(model, prompt_ids, description, frames, busy)
            plot = gr.skip()
            if time.perf_counter() - last_plot > PLOT_EVERY_S:
                plot, last_plot = step_heatmap(trace), time.perf_counter()
            lock = gr.update(interactive=False) if len(frames) == 1 else gr.skip()  # no scrubbing mid-run
            yield (tokens_html(trace, -1, color_by), stats_line(trace, True), notice_box(notices), plot, lock,
                   gr.skip(), gr.skip())
        if not frames:
            raise ValueError("the sampler produced no frames")
    except ValueError as err:  # samplers name the bad knob, its value and the allowed range
        gr.Warning(str(err))
        yield gr.skip(), "", error_box(str(err)), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return
    last = len(frames) - 1
    yield (tokens_html(trace, -1, color_by), stats_line(trace, False), notice_box(notices), step_heatmap(trace),
           gr.update(maximum=max(last, 1), value=last, interactive=True), trace, latent_view(trace, last))


def latent_view(trace, upto: int):
    """Continuous diffusion: paths of the first positions through the embedding space up to frame `upto`;
    CALM: the energy head's samples for the chunk of frame `upto` around the chosen latent (each one PCA fitted
    over the whole run, so scrubbing keeps the axes); other families: nothing."""
    family = trace.model["family"]
    if family == "calm" and trace.frames[-1].samples:
        return gr.update(value=head_samples(trace, upto, decoded_samples(trace, upto)), visible=True)
    if family != "cdcd" or trace.frames[-1].latent is None:
        return gr.update(value=None, visible=False)
    points, strings = vocabulary_points(get_model(trace.model["name"]))
    return gr.update(value=latent_trajectories(trace, points, strings, upto=upto), visible=True)


def decoded_samples(trace, upto: int) -> list[str] | None:
    """The chunk each head sample of frame `upto` decodes to (the autoencoder's argmax, as the sampler decodes)."""
    samples = trace.frames[upto].samples
    if not samples:
        return None
    model = get_model(trace.model["name"])
    with torch.no_grad():
        chunks = model.autoencoder.decode(torch.tensor(samples, device=model.device)).argmax(-1)  # (n, K)
    return ["".join(display_string(model.tokenizer, t) for t in chunk) for chunk in chunks.tolist()]


def replay(trace, step, color_by):
    """Redraw a stored frame from the trace in the session state; the model is not run (calm: only its
    autoencoder, to label the head samples with the chunks they decode to)."""
    if trace is None:
        return "<i>Generate first; then the step slider replays the recorded frames.</i>", gr.skip(), gr.skip()
    index = min(max(int(step), 0), len(trace.frames) - 1)
    return tokens_html(trace, index, color_by), step_heatmap(trace, index), latent_view(trace, index)


def on_checkpoint(name):
    """Show the family's samplers and knobs (calm: K, the algorithm, N and a temperature in (0, 1] instead of
    steps, blocks, cache and threshold); a block-diffusion checkpoint sets the block size it was trained with."""
    choices = sampler_choices(name)
    family = family_of(name)
    calm = family == "calm"
    block, steps, temperature = {}, {}, {"minimum": 0, "maximum": 2, "info": TEMPERATURE_INFO}
    if family == "bd3lm":
        block_size = read_config(explorer.shipped()[name])["model"]["block_size"]
        block, steps = {"value": block_size}, {"value": block_size}
    if family == "cdcd":  # CDCD's ~200 Euler steps; temperature 1 = the model's own softmax in E[x0]
        steps, temperature["value"] = {"value": 200}, 1.0
    if calm:  # temperature 1 decodes one head sample per chunk
        temperature = {"value": 1.0, "minimum": 0.05, "maximum": 1, "info": CALM_TEMPERATURE_INFO}
    chunk_sizes = calm_chunk_sizes()
    return (gr.update(choices=choices, value=choices[0] if choices else None,
                      label="algorithm (temperature below 1)" if calm else "sampler"),
            gr.update(value=CACHES.get(family, ["none"])[0], visible=not calm),
            gr.update(visible=not calm, **block), gr.update(visible=not calm, **steps), gr.update(**temperature),
            gr.update(visible=not calm), gr.update(visible=calm),
            gr.update(choices=sorted(set(chunk_sizes.values())), value=chunk_sizes.get(name), visible=calm))


def on_chunk_size(chunk_size, name):
    """Switch to the calm checkpoint that packs `chunk_size` tokens per vector (the current one if it does)."""
    if calm_chunk_sizes().get(name) == chunk_size:
        return gr.skip()
    return gr.update(value=calm_for_chunk(int(chunk_size)))


def build_demo() -> gr.Blocks:
    names = list(explorer.shipped())
    default = "mdlm-tiny" if "mdlm-tiny" in names else (names[0] if names else None)
    samplers = sampler_choices(default)
    every_sampler = list(dict.fromkeys(name for family in SAMPLERS.values() for name in family))  # the API accepts all
    with gr.Blocks(title="diffusion-LM explorer") as demo:
        gr.Markdown("# diffusion-LM explorer\nPick a checkpoint and a sampler, press **Generate**, and watch the "
                    "canvas fill in step by step; then scrub the step slider to replay any step.")
        trace_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                checkpoint = gr.Dropdown(names, value=default, label="checkpoint", elem_id="checkpoint")
                prompt = gr.Textbox("ROMEO:", label="prompt", lines=2, elem_id="prompt")
                sampler = gr.Radio(every_sampler, value=samplers[0] if samplers else None, label="sampler",
                                   info="masked diffusion: remasking rule, Fast-dLLM threshold / factor, MDLM "
                                        "ancestral, draft_refine (ar-tiny drafts, the masked model revises); "
                                        "block diffusion: first_hitting (one random token per step) or a rule "
                                        "inside each block; ar: left to right; continuous diffusion: euler (ODE "
                                        "steps with score interpolation); CALM: the temperature algorithm, exact "
                                        "(Alg. 1, any T) or batch (N candidates, T = 1/n)", elem_id="sampler")
                chunk_size = gr.Radio([], label="K (tokens per vector)", elem_id="chunk_size", visible=False,
                                      info="CALM: tokens the autoencoder packs into one latent vector; switches to "
                                           "the checkpoint trained with that K")
                gen_length = gr.Slider(1, MAX_LENGTH, 64, step=1, label="gen length", elem_id="gen_length")
                steps = gr.Slider(1, 2 * MAX_LENGTH, 64, step=1, label="steps", elem_id="steps",
                                  info="network evaluations, split evenly over the blocks (block diffusion: per block)")
                block_length = gr.Slider(1, 128, 64, step=1, label="block size", elem_id="block_length",
                                         info="masked diffusion: semi-autoregressive blocks (gen length a multiple); "
                                              "block diffusion: tokens per block, must divide the context")
                cache = gr.Radio(EVERY_CACHE, value="none", label="cache", elem_id="cache",
                                 info="masked diffusion: Fast-dLLM prefix / dual cache (approximate, refreshed per "
                                      "block); block diffusion: exact KV cache of finished blocks or recompute")
                temperature = gr.Slider(0, 2, 0, step=0.05, label="temperature", elem_id="temperature",
                                        info=TEMPERATURE_INFO)
                threshold = gr.Slider(0.05, 1, 0.9, step=0.05, label="threshold", elem_id="threshold",
                                      info="threshold sampler: commit every token at least this confident")
                n_candidates = gr.Slider(2, 500, 200, step=1, label="N (candidates)", elem_id="n_candidates",
                                         visible=False, info="CALM batch algorithm: head samples drawn per chunk; "
                                                             "the exact one falls back to it past max_draws")
                seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                error = gr.HTML("", elem_id="error")
                gr.Markdown("**Canvas.** The prompt in light grey, then the generated tokens coloured by the "
                            "model's confidence when each was committed (or by the step that committed it); grey "
                            "dots are still masked.")
                view = gr.HTML("<i>Press Generate.</i>", elem_id="tokens")
                with gr.Row():
                    step = gr.Slider(0, 1, 0, step=1, label="step (replays recorded frames)", interactive=False,
                                     elem_id="step")
                    color_by = gr.Radio(list(COLOR_MODES), value=COLOR_MODES[0], label="colour by",
                                        elem_id="color_by")
                stats = gr.Markdown("", elem_id="stats")
                gr.Markdown("**Heatmap.** Confidence of the model's proposal at every position (x) and step (y); "
                            "red crosses mark the step at which each token was committed. Continuous diffusion "
                            "shows the entropy of the softmax instead: the superposition of tokens collapsing.")
                plot = gr.Plot(elem_id="heatmap", show_label=False)
                latent = gr.Plot(elem_id="latent", show_label=False, visible=False)
        family_controls = [sampler, cache, block_length, steps, temperature, threshold, n_candidates, chunk_size]
        checkpoint.change(on_checkpoint, checkpoint, family_controls, api_name=False)
        demo.load(on_checkpoint, checkpoint, family_controls, api_name=False)  # the family's samplers only
        chunk_size.input(on_chunk_size, [chunk_size, checkpoint], checkpoint, api_name=False)  # user picks only
        run.click(generate, [checkpoint, prompt, sampler, gen_length, steps, block_length, temperature, threshold,
                             seed, color_by, cache, n_candidates],
                  [view, stats, error, plot, step, trace_state, latent], api_name="generate")
        step.change(replay, [trace_state, step, color_by], [view, plot, latent], api_name="replay")
        color_by.change(replay, [trace_state, step, color_by], [view, plot, latent], api_name=False)
    return demo.queue(default_concurrency_limit=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the diffusion-LM explorer page.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    args = parser.parse_args(argv)
    build_demo().launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
