"""The page's launcher: `python app.py` and `python -m explorer app` read their options here and check them (a bad
port or device is one `error:` line, exit 2) before Gradio is imported: Gradio reads GRADIO_SERVER_PORT when it is
imported and fails on a bad one with a traceback. Where the page listens: the --host / --port flags, else Gradio's
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT environment variables (how a container or a Hugging Face Space says it), else
127.0.0.1:7860 (this machine only)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from explorer.page.folders import default_roots
from explorer.page.memory import MEMORY_BUDGET_MB

DESCRIPTION = "Serve the diffusion-LM explorer page."
HOST, PORT = "127.0.0.1", 7860  # where the page listens unless told: this machine only, Gradio's port


def server_address(host: str | None, port: int | None, environ=os.environ) -> tuple[str, int]:
    """(host, port) to serve on: the flags, else the environment's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, else HOST
    and PORT. A port that is not a number in [1, 65535] is refused, naming where it came from."""
    if port is not None:
        where, given = "--port", str(port)
    else:
        where, given = "GRADIO_SERVER_PORT", (environ.get("GRADIO_SERVER_PORT") or str(PORT)).strip()
    if not (given.isascii() and given.isdigit() and 1 <= int(given) <= 65535):
        raise ValueError(f"{where} must be a port number in [1, 65535], got {given!r}")
    return (host if host is not None else environ.get("GRADIO_SERVER_NAME") or HOST), int(given)


def add_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The launcher's options, on `python app.py`'s parser and on the CLI's `app` command."""
    parser.add_argument("--host", default=None, help=f"interface to bind (default: $GRADIO_SERVER_NAME, else {HOST}: "
                        "this machine only; 0.0.0.0 serves every interface)")
    parser.add_argument("--port", type=int, default=None, help=f"port (default: $GRADIO_SERVER_PORT, else {PORT})")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    parser.add_argument("--checkpoint-root", action="append", default=None, metavar="DIR",
                        help="a folder whose checkpoint subfolders the page may open (repeatable; default: the "
                             "shipped checkpoints only)")
    parser.add_argument("--device", default=None, help="released folders: cpu, cuda or cuda:N (default: cuda if "
                        "any, else cpu; our own checkpoints always run on the CPU)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="released folders: the weights' dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    parser.add_argument("--device-map", default=None, choices=["auto", "balanced", "sequential"],
                        help="released folders: spread the blocks over several GPUs with accelerate")
    parser.add_argument("--memory-budget-mb", type=float, default=MEMORY_BUDGET_MB,
                        help="memory for the runs of all sessions together; beyond it the least recently used "
                             f"sessions' runs are dropped (default {MEMORY_BUDGET_MB})")
    return parser


def serve(args: argparse.Namespace) -> None:
    """Check the options (a ValueError names the bad one), then import Gradio and serve the page until stopped."""
    if not args.memory_budget_mb > 0:
        raise ValueError(f"--memory-budget-mb must be > 0, got {args.memory_budget_mb:g}")
    host, port = server_address(args.host, args.port)
    from explorer.released import load_options

    released = load_options(args.device, args.dtype, args.device_map)  # e.g. --device bogus is refused here
    os.environ["GRADIO_SERVER_PORT"] = str(port)  # Gradio reads it on import: a --port flag wins over a bad value
    from explorer.page.layout import build_demo, launch_options
    from explorer.viz.latent import warm_umap

    warm_umap()  # numba compiles UMAP in the background, before the first latent view asks for it
    roots = default_roots() + [Path(r) for r in args.checkpoint_root or []]
    build_demo(roots, released, args.memory_budget_mb).launch(server_name=host, server_port=port, share=args.share,
                                                                **launch_options())


def main(argv: list[str] | None = None) -> None:
    """`python app.py [options]`: a bad option is one `error:` line (exit 2), as the CLI says it, not a traceback."""
    args = add_options(argparse.ArgumentParser(description=DESCRIPTION)).parse_args(argv)
    try:
        serve(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
