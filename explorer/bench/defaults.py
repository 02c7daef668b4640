"""`python -m explorer bench defaults`: which sampler settings show each family at its best on the shipped checkpoints.

Every setting of `GRID` continues the same validation prompts (16 tokens, then 64 generated); an AR checkpoint
judges the outputs (generative perplexity: lower reads more like the corpus to it) and the mean unigram entropy of
the outputs stands beside it, because repetitive text scores well on perplexity alone. The real continuations of
the prompts are scored the same way (the `corpus` row): a setting counts as fluent only while its entropy stays
within `ENTROPY_TOLERANCE` of the corpus's. Per checkpoint the table marks the best such setting and the one the
API and the page use by default. `--grid continuous` runs `CONTINUOUS_GRID` instead (issue 21's comparison of the
continuous-diffusion default with `mdlm-tiny`'s), and `--samples N` continues N prompts instead of 8.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from tqdm.auto import tqdm

from explorer.bench.measure import write_results
from explorer.data import TokenStream, load_corpus
from explorer.eval import sample_quality
from explorer.hub import load
from explorer.page.requests import SHOWCASE
from explorer.sampling import generate
from explorer.sampling.registry import sampler_for

ENTROPY_TOLERANCE = 0.25  # a setting's unigram entropy may fall this far (relative) below the corpus's
PROMPT_LENGTH, GEN_LENGTH = 16, 64

# checkpoint -> [(sampler, knobs)]: knobs not named keep the registry's defaults
GRID = {
    "mdlm-tiny": [("low_confidence", {}), ("low_confidence", {"temperature": 0.8}),
                  ("low_confidence", {"block_length": 16}),
                  ("low_confidence", {"block_length": 16, "temperature": 0.7}),
                  ("low_confidence", {"block_length": 16, "temperature": 0.8}),
                  ("low_confidence", {"block_length": 16, "temperature": 1.0}),
                  ("low_confidence", {"block_length": 32, "temperature": 0.8}), ("ancestral", {}), ("dream", {}),
                  # Fast-dLLM's parallel rules on its semi-autoregressive setting (blocks of 32, T = 0): fewer network
                  # evaluations where the model is confident; the fixed schedule beside them
                  ("low_confidence", {"block_length": 32}),
                  *[("threshold", {"block_length": 32, "threshold": tau}) for tau in (0.9, 0.7, 0.5, 0.3)],
                  *[("factor", {"block_length": 32, "factor": f}) for f in (1.0, 2.0)]],
    # clamping and temperature on the deterministic ODE (churn 0, 200 steps), then the default (churn 2, 400 steps)
    # and the default without self-conditioning
    "cdcd-tiny": [*[("euler", {"clamp": c, "temperature": t, "churn": 0.0, "steps": 200})
                    for c, t in ((0.0, 1.0), (0.25, 1.0), (0.5, 1.0), (1.0, 1.0), (0.0, 0.8), (0.5, 0.8), (1.0, 0.8),
                                 (1.0, 0.6), (1.0, 0.4))], ("euler", {}), ("euler", {"self_condition": False})],
    "ar-tiny": [("ar", {}), ("ar", {"temperature": 0.8}), ("ar", {"temperature": 0.7})],
    "bd3lm-tiny-b4": [("first_hitting", {}), ("first_hitting", {"temperature": 0.8}),
                      ("low_confidence", {"temperature": 0.7})],
}
# issue 21's goal for continuous diffusion: its API default against `mdlm-tiny`'s, with the knobs that lead from
# CDCD's own sampler (the plain ODE) to that default, and the default without each of its departures
CONTINUOUS_GRID = {
    "mdlm-tiny": [("low_confidence", {})],
    "cdcd-tiny": [*[("euler", {"clamp": c, "temperature": t, "churn": 0.0, "steps": 200})
                    for c, t in ((0.0, 1.0), (0.5, 1.0), (1.0, 1.0), (1.0, 0.6))],
                  ("euler", {}), ("euler", {"temperature": 0.0}), ("euler", {"self_condition": False})],
}
GRIDS = {"all": GRID, "continuous": CONTINUOUS_GRID}  # `bench defaults --grid NAME`


def corpus_samples(tokenizer, count: int, gen_length: int = GEN_LENGTH) -> tuple[list[list[int]], list[list[int]]]:
    """(prompts, their real continuations): `count` windows spread evenly over the validation split."""
    windows = TokenStream(load_corpus(), "val", tokenizer).windows(PROMPT_LENGTH + gen_length)
    picked = [windows[i].tolist() for i in torch.linspace(0, len(windows) - 1, count).long()]
    return [w[:PROMPT_LENGTH] for w in picked], [w[PROMPT_LENGTH:] for w in picked]


def label(sampler: str, knobs: dict) -> str:
    return sampler + "".join(f", {k}={v}" for k, v in knobs.items())


def runs_as(family: str, sampler: str, knobs: dict, start: tuple[str | None, dict] = (None, {})) -> bool:
    """Whether this setting is what a surface starts `family` with: `start` = (sampler name, knobs set on top of
    its defaults); (None, {}) is the API's default, `explorer.generate(model, prompt)` with no knobs."""
    name, preset = start
    default = sampler_for(family, name)
    return (sampler == default.name and all(k in knobs for k in preset)
            and all(preset.get(k, default.default(k)) == v for k, v in knobs.items()))


def run_defaults_bench(judge_name: str = "ar-tiny", samples: int = 8,
                       json_path: str | Path = "bench_results/defaults.json", grid: dict | None = None,
                       gen_length: int = GEN_LENGTH) -> dict:
    grid = GRID if grid is None else grid
    judge = load(judge_name)
    prompts, references = corpus_samples(judge.tokenizer, samples, gen_length)
    corpus = sample_quality(judge, prompts, references)
    results = {"judge": judge.name, "samples": samples, "prompt_length": PROMPT_LENGTH, "gen_length": gen_length,
               "entropy_tolerance": ENTROPY_TOLERANCE, "corpus": corpus, "checkpoints": {}}
    floor = corpus["unigram_entropy"] * (1 - ENTROPY_TOLERANCE)
    with tqdm(total=sum(len(v) for v in grid.values()), desc="bench defaults") as progress:
        for checkpoint, settings in grid.items():
            model = load(checkpoint)
            rows = []
            for sampler, knobs in settings:
                traces = [generate(model, prompt, sampler, seed=seed, gen_length=gen_length, record="none", **knobs)
                          for seed, prompt in enumerate(prompts)]
                outputs = [t.final_tokens for t in traces]
                rows.append({"setting": label(sampler, knobs), "sampler": sampler, "knobs": knobs,
                             "nfe": statistics.mean(t.stats["nfe"] for t in traces),
                             "api_default": runs_as(model.family, sampler, knobs),
                             "page": runs_as(model.family, sampler, knobs, SHOWCASE.get(model.family, (None, {}))),
                             **sample_quality(judge, prompts, outputs)})
                progress.update()
            fluent = [r for r in rows if r["unigram_entropy"] >= floor]
            best = min(fluent or rows, key=lambda r: r["gen_ppl"])
            results["checkpoints"][checkpoint] = {
                "rows": rows, "best": best["setting"]}
    write_results(json_path, results, defaults_table(results))
    return results


def defaults_table(r: dict) -> str:
    corpus = r["corpus"]
    lines = [f"Sampler settings per shipped checkpoint: {r['samples']} validation prompts of {r['prompt_length']} "
             f"tokens, {r['gen_length']} generated tokens (seeds 0-{r['samples'] - 1}), judged by `{r['judge']}`. "
             f"The corpus's own continuations: generative PPL {corpus['gen_ppl']}, unigram entropy "
             f"{corpus['unigram_entropy']:.2f} nats; **best** = the lowest perplexity among settings whose entropy "
             f"is at most {r['entropy_tolerance']:.0%} below the corpus's.", "",
             "| checkpoint | setting | network evaluations | gen. PPL | unigram entropy (nats) | |",
             "|---|---|---|---|---|---|"]
    for checkpoint, c in r["checkpoints"].items():
        for row in c["rows"]:
            marks = (["**best**"] if row["setting"] == c["best"] else []) + (
                ["API default"] if row["api_default"] else []) + (["page"] if row["page"] else [])
            lines.append(f"| {checkpoint} | {row['setting']} | {row['nfe']:g} | {row['gen_ppl']} | "
                         f"{row['unigram_entropy']:.2f} | "
                         f"{', '.join(marks)} |")
    return "\n".join(lines) + "\n"
