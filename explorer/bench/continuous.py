"""`python -m explorer bench continuous`: Euler steps against generative perplexity, and time warping on vs off.

For each step count (10 to 200) the cdcd checkpoints generate the same prompts (64 tokens after 16
prompt tokens from the validation split); an AR checkpoint judges the outputs (generative perplexity,
lower is better, with the unigram entropy beside it: repetitive text scores well on perplexity
alone). Rows: the main checkpoint with its own schedule (warped when it learned a warp) and with
steps even in log t, every other checkpoint given (e.g. the one trained without warping), each
also with Diffusion-LM's clamping, and
masked diffusion (`mdlm-tiny`: MDLM's ancestral sampler at T = 1, and LLaDA's low-confidence rule at
T = 0) at the same network evaluations (it cannot use more than one per token). Wall time is measured
per configuration in this process.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from tqdm.auto import tqdm

from explorer.bench.measure import timed, write_results
from explorer.eval import prompts_from_val, sample_quality
from explorer.hub import load
from explorer.sampling import generate
from explorer.sampling.cdcd import CDCD_SAMPLER

STEP_COUNTS = (10, 20, 50, 100, 200)


def _row(traces, judge, prompts, seconds: float) -> dict:
    outs = [t.final_tokens for t in traces]
    return {"nfe_mean": statistics.mean(t.stats["nfe"] for t in traces), "wall_s": round(seconds, 3),
            **sample_quality(judge, prompts, outs)}


def run_continuous_bench(checkpoints: list[str], masked_checkpoint: str = "mdlm-tiny", judge_name: str = "ar-tiny",
                         steps: tuple[int, ...] = STEP_COUNTS, samples: int = 8, gen_length: int = 64,
                         json_path: str | Path = "bench_results/continuous.json") -> dict:
    torch.manual_seed(0)
    models = [load(name) for name in checkpoints]
    masked, judge = load(masked_checkpoint), load(judge_name)
    prompts = prompts_from_val(judge.tokenizer, samples)
    configs = {}
    for index, model in enumerate(models):
        own = "warped" if model.warp is not None else "log"
        plain = CDCD_SAMPLER  # not the API's defaults, which read better on these models (docs/samplers.md)
        configs[f"{model.name} ({own} schedule)"] = (model, "cdcd", plain)
        if index == 0 and model.warp is not None:
            configs[f"{model.name} (log schedule)"] = (model, "cdcd", plain | {"schedule": "log"})
        configs[f"{model.name} ({own} schedule, clamping)"] = (model, "cdcd", plain | {"clamp": 1.0})
    configs[f"{masked.name} (ancestral, T=1)"] = (masked, "mdlm", {"sampler": "ancestral"})
    configs[f"{masked.name} (low_confidence, T=0)"] = (masked, "mdlm", {"sampler": "low_confidence"})
    results = {"judge": judge.name, "samples": samples, "gen_length": gen_length, "prompt_length": len(prompts[0]),
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "steps": list(steps),
               "rows": {name: {} for name in configs}}
    with tqdm(total=len(configs) * len(steps), desc="bench continuous") as progress:
        for n in steps:
            for name, (model, family, extra) in configs.items():
                if family == "cdcd":
                    knobs = dict(steps=n, **extra)
                else:  # the masked sampler stops once every position is unmasked: at most gen_length evaluations
                    knobs = dict(steps=min(n, gen_length), **extra)

                def run():
                    return [generate(model, p, gen_length=gen_length, seed=i, record="none", **knobs)
                            for i, p in enumerate(prompts)]

                seconds, traces = timed(run, 1)
                results["rows"][name][str(n)] = _row(traces, judge, prompts, seconds)
                progress.update()
    write_results(json_path, results, continuous_table(results))
    plot_continuous(results, Path(json_path).with_suffix(".png"))
    return results


def continuous_table(r: dict) -> str:
    lines = [f"Continuous diffusion: Euler steps vs generative perplexity ({r['samples']} prompts of "
             f"{r['prompt_length']} validation tokens, {r['gen_length']} generated tokens, judged by `{r['judge']}`; "
             f"wall time for all prompts, {r['torch_threads']} threads, torch {r['torch']})", "",
             "| sampler | " + " | ".join(f"{n} steps" for n in r["steps"]) + " |",
             "|---|" + "---|" * len(r["steps"])]
    for name, row in r["rows"].items():
        cells = [f"{row[str(n)]['gen_ppl']} (H {row[str(n)]['unigram_entropy']:.2f}, "
                 f"{row[str(n)]['nfe_mean']:.0f} NFE, {row[str(n)]['wall_s']:.1f}s)" for n in r["steps"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: generative perplexity (H = unigram entropy in nats of the outputs, network evaluations per "
              "sample, wall time)."]
    return "\n".join(lines) + "\n"


def plot_continuous(r: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ppl, ax_time) = plt.subplots(1, 2, figsize=(10, 4.8), dpi=110)
    colors = ("#0072B2", "#56B4E9", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#000000", "#F0E442")  # Okabe-Ito
    for index, (name, row) in enumerate(r["rows"].items()):
        color = colors[index % len(colors)]
        nfe = [row[str(n)]["nfe_mean"] for n in r["steps"]]
        ax_ppl.plot(nfe, [row[str(n)]["gen_ppl"] for n in r["steps"]], "o-", color=color, label=name)
        ax_time.plot(nfe, [row[str(n)]["wall_s"] for n in r["steps"]], "o-", color=color, label=name)
    for ax, label in ((ax_ppl, f"generative perplexity ({r['judge']})"), (ax_time, "wall time (s, all prompts)")):
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per sample")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_ppl.set_yscale("log")
    fig.legend(*ax_ppl.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    fig.suptitle("Euler steps vs quality: continuous diffusion and masked diffusion", fontsize=11)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path
