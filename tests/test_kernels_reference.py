import pytest
import torch

from explorer import kernels
from explorer.kernels import reference


def naive(logits, temperature, seed):
    """Whole-tensor float64 definition of the same Gumbel-max sample and scores."""
    logits.shape[-1]
    counters = torch.arange(logits.numel()).view(logits.shape)
    u = kernels.counter_uniform(counters, seed).double()
    scaled = logits.double() / temperature - torch.log(-torch.log(u))
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


def test_temperature_zero_is_argmax_and_low_precision_inputs_work():
    logits = torch.randn(4, 9, 64).to(torch.bfloat16)
    tokens = kernels.sample_and_score(logits, 0.0)[0]
    assert torch.equal(tokens, logits.float().argmax(-1))


@pytest.mark.parametrize("seed", [0, 1, 2**31 - 2])
def test_counter_uniform_is_uniform_in_the_open_interval(seed):
    u = kernels.counter_uniform(torch.arange(200000), seed)
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002


def lowbias32_python(counter: int, seed: int) -> float:
    """The same hash in plain Python integers (uint32 semantics), as an independent definition."""
    m = 0xFFFFFFFF
    x = (counter * 0x9E3779B1 + seed * 0x85EBCA77 + 0x27D4EB2F) & m
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    x ^= x >> 16
    return ((x >> 8) + 0.5) / (1 << 24)


def test_counter_uniform_matches_a_uint32_definition():
    counters = [0, 1, 2, 12345, 2**31 - 1, 2**31 + 5, 2**33 + 7]
    for seed in (0, 7, 2**31 - 2):
        ours = kernels.counter_uniform(torch.tensor(counters), seed)
        expected = torch.tensor([lowbias32_python(c, seed) for c in counters], dtype=torch.float32)
        assert torch.equal(ours, expected)
