"""Does BrierLM track cross-entropy? CALM's check (its Figure 4), on ar checkpoints saved along one training run:
BrierLM with the exact estimator and the test cross-entropy of each, their Pearson and Spearman correlations, as
JSON, a markdown table and a scatter plot (`python -m explorer eval --metric brier --checkpoint ... --table T`)."""

from __future__ import annotations

import math
from pathlib import Path

from tqdm.auto import tqdm

import explorer
from explorer.bench.measure import write_results
from explorer.brier import DEFAULT_SAMPLES, beats, brier_lm, unigram_baseline
from explorer.eval import evaluate


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def pearson(x: list[float], y: list[float]) -> float | None:
    """The correlation coefficient; None where one side is constant (every BrierLM zero, say): it is undefined."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    spread = math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    return cov / spread if spread > 0 else None


def spearman(x: list[float], y: list[float]) -> float | None:
    return pearson(_ranks(x), _ranks(y))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _shown(value: float | None) -> str:
    return "undefined (every BrierLM equal)" if value is None else str(value)


def brier_vs_cross_entropy(checkpoints: list[str], out: str, split: str = "test", context: int = 64,
                           stride: int = 32, samples: int = DEFAULT_SAMPLES) -> dict:
    """BrierLM (exact estimator) and cross-entropy of each ar checkpoint, their Pearson and Spearman
    correlations (CALM reports -0.966 / -0.991), as JSON, a markdown table and a scatter plot."""
    if len(checkpoints) < 3:
        raise ValueError(f"the correlation needs at least 3 checkpoints, got {len(checkpoints)}")
    rows, baseline = [], None
    for name in tqdm(checkpoints, desc="checkpoints"):
        model = explorer.load(name)
        if model.family != "ar":
            raise ValueError(f"{name} is a {model.family} checkpoint; the cross-entropy side needs ar checkpoints")
        if baseline is None:
            baseline = unigram_baseline(model.tokenizer, split, context, stride)
        ce = evaluate(model, split, progress=False)["nll_per_token"]
        score = brier_lm(model, split, context, estimator="exact", stride=stride, progress=False, samples=samples)
        steps = model.checkpoint_info.get("training", {}).get("steps_done")
        rows.append({"checkpoint": str(name), "steps": steps, "cross_entropy": ce, "brierlm": score["brierlm"],
                     "brierlm_se": score["brierlm_se"], "brier": score["brier"], "brier_se": score["brier_se"],
                     "windows": score["windows"], "beats_unigram": beats(score, baseline)})
    ce, br = [r["cross_entropy"] for r in rows], [r["brierlm"] for r in rows]
    result = {"split": split, "context": context, "stride": stride, "samples": samples, "rows": rows,
              "unigram": baseline, "pearson": _rounded(pearson(ce, br)), "spearman": _rounded(spearman(ce, br)),
              "published": {"pearson": -0.966, "spearman": -0.991}}
    write_study(result, out)
    return result


def write_study(result: dict, out: str) -> None:
    """The study's JSON at `out`, its markdown table beside it (.md) and its scatter plot (.png)."""
    rows, baseline, split = result["rows"], result["unigram"], result["split"]
    lines = [f"BrierLM (exact estimator, {result['samples']} continuations per position for the collision term, "
             f"{rows[0]['windows']} positions of the {split} split, context {result['context']}) "
             f"against cross-entropy for {len(rows)} ar checkpoints: Pearson **{_shown(result['pearson'])}**, Spearman "
             f"**{_shown(result['spearman'])}** (CALM: -0.966 / -0.991). The last row is the floor: the unigram "
             "model of the train split, scored exactly on the same positions.", "",
             "| checkpoint | steps | cross-entropy (nats) | BrierLM (± s.e.) | Brier-1 | Brier-2 | Brier-3 | Brier-4 "
             "| beats the unigram at every n (by 2 s.e.) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in [*rows, {**baseline, "steps": "-"}]:
        b = r["brier"]
        lines.append(f"| {Path(r['checkpoint']).name} | {r['steps']} | {r['cross_entropy']:.4f} | {r['brierlm']:.3f} "
                     f"± {r['brierlm_se']:.3f} | {b['1']:.4f} | {b['2']:.4f} | {b['3']:.4f} | {b['4']:.2e} | "
                     f"{ {True: 'yes', False: 'no', None: '-'}[r.get('beats_unigram')] } |")
    write_results(out, result, "\n".join(lines) + "\n")
    _plot_correlation(result, Path(out).with_suffix(".png"))


def _plot_correlation(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(5.6, 4), dpi=110)
    ax.errorbar([r["cross_entropy"] for r in rows], [r["brierlm"] for r in rows],
                yerr=[2 * r.get("brierlm_se", 0) for r in rows], fmt="o-", color="#0072B2", capsize=3,
                label="ar checkpoints (± 2 s.e.)")
    if "unigram" in result:
        unigram = result["unigram"]
        ax.plot([unigram["cross_entropy"]], [unigram["brierlm"]], "s", color="#999999", label="unigram (train counts)")
        ax.legend(fontsize=8, loc="upper right")
    for r in rows:
        ax.annotate(str(r["steps"]), (r["cross_entropy"], r["brierlm"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.set_xlabel("cross-entropy (nats / token, test)")
    ax.set_ylabel("BrierLM (exact estimator)")
    ax.set_title(f"BrierLM tracks cross-entropy: Pearson {_shown(result['pearson'])}, "
                 f"Spearman {_shown(result['spearman'])}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
