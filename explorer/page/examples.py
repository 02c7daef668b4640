"""The precomputed example traces the page paints first, before any model runs (`python -m explorer examples`
rewrites them)."""

from __future__ import annotations

from pathlib import Path

import explorer
from explorer.page.requests import SHOWCASE
from explorer.sampling import Trace

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"  # explorer/examples: shipped with the package


def load_examples(directory: Path = EXAMPLES_DIR) -> dict[str, Trace]:
    """The precomputed example traces that ship with the app, by file stem (no model runs for them)."""
    return {path.stem: Trace.load(path) for path in sorted(directory.glob("*.json"))}


def _showcase(family: str, **knobs) -> tuple[str, dict]:
    """The page's starting sampler and knobs for `family` (SHOWCASE), with `knobs` on top."""
    sampler, preset = SHOWCASE[family]
    return sampler, preset | knobs


EXAMPLE_PROMPT = "Romeo.\n"  # the corpus's plays name each speaker on a line of their own: "Romeo." (not "ROMEO:")
# name -> (checkpoint, prompt, sampler, knobs), written by `write_examples`; the first is the first paint
EXAMPLE_RUNS = {
    "mdlm-tiny": ("mdlm-tiny", EXAMPLE_PROMPT, *_showcase("mdlm", gen_length=64, steps=64)),
    "mdlm-tiny-rosalind": ("mdlm-tiny", "ROSALIND.\n", *_showcase("mdlm", gen_length=64, steps=64)),
    "mdlm-tiny-falstaff": ("mdlm-tiny", "Falstaff.\nCome,", *_showcase("mdlm", gen_length=64, steps=64)),
    "ar-tiny": ("ar-tiny", EXAMPLE_PROMPT, *_showcase("ar", gen_length=32)),
    "bd3lm-tiny-b16": ("bd3lm-tiny-b16", EXAMPLE_PROMPT, *_showcase("bd3lm", gen_length=32, steps=16, block_length=16)),
    "calm-tiny-k4": ("calm-tiny-k4", EXAMPLE_PROMPT, "batch", {"gen_length": 32, "temperature": 1.0,
                                                              "n_candidates": 200}),
}
COMPARED = ("ar-tiny", "mdlm-tiny", "bd3lm-tiny-b16", "calm-tiny-k4")  # the Compare tab's first paint: one prompt


def example_label(name: str, trace: Trace) -> str:
    """How the example picker names an example: its prompt (newlines as ↵), checkpoint and sampler."""
    prompt = trace.prompt_text.strip().replace("\n", " ↵ ") or "(no prompt)"
    return f"{prompt} · {trace.model.get('checkpoint', name)} · {trace.sampler['name']}"


def write_examples(directory: Path = EXAMPLES_DIR, seed: int = 0) -> list[Path]:
    """Run the example generations on the shipped checkpoints and save their traces (`python -m explorer
    examples`); hidden states are left out to keep the files small (the page records them for live runs)."""
    from tqdm import tqdm

    from explorer.sampling import generate

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (checkpoint, prompt, sampler, knobs) in tqdm(EXAMPLE_RUNS.items(), desc="example traces"):
        model = explorer.load(checkpoint)
        trace = generate(model, prompt, sampler, seed, record="full", **knobs)
        for frame in trace.frames:
            frame.hidden = None
        trace.model["checkpoint"] = checkpoint  # a name, not this machine's path
        written.append(trace.save(directory / f"{name}.json"))
    return written
