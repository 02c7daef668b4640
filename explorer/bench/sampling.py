"""`python -m explorer bench sampling`: the masked-diffusion sampler measured side by side.

1. Overhead of the sampler over the bare forward passes it makes, at each recording level: paired runs, and
   each run split into time inside the network's forward calls and the sampler's own work.
2. Our `low_confidence` sampler against a plain re-implementation of LLaDA's reference loop
   (full recompute, float64 Gumbel noise over the whole (B, L, V) tensor): identical tokens at
   temperature 0; wall time at temperature 0.7; peak memory of one sampling step, on the model's
   logits and on synthetic logits with LLaDA's 126,464-entry vocabulary.
3. Fast-dLLM `threshold` 0.9 against the fixed schedule: network evaluations and generative
   perplexity of the samples judged by an AR checkpoint.

Results go to JSON and a markdown table beside it. Ratios come from runs interleaved in one process.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from explorer import kernels
from explorer.bench.measure import (
    alternating,
    in_fresh_process,
    median_ratio,
    peak_extra_bytes,
    time_inside_calls,
    write_results,
)
from explorer.eval import generative_ppl, prompts_from_val
from explorer.hub import load
from explorer.sampling import generate
from explorer.sampling.mdlm import schedule_counts

LLADA_VOCAB = 126_464
THRESHOLDS = (0.9, 0.7, 0.5, 0.3)  # Fast-dLLM uses 0.9; lower ones show the trade-off on a small model


# --- LLaDA's reference loop, re-implemented plainly for comparison -----------------------------

def llada_gumbel(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """LLaDA's `add_gumbel_noise`: float64 over the whole tensor (argmax of this = Gumbel-max sample)."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand(logits.shape, dtype=torch.float64, generator=generator)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


def llada_step(logits: torch.Tensor, x: torch.Tensor, mask_id: int, block_end: int, count: int,
               temperature: float, generator: torch.Generator) -> torch.Tensor:
    """One step of LLaDA's generate(): sample all positions, score by softmax, commit the top `count`."""
    x0 = torch.argmax(llada_gumbel(logits, temperature, generator), dim=-1)  # (B, L)
    p = F.softmax(logits, dim=-1)  # (B, L, V)
    x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)
    x0_p[:, block_end:] = -math.inf
    masked = x == mask_id
    x0 = torch.where(masked, x0, x)
    confidence = torch.where(masked, x0_p, torch.full_like(x0_p, -math.inf))
    chosen = confidence[0].topk(count).indices
    x = x.clone()
    x[0, chosen] = x0[0, chosen]
    return x


@torch.no_grad()
def llada_generate(model, prompt_ids, gen_length, steps, block_length, temperature, seed) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    P = len(prompt_ids)
    x = torch.full((1, P + gen_length), model.mask_id, dtype=torch.long)
    x[0, :P] = torch.tensor(prompt_ids)
    blocks = gen_length // block_length
    for b in range(blocks):
        end = P + (b + 1) * block_length
        counts = schedule_counts(int((x[0, P + b * block_length : end] == model.mask_id).sum()), steps // blocks)
        for count in counts:
            logits = model(x)
            logits[..., model.mask_id] = -math.inf
            x = llada_step(logits, x, model.mask_id, end, count, temperature, generator)
    return x[0, P:].tolist()


# --- measurements --------------------------------------------------------------------------------

@torch.no_grad()
def bare_forwards(model, length: int, n: int) -> None:
    """`n` passes of the denoiser (`denoiser_logits`: the network, its head and the mask token's -inf) over an
    all-masked canvas: what every masked sampler needs; SUBS and everything after count as the sampler's work."""
    x = torch.full((1, length), model.mask_id, dtype=torch.long)
    for _ in range(n):
        model.denoiser_logits(x)


def step_memory(kind: str, batch: int, length: int, vocab: int, temperature: float) -> int:
    """Peak extra bytes of one sampling step on fresh random logits (run it in a fresh process)."""
    logits = torch.randn(batch, length, vocab)
    x = torch.full((batch, length), 3, dtype=torch.long)
    _sampling_step(kind, logits[:, :2], x[:, :2], temperature)  # warm up code paths on a tiny slice
    return peak_extra_bytes(lambda: _sampling_step(kind, logits, x, temperature))


def _sampling_step(kind: str, logits: torch.Tensor, x: torch.Tensor, temperature: float) -> None:
    """One sampling step over logits (B, L, V) with every position masked: ours or LLaDA's."""
    if kind == "llada":
        llada_step(logits, x, 3, x.shape[1], 1, temperature, torch.Generator().manual_seed(0))
    else:
        rows = (x[0] == 3).nonzero().squeeze(-1)
        kernels.sample_and_score(logits[0], temperature, seed=0, rows=rows, margin=False, entropy=False)  # as the rule


def run_sampling_bench(checkpoint: str = "mdlm-tiny", judge_name: str = "ar-tiny", repeats: int = 3,
                       json_path: str | Path = "bench_results/sampling.json", gen_length: int = 128,
                       synthetic_length: int = 256, samples: int = 8) -> dict:
    torch.manual_seed(0)
    model = load(checkpoint)
    results: dict = {"checkpoint": checkpoint, "gen_length": gen_length, "repeats": repeats,
                     "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    steps = gen_length
    progress = tqdm(total=4 + len(THRESHOLDS), desc="bench sampling")

    # 1. recording overhead: sampler wall time / bare forward passes of the same count and shape,
    #    measured in interleaved pairs (machine noise hits both sides of a pair alike); median ratio
    rows = []
    for temperature in (0.0, 0.7):
        for record in ("none", "tokens", "full"):
            kwargs = dict(gen_length=gen_length, steps=steps, temperature=temperature, seed=0, record=record)
            trace = generate(model, "", "low_confidence", **kwargs)  # warm-up
            times = alternating({"sampler": lambda: generate(model, "", "low_confidence", **kwargs),
                                 "bare": lambda: bare_forwards(model, gen_length, trace.stats["nfe"])}, repeats)
            # the same run split: time outside the network's forward calls over time inside them
            splits = [time_inside_calls(model, "denoiser_logits",
                                        lambda: generate(model, "", "low_confidence", **kwargs))
                      for _ in range(repeats)]
            own = statistics.median(total / inside - 1 for total, inside in splits)
            rows.append({"record": record, "temperature": temperature,
                         "sampler_s": round(statistics.median(times["sampler"]), 4),
                         "bare_forward_s": round(statistics.median(times["bare"]), 4),
                         "nfe": trace.stats["nfe"],
                         "overhead_pct": round(100 * (median_ratio(times, "sampler", "bare") - 1), 1),
                         "own_work_pct": round(100 * own, 1)})
    results["overhead"] = rows
    progress.update()

    # 2a. identical tokens at temperature 0; 2b. wall time at 0.7, in interleaved pairs (median ratio)
    prompt = model.tokenizer.encode("ROMEO:").ids
    block = 32 if gen_length >= 64 else 8  # LLaDA's default block length, smaller for tiny runs
    g = (gen_length - len(prompt)) // block * block  # prompt + generation fit the context
    ours = generate(model, prompt, "low_confidence", gen_length=g, steps=g, block_length=block, temperature=0.0)
    theirs = llada_generate(model, prompt, g, g, block, 0.0, 0)
    kw = dict(gen_length=g, steps=g, block_length=block, temperature=0.7, seed=0, record="none")
    times = alternating({"ours": lambda: generate(model, prompt, "low_confidence", **kw),
                         "llada": lambda: llada_generate(model, prompt, g, g, block, 0.7, 0)}, repeats)
    results["vs_llada"] = {"gen_length": g, "block_length": block,
                           "identical_tokens_at_T0": ours.final_tokens == theirs,
                           "ours_s_T0.7": round(statistics.median(times["ours"]), 4),
                           "llada_s_T0.7": round(statistics.median(times["llada"]), 4),
                           "speedup": round(median_ratio(times, "llada", "ours"), 2)}
    progress.update()

    # 2c. peak memory of one sampling step, model vocabulary and LLaDA's vocabulary
    memory = []
    for vocab, length in ((model.tokenizer.get_vocab_size(), gen_length), (LLADA_VOCAB, synthetic_length)):
        sizes = dict(batch=1, length=length, vocab=vocab, temperature=0.7)
        ours_b = in_fresh_process("explorer.bench.sampling:step_memory", kind="ours", **sizes)
        llada_b = in_fresh_process("explorer.bench.sampling:step_memory", kind="llada", **sizes)
        memory.append({"vocab": vocab, "length": length, "logits_mb": round(length * vocab * 4 / 2**20, 1),
                       "ours_mb": round(ours_b / 2**20, 1), "llada_mb": round(llada_b / 2**20, 1),
                       "ratio": round(ours_b / max(llada_b, 1), 4)})
    results["step_memory"] = memory
    progress.update()

    # 3. threshold vs fixed schedule, judged by the AR model on prompts from the validation split
    judge = load(judge_name)
    prompts = prompts_from_val(model.tokenizer, samples)
    gen = max(32, gen_length - 32)  # prompt (16) + generation within the 128-token context, whole blocks of 32
    compare = {}
    for name, extra in [("fixed", {})] + [(f"threshold_{tau}", {"threshold": tau}) for tau in THRESHOLDS]:
        outs, nfes = [], []
        for i, p in enumerate(prompts):
            trace = generate(model, p, "low_confidence", gen_length=gen, steps=gen, block_length=32,
                             temperature=0.0, seed=i, record="none", **extra)
            outs.append(trace.final_tokens)
            nfes.append(trace.stats["nfe"])
        compare[name] = {"nfe_mean": statistics.mean(nfes), "gen_ppl": round(generative_ppl(judge, prompts, outs), 2)}
        if name != "fixed":
            compare[name]["nfe_reduction"] = round(compare["fixed"]["nfe_mean"] / compare[name]["nfe_mean"], 2)
            compare[name]["gen_ppl_change_pct"] = round(
                100 * (compare[name]["gen_ppl"] / compare["fixed"]["gen_ppl"] - 1), 1)
        progress.update()
    results["threshold"] = compare | {"judge": judge_name, "samples": samples, "gen_length": gen}
    progress.close()

    write_results(json_path, results, sampling_table(results))
    return results


def sampling_table(r: dict) -> str:
    lines = [f"Sampling benchmark on `{r['checkpoint']}` ({r['gen_length']} tokens, median of {r['repeats']}, "
             f"{r['torch_threads']} threads, torch {r['torch']})", "",
             "| measurement | value |", "|---|---|"]
    for row in r["overhead"]:
        own = f"; own work {row['own_work_pct']:+.1f}% of its forwards' time" if "own_work_pct" in row else ""
        lines.append(f"| sampler overhead over bare forwards, record `{row['record']}`, T={row['temperature']} | "
                     f"{row['overhead_pct']:+.1f}% "
                     f"({row['sampler_s']:.3f}s vs {row['bare_forward_s']:.3f}s, {row['nfe']} NFE{own}) |")
    v = r["vs_llada"]
    lines.append(f"| identical tokens to LLaDA's loop at T=0 | {v['identical_tokens_at_T0']} |")
    lines.append(f"| speed-up over LLaDA's loop at T=0.7 | {v['speedup']:.2f}x ({v['ours_s_T0.7']:.3f}s vs "
                 f"{v['llada_s_T0.7']:.3f}s) |")
    for m in r["step_memory"]:
        lines.append(f"| sampling-step peak memory, V={m['vocab']:,}, L={m['length']} | {m['ours_mb']} MB vs "
                     f"{m['llada_mb']} MB (ratio {m['ratio']:.3f}) |")
    t = r["threshold"]
    for tau in THRESHOLDS:
        row = t[f"threshold_{tau}"]
        lines.append(f"| threshold {tau} vs fixed schedule: NFE, generative PPL ({t['judge']}) | "
                     f"{row['nfe_mean']:.1f} vs {t['fixed']['nfe_mean']:.1f} NFE ({row['nfe_reduction']:.2f}x fewer); "
                     f"PPL {row['gen_ppl']} vs {t['fixed']['gen_ppl']} ({row['gen_ppl_change_pct']:+.1f}%) |")
    return "\n".join(lines) + "\n"
