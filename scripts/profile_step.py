"""Where one sampling step's time goes, and how many FLOPs it does: `python scripts/profile_step.py`.

Each case runs a whole generation (record "none", as the benchmarks do) with timers around the pieces a step is
made of, each timer counting its own time only (a timed call inside another is subtracted from the outer one):

  forward     the backbone (explorer.nn.Transformer / the DiT), attention and the LM head included
  cache       KVCache.attend: writing new keys/values and handing attention the ones it sees
  model       the model's wrapper around the backbone (masks, logits slicing, the mask-token -inf)
  sampling    kernels.sample_and_score (Gumbel-max, softmax scores), less its noise
  noise       its Gumbel-max draw over the vocabulary of every sampled row (reference.gumbel_argmax: the noise,
              where a token can still win, and the argmax)
  frames      make_frame (the recording level's Frame)
  bookkeeping the rest: the sampler's loop (commit rules, canvas updates, stop rules) and building the Trace

FLOPs come from torch.utils.flop_counter (matmuls and attention) over one untimed run of the same case; the
bound of a cache is the FLOP ratio recompute / cached, and "reached" is the measured speed-up over that bound.
Usage: python scripts/profile_step.py [--repeats 3] [--cases mdlm-none,mdlm-prefix,mdlm-dual,bd3lm-kv,bd3lm-recompute,
       overhead-T0,overhead-T0.7] (the last two: `bench sampling`'s overhead case, 128 tokens in one block, no prompt)
       python scripts/profile_step.py --passes [bd3lm | mdlm-dual] [--repeats 100]: what one cached pass costs
       against one full pass: bd3lm-tiny-b16 at 16 positions (a cached step) and at 128 (a full window, logits for
       the last 16); mdlm-tiny's dual-cached step (33 rows of `bench block`'s 112) against a step without a cache.
       Each: the whole pass, and its matmuls alone (the model's 17 weight matrices in order, at the same row
       counts), so the rest is what a pass pays besides.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import explorer.kernels
import explorer.kernels.reference
import explorer.sampling.bd3lm
import explorer.sampling.mdlm
from explorer.bench.measure import alternating
from explorer.hub import load
from explorer.models.bd3lm import BD3LMModel
from explorer.models.mdlm import MDLMModel
from explorer.nn import KVCache, Transformer
from explorer.sampling import generate

PARTS = ("forward", "cache", "model", "sampling", "noise", "frames", "bookkeeping")


class Timers:
    """Exclusive wall time per part: a timed call's time minus the timed calls made inside it."""

    def __init__(self):
        self.totals = dict.fromkeys(PARTS, 0.0)
        self.stack: list[float] = []  # time spent in nested timed calls, per open call

    def wrap(self, part: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self.stack.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                inner = self.stack.pop()
                self.totals[part] += spent - inner
                if self.stack:
                    self.stack[-1] += spent
        return timed


def patch(timers: Timers) -> list[tuple[object, str, object]]:
    """Wrap the pieces in place; returns what to restore."""
    targets = [(Transformer, "forward", "forward"), (KVCache, "attend", "cache"),
               (MDLMModel, "denoiser_logits", "model"), (BD3LMModel, "window_logits", "model"),
               (explorer.kernels, "sample_and_score", "sampling"),
               (explorer.kernels.reference, "gumbel_argmax", "noise"),
               (explorer.sampling.mdlm, "make_frame", "frames"), (explorer.sampling.bd3lm, "make_frame", "frames")]
    saved = []
    for owner, name, part in targets:
        original = getattr(owner, name)
        saved.append((owner, name, original))
        setattr(owner, name, timers.wrap(part, original))
    return saved


CASES = {  # name -> (checkpoint, sampler, knobs)
    "mdlm-none": ("mdlm-tiny", "low_confidence", dict(gen_length=96, steps=96, block_length=32, cache="none")),
    "mdlm-prefix": ("mdlm-tiny", "low_confidence", dict(gen_length=96, steps=96, block_length=32, cache="prefix")),
    "mdlm-dual": ("mdlm-tiny", "low_confidence", dict(gen_length=96, steps=96, block_length=32, cache="dual")),
    "bd3lm-kv": ("bd3lm-tiny-b16", None, dict(gen_length=256, kv_cache=True, stop_at_eos=False, min_entropy=0.0)),
    "bd3lm-recompute": ("bd3lm-tiny-b16", None, dict(gen_length=256, kv_cache=False, stop_at_eos=False,
                                                     min_entropy=0.0)),
    **{f"overhead-T{t:g}": ("mdlm-tiny", "low_confidence", dict(gen_length=128, steps=128, prompt="", temperature=t))
       for t in (0.0, 0.7)},
}
PROMPT = "ROMEO:"  # mdlm cases: prompt + 96 tokens fill the 128-token context as `bench block` does


def run_case(model, sampler, knobs):
    knobs = {"prompt": PROMPT if model.family == "mdlm" else "", "temperature": 0.0 if sampler else 1.0, **knobs}
    return generate(model, knobs.pop("prompt"), sampler, seed=0, record="none", **knobs)


def profile(name: str, repeats: int) -> dict:
    checkpoint, sampler, knobs = CASES[name]
    model = load(checkpoint)
    trace = run_case(model, sampler, knobs)  # warm-up
    with FlopCounterMode(display=False) as counter:
        run_case(model, sampler, knobs)
    runs = []
    for _ in range(repeats):
        timers = Timers()
        saved = patch(timers)
        try:
            start = time.perf_counter()
            run_case(model, sampler, knobs)
            wall = time.perf_counter() - start
        finally:
            for owner, attr, original in saved:
                setattr(owner, attr, original)
        timers.totals["bookkeeping"] = wall - sum(v for k, v in timers.totals.items() if k != "bookkeeping")
        untimed = timed_plain(model, sampler, knobs)  # the same run without timers (their cost is not ours)
        runs.append(timers.totals | {"wall": wall, "plain": untimed})
    nfe = trace.stats["nfe"]
    row = {part: statistics.median(r[part] for r in runs) / nfe * 1e3 for part in (*PARTS, "wall", "plain")}  # ms
    return {"case": name, "nfe": nfe, "flops_per_step": counter.get_total_flops() / nfe,
            "tokens": trace.final_tokens, "ms": row}


def timed_plain(model, sampler, knobs) -> float:
    start = time.perf_counter()
    run_case(model, sampler, knobs)
    return time.perf_counter() - start


def bd3lm_passes():
    """A cached bd3lm step (16 positions after 112 cached) and a full 128-position window (logits for the last 16)."""
    model = load("bd3lm-tiny-b16")
    tokens = torch.randint(0, model.tokenizer.get_vocab_size(), (1, 128), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache()
    model.window_logits(tokens[:, :112], 0, cache, store=112, block_size=16)
    small = functools.partial(model.window_logits, tokens[:, 112:], 112, cache, store=0, block_size=16,
                              return_hidden=True)
    full = functools.partial(model.window_logits, tokens, 0, None, 0, block_size=16, logits_from=112,
                             return_hidden=True)
    return model, ("cached step", small, 16, 16), ("full window", full, 128, 16)


def mdlm_dual_passes():
    """`bench block`'s Fast-dLLM geometry: a 16-token prompt and 96 generated tokens; a dual-cached step recomputes
    the 32-position block (33 rows: the shifted model reads a block's logits one row early) against the cache, and a
    step without a cache runs all 112 rows (logits for every one)."""
    model = load("mdlm-tiny")
    canvas = torch.randint(0, model.tokenizer.get_vocab_size(), (1, 112), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache()
    model.denoiser_logits(canvas, cache=cache, start=0)  # the block start's refresh
    lo, hi = 16 + 32, 16 + 64  # the second block
    small = functools.partial(model.denoiser_logits, canvas[:, lo - 1:hi], return_hidden=True, cache=cache,
                              start=lo - 1, store=0)
    full = functools.partial(model.denoiser_logits, canvas, return_hidden=True)
    return model, ("dual-cached step", small, 33, 33), ("no cache", full, 112, 112)


PASSES = {"bd3lm": bd3lm_passes, "mdlm-dual": mdlm_dual_passes}


@torch.no_grad()
def pass_sizes(case: str, repeats: int) -> None:
    """A cached step's pass against a full one, and the same row counts through the model's matmuls alone (its 17
    weight matrices in order; the head only for the rows that need logits); CPU time per pass, rounds alternating."""
    model, *passes = PASSES[case]()
    weights = [w for block in model.backbone.blocks for w in (block.attn.qkv.weight, block.attn.out.weight,
                                                               block.mlp.gate_up.weight, block.mlp.down.weight)]
    head = model.backbone.head.weight

    def matmuls(xs, head_input):
        return [torch.nn.functional.linear(xs[w.shape[1]], w) for w in weights] + [
            torch.nn.functional.linear(head_input, head)]

    runs = {}
    for name, run, rows, head_rows in passes:
        inputs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
        runs[name] = run
        runs[f"{name}, matmuls"] = functools.partial(matmuls, inputs, torch.randn(head_rows, head.shape[1]))
    alternating(runs, 5)  # warm up
    times = alternating(runs, repeats, clock=time.process_time)
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"{model.name}; torch {torch.__version__}, {torch.get_num_threads()} threads; CPU ms per pass, median of "
          f"{repeats}\n")
    print("| rows | whole pass | matmuls alone | the rest |\n|---|---|---|---|")
    for name, _, rows, _ in passes:
        print(f"| {rows} ({name}) | {ms[name]:.2f} | {ms[f'{name}, matmuls']:.2f} | "
              f"{ms[name] - ms[f'{name}, matmuls']:.2f} |")
    (small, _, few, _), (full, _, many, _) = passes
    print(f"\n{many} / {few} positions: whole pass {ms[full] / ms[small]:.2f}x, "
          f"matmuls alone {ms[f'{full}, matmuls'] / ms[f'{small}, matmuls']:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--passes", nargs="?", const="bd3lm", choices=list(PASSES),
                        help="time one cached and one full pass instead (bd3lm: 16 and 128 positions; mdlm-dual: "
                             "33 and 112)")
    args = parser.parse_args()
    if args.passes:
        return pass_sizes(args.passes, args.repeats)
    names = args.cases.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {list(CASES)}")
    results = {name: profile(name, args.repeats) for name in names}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per network step, median of "
          f"{args.repeats} runs (record 'none')\n")
    print("| case | NFE | " + " | ".join(PARTS) + " | step (timed) | step (untimed) | GFLOP / step |")
    print("|---" * (len(PARTS) + 6) + "|")
    for r in results.values():
        ms = r["ms"]
        print(f"| {r['case']} | {r['nfe']} | " + " | ".join(f"{ms[p]:.2f}" for p in PARTS)
              + f" | {ms['wall']:.2f} | {ms['plain']:.2f} | {r['flops_per_step'] / 1e9:.4f} |")
    for fast, slow in (("mdlm-prefix", "mdlm-none"), ("mdlm-dual", "mdlm-none"), ("bd3lm-kv", "bd3lm-recompute")):
        if fast in results and slow in results:
            a, b = results[fast], results[slow]
            bound = (b["flops_per_step"] * b["nfe"]) / (a["flops_per_step"] * a["nfe"])
            speedup = (b["ms"]["plain"] * b["nfe"]) / (a["ms"]["plain"] * a["nfe"])
            same = "identical" if a["tokens"] == b["tokens"] else "different"
            print(f"\n{fast} vs {slow}: FLOP bound {bound:.2f}x, measured {speedup:.2f}x "
                  f"({100 * speedup / bound:.0f}% of the bound), {same} tokens")


if __name__ == "__main__":
    main()
