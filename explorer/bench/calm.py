"""`python -m explorer bench calm`: CALM's K trade-off and its likelihood-free temperature, beside an AR baseline.

1. The K trade-off. For the AR baseline (`ar-tiny`) and each CALM checkpoint (`calm-tiny-k1` ... `-k8`, the
   same backbone preset): BrierLM on the test split (sample estimator for every model, exact too for AR),
   network passes per generated token, FLOPs per generated token counted from the configs, and tokens per
   second measured in interleaved rounds in this process (batch 1, temperature 1, the same prompts).
2. Temperature without likelihoods (CALM's Figure 11). The next 4 tokens after test prefixes are sampled
   twice per prefix: by the AR model at temperatures T (softmax scaling) and by one CALM checkpoint with the
   batch approximation at T = 1/n for growing N, and with the exact algorithm. Each setting gives an accuracy
   (share of sampled tokens equal to the true ones) and a collision rate (share of tokens on which the two
   samples agree: the model's own certainty, lower = more diverse). The equivalent AR temperature of a CALM
   setting is the T at which AR sampling has the same collision rate (linear interpolation).

FLOPs count the multiply-adds of every linear map (x2), attention scores and mixing over the mean attended
context, and the tied output heads; norms, activations and sampling are left out.
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from explorer.bench.measure import write_results
from explorer.brier import ar_continuations, brier_lm, brier_windows
from explorer.eval import prompts_from_val
from explorer.hub import load
from explorer.sampling import generate
from explorer.sampling.calm import CALMParams, next_chunk

CALM_CHECKPOINTS = ("calm-tiny-k1", "calm-tiny-k2", "calm-tiny-k4", "calm-tiny-k8")
AR_TEMPERATURES = (1.5, 1.3, 1.2, 1.1, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)  # above 1 too: a weak CALM is flatter
BATCH_N = (2, 4, 8, 16, 32, 64, 128, 200)
BATCH_TEMPERATURES = (1 / 2,)
EXACT_TEMPERATURES = (0.9, 0.7, 0.5)
EXACT_MAX_DRAWS = 256  # the exact algorithm's head samples per chunk before it falls back to the batch rule
SPAN = 4  # tokens sampled after each prefix in the temperature study


# --- cost from the configs -----------------------------------------------------------------------------------

def linear_macs(module: nn.Module) -> int:
    """Multiply-adds of one pass of every nn.Linear in the module (one row of input)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def backbone_macs(backbone: nn.Module, attended: float) -> float:
    """One position through the Transformer blocks: linear maps plus QK^T and AV over `attended` positions."""
    c = backbone.config
    return linear_macs(backbone.blocks) + 2 * c.n_layers * c.d_model * attended


def decoder_macs(autoencoder: nn.Module) -> int:
    """One latent vector decoded into K tokens' logits (the per-token layer runs K times, the head is tied)."""
    c = autoencoder.config
    per_chunk = (linear_macs(autoencoder.from_latent) + linear_macs(autoencoder.dec_mix)
                 + linear_macs(autoencoder.dec_expand))
    return per_chunk + c.chunk * (linear_macs(autoencoder.dec_token) + c.d_model * c.vocab_size)


def cost_per_token(model, attended_tokens: float, head_samples: float = 1.0) -> dict:
    """Network passes and FLOPs per generated token; `head_samples` = energy-head samples per chunk."""
    if model.family == "ar":
        c = model.backbone.config
        macs = backbone_macs(model.backbone, attended_tokens) + c.d_model * c.vocab_size
        return {"backbone_passes": 1.0, "head_passes": 0.0, "flops": 2 * macs}
    K = model.chunk
    conditions = sum(linear_macs(block.condition) for block in model.head.blocks)  # once per chunk, not per sample
    per_chunk = (linear_macs(model.compress) + backbone_macs(model.backbone, attended_tokens / K) + conditions
                 + head_samples * (linear_macs(model.head) - conditions + decoder_macs(model.autoencoder)))
    return {"backbone_passes": 1 / K, "head_passes": head_samples / K, "flops": 2 * per_chunk / K}


def training_tokens(model) -> int | None:
    return model.checkpoint_info.get("training", {}).get("tokens_seen")


# --- 1. the K trade-off --------------------------------------------------------------------------------------

def tokens_per_second(models: list, prompts: list[list[int]], gen_length: int, repeats: int) -> dict[str, float]:
    """Median tokens/s of each model over interleaved rounds (every round runs every model on every prompt)."""
    def run(model) -> float:
        knobs = dict(gen_length=gen_length, temperature=1.0, record="none")
        seconds = 0.0
        for i, prompt in enumerate(prompts):
            seconds += generate(model, prompt, seed=i, **knobs).stats["wall_s"]
        return len(prompts) * gen_length / seconds

    for model in models:  # warm-up
        generate(model, prompts[0], gen_length=gen_length, record="none")
    rounds = {model.name: [] for model in models}
    for _ in range(repeats):
        for model in models:
            rounds[model.name].append(run(model))
    return {name: statistics.median(values) for name, values in rounds.items()}


def k_tradeoff(baseline, calms: list, prompts, gen_length: int, repeats: int, brier_stride: int,
               progress) -> list[dict]:
    speed = tokens_per_second([baseline] + calms, prompts, gen_length, repeats)
    progress.update()
    attended = len(prompts[0]) + gen_length / 2
    rows = []
    for model in [baseline] + calms:
        sample = brier_lm(model, "test", stride=brier_stride, progress=False)
        brier = {"sample": sample["brierlm"], "brier_n": sample["brier"]}
        if model.family == "ar":
            brier["exact"] = brier_lm(model, "test", stride=brier_stride, estimator="exact", progress=False)["brierlm"]
        cost = cost_per_token(model, attended)
        rows.append({"checkpoint": model.name, "K": getattr(model, "chunk", 1), "params": model.num_parameters(),
                     "training_tokens": training_tokens(model), "brierlm": brier, **cost,
                     "tokens_per_s": round(speed[model.name], 1),
                     "speedup": round(speed[model.name] / speed[baseline.name], 2)})
        progress.update()
    base_flops = rows[0]["flops"]
    for row in rows:
        row["flops_ratio"] = round(row["flops"] / base_flops, 3)
    return rows


# --- 2. temperature without likelihoods ----------------------------------------------------------------------

def agreement(x1: torch.Tensor, x2: torch.Tensor, truth: torch.Tensor) -> dict:
    """Token accuracy of two samples (B, n) against the truth and their collision rate (B, n)."""
    accuracy = ((x1 == truth).float().mean() + (x2 == truth).float().mean()) / 2
    return {"accuracy": round(float(accuracy), 4), "collision": round(float((x1 == x2).float().mean()), 4)}


@torch.no_grad()
def calm_samples(model, prefixes: torch.Tensor, params: CALMParams, seed: int) -> tuple[torch.Tensor, list[int]]:
    """(B, SPAN) tokens: whole chunks at the params' temperature after each prefix; head samples used per chunk
    (above params.max_draws: the exact algorithm gave up and the batch rule picked the chunk)."""
    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    rows, draws = [], []
    for prefix in prefixes:
        cache = model.new_cache()
        hidden = model.prefix_state(prefix[None], cache)[0]
        tokens = []
        while len(tokens) < SPAN:
            chunk, _, _, used = next_chunk(model, hidden, params, generator, rng)  # give-ups: counted, not noted
            tokens += chunk.tolist()
            draws.append(used)
            if len(tokens) < SPAN:
                hidden = model.hidden_states(chunk.view(1, 1, -1).to(model.device), cache=cache)[0, -1]
        rows.append(tokens[:SPAN])
    return torch.tensor(rows), draws


def equivalent_temperature(collision: float, ar_rows: list[dict]) -> float | None:
    """The AR temperature with this collision rate (linear between measured temperatures); None outside them."""
    points = sorted((r["collision"], r["temperature"]) for r in ar_rows)
    for (c0, t0), (c1, t1) in zip(points, points[1:]):
        if c0 <= collision <= c1:
            return round(t0 + (t1 - t0) * (collision - c0) / (c1 - c0), 3) if c1 > c0 else t0
    return None


def temperature_study(baseline, calm, windows: torch.Tensor, batch_n: tuple[int, ...],
                      exact_temperatures: tuple[float, ...], progress) -> dict:
    prefixes, truth = windows[:, :-SPAN], windows[:, -SPAN:]
    ar_rows = []
    for T in AR_TEMPERATURES:
        x1, x2 = (ar_continuations(baseline, prefixes, SPAN, seed, temperature=T) for seed in (1, 2))
        ar_rows.append({"temperature": T, **agreement(x1, x2, truth)})
    progress.update()
    calm_rows = []
    settings = [("batch", T, n) for T in BATCH_TEMPERATURES for n in batch_n if round(1 / T) <= n]
    settings += [("exact", T, None) for T in (1.0,) + tuple(exact_temperatures)]
    for algorithm, T, n in settings:
        params = CALMParams(gen_length=calm.chunk, temperature=T, algorithm=algorithm, n_candidates=n or 200,
                            max_draws=EXACT_MAX_DRAWS)
        (x1, d1), (x2, d2) = (calm_samples(calm, prefixes, params, seed) for seed in (1, 2))
        row = {"algorithm": algorithm, "temperature": round(T, 4), "N": n, **agreement(x1, x2, truth),
               "head_samples_per_chunk": round(statistics.mean(d1 + d2), 1)}
        if algorithm == "exact":
            row["gave_up_share"] = round(sum(d > EXACT_MAX_DRAWS for d in d1 + d2) / len(d1 + d2), 4)
        row["equivalent_ar_temperature"] = equivalent_temperature(row["collision"], ar_rows)
        calm_rows.append(row)
        progress.update()
    return {"checkpoint": calm.name, "prefixes": len(prefixes), "span": SPAN, "exact_max_draws": EXACT_MAX_DRAWS,
            "ar": ar_rows, "calm": calm_rows}


# --- the whole bench -----------------------------------------------------------------------------------------

def run_calm_bench(checkpoints: list[str] = CALM_CHECKPOINTS, baseline_name: str = "ar-tiny",
                   temperature_checkpoint: str | None = None, repeats: int = 3, samples: int = 4,
                   gen_length: int = 96, brier_stride: int = 8, temperature_prefixes: int = 512,
                   batch_n: tuple[int, ...] = BATCH_N, exact_temperatures: tuple[float, ...] = EXACT_TEMPERATURES,
                   json_path: str | Path = "bench_results/calm.json") -> dict:
    torch.manual_seed(0)
    baseline = load(baseline_name)
    if baseline.family != "ar":
        raise ValueError(f"the baseline must be an ar checkpoint, got {baseline_name} ({baseline.family})")
    calms = [load(name) for name in checkpoints]
    for model in calms:
        if model.family != "calm":
            raise ValueError(f"{model.name} is a {model.family} checkpoint; bench calm compares calm checkpoints")
        if gen_length % model.chunk:
            raise ValueError(f"gen_length ({gen_length}) must be a multiple of every K; "
                             f"{model.name} has K={model.chunk}")
    by_name = {m.name: m for m in calms}
    probe = by_name.get(temperature_checkpoint) if temperature_checkpoint else next(
        (m for m in calms if m.chunk == SPAN), calms[0])
    if probe is None:
        raise ValueError(f"temperature_checkpoint must be one of {sorted(by_name)}, got {temperature_checkpoint!r}")
    prompts = prompts_from_val(baseline.tokenizer, samples)
    windows = brier_windows(baseline.tokenizer, "test", 64, None, stride=1)
    windows = windows[torch.linspace(0, len(windows) - 1, temperature_prefixes).long()][:, : 64 + SPAN]
    settings = len([1 for T in BATCH_TEMPERATURES for n in batch_n if round(1 / T) <= n]) + 1 + len(exact_temperatures)
    results = {"baseline": baseline.name, "gen_length": gen_length, "prompts": samples,
               "prompt_length": len(prompts[0]), "repeats": repeats, "brier_stride": brier_stride,
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    with tqdm(total=2 + len(calms) + 1 + settings, desc="bench calm") as progress:
        results["tradeoff"] = k_tradeoff(baseline, calms, prompts, gen_length, repeats, brier_stride, progress)
        results["temperature"] = temperature_study(baseline, probe, windows, batch_n, exact_temperatures, progress)
    write_results(json_path, results, calm_table(results))
    plot_calm_bench(results, Path(json_path).with_suffix(".png"))
    return results


def calm_table(r: dict) -> str:
    lines = [f"K trade-off: `{r['baseline']}` against CALM with the same backbone preset. BrierLM on the test split "
             f"(positions every {r['brier_stride']} tokens, context 64; sample estimator, exact in brackets); "
             f"FLOPs and passes per generated token at temperature 1 over a mean attended context of "
             f"{r['prompt_length'] + r['gen_length'] // 2} tokens; tokens/s: median of {r['repeats']} interleaved "
             f"rounds of {r['prompts']} prompts x {r['gen_length']} tokens, batch 1, {r['torch_threads']} threads, "
             f"torch {r['torch']}.", "",
             "| checkpoint | K | params | training tokens | BrierLM | Brier-1 | backbone passes / token | "
             "head passes / token | MFLOPs / token | FLOPs vs AR | tokens/s | speed vs AR |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["tradeoff"]:
        b = row["brierlm"]
        brier = f"{b['sample']:.3f}" + (f" ({b['exact']:.3f})" if "exact" in b else "")
        tokens = f"{row['training_tokens'] / 1e6:.1f}M" if row["training_tokens"] else "?"
        lines.append(f"| {row['checkpoint']} | {row['K']} | {row['params'] / 1e6:.2f}M | {tokens} | {brier} | "
                     f"{b['brier_n']['1']:.4f} | "
                     f"{row['backbone_passes']:.3f} | {row['head_passes']:.3f} | {row['flops'] / 1e6:.2f} | "
                     f"{row['flops_ratio']:.2f}x | {row['tokens_per_s']:.0f} | {row['speedup']:.2f}x |")
    t = r["temperature"]
    lines += ["", f"Temperature without likelihoods (`{t['checkpoint']}`, {t['prefixes']} test prefixes, the next "
              f"{t['span']} tokens sampled twice): accuracy = sampled tokens equal to the truth, collision = tokens on "
              f"which the two samples agree. The exact algorithm gives up after {t['exact_max_draws']} head samples "
              "for a chunk and lets the batch rule (N = 200) pick it.", "",
              "| sampler | setting | accuracy | collision | head samples / chunk | exact gave up "
              "| equivalent AR temperature |",
              "|---|---|---|---|---|---|---|"]
    for row in t["ar"]:
        lines.append(f"| AR softmax | T = {row['temperature']} | {row['accuracy']:.4f} | {row['collision']:.4f} "
                     f"| - | - | {row['temperature']} |")
    for row in t["calm"]:
        setting = (f"T = 1/{round(1 / row['temperature'])}, N = {row['N']}" if row["algorithm"] == "batch"
                   else f"T = {row['temperature']}")
        equivalent = row["equivalent_ar_temperature"]
        gave_up = f"{100 * row['gave_up_share']:.0f}% of chunks" if "gave_up_share" in row else "-"
        lines.append(f"| CALM {row['algorithm']} | {setting} | {row['accuracy']:.4f} | {row['collision']:.4f} | "
                     f"{row['head_samples_per_chunk']} | {gave_up} | "
                     f"{'outside the AR range' if equivalent is None else equivalent} |")
    return "\n".join(lines) + "\n"


def plot_calm_bench(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    rows = r["tradeoff"]
    ar, calm = rows[0], rows[1:]

    def flops(rs):
        return [r["flops"] / 1e6 for r in rs]

    def brier1(rs):
        return [100 * r["brierlm"]["brier_n"]["1"] for r in rs]

    left.plot(flops(calm), [c["brierlm"]["sample"] for c in calm], "o-", color="#D55E00", label="CALM: BrierLM")
    left.plot(flops(calm), brier1(calm), "o--", color="#D55E00", alpha=0.5, label="CALM: 100 x Brier-1")
    left.plot(flops([ar]), [ar["brierlm"]["sample"]], "s", color="#0072B2", markersize=8,
              label=f"{ar['checkpoint']}: BrierLM")
    left.plot(flops([ar]), brier1([ar]), "s", color="#0072B2", alpha=0.5, markersize=8,
              label=f"{ar['checkpoint']}: 100 x Brier-1")
    for row, y in zip(rows, brier1(rows)):
        left.annotate(f"K={row['K']}, {row['speedup']:.1f}x tok/s" if row is not ar else "AR, 1.0x tok/s",
                      (row["flops"] / 1e6, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    left.set_xscale("log")
    left.set_xlabel("inference MFLOPs per generated token (log)")
    left.set_ylabel("test score (sample estimator, higher is better)")
    left.set_title("K trade-off: quality against compute", fontsize=10)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)

    t = r["temperature"]
    right.plot([x["collision"] for x in t["ar"]], [x["accuracy"] for x in t["ar"]], "s-", color="#0072B2",
               label=f"{r['baseline']}, T = {t['ar'][0]['temperature']} ... {t['ar'][-1]['temperature']}")
    for x in t["ar"]:
        right.annotate(f"T={x['temperature']}", (x["collision"], x["accuracy"]), textcoords="offset points",
                       xytext=(4, -10), fontsize=7, color="#0072B2")
    colours = ["#D55E00", "#009E73", "#CC79A7"]
    for colour, T in zip(colours, BATCH_TEMPERATURES):
        pts = [x for x in t["calm"] if x["algorithm"] == "batch" and abs(x["temperature"] - round(T, 4)) < 1e-6]
        if pts:
            right.plot([x["collision"] for x in pts], [x["accuracy"] for x in pts], "o-", color=colour,
                       label=f"CALM batch T = 1/{round(1 / T)}, N = {pts[0]['N']} ... {pts[-1]['N']}")
            for x in pts:
                right.annotate(f"N={x['N']}", (x["collision"], x["accuracy"]), textcoords="offset points",
                               xytext=(4, 3), fontsize=7, color=colour)
    exact = [x for x in t["calm"] if x["algorithm"] == "exact"]
    right.plot([x["collision"] for x in exact], [x["accuracy"] for x in exact], "^--", color="#E69F00",
               label="CALM exact, T = 1 ... " + str(exact[-1]["temperature"]))
    right.set_xlabel("collision rate of two samples (higher = less diverse)")
    right.set_ylabel("token accuracy against the truth")
    right.set_title(f"Temperature without likelihoods ({t['checkpoint']})", fontsize=10)
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
