"""`python -m explorer bench block`: block diffusion and the speed machinery of masked diffusion, side by side.

1. Block diffusion with the exact KV cache vs recomputing the prefix (256 tokens, the checkpoint's L').
2. Vectorized training step (one pass over x_t (+) x0) vs two forward passes.
3. Fast-dLLM prefix and dual cache on a masked-diffusion checkpoint with 32-token blocks, alone and
   with threshold 0.9: wall time and generative perplexity judged by an AR checkpoint.
4. Draft-and-refine vs plain AR and plain masked diffusion given the same budget of network evaluations.

Every ratio comes from runs interleaved in one process (pairs alternate, the median ratio is kept).
"""

from __future__ import annotations

import functools
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from explorer.bench.measure import alternating, median_ratio, write_results
from explorer.data import TokenStream, load_corpus
from explorer.eval import generative_ppl, prompts_from_val, sample_quality
from explorer.hub import load
from explorer.nn import bd3_dense_mask
from explorer.sampling import generate


def counted_flops(run):
    """(what one call of `run` returns, its FLOPs (matmuls and attention) by torch's FLOP counter)."""
    with FlopCounterMode(display=False) as counter:
        out = run()
    return out, counter.get_total_flops()


def kv_cache_speed(model, repeats: int, gen_length: int = 256) -> dict:
    """The exact cache against recomputing the visible prefix: wall time, and the FLOP ratio that bounds it."""
    knobs = dict(gen_length=gen_length, seed=0, record="none", stop_at_eos=False, min_entropy=0.0)
    cached, cached_flops = counted_flops(lambda: generate(model, "", kv_cache=True, **knobs))
    fresh, fresh_flops = counted_flops(lambda: generate(model, "", kv_cache=False, **knobs))
    bound = fresh_flops / cached_flops
    times = alternating({"cached": lambda: generate(model, "", kv_cache=True, **knobs),
                         "recompute": lambda: generate(model, "", kv_cache=False, **knobs)}, repeats)
    return {"checkpoint": model.name, "gen_length": gen_length, "block_size": model.block_size,
            "nfe": cached.stats["nfe"], "identical_tokens": cached.final_tokens == fresh.final_tokens,
            "cached_s": round(statistics.median(times["cached"]), 3),
            "recompute_s": round(statistics.median(times["recompute"]), 3),
            "speedup": round(median_ratio(times, "recompute", "cached"), 2),
            "flop_bound": round(bound, 2)}


def training_step_flops(model, batch_size: int, vectorized: bool) -> dict[str, int]:
    """Forward FLOPs (2 per multiply-add) of one BD3-LM training pass over (batch_size, max_seq_len) tokens:
    `linear` (projections and SwiGLU), `attention` (scores and weighted sums as the dense SDPA calls compute them,
    masked entries included), `attention_needed` (the entries the mask keeps: what a block-sparse kernel would
    compute), `head` (logits of the noisy half, and with Dream's shift of the clean outputs that end a block). A
    backward pass costs about twice as much again."""
    c = model.config.backbone
    d, n, L = c.d_model, c.n_layers, c.max_seq_len
    qkv, rest = 3 * d * d, d * d + 3 * d * c.d_ff  # per token: queries/keys/values; output projection and SwiGLU
    mask = bd3_dense_mask(L, model.block_size)
    noisy_kept, clean_kept = int(mask[:L].sum()), int(mask[L:, L:].sum())
    if vectorized:  # one pass over 2L; its last layer computes outputs of the noisy half only
        qkv_tokens, rest_tokens = n * 2 * L, (n - 1) * 2 * L + L
        scores = (n - 1) * (L * 2 * L + L * L) + L * 2 * L
        kept = (n - 1) * (noisy_kept + clean_kept) + noisy_kept
    else:  # clean pass over L (its last layer stops at keys and values), then the noisy pass against 2L keys
        qkv_tokens, rest_tokens = 2 * n * L, (n - 1) * L + n * L
        scores = (n - 1) * L * L + n * L * 2 * L
        kept = (n - 1) * clean_kept + n * noisy_kept
    heads = L
    if model.config.shift:  # both paths also run the clean half's last layer; the head reads its block ends
        rest_tokens, scores, kept = rest_tokens + L, scores + L * L, kept + clean_kept
        heads += L // model.block_size - 1
    macs = {"linear": qkv_tokens * qkv + rest_tokens * rest, "attention": scores * 2 * d,
            "attention_needed": kept * 2 * d, "head": heads * d * c.vocab_size}
    return {part: 2 * batch_size * m for part, m in macs.items()}


def vectorized_vs_two_pass(times: dict[str, list[float]]) -> dict:
    return {"vectorized_s": round(statistics.median(times["vectorized"]), 3),
            "two_pass_s": round(statistics.median(times["two_pass"]), 3),
            "speedup": round(median_ratio(times, "two_pass", "vectorized"), 2)}


def training_step_speed(model, repeats: int, batch_size: int = 16) -> dict:
    model.train()
    batch = TokenStream(load_corpus(), "train", model.tokenizer).random_batch(
        batch_size, model.max_seq_len, torch.Generator().manual_seed(0))

    def step(vectorized: bool):
        def run():
            model.zero_grad(set_to_none=True)
            model.loss(batch, generator=torch.Generator().manual_seed(0), vectorized=vectorized)["loss"].backward()
        return run

    steps = {"vectorized": step(True), "two_pass": step(False)}
    for run in steps.values():  # warm up
        run()
    wall = alternating(steps, repeats)
    # also the CPU time of one torch thread (the ops then run in this thread): on a shared machine other
    # processes stretch the wall time of every op, and of a 2-thread op whenever either thread waits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cpu = alternating(steps, repeats, clock=time.thread_time)
    finally:
        torch.set_num_threads(threads)
    model.zero_grad(set_to_none=True)
    model.eval()
    flops = {name: training_step_flops(model, batch_size, vectorized)
             for name, vectorized in (("vectorized", True), ("two_pass", False))}
    return {"checkpoint": model.name, "batch": f"{batch_size}x{model.max_seq_len}",
            **vectorized_vs_two_pass(wall),
            "one_thread_cpu": vectorized_vs_two_pass(cpu),
            "forward_gflops": {name: round(sum(f[p] for p in ("linear", "attention", "head")) / 1e9, 2)
                               for name, f in flops.items()}}


def fast_dllm(model, judge, prompts, quality_prompts, block: int = 32, repeats: int = 3) -> dict:
    """Speed: each variant generates `prompts`; rounds visit the variants in turn so that machine noise hits all of
    them alike, and each speed-up is the median over rounds of (no cache time / its time). Quality: one more pass of
    each variant over `quality_prompts` (decoding is greedy, so it is what the timed rounds produce on them), judged
    by `judge`: on 8 prompts the generative perplexity of the same variant moves by 10% with the choice of prompts."""
    gen = (model.max_seq_len - max(len(p) for p in prompts + quality_prompts)) // block * block
    variants = {"no cache": {}, "prefix cache": {"cache": "prefix"}, "dual cache": {"cache": "dual"},
                "threshold 0.9": {"threshold": 0.9},
                "prefix cache + threshold 0.9": {"cache": "prefix", "threshold": 0.9},
                "dual cache + threshold 0.9": {"cache": "dual", "threshold": 0.9}}

    def run(extra, on):
        knobs = dict(gen_length=gen, steps=gen, block_length=block, temperature=0.0, record="none", **extra)
        return [generate(model, p, "low_confidence", seed=i, **knobs) for i, p in enumerate(on)]

    times = alternating({name: functools.partial(run, extra, prompts) for name, extra in variants.items()}, repeats,
                        progress="fast-dllm rounds")
    rows = {}
    for name, extra in tqdm(variants.items(), desc="fast-dllm quality", leave=False):
        traces = run(extra, quality_prompts)
        rows[name] = {"wall_s": round(statistics.median(times[name]), 3),
                      "speedup": round(median_ratio(times, "no cache", name), 2),
                      "nfe_mean": statistics.mean(t.stats["nfe"] for t in traces),
                      "gen_ppl": round(generative_ppl(judge, quality_prompts, [t.final_tokens for t in traces]), 2)}
    base = rows["no cache"]
    for row in rows.values():
        row["gen_ppl_change_pct"] = round(100 * (row["gen_ppl"] / base["gen_ppl"] - 1), 1)
    return {"checkpoint": model.name, "judge": judge.name, "gen_length": gen, "block_length": block,
            "samples": len(prompts), "quality_samples": len(quality_prompts), "repeats": repeats, "variants": rows}


def draft_refine(model, judge, prompts, drafter: str, gen_length: int = 64, rounds: int = 2,
                 fraction: float = 0.25, temperature: float = 0.8) -> dict:
    """Generative perplexity (and token diversity) of three ways to spend about the same evaluations."""
    count = max(1, round(fraction * gen_length))
    budget = gen_length + rounds * count
    drafting = judge if judge.name == drafter else load(drafter)
    methods = {
        f"AR only ({drafter}, T={temperature})": lambda p, i: generate(
            drafting, p, gen_length=gen_length, temperature=temperature, seed=i, record="none"),
        f"masked diffusion only ({model.name}, low_confidence)": lambda p, i: generate(
            model, p, "low_confidence", gen_length=gen_length, steps=budget, seed=i, record="none"),
        f"draft ({drafter}) + refine ({model.name}), R={rounds}, {fraction:.0%}": lambda p, i: generate(
            model, p, "draft_refine", drafter=drafting, gen_length=gen_length, rounds=rounds, fraction=fraction,
            temperature=temperature, seed=i, record="none"),
    }
    rows = {}
    for name, run in tqdm(methods.items(), desc="draft-refine", leave=False):
        traces = [run(p, i) for i, p in enumerate(prompts)]
        outs = [t.final_tokens for t in traces]
        rows[name] = {"nfe_mean": statistics.mean(t.stats["nfe"] for t in traces),
                      **sample_quality(judge, prompts, outs)}
    return {"judge": judge.name, "gen_length": gen_length, "samples": len(prompts), "methods": rows}


def run_block_bench(block_checkpoint: str = "bd3lm-tiny-b16", masked_checkpoint: str = "mdlm-tiny",
                    judge_name: str = "ar-tiny", repeats: int = 3, samples: int = 8, quality_samples: int = 64,
                    json_path: str | Path = "bench_results/block.json") -> dict:
    """`samples` prompts for the timed runs and draft-and-refine, `quality_samples` for the caches' perplexity."""
    torch.manual_seed(0)
    block_model, masked, judge = load(block_checkpoint), load(masked_checkpoint), load(judge_name)
    prompts = prompts_from_val(masked.tokenizer, samples)
    results = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__, "repeats": repeats}
    with tqdm(total=4, desc="bench block") as progress:
        results["kv_cache"] = kv_cache_speed(block_model, repeats)
        progress.update()
        results["training_step"] = training_step_speed(block_model, max(repeats, 5))
        progress.update()
        results["fast_dllm"] = fast_dllm(masked, judge, prompts, prompts_from_val(masked.tokenizer, quality_samples),
                                         repeats=repeats)
        progress.update()
        results["draft_refine"] = draft_refine(masked, judge, prompts, judge_name)
        progress.update()
    write_results(json_path, results, block_table(results))
    return results


def block_table(r: dict) -> str:
    kv, tr, fd, dr = r["kv_cache"], r["training_step"], r["fast_dllm"], r["draft_refine"]
    cpu = tr["one_thread_cpu"]
    lines = [f"Block benchmark ({r['torch_threads']} threads, torch {r['torch']}; ratios are medians of "
             f"interleaved pairs)", "", "| measurement | result |", "|---|---|",
             f"| `{kv['checkpoint']}` KV cache vs recomputing the prefix, {kv['gen_length']} tokens, "
             f"L'={kv['block_size']}, {kv['nfe']} NFE | **{kv['speedup']:.2f}x** ({kv['cached_s']:.2f}s vs "
             f"{kv['recompute_s']:.2f}s), identical tokens: {kv['identical_tokens']}; FLOP bound "
             f"{kv['flop_bound']:.2f}x ({100 * kv['speedup'] / kv['flop_bound']:.0f}% of it) |",
             f"| vectorized training step vs two passes ({tr['batch']}, forward + backward) | "
             f"**{tr['speedup']:.2f}x** ({tr['vectorized_s']:.3f}s vs {tr['two_pass_s']:.3f}s); one thread, CPU "
             f"time: **{cpu['speedup']:.2f}x** ({cpu['vectorized_s']:.3f}s vs {cpu['two_pass_s']:.3f}s); forward "
             f"GFLOPs {tr['forward_gflops']['vectorized']} vs {tr['forward_gflops']['two_pass']} |"]
    base = fd["variants"]["no cache"]
    for name, row in fd["variants"].items():
        if name == "no cache":
            continue
        lines.append(f"| `{fd['checkpoint']}` {name} vs no cache ({fd['gen_length']} tokens, blocks of "
                     f"{fd['block_length']}; time: {fd['samples']} prompts, median of {fd['repeats']} rounds; "
                     f"gen. PPL and NFE: {fd['quality_samples']} prompts) | "
                     f"**{row['speedup']:.2f}x**, "
                     f"{row['nfe_mean']:.0f} vs {base['nfe_mean']:.0f} NFE; gen. PPL ({fd['judge']}) "
                     f"{row['gen_ppl']} vs {base['gen_ppl']} ({row['gen_ppl_change_pct']:+.1f}%) |")
    lines += ["", f"Draft-and-refine against plain AR and plain masked diffusion given the same budget of network "
              f"evaluations ({dr['gen_length']} tokens, {dr['samples']} prompts, judged by `{dr['judge']}`; AR and "
              "masked diffusion cannot spend more than one evaluation per token, the NFE column shows what each "
              "used; unigram entropy in nats guards against repetitive text scoring well):", "",
              "| method | NFE | gen. PPL | unigram entropy |", "|---|---|---|---|"]
    for name, row in dr["methods"].items():
        lines.append(f"| {name} | {row['nfe_mean']:.0f} | {row['gen_ppl']} | {row['unigram_entropy']} |")
    return "\n".join(lines) + "\n"
