"""`python -m explorer bench noise`: what the precision of the Gumbel noise costs on a 126,464-entry vocabulary.

LLaDA draws its Gumbel noise in float64 because low-precision noise distorts sampling (arXiv 2409.02908); our
kernels draw it from a 32-bit counter hash in float32 (no float64 (B, L, V) tensor). The question is the upper tail:
a token whose logit trails the leader's by a gap D is sampled only when its noise beats the leader's by D, so noise
that stops at some value makes distant tokens unreachable.

The measurement is exact, not Monte Carlo: one leader and n = V - 1 tail tokens, all at gap D. With a noise CDF F,
the probability that some tail token wins is  P = sum over the leader's noise values v of P(v) * (1 - F(v + D)^n).
For the continuous Gumbel P = n e^-D / (1 + n e^-D). For a discrete noise F is counted: the noise is a monotone
function of its integer hash, so F(x) is found by bisection over the 2^24 (the former noise) or 2^32 (ours) hash
values. P sums over a fine grid of the leader's noise.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from explorer.bench.measure import write_results
from explorer.kernels import reference

VOCAB = 126_464  # LLaDA's vocabulary
GAPS = (8, 12, 14, 16, 17, 18, 19, 20, 22, 24)


def gumbel_24bit(bits: torch.Tensor) -> torch.Tensor:
    """The former noise: -log(-log u) with u = (top 24 hash bits + 0.5) / 2**24 in float32 (+inf at the top)."""
    u = (bits.to(torch.float32) + 0.5) * (1.0 / 2**24)
    return -torch.log(-torch.log(u))


def gumbel_32bit(bits: torch.Tensor) -> torch.Tensor:
    """Ours (reference.counter_gumbel) as a function of the 32 hash bits (int64 in [0, 2**32))."""
    u = (bits.to(torch.float32) + 0.5).mul_(2.0**-32).clamp_(max=reference.UNIFORM_MAX)
    w = 1.0 - u
    return -torch.log(-torch.where(w == 1.0, -u, w.log() * -u / (w - 1.0)))


def discrete_cdf(noise, n_bits: int, decreasing: bool, x: np.ndarray) -> np.ndarray:
    """F(x) = P(noise(b) <= x) for b uniform on [0, 2**n_bits), noise monotone in b, by vectorised bisection."""
    low = torch.zeros(len(x), dtype=torch.int64)
    high = torch.full((len(x),), 2**n_bits, dtype=torch.int64)
    target = torch.tensor(x, dtype=torch.float32)
    for _ in range(n_bits + 1):  # invariant: the boundary index lies in [low, high]
        mid = (low + high) // 2
        value = noise(mid.clamp(max=2**n_bits - 1))
        below = value <= target
        go_right = ~below if decreasing else below  # decreasing: small b give large noise
        low = torch.where(go_right & (mid < high), mid + 1, low)
        high = torch.where(go_right, high, mid)
    count = (2**n_bits - low) if decreasing else low  # how many b give noise <= x
    return count.double().numpy() / 2**n_bits


def tail_win_probability(cdf, gaps, n: int = VOCAB - 1, grid: np.ndarray | None = None) -> list[float]:
    """P(a tail token beats the leader) for each gap, the leader's noise summed over a fine grid of its CDF."""
    grid = np.linspace(-4.0, 26.0, 30_001) if grid is None else grid
    leader = np.diff(np.concatenate([[0.0], cdf(grid)]))  # mass of the leader's noise in each grid cell (v_i-1, v_i]
    out = []
    for gap in gaps:
        tail = cdf(grid + gap)  # P(one tail token's noise <= v + gap)
        out.append(float(np.sum(leader * -np.expm1(n * np.log(np.clip(tail, 1e-300, 1.0))))))
    return out


def run_noise_bench(json_path="bench_results/noise.json", gaps=GAPS, vocab: int = VOCAB) -> dict:
    n = vocab - 1
    exact = [n * math.exp(-g) / (1 + n * math.exp(-g)) for g in gaps]
    cdf24 = lambda x: discrete_cdf(gumbel_24bit, 24, False, x)  # noqa: E731
    cdf32 = lambda x: discrete_cdf(gumbel_32bit, 32, True, x)  # noqa: E731
    former, ours = tail_win_probability(cdf24, gaps, n), tail_win_probability(cdf32, gaps, n)
    extremes = {"former_max": float(gumbel_24bit(torch.tensor([2**24 - 2]))[0]),  # the top value itself is +inf
                "former_top_is_inf": bool(torch.isinf(gumbel_24bit(torch.tensor([2**24 - 1])))[0]),
                "ours_max": float(gumbel_32bit(torch.tensor([0]))[0]),
                "ours_min": float(gumbel_32bit(torch.tensor([2**32 - 1]))[0])}
    rows = [{"gap": g, "exact": e, "former_24bit": f, "ours_32bit": o,
             "former_rel_error": (f - e) / e, "ours_rel_error": (o - e) / e}
            for g, e, f, o in zip(gaps, exact, former, ours)]
    results = {"vocab": vocab, "tail_tokens": n, "rows": rows, **extremes}
    write_results(json_path, results, noise_table(results))
    return results


def noise_table(results: dict) -> str:
    lines = ["# `python -m explorer bench noise`", "",
             f"One leader and {results['tail_tokens']:,} tail tokens whose logits trail it by the gap; P = the "
             "probability that a tail token is sampled (T = 1), computed exactly for each noise.", "",
             f"Largest noise: former 24-bit {results['former_max']:.2f} (and +inf for the top hash value), ours "
             f"{results['ours_max']:.2f}; smallest noise ours {results['ours_min']:.2f}.", "",
             "| gap | exact P (float64 / continuous Gumbel) | former 24-bit noise | rel. error | ours (32-bit) "
             "| rel. error |",
             "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['gap']} | {r['exact']:.3e} | {r['former_24bit']:.3e} | {r['former_rel_error']:+.1%} | "
                     f"{r['ours_32bit']:.3e} | {r['ours_rel_error']:+.1%} |")
    return "\n".join(lines) + "\n"
