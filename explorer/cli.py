"""`python -m explorer {app,list,train,sample,eval,bench,export,examples}`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path


def _threads(text: str) -> int:
    """--threads of train / train-autoencoder: torch.set_num_threads takes only a count >= 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"threads (--threads) must be an integer >= 1, got {text!r}")
    return int(text)


def _add_train(sub):
    from explorer.models import FAMILIES
    from explorer.train import PRECISIONS, TrainConfig

    p = sub.add_parser("train", help="train a model (resumable)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (saving state) after this wall time")
    p.add_argument("--threads", type=_threads, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None, help="torch device to train on, e.g. cpu or cuda (default: cpu; "
                   "under torchrun cuda:LOCAL_RANK when CUDA is available)")
    kinds = {"int": int, "float": float, "int | None": int}
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "family":
            p.add_argument(flag, required=True, choices=sorted(FAMILIES))
        elif f.name == "precision":
            p.add_argument(flag, default=f.default, choices=list(PRECISIONS), help="bf16: CUDA autocast")
        elif f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            p.add_argument(flag, type=kinds.get(f.type, str), default=f.default)
    return p


def cmd_train(args):
    import os

    import torch

    from explorer.train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    out = train(cfg, args.out, resume=args.resume, max_minutes=args.max_minutes, device=args.device)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        print(f"saved {out}")


def _add_train_autoencoder(sub):
    from explorer.train_autoencoder import AutoencoderTrainConfig

    p = sub.add_parser("train-autoencoder", help="train CALM's autoencoder (K tokens <-> one vector)")
    p.add_argument("--out", required=True, help="folder to write (e.g. checkpoints/autoencoders/calm-ae-k4)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=_threads, default=None, help="torch CPU threads")
    for f in fields(AutoencoderTrainConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=int if f.type == "int" else float, default=f.default)


def cmd_train_autoencoder(args):
    import torch

    from explorer.train_autoencoder import AutoencoderTrainConfig, train_autoencoder

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = AutoencoderTrainConfig(**{f.name: getattr(args, f.name) for f in fields(AutoencoderTrainConfig)})
    print(f"saved {train_autoencoder(cfg, args.out, device=args.device, resume=args.resume)}")


def _add_sample(sub):
    from explorer.sampling import RECORD_LEVELS, SAMPLERS
    from explorer.sampling.registry import every_knob

    p = sub.add_parser("sample", help="generate text, optionally writing the trace")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="shipped name (python -m explorer list) or folder")
    which.add_argument("--chunk", type=int,
                       help="calm: the shipped checkpoint trained with K = CHUNK tokens per vector")
    p.add_argument("--prompt", default="", help="text to continue (empty: unconditional; [MASK] marks positions "
                   "to fill, for masked-diffusion samplers)")
    p.add_argument("--sampler", default=None, help="; ".join(f"{family}: {', '.join(names)}" for family, names in
                                                           SAMPLERS.items()) + " (each family's first is its default)")
    knobs = p.add_argument_group("sampler knobs (each sampler takes some of them; unset = the sampler's default; "
                                 "`python -m explorer samplers` lists each sampler's knobs and defaults)")
    for name, definition in every_knob().items():
        if name != "pinned":  # pinned tokens come as --pin POS:TEXT
            add_knob_flag(knobs, name, definition)
    p.add_argument("--pin", action="append", default=[], metavar="POS:TEXT", help="pin text at a generated position")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record", default="tokens", choices=RECORD_LEVELS)
    p.add_argument("--trace", default=None, help="write the trace JSON here")
    p.add_argument("--no-animation", action="store_true", help="print only the final text")
    released = p.add_argument_group("released checkpoints (LLaDA, Dream, MDLM, BD3-LM folders)")
    released.add_argument("--chat", action="store_true",
                          help="wrap the prompt as one user turn of the folder's chat template (Instruct models)")
    released.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if any, else cpu)")
    released.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                          help="weights' dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    released.add_argument("--device-map", default=None, choices=["auto", "balanced", "sequential"],
                          help="spread the blocks over several GPUs with accelerate (instead of --device)")


def add_knob_flag(parser, name: str, definition) -> None:
    """`--name` for a sampler knob, read from its definition (`explorer.sampling.common.knob`): the help, the type of
    its annotation, its choices; default None, so that an unset flag leaves the sampler's own default."""
    from explorer.sampling.registry import knob_home

    meta = definition.metadata
    options = {"default": None, "help": f"{meta['help']} [{knob_home(name)}]".replace("%", "%%")}
    kind = str(definition.type)
    if meta.get("choices"):
        options["choices"] = list(meta["choices"])
    elif "bool" in kind:
        options["action"] = argparse.BooleanOptionalAction
    else:
        options["type"] = int if "int" in kind.split("|")[0] else float if "float" in kind else str
    parser.add_argument("--" + name.replace("_", "-"), **options | meta.get("flag", {}))


def _parse_pins(pins: list[str]) -> dict[int, str]:
    out = {}
    for pin in pins:
        pos, sep, text = pin.partition(":")
        if not sep or not pos.strip().isdigit():
            raise ValueError(f"--pin must look like POS:TEXT (e.g. 5:upon), got {pin!r}")
        out[int(pos)] = text
    return out


def check_output(flag: str, path: str | None, make_folders: bool = False) -> None:
    """Refuse, before any work, an output file that could not be written: a folder, or one in a folder that is
    missing (unless the writer makes it: `make_folders`), not a folder, or read-only."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name")
    folder = target.parent
    while make_folders and not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the writer creates the missing folders below the nearest existing one
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: {folder} " + ("is not a folder" if folder.exists() else "does not exist"))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: the folder {folder} is not writable")


def cmd_sample(args):
    import time

    import explorer
    from explorer.released import load_options
    from explorer.sampling import build_trace, stream
    from explorer.sampling.registry import every_knob

    check_output("--trace", args.trace)
    placement = load_options(args.device, args.dtype, args.device_map)
    model = explorer.load(args.checkpoint or explorer.hub.calm_for_chunk(args.chunk), **placement)
    prompt = args.prompt
    if args.chat:
        from explorer.released import chat_prompt

        if not model.chat_template:
            raise ValueError(f"--chat: {model.name} has no chat template (tokenizer_config.json's chat_template)")
        prompt = chat_prompt(model, prompt)
    animate = sys.stdout.isatty() and not args.no_animation
    record = "tokens" if animate and args.record == "none" else args.record
    knobs = {name: getattr(args, name) for name in every_knob() if name != "pinned"} | {
        "pinned": _parse_pins(args.pin) or None}
    if knobs["drafter"] is not None:  # draft_refine's drafter, by name or folder
        knobs["drafter"] = explorer.load(knobs["drafter"], device=str(model.device))
    description, prompt_ids, frames_iter = stream(model, prompt, args.sampler, args.seed, record, **knobs)
    frames, started = [], time.perf_counter()
    for frame in frames_iter:
        frames.append(frame)
        if animate and frame.tokens is not None:
            shown = "".join("\u2591" if t == model.mask_id else model.tokenizer.decode([t]) for t in frame.tokens)
            sys.stdout.write(f"\x1b[H\x1b[J{prompt}{shown}\n[step {frame.step} · nfe {frame.nfe}]\n")
            sys.stdout.flush()
    trace = build_trace(model, prompt_ids, description, frames, time.perf_counter() - started)
    if animate:
        sys.stdout.write("\x1b[H\x1b[J")
    print(prompt + trace.text)
    print(f"[{model.name} · {description['name']} · nfe {trace.stats['nfe']} · {trace.stats['wall_s']:.2f}s]",
          file=sys.stderr)
    if args.trace:
        print(f"trace written to {trace.save(args.trace)}", file=sys.stderr)


def _add_eval(sub):
    p = sub.add_parser("eval", help="perplexity (a bound for diffusion models) on a held-out split")
    p.add_argument("--checkpoint", required=True, nargs="+", help="one checkpoint, or several with --table")
    p.add_argument("--table", default=None, help="compare the checkpoints: write this JSON (+ .md table, .png plot)")
    p.add_argument("--variance-batches", type=int, default=4,
                   help="--table: validation batches (of 16 windows) for the clip-window variance of bd3lm; 0 skips it")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--n-t", type=int, default=8, help="mask rates per window for the diffusion bound")
    p.add_argument("--max-windows", type=int, default=None, help="evaluate only the first N windows")
    p.add_argument("--corpus", default=None, help="a .txt file or folder instead of the shipped corpus")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--metric", default="ppl", choices=["ppl", "brier"],
                   help="ppl: perplexity or its diffusion bound; brier: BrierLM (any family; likelihood-free)")
    p.add_argument("--estimator", default="sample", choices=["sample", "exact"],
                   help="brier: the many-sample estimate (every family) or exact probabilities (ar)")
    p.add_argument("--samples", type=int, default=16,
                   help="brier: continuations drawn per scored position (>= 2; more: a smaller standard error)")
    p.add_argument("--context", type=int, default=64, help="brier: prefix tokens before the 4 scored tokens")
    p.add_argument("--stride", type=int, default=8, help="brier: a scored position every STRIDE tokens of the split")


def cmd_eval(args):
    import explorer
    from explorer.eval import evaluate

    check_output("--json", args.json)
    check_output("--table", args.table, make_folders=True)

    if args.metric == "brier":
        from explorer.brier import brier_lm

        if args.table:  # several ar checkpoints: does BrierLM track their cross-entropy?
            from explorer.bench.brier_study import brier_vs_cross_entropy

            brier_vs_cross_entropy(args.checkpoint, args.table, args.split, args.context, args.stride, args.samples)
            return
        if len(args.checkpoint) > 1:
            raise ValueError("several --checkpoint values need --table OUT.json")
        result = brier_lm(explorer.load(args.checkpoint[0]), args.split, args.context, args.max_windows,
                          estimator=args.estimator, stride=args.stride, corpus=args.corpus, samples=args.samples)
        text = json.dumps(result, indent=2)
        print(text)
        if args.json:
            Path(args.json).write_text(text + "\n")
        return
    if args.table:
        from explorer.eval import compare

        result = compare(args.checkpoint, args.table, args.split, args.n_t, args.max_windows, args.variance_batches)
        print(Path(args.table).with_suffix(".md").read_text())
        return
    if len(args.checkpoint) > 1:
        raise ValueError("several --checkpoint values need --table OUT.json")
    result = evaluate(explorer.load(args.checkpoint[0]), args.split, corpus=args.corpus, n_t=args.n_t,
                      max_windows=args.max_windows)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


def cmd_card(args):
    from explorer.cards import write_card

    print(f"wrote {write_card(args.checkpoint, n_t=args.n_t)}")


def cmd_list(args):
    from explorer.hub import describe, shipped

    rows = [describe(path) for path in shipped().values()]
    if not rows:
        print("no shipped checkpoints found")
        return
    print(f"{'name':<16}{'family':<8}{'steps':>8}{'tokens seen':>14}{'test ppl':>12}")
    for r in rows:
        ppl = r["metrics"].get("test", {}).get("ppl", "")
        print(f"{r['name']:<16}{r['family']:<8}{r['steps'] or '':>8}{r['tokens_seen'] or '':>14,}{ppl:>12}")


def cmd_samplers(args):
    from explorer.sampling.registry import describe

    print(describe())


def _add_bench(sub):
    p = sub.add_parser("bench", help="benchmarks, written as JSON and a markdown table")
    p.add_argument("suite", choices=["sampling", "kernels", "block", "continuous", "calm", "app", "noise",
                                          "defaults"])
    p.add_argument("--checkpoint", default="mdlm-tiny", help="masked-diffusion checkpoint")
    p.add_argument("--block-checkpoint", default="bd3lm-tiny-b16", help="block: the block-diffusion checkpoint")
    p.add_argument("--continuous-checkpoint", nargs="+", default=["cdcd-tiny", "cdcd-tiny-nowarp"],
                   help="continuous: cdcd checkpoints (the first is the main one; the others are compared with it)")
    p.add_argument("--calm-checkpoint", nargs="+",
                   default=["calm-tiny-k1", "calm-tiny-k2", "calm-tiny-k4", "calm-tiny-k8"],
                   help="calm: the CALM checkpoints of the K trade-off (compared with --judge as the AR baseline)")
    p.add_argument("--judge", default="ar-tiny",
                   help="AR checkpoint judging generative perplexity (calm: the baseline)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3; app: 5)")
    p.add_argument("--out", default="bench_results",
                   help="folder for <suite>.json and its .md table (default bench_results)")
    p.add_argument("--json", default=None, help="output (default <out>/<suite>.json)")
    p.add_argument("--length", type=int, default=1024, help="kernels: positions L (B = 1)")
    p.add_argument("--vocab", type=int, default=126_464, help="kernels: vocabulary V (LLaDA's by default)")
    p.add_argument("--d", type=int, default=512, help="kernels: hidden / embedding width")
    p.add_argument("--no-cpu", action="store_true", help="kernels: skip the CPU rows (time only the CUDA kernels)")
    p.add_argument("--samples", type=int, default=None, help="defaults: validation prompts each setting continues "
                                                              "(default 8)")
    p.add_argument("--grid", choices=["all", "continuous"], default="all",
                   help="defaults: the settings (all: every family's; continuous: the continuous-diffusion default "
                        "against mdlm-tiny's, and the knobs that lead to it)")


def cmd_bench(args):
    json_path = args.json or str(Path(args.out) / f"{args.suite}.json")
    check_output("--json" if args.json else "--out", json_path, make_folders=True)
    repeats = args.repeats if args.repeats is not None else 5 if args.suite == "app" else 3
    if args.suite == "app":
        from explorer.bench.app import run_app_bench

        run_app_bench(repeats, json_path, args.checkpoint)
        return
    if args.suite == "noise":
        from explorer.bench.noise import run_noise_bench

        run_noise_bench(json_path)
        return
    if args.suite == "kernels":
        from explorer.bench.kernels import run_kernels_bench

        run_kernels_bench(json_path, repeats, length=args.length, vocab=args.vocab, d=args.d, cpu=not args.no_cpu)
        return
    if args.suite == "block":
        from explorer.bench.block import run_block_bench

        run_block_bench(args.block_checkpoint, args.checkpoint, args.judge, repeats, json_path=json_path)
        return
    if args.suite == "continuous":
        from explorer.bench.continuous import run_continuous_bench

        run_continuous_bench(args.continuous_checkpoint, args.checkpoint, args.judge, json_path=json_path)
        return
    if args.suite == "defaults":
        from explorer.bench.defaults import GRIDS, run_defaults_bench
        from explorer.train import check_knob

        given = {}  # --samples only when given: run_defaults_bench's default stands otherwise
        if args.samples is not None:
            given["samples"] = check_knob("samples", args.samples, 1, 100_000, integer=True)
        run_defaults_bench(args.judge, json_path=json_path, grid=GRIDS[args.grid], **given)
        return
    if args.suite == "calm":
        from explorer.bench.calm import run_calm_bench

        run_calm_bench(args.calm_checkpoint, args.judge, repeats=repeats, json_path=json_path)
        return
    from explorer.bench.sampling import run_sampling_bench

    run_sampling_bench(args.checkpoint, args.judge, repeats, json_path)


def _add_app(sub):
    from explorer.page.launch import DESCRIPTION, add_options

    add_options(sub.add_parser("app", help="serve the explorer page, as `python app.py` does", description=DESCRIPTION))


def cmd_app(args):
    from explorer.page.launch import serve  # Gradio is imported only once the options are checked

    serve(args)


def cmd_examples(args):
    from explorer.page.examples import EXAMPLES_DIR, write_examples

    for path in write_examples(Path(args.out) if args.out else EXAMPLES_DIR):
        print(f"wrote {path}")


def _add_export(sub):
    from explorer.viz.tokens import COLOR_MODES

    p = sub.add_parser("export", help="a trace JSON (sample --trace) as an offline HTML replay and/or an animated GIF")
    p.add_argument("trace", help="trace JSON written by `sample --trace FILE`")
    p.add_argument("--html", default=None, help="write the standalone HTML replay here")
    p.add_argument("--gif", default=None, help="write the animated GIF here")
    p.add_argument("--color-by", default="confidence", choices=COLOR_MODES)
    p.add_argument("--fps", type=float, default=4.0, help="frames per second of playback")
    p.add_argument("--width", type=int, default=900, help="gif: image width in pixels (>= 300)")
    p.add_argument("--max-frames", type=int, default=120, help="gif: at most this many frames, evenly sampled (>= 2)")


def cmd_export(args):
    from explorer.sampling.trace import Trace
    from explorer.viz.export import trace_animation_html, trace_gif

    if not (args.html or args.gif):
        raise ValueError("export needs --html OUT.html and/or --gif OUT.gif")
    check_output("--html", args.html)
    check_output("--gif", args.gif)
    if not Path(args.trace).is_file():
        raise FileNotFoundError(f"trace file {args.trace} does not exist")
    try:
        trace = Trace.load(args.trace)
    except KeyError as err:
        raise ValueError(f"{args.trace} is not a trace JSON file: no {err} field") from None
    except (TypeError, AttributeError) as err:
        raise ValueError(f"{args.trace} is not a trace JSON file: {err}") from None
    if args.html:
        page = trace_animation_html(trace, args.color_by, args.fps)
        tmp = Path(args.html + ".tmp")
        tmp.write_text(page, encoding="utf-8")
        print(f"wrote {tmp.replace(args.html)}")
    if args.gif:
        print(f"wrote {trace_gif(trace, args.gif, args.color_by, args.fps, args.width, args.max_frames)}")


def program_name() -> str:
    """`dlm-explorer` for the console script, `python -m explorer` for the module (what the user typed)."""
    launched = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return "python -m explorer" if launched in ("", "__main__.py", "-c") else launched


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program_name(), description="diffusion-LM explorer")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_train_autoencoder(sub)
    _add_sample(sub)
    _add_eval(sub)
    _add_bench(sub)
    _add_export(sub)
    _add_app(sub)
    sub.add_parser("list", help="the shipped checkpoints")
    sub.add_parser("samplers", help="every sampler by family, with its knobs and their defaults")
    card = sub.add_parser("card", help="evaluate a checkpoint and write its model card")
    card.add_argument("--checkpoint", required=True)
    card.add_argument("--n-t", type=int, default=8, help="mask rates per window for the diffusion bound")
    examples = sub.add_parser("examples",
                              help="regenerate the explorer page's precomputed example traces (first paint)")
    examples.add_argument("--out", default=None, help="folder to write (default explorer/examples, the page's)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"card": cmd_card, "train": cmd_train, "train-autoencoder": cmd_train_autoencoder, "sample": cmd_sample,
                "eval": cmd_eval, "list": cmd_list, "samplers": cmd_samplers, "bench": cmd_bench, "export": cmd_export,
                "examples": cmd_examples, "app": cmd_app}
    try:
        commands[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
