"""Before / after a change, side by side in one process: `explorer_old` (an older commit) against `explorer`.

Make the old package once (its imports renamed so both load in one process), then run a measurement:

    git archive <commit> explorer | tar -x -C /tmp/old && mv /tmp/old/explorer /tmp/old/explorer_old
    grep -rl explorer /tmp/old/explorer_old --include=*.py | xargs sed -i -E \\
        's/\\bfrom explorer(\\.| import)/from explorer_old\\1/g; s/\\bimport explorer(\\.|$| )/import explorer_old\\1/g'
    OMP_NUM_THREADS=1 EXPLORER_CHECKPOINTS=$PWD/checkpoints PYTHONPATH=$PWD:/tmp/old \\
        python scripts/compare_before_after.py kv|dual|overhead|kernel|train [repeats]

Rounds visit the variants in turn; times are process CPU time (single-threaded, so other jobs on a shared machine
do not count), ratios are medians of per-round ratios. Each measurement first checks that old and new give
identical tokens.
"""

import inspect
import statistics
import sys
import time

import torch
from explorer_old.hub import load as load_old
from explorer_old.sampling import generate as gen_old

from explorer.bench.measure import alternating, time_inside_calls
from explorer.bench.measure import median_ratio as ratio
from explorer.eval import prompts_from_val
from explorer.hub import load as load_new
from explorer.sampling import generate as gen_new

median = statistics.median


def rounds(variants: dict, repeats: int) -> dict[str, list[float]]:
    return alternating(variants, repeats, clock=time.process_time)  # CPU time: other processes do not stretch it


def kv(repeats: int) -> None:
    """bd3lm-tiny-b16, 256 tokens: the exact KV cache against recomputing the prefix (`bench block`'s case)."""
    new, old = load_new("bd3lm-tiny-b16"), load_old("bd3lm-tiny-b16")
    knobs = dict(gen_length=256, seed=0, record="none", stop_at_eos=False, min_entropy=0.0)
    runs = {f"{tag} {'kv' if cache else 're'}": (lambda g=g, m=m, c=cache: g(m, "", kv_cache=c, **knobs))
            for tag, g, m in (("new", gen_new, new), ("old", gen_old, old)) for cache in (True, False)}
    assert len({tuple(run().final_tokens) for run in runs.values()}) == 1, "tokens differ"
    t = rounds(runs, repeats)
    print({k: round(median(v), 3) for k, v in t.items()}, "identical tokens |",
          f"cache speed-up: old {ratio(t, 'old re', 'old kv'):.2f}x, new {ratio(t, 'new re', 'new kv'):.2f}x")


def dual(repeats: int) -> None:
    """mdlm-tiny-scratch, 8 prompts, blocks of 32: Fast-dLLM's caches against none (`bench block`'s case)."""
    new, old = load_new("mdlm-tiny-scratch"), load_old("mdlm-tiny-scratch")
    prompts = prompts_from_val(new.tokenizer, 8)
    gen = (new.max_seq_len - len(prompts[0])) // 32 * 32

    def run(g, m, cache):
        return [g(m, p, "low_confidence", seed=i, gen_length=gen, steps=gen, block_length=32, temperature=0.0,
                  record="none", cache=cache).final_tokens for i, p in enumerate(prompts)]

    for cache in ("none", "prefix", "dual"):
        assert run(gen_new, new, cache) == run(gen_old, old, cache), f"tokens differ with cache {cache}"
    t = rounds({f"{tag} {cache}": (lambda g=g, m=m, c=cache: run(g, m, c))
                for tag, g, m in (("new", gen_new, new), ("old", gen_old, old))
                for cache in ("none", "prefix", "dual")}, repeats)
    print({k: round(median(v), 3) for k, v in t.items()}, "identical tokens |",
          f"dual: old {ratio(t, 'old none', 'old dual'):.2f}x, new {ratio(t, 'new none', 'new dual'):.2f}x |",
          f"prefix: old {ratio(t, 'old none', 'old prefix'):.2f}x, new {ratio(t, 'new none', 'new prefix'):.2f}x")


def overhead(repeats: int) -> None:
    """mdlm-tiny, 128 tokens, record none: the sampler against its network's bare passes (`bench sampling`)."""
    new, old = load_new("mdlm-tiny"), load_old("mdlm-tiny")
    x = torch.full((1, 128), new.mask_id, dtype=torch.long)
    for temperature in (0.0, 0.7):
        knobs = dict(gen_length=128, steps=128, temperature=temperature, seed=0, record="none")
        trace = gen_new(new, "", "low_confidence", **knobs)
        assert trace.final_tokens == gen_old(old, "", "low_confidence", **knobs).final_tokens, "tokens differ"

        @torch.no_grad()
        def bare():
            for _ in range(trace.stats["nfe"]):
                new.denoiser_logits(x)

        t = rounds({"new": lambda: gen_new(new, "", "low_confidence", **knobs),
                    "old": lambda: gen_old(old, "", "low_confidence", **knobs), "bare": bare}, repeats)
        print(f"T={temperature}: sampler new {median(t['new']):.3f}s, old {median(t['old']):.3f}s, bare forwards "
              f"{median(t['bare']):.3f}s | overhead old {100 * (ratio(t, 'old', 'bare') - 1):+.1f}%, "
              f"new {100 * (ratio(t, 'new', 'bare') - 1):+.1f}%")
        # each run split into time inside the model's forward calls and the sampler's own (no between-run noise)
        own, own_ms = {tag: [] for tag in ("new", "old")}, {tag: [] for tag in ("new", "old")}
        for _ in range(repeats):
            for tag, model, gen in (("new", new, gen_new), ("old", old, gen_old)):
                total, inside = time_inside_calls(model, "denoiser_logits",
                                                  lambda: gen(model, "", "low_confidence", **knobs))
                own[tag].append(100 * (total / inside - 1))
                own_ms[tag].append(1e3 * (total - inside) / trace.stats["nfe"])
        print(f"T={temperature}: the sampler's own work over its forwards' time, old {median(own['old']):+.1f}%, "
              f"new {median(own['new']):+.1f}%; per step old {median(own_ms['old']):.2f} ms, "
              f"new {median(own_ms['new']):.2f} ms")


def kernel(repeats: int) -> None:
    """The CPU sampling kernel alone on (64, 2,048) logits (a masked-diffusion step's rows): T = 0.7, with top-p 0.9,
    and T = 0; "new, prob only" is the call low-confidence decoding makes (margin=False, entropy=False). Tokens must
    be identical, scores within 1e-6 (the exp in numpy differs from torch's by an ulp or two)."""
    from explorer_old.kernels import reference as old_kernels

    from explorer.kernels import reference as new_kernels

    logits = torch.randn(64, 2048, generator=torch.Generator().manual_seed(0)) * 3
    for label, knobs in (("T=0.7", dict(temperature=0.7)), ("T=0.7 top-p 0.9", dict(temperature=0.7, top_p=0.9)),
                         ("T=0", dict(temperature=0.0))):
        def calls_of(k, **flags):
            return lambda: [k.sample_and_score(logits, seed=3, offset=i * logits.numel(), **knobs, **flags)
                            for i in range(50)]
        calls = {"new": calls_of(new_kernels), "old": calls_of(old_kernels),
                 "new, prob only": calls_of(new_kernels, margin=False, entropy=False)}
        if "margin" in inspect.signature(old_kernels.sample_and_score).parameters:  # old enough has no switches
            calls["old, prob only"] = calls_of(old_kernels, margin=False, entropy=False)
        for new_out, old_out, prob_only in zip(calls["new"](), calls["old"](), calls["new, prob only"]()):
            assert torch.equal(new_out[0], old_out[0]), f"tokens differ at {label}"
            assert torch.equal(prob_only[0], old_out[0]), f"tokens differ at {label}"
            assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7, equal_nan=True) for a, b in zip(new_out, old_out))
            assert torch.equal(prob_only[1], new_out[1]), f"prob differs at {label}"
        t = rounds(calls, repeats)
        print(f"{label}: 50 calls, old {median(t['old']):.3f}s, new {median(t['new']):.3f}s, new prob only "
              f"{median(t['new, prob only']):.3f}s; identical tokens | old / new {ratio(t, 'old', 'new'):.2f}x, "
              f"old / new prob only {ratio(t, 'old', 'new, prob only'):.2f}x")
        if "old, prob only" in t:
            print(f"{label}: prob only, old {median(t['old, prob only']):.3f}s, new {median(t['new, prob only']):.3f}s"
                  f" | old / new {ratio(t, 'old, prob only', 'new, prob only'):.2f}x")


def train(repeats: int) -> None:
    """bd3lm-tiny-b16 (shifted), one training step (forward + backward, batch 16 x 128): vectorized and two passes."""
    from explorer.data import TokenStream, load_corpus

    new, old = load_new("bd3lm-tiny-b16").train(), load_old("bd3lm-tiny-b16").train()
    batch = TokenStream(load_corpus(), "train", new.tokenizer).random_batch(16, 128, torch.Generator().manual_seed(0))

    def step(model, vectorized):
        torch.manual_seed(0)  # the same dropout
        model.zero_grad(set_to_none=True)
        loss = model.loss(batch, generator=torch.Generator().manual_seed(0), vectorized=vectorized)["loss"]
        loss.backward()
        return loss.detach()

    for vectorized in (True, False):
        assert torch.allclose(step(new, vectorized), step(old, vectorized), rtol=1e-5), "losses differ"
    t = rounds({f"{tag} {'vec' if v else 'two'}": (lambda m=m, v=v: step(m, v))
                for tag, m in (("new", new), ("old", old)) for v in (True, False)}, repeats)
    print({k: round(median(v), 3) for k, v in t.items()}, "same losses |",
          f"old / new: vectorized {ratio(t, 'old vec', 'new vec'):.2f}x, "
          f"two passes {ratio(t, 'old two', 'new two'):.2f}x |",
          f"two / vectorized: old {ratio(t, 'old two', 'old vec'):.2f}x, new {ratio(t, 'new two', 'new vec'):.2f}x")


if __name__ == "__main__":
    measurements = {"kv": kv, "dual": dual, "overhead": overhead, "kernel": kernel, "train": train}
    measurements[sys.argv[1]](int(sys.argv[2]) if len(sys.argv) > 2 else 5)
