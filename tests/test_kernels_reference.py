import math

import numpy as np
import pytest
import torch

from explorer import kernels
from explorer.kernels import reference


def naive(logits, temperature, seed):
    """Whole-tensor float64 definition of the same Gumbel-max sample and scores."""
    counters = torch.arange(logits.numel()).view(logits.shape)
    u = kernels.counter_uniform(counters, seed).double()
    scaled = logits.double() / temperature - torch.log(-torch.log1p(-u))
    p = logits.double().softmax(-1)
    top2 = p.topk(2, -1).values
    return scaled.argmax(-1), p.gather(-1, scaled.argmax(-1, keepdim=True)).squeeze(-1), top2[..., 0] - top2[..., 1], \
        -(p * p.log()).sum(-1)


def test_matches_a_float64_definition():
    logits = torch.randn(3, 7, 300) * 3
    tokens, prob, margin, entropy = kernels.sample_and_score(logits, 0.8, seed=11)
    n_tokens, n_prob, n_margin, n_entropy = naive(logits, 0.8, 11)
    assert torch.equal(tokens, n_tokens)
    for ours, ref in ((prob, n_prob), (margin, n_margin), (entropy, n_entropy)):
        assert torch.allclose(ours.double(), ref, atol=1e-5)
    assert tokens.shape == prob.shape == (3, 7)


def test_chunking_does_not_change_the_samples(monkeypatch):
    logits = torch.randn(2, 50, 1000)
    whole = kernels.sample_and_score(logits, 1.0, top_p=0.9, seed=4)
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 1000 * 3)
    chunked = kernels.sample_and_score(logits, 1.0, top_p=0.9, seed=4)
    for a, b in zip(whole, chunked):
        assert torch.equal(a, b)


def test_empirical_distribution_matches_softmax_with_temperature():
    logits = torch.tensor([0.0, 1.0, 2.0, 0.5]).expand(40000, 4)
    tokens = kernels.sample_and_score(logits, 0.7, seed=2)[0]
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert torch.allclose(freq, (logits[0] / 0.7).softmax(-1), atol=0.01)


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0]).expand(5000, 5)
    assert set(kernels.sample_and_score(logits, 1.0, top_k=2, seed=1)[0].tolist()) == {0, 1}
    probs = logits[0].softmax(-1)  # 0.64, 0.24, 0.09, ...: the nucleus of 0.8 keeps the first two
    assert probs[0] < 0.8 < probs[:2].sum()
    assert set(kernels.sample_and_score(logits, 1.0, top_p=0.8, seed=1)[0].tolist()) == {0, 1}


def sorted_nucleus_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Holtzman et al.'s nucleus restated as first written here: sort with indices, drop the tokens whose preceding
    mass already reaches top_p, scatter the decision back to vocabulary order."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    sorted_probs = sorted_logits.softmax(-1)
    drop_sorted = sorted_probs.cumsum(-1) - sorted_probs >= top_p
    return torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)


@pytest.mark.parametrize("vocab", [1, 5, 300, 2048])
def test_the_nucleus_floor_drops_what_the_sorted_nucleus_drops(vocab):
    """Values alone (numpy's sort) give the same nucleus as sorting with indices, for every top_p and scale,
    after a top-k too; on bfloat16 (torch's sort, where equal logits are common) the same up to ties with the
    last token kept, which the floor keeps as well."""
    g = torch.Generator().manual_seed(vocab)
    for scale in (0.1, 1.0, 3.0, 30.0):
        logits = torch.randn(33, vocab, generator=g) * scale
        for top_p in (0.01, 0.5, 0.9, 0.999):
            dropped = reference.filter_top_k_top_p(logits, None, top_p) == float("-inf")
            assert torch.equal(dropped, sorted_nucleus_mask(logits, top_p)), (scale, top_p)
            after_k = reference.filter_top_k_top_p(logits, 3, None)
            assert torch.equal(reference.filter_top_k_top_p(logits, 3, top_p) == float("-inf"),
                               sorted_nucleus_mask(after_k, top_p) | (after_k == float("-inf")))
    half = (torch.randn(8, vocab, generator=g) * 3).to(torch.bfloat16)
    kept, kept_sorted = reference.filter_top_k_top_p(half, None, 0.9) > float("-inf"), ~sorted_nucleus_mask(half, 0.9)
    floor = half.float().masked_fill(~kept_sorted, float("inf")).amin(-1, keepdim=True)
    extra = kept & ~kept_sorted
    assert torch.equal(extra, extra & (half.float() == floor)) and (kept_sorted <= kept).all()


def test_the_nucleus_keeps_every_token_tied_with_its_last_one():
    """As top-k keeps ties at its k-th value: the order among equal logits is no one's to choose."""
    logits = torch.tensor([[2.0, 1.0, 1.0, 1.0, -3.0]])  # 0.53, then three of 0.19: 0.6 is reached inside the tie
    kept = reference.filter_top_k_top_p(logits, None, 0.6) > float("-inf")
    assert kept.tolist() == [[True, True, True, True, False]]


def test_temperature_zero_is_argmax_and_low_precision_inputs_work():
    logits = torch.randn(4, 9, 64).to(torch.bfloat16)
    tokens = kernels.sample_and_score(logits, 0.0)[0]
    assert torch.equal(tokens, logits.float().argmax(-1))


@pytest.mark.parametrize("seed", [0, 1, 2**31 - 2])
def test_counter_uniform_is_uniform_in_the_open_interval(seed):
    u = kernels.counter_uniform(torch.arange(200000), seed)
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002


MASK32 = 0xFFFFFFFF


def lowbias32_python(counter: int, seed: int) -> int:
    """The hash in plain Python integers (uint32 semantics), as an independent definition."""
    x = (counter * 0x9E3779B1 + seed * 0x85EBCA77 + 0x27D4EB2F) & MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def uniform_python(bits: int) -> float:
    """(bits + 0.5) / 2**32 in float32 arithmetic (numpy), clamped below 1."""
    u = (np.float32(bits) + np.float32(0.5)) * np.float32(2.0**-32)
    return float(min(u, np.float32(1.0 - 2.0**-24)))


def counter_for_bits(bits: int, seed: int) -> int:
    """The counter whose hash is `bits`: lowbias32 inverted step by step (xor-shifts and odd multipliers)."""
    x = bits ^ (bits >> 16)
    x = (x * pow(0x846CA68B, -1, 2**32)) & MASK32
    x ^= (x >> 15) ^ (x >> 30)
    x = (x * pow(0x7FEB352D, -1, 2**32)) & MASK32
    x ^= x >> 16
    return ((x - seed * 0x85EBCA77 - 0x27D4EB2F) * pow(0x9E3779B1, -1, 2**32)) & MASK32


def test_counter_uniform_matches_a_uint32_definition():
    counters = [0, 1, 2, 12345, 2**31 - 1, 2**31 + 5, 2**33 + 7]
    for seed in (0, 7, 2**31 - 2):
        ours = kernels.counter_uniform(torch.tensor(counters), seed)
        expected = torch.tensor([uniform_python(lowbias32_python(c, seed)) for c in counters], dtype=torch.float32)
        assert torch.equal(ours, expected)


def test_the_int32_hash_other_devices_run_equals_the_numpy_hash_of_cpu_tensors():
    counters = torch.cat([torch.arange(5000), torch.tensor([2**31 - 1, 2**31 + 5, 2**33 + 7, 2**40 + 3])])
    for seed in (0, 7, 2**31 - 2):
        assert torch.equal(reference._torch_bits(counters, seed), reference.counter_bits(counters, seed))
        expected = [lowbias32_python(c, seed) for c in (0, 1, 2**33 + 7)]
        got = reference._torch_bits(torch.tensor([0, 1, 2**33 + 7]), seed).to(torch.int64) & MASK32
        assert got.tolist() == expected


def test_row_argmax_is_the_first_largest_as_torch_gives_it():
    x = torch.randn(6, 300)
    x[0] = float("-inf")  # every entry -inf: index 0
    x[1, 7] = x[1, 250] = x[1].max() + 1  # a tie: the first
    x[2, 11] = float("nan")  # NaN counts as the largest
    x[3] = torch.round(x[3])
    assert torch.equal(reference.row_argmax(x), x.argmax(-1))
    assert reference.row_argmax(x).dtype == torch.long


def test_the_margin_and_prob_are_exactly_those_of_the_sorted_float32_softmax():
    logits = spiky_scores(5, 41, 200)
    for temperature in (0.0, 0.8):
        tokens, prob, margin, entropy = reference.sample_and_score(logits, temperature, seed=3)
        shifted = (logits - logits.amax(-1, keepdim=True)).clamp(min=-1e4)
        p = reference.row_exp(shifted) / reference.row_exp(shifted).sum(-1, keepdim=True)  # the kernel's exp
        top2 = p.topk(2, dim=-1).values
        assert torch.equal(margin, top2[..., 0] - top2[..., 1])
        assert torch.equal(prob, p.gather(-1, tokens[..., None]).squeeze(-1))
        assert torch.allclose(entropy, torch.special.entr(p).sum(-1), atol=1e-5)


def test_the_cpu_exp_is_numpys_and_within_two_ulps_of_the_exact_value():
    """The kernel's exp on CPU float32 is numpy's (about twice as fast here as torch's): at most 2 ulps from the
    correctly rounded value over the normal range (torch's is within 1; a GPU's fast exp is within a few)."""
    x = torch.randn(8, 3000, generator=torch.Generator().manual_seed(2)).mul_(30).clamp_(-87, 88)
    ours = reference.row_exp(x)
    assert torch.equal(ours, torch.from_numpy(np.exp(x.numpy())))
    assert torch.equal(ours, reference.row_exp(x.clone(), in_place=True))
    exact = x.double().exp().float()
    ulps = (ours.view(torch.int32).long() - exact.view(torch.int32).long()).abs()
    assert ulps.max() <= 2
    edges = torch.tensor([float("-inf"), -1e4, 0.0])
    assert reference.row_exp(edges).tolist() == [0.0, 0.0, 1.0]
    assert torch.equal(reference.row_exp(x.double()), x.double().exp())  # not float32: torch's


def spiky_scores(rows, ties_row, vocab):
    """Logits with -inf entries, a row that is -inf but for one token, and a tie at the top of `ties_row`."""
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(1)) * 3
    logits[0, : vocab // 3] = float("-inf")
    logits[1, 1:] = float("-inf")
    logits[2, ties_row] = logits[2, vocab - 1] = logits[2].max() + 1
    return logits


# hash values at the edges: 0, the 24-bit edge, and those whose float32 rounds up to 2**32 (u would be 1.0)
EXTREME_BITS = [0, 1, 2**24 - 1, 2**24, 2**31, MASK32 - 128, MASK32 - 127, MASK32 - 1, MASK32]


@pytest.mark.parametrize("seed", [0, 5, 2**31 - 2])
def test_extreme_counters_give_noise_strictly_inside_the_interval_and_finite_gumbels(seed):
    counters = [counter_for_bits(b, seed) for b in EXTREME_BITS]
    assert [lowbias32_python(c, seed) for c in counters] == EXTREME_BITS
    u = reference.counter_uniform(torch.tensor(counters), seed)
    g = reference.counter_gumbel(torch.tensor(counters), seed)
    assert bool(((u > 0) & (u < 1)).all()) and bool(torch.isfinite(g).all()), (u, g)
    assert float(u[0]) == 2.0**-33 and float(u[-1]) == 1.0 - 2.0**-24
    # the largest noise comes from the smallest u: -log(-log(1 - 2**-33)) = 33 log 2 - log... = 22.87
    assert math.isclose(float(g[0]), -math.log(-math.log1p(-(2.0**-33))), rel_tol=1e-6)
    assert math.isclose(float(g[-1]), -math.log(-math.log1p(-(1.0 - 2.0**-24))), rel_tol=1e-5)
    expected = torch.tensor([-math.log(-math.log1p(-uniform_python(b))) for b in EXTREME_BITS], dtype=torch.float32)
    assert torch.allclose(g, expected, rtol=1e-6, atol=0)


def adversarial_logits(generator, trial: int) -> torch.Tensor:
    """Rows of tempered logits at scales 1e-3..1e4, with ties, -inf (filtered), all--inf and +inf rows."""
    c, vocab = (int(torch.randint(1, high, (1,), generator=generator)) for high in (24, 500))
    z = torch.randn(c, vocab, generator=generator) * float(10 ** torch.empty(1).uniform_(-3, 4, generator=generator))
    if trial % 5 == 0:
        z = torch.zeros(c, vocab)  # every token tied
    elif trial % 5 == 1:
        z = z.round()
    elif trial % 5 == 2:
        z[torch.rand(c, vocab, generator=generator) < 0.7] = float("-inf")
    if trial % 7 == 3:
        z[0] = float("-inf")
    if trial % 9 == 4:
        z[-1, vocab // 2] = float("inf")
    if trial % 11 == 5:
        z[-1, vocab // 3] = float("nan")  # row_argmax counts NaN as the largest, in both paths
    return z.t().contiguous().t() if trial % 4 == 3 else z  # column-major rows too


def test_gumbel_argmax_picks_the_full_noisy_argmax_transforming_a_few_tokens(monkeypatch):
    """The CPU skips the noise where a token cannot win; the winner must be row_argmax of every z + g, exactly."""
    monkeypatch.setattr(reference, "PRUNED_GUMBEL_ELEMENTS", 0)  # every size takes the pruned path
    generator = torch.Generator().manual_seed(0)
    for trial in range(300):
        z = adversarial_logits(generator, trial)
        counters = torch.arange(z.numel(), dtype=torch.int32) + int(torch.randint(0, 2**31 - 1, (1,)))
        full = reference.row_argmax(z + reference.counter_gumbel(counters, trial).view_as(z))
        assert torch.equal(reference.gumbel_argmax(z, counters, trial), full), trial
    monkeypatch.undo()
    transformed = []
    gumbel_of_uniform = reference.gumbel_of_uniform
    monkeypatch.setattr(reference, "gumbel_of_uniform", lambda u: transformed.append(u.numel()) or gumbel_of_uniform(u))
    z = torch.randn(64, 2048) * 3 / 0.7  # a model's spread of logits at T = 0.7
    reference.gumbel_argmax(z, torch.arange(z.numel(), dtype=torch.int32), seed=1)
    assert 64 <= sum(transformed) < 0.02 * z.numel()  # at least each row's top, under 2% of the tokens
    transformed.clear()
    reference.gumbel_argmax(z[:8], torch.arange(8 * 2048, dtype=torch.int32), seed=1)
    assert transformed == [8 * 2048]  # few rows: all of them (choosing would cost more)
    wide = z.double()  # other dtypes take the plain sum too
    assert torch.equal(reference.gumbel_argmax(wide, torch.arange(z.numel(), dtype=torch.int32), seed=1),
                       reference.row_argmax(wide + reference.counter_gumbel(torch.arange(z.numel()), 1).view_as(z)))


def test_the_old_24_bit_noise_reached_one_and_an_infinite_gumbel():
    """Why the uniform changed: (2**24 - 1 + 0.5) / 2**24 rounds to 1.0 in float32, and -log(-log 1) is +inf."""
    old = (torch.tensor(float(2**24 - 1)) + 0.5) * (1.0 / 2**24)
    assert float(old) == 1.0 and math.isinf(float(-torch.log(-torch.log(old))))


def test_the_gumbel_noise_follows_the_gumbel_distribution_in_its_upper_tail():
    g = reference.counter_gumbel(torch.arange(4_000_000), seed=3).double()
    # P(G > x) = 1 - exp(-exp(-x)); at x = 12 that is 6.1e-6: about 24 of 4M draws (24-bit noise: coarse there)
    for x, low, high in ((2.0, 0.1257, 0.1274), (6.0, 0.00235, 0.0026), (12.0, 2e-6, 12e-6)):
        assert low < float((g > x).double().mean()) < high, (x, float((g > x).double().mean()))
    assert abs(float(g.mean()) - 0.5772) < 2e-3  # Euler-Mascheroni


def test_the_noise_bench_shows_the_former_noise_distorting_the_tail_and_ours_not(tmp_path):
    """Exact tail-win probabilities on LLaDA's vocabulary (`python -m explorer bench noise`)."""
    from explorer.bench.noise import run_noise_bench

    results = run_noise_bench(tmp_path / "noise.json", gaps=(12, 17, 20))
    rows = {r["gap"]: r for r in results["rows"]}
    assert all(abs(r["ours_rel_error"]) < 0.01 for r in rows.values())  # ours: within 1% up to a gap of 20 nats
    assert rows[17]["former_rel_error"] > 0.5 and rows[20]["former_24bit"] > 7e-3  # 0.75% garbage at any gap
    assert results["former_top_is_inf"] and results["ours_max"] > 22.8
    assert (tmp_path / "noise.md").read_text().startswith("# `python -m explorer bench noise`")
