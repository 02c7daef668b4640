"""Triton kernels against the PyTorch references (on the CPU, TRITON_INTERPRET=1), references against
float64 definitions, the Gumbel-max sampler against softmax(logits / T), dispatch and bad input.

TRITON_INTERPRET must be set when the kernels are decorated (triton.jit picks the interpreter at
decoration time) and while they run (the interpreter re-executes their source), so the Triton
modules are imported here with the variable set, and an autouse fixture sets it again around each
test of this file only; between them the environment is restored, so no other test (or subprocess
it starts) sees it.
"""

import importlib
import json
import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from explorer import kernels
from explorer.kernels import reference
from support import ROOT


def _import_interpreted():
    """Import triton and our Triton modules with TRITON_INTERPRET=1, then restore the environment.

    triton.language's own helpers (tl.sum, tl.argmax, ...) are @triton.jit functions too, so triton
    itself must be (re)imported in interpreter mode if something imported it before.
    """
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        if "triton" in sys.modules:
            from triton.runtime.interpreter import InterpretedFunction

            if not isinstance(sys.modules["triton"].language.standard.sum, InterpretedFunction):
                for name in [n for n in sys.modules if n == "triton" or n.startswith("triton.")]:
                    del sys.modules[name]
        pytest.importorskip("triton")
        for name in ("explorer.kernels.triton_common", "explorer.kernels.triton_embedding",
                     "explorer.kernels.triton_sample", "explorer.kernels.triton_energy"):
            sys.modules.pop(name, None)  # re-decorate in interpreter mode even if imported before
        return [importlib.import_module(n) for n in ("explorer.kernels.triton_sample",
                                                     "explorer.kernels.triton_embedding",
                                                     "explorer.kernels.triton_energy")]
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


TS, TE, TN = _import_interpreted()


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inf/NaN arithmetic in masked lanes
INF = float("-inf")


def test_triton_gumbel_equals_the_reference_at_extreme_counters():
    """The kernel's noise function on the counters whose hash is 0, the 24-bit edge, or rounds up to 2**32: the same
    operations in the same order, so the values agree to the last bit but for float32 `log` itself (numpy's, under
    the interpreter, and torch's differ by at most one unit in the last place)."""
    import triton
    import triton.language as tl
    from test_kernels_reference import EXTREME_BITS, counter_for_bits

    @triton.jit
    def noise_kernel(counter_ptr, out_ptr, seedmix, n, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        counter = tl.load(counter_ptr + i, mask=i < n, other=0)
        tl.store(out_ptr + i, TS._gumbel(counter, seedmix), mask=i < n)

    for seed in (0, 5, 2**31 - 2):
        counters = torch.tensor([counter_for_bits(b, seed) for b in EXTREME_BITS] + list(range(50)))
        out = torch.empty(len(counters))
        noise_kernel[(1,)](counters, out, TS._seedmix(seed), len(counters), BLOCK=64)
        expected = reference.counter_gumbel(counters, seed)
        assert torch.isfinite(out).all()
        assert torch.allclose(out, expected, rtol=2**-22, atol=2**-22)  # a float32 ulp is 2**-23 relative


def spiky_logits(shape, seed=0, scale=3.0):
    """Random logits with -inf entries, a row that is -inf but for one token, and an exact tie at the top."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g) * scale
    flat = logits.view(-1, shape[-1])
    flat[0, : shape[-1] // 3] = INF
    flat[1, 1:] = INF
    if flat.shape[0] > 2:
        top = flat[2].max() + 1
        flat[2, 5], flat[2, shape[-1] - 2] = top, top
    return logits


def assert_same(ours, ref, atol=2e-6, exact_tokens=True):
    tokens, *scores = ours
    r_tokens, *r_scores = ref
    if exact_tokens:
        assert torch.equal(tokens, r_tokens)
    for a, b in zip(scores, r_scores):
        assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
        assert torch.allclose(a, b, atol=atol, rtol=1e-5, equal_nan=True), (a - b).abs().nan_to_num(0).max()


# --- sample_and_score ---------------------------------------------------------------------------

@pytest.mark.parametrize("vocab,block_v", [(257, 64), (1000, 256), (1, 16)])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_triton_sample_matches_reference(vocab, block_v, temperature):
    logits = spiky_logits((2, 5, vocab)) if vocab > 1 else torch.randn(2, 5, 1)
    ours = TS.sample_and_score(logits, temperature, seed=7, offset=3, block_v=block_v)
    assert_same(ours, reference.sample_and_score(logits, temperature, seed=7, offset=3))
    assert ours[0].shape == (2, 5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_sample_low_precision_inputs(dtype):
    logits = spiky_logits((3, 4, 257), seed=1).to(dtype)
    for temperature in (0.0, 1.3):
        assert_same(TS.sample_and_score(logits, temperature, seed=2, block_v=128),
                    reference.sample_and_score(logits, temperature, seed=2))


def test_triton_rows_subset_and_tiling_do_not_change_samples():
    logits = spiky_logits((40, 300), seed=3)
    rows = torch.tensor([17, 2, 39, 0, 5])
    full = TS.sample_and_score(logits, 0.9, seed=11, block_v=512)
    sub = TS.sample_and_score(logits, 0.9, seed=11, rows=rows, block_v=32, block_rows=2)
    assert_same(sub, reference.sample_and_score(logits, 0.9, seed=11, rows=rows))
    assert_same(sub, tuple(t[rows] for t in full))


def test_triton_top_k_and_top_p_in_kernel_equal_the_reference():
    logits = spiky_logits((6, 200), seed=4)
    for kw in ({"top_k": 3}, {"top_k": 200}, {"top_p": 0.7}, {"top_k": 5, "top_p": 0.9}, {"top_p": 1.0}):
        assert_same(TS.sample_and_score(logits, 1.0, seed=5, block_v=64, **kw),
                    reference.sample_and_score(logits, 1.0, seed=5, **kw))


def test_non_contiguous_inputs():
    logits = torch.randn(70, 9).t()  # (9, 70), last-dim stride 9
    assert_same(TS.sample_and_score(logits, 0.9, seed=1, block_v=32), reference.sample_and_score(logits, 0.9, seed=1))
    embedding = torch.randn(16, 70).t()
    for a, b in zip(TE.expected_embedding(logits, embedding, 0.9),
                    reference.expected_embedding(logits, embedding, 0.9)):
        assert torch.allclose(a, b, atol=1e-5)


def test_all_inf_row_gives_token_zero_and_nan_scores_in_both():
    logits = torch.randn(3, 50)
    logits[1] = INF
    ours = TS.sample_and_score(logits, 0.5, seed=1, block_v=16)
    assert_same(ours, reference.sample_and_score(logits, 0.5, seed=1))
    assert int(ours[0][1]) == 0 and math.isnan(float(ours[1][1]))


def test_chi_square_gumbel_max_follows_tempered_softmax():
    """Pearson chi-square of 24,000 draws (independent counters) against softmax(logits / T)."""
    base = torch.tensor([0.0, 1.0, 2.0, 0.5, -1.0, 1.5])
    logits = base.expand(24000, 6).contiguous()
    temperature = 0.7
    critical = 25.74  # chi-square, 5 degrees of freedom, upper 1e-4 tail

    def chi2(tokens, probs):
        counts = torch.bincount(tokens, minlength=6).double()
        expected = probs.double() * len(tokens)
        return float(((counts - expected) ** 2 / expected).sum())

    target = (base / temperature).softmax(-1)
    for seed in (0, 1):
        ref_tokens = reference.sample_and_score(logits, temperature, seed=seed)[0]
        tri_tokens = TS.sample_and_score(logits, temperature, seed=seed, block_rows=512, block_v=8)[0]
        assert torch.equal(ref_tokens, tri_tokens)
        assert chi2(ref_tokens, target) < critical
        # the test has power: untempered softmax, or a distribution off by 0.1 in one logit, fails it
        assert chi2(ref_tokens, base.softmax(-1)) > 10 * critical
        assert chi2(ref_tokens, (base + torch.tensor([0, 0, 0.1, 0, 0, 0])).div(temperature).softmax(-1)) > critical


# --- dispatch and bad input ------------------------------------------------------------------------

@pytest.fixture
def force_triton(monkeypatch):
    monkeypatch.setattr(kernels, "_FORCE_TRITON", True)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_nan_logits_are_reported(backend, monkeypatch):
    monkeypatch.setattr(kernels, "_FORCE_TRITON", backend == "triton")
    logits = torch.randn(2, 3, 40)
    logits[1, 2, 7] = float("nan")
    for temperature in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"NaN logits in row 5 \(position \(1, 2\)"):
            kernels.sample_and_score(logits, temperature)
    with pytest.raises(ValueError, match="NaN logits in row 5"):
        kernels.sample_and_score(logits, 1.0, rows=torch.tensor([0, 5]))
    kernels.sample_and_score(logits, 1.0, rows=torch.tensor([0, 4]))  # the NaN row is not asked for
    for temperature in (0.0, 1.0):
        with pytest.raises(ValueError, match="NaN logits in row 5"):
            kernels.expected_embedding(logits, torch.randn(40, 4), temperature)
    hidden = torch.randn(1, 2, 8)
    hidden[0, 1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN hidden in row 1"):
        kernels.head_sample_and_score(hidden, torch.randn(30, 8))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_scores_left_out_are_none_and_the_rest_unchanged(backend, monkeypatch):
    """A caller that ranks by probability alone skips margin and entropy: they come back None, and tokens and
    probabilities are bit-identical to the full call's (ties, -inf entries, top-k / top-p, a row subset)."""
    monkeypatch.setattr(kernels, "_FORCE_TRITON", backend == "triton")
    logits = spiky_logits((3, 5, 300), seed=4)
    logits[0, 1, :] = logits[0, 1, 0]  # a row of ties
    logits[1, 2, 50:] = float("-inf")
    rows = torch.tensor([0, 1, 7, 14])
    for knobs in (dict(temperature=0.0), dict(temperature=0.7, seed=9, offset=123), dict(temperature=1.0, top_k=5),
                  dict(temperature=0.8, top_p=0.9), dict(temperature=0.5, rows=rows)):
        full = kernels.sample_and_score(logits, **knobs)
        for margin, entropy in ((False, False), (True, False), (False, True)):
            part = kernels.sample_and_score(logits, margin=margin, entropy=entropy, **knobs)
            for name, got, want, asked in zip(("tokens", "prob", "margin", "entropy"), part, full,
                                              (True, True, margin, entropy)):
                if not asked:
                    assert got is None, name
                else:
                    assert torch.equal(got, want), (name, knobs, margin, entropy)
    hidden, weight = torch.randn(2, 6, 16), torch.randn(300, 16)
    full = kernels.head_sample_and_score(hidden, weight, temperature=0.0)
    tokens, prob, margin, entropy = kernels.head_sample_and_score(hidden, weight, temperature=0.0, margin=False,
                                                                  entropy=False)
    assert margin is None and entropy is None
    assert torch.equal(tokens, full[0]) and torch.equal(prob, full[1])
    logits[2, 3, 11] = float("nan")  # NaN is still refused with the scores that used to reveal it left out
    with pytest.raises(ValueError, match="NaN logits in row 13"):
        kernels.sample_and_score(logits, 0.0, margin=False, entropy=False)


def test_dispatch_routes_to_triton_when_forced(force_triton, monkeypatch):
    calls = []
    original = TS.sample_and_score
    monkeypatch.setattr(TS, "sample_and_score", lambda *a, **k: calls.append(1) or original(*a, **k))
    logits = torch.randn(2, 70)
    assert_same(kernels.sample_and_score(logits, 0.5, seed=3), reference.sample_and_score(logits, 0.5, seed=3))
    assert calls == [1]


def test_cpu_tensors_use_the_reference_without_importing_triton():
    assert not kernels._FORCE_TRITON and not kernels._use_triton(torch.zeros(1))


@pytest.mark.parametrize("call,match", [
    (lambda: kernels.sample_and_score([1.0, 2.0]), r"logits must be a torch.Tensor of shape \(\.\.\., V\)"),
    (lambda: kernels.sample_and_score(torch.zeros(3, 0)), r"logits must have shape \(\.\.\., V\) with V >= 1"),
    (lambda: kernels.sample_and_score(torch.zeros(3, 4, dtype=torch.long)), "logits must be a float16"),
    (lambda: kernels.sample_and_score(torch.zeros(3, 4), -0.1), "temperature must be a finite number >= 0"),
    (lambda: kernels.sample_and_score(torch.zeros(3, 4), float("nan")), "temperature"),
    (lambda: kernels.sample_and_score(torch.zeros(3, 4), 1.0, top_k=0), "top_k must be None or an integer >= 1"),
    (lambda: kernels.sample_and_score(torch.zeros(3, 4), 1.0, top_p=0.0),
     r"top_p must be None or a number in \(0, 1\]"),
    (lambda: kernels.sample_and_score(torch.zeros(3, 4), 1.0, top_p=1.5), "top_p"),
    (lambda: kernels.sample_and_score(torch.zeros(3, 4), rows=torch.tensor([0.0])),
     r"rows must be None or a 1-D integer"),
    (lambda: kernels.sample_and_score(torch.zeros(3, 4), rows=torch.tensor([3])), "0 <= row < 3"),
    (lambda: kernels.sample_and_score(torch.zeros(3, 4), offset=-1), "offset must be >= 0"),
    (lambda: kernels.head_sample_and_score(torch.zeros(2, 3, 8), torch.zeros(10, 7)),
     r"weight must have shape \(V, d\)"),
    (lambda: kernels.head_sample_and_score(torch.zeros(2, 3, 8), torch.zeros(10)), r"weight must have shape \(V, d\)"),
    (lambda: kernels.expected_embedding(torch.zeros(2, 10), torch.zeros(9, 4)), r"embedding must have shape \(V, d\)"),
    (lambda: kernels.energy_score(torch.zeros(2, 1, 4), torch.zeros(2, 3, 4)),
     r"samples must have shape \(B, N, l\) with N >= 2"),
    (lambda: kernels.energy_score(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5)), r"targets must have shape \(B, M, l\)"),
    (lambda: kernels.energy_score(torch.zeros(3, 4), torch.zeros(2, 3, 4)), r"samples must have shape \(B, N, l\)"),
])
def test_bad_input_is_a_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- fused head + sample -------------------------------------------------------------------------

def test_head_sample_matches_sample_on_materialised_logits(monkeypatch):
    g = torch.Generator().manual_seed(5)
    hidden, weight = torch.randn(2, 9, 40, generator=g), torch.randn(301, 40, generator=g) * 0.4
    logits = hidden @ weight.T
    for temperature in (0.0, 0.9):
        direct = reference.sample_and_score(logits, temperature, seed=4, offset=9)
        assert_same(TS.head_sample_and_score(hidden, weight, temperature, seed=4, offset=9, block_v=64),
                    direct, atol=1e-5)
        monkeypatch.setattr(reference, "HEAD_CHUNK_ELEMENTS", 301 * 4)  # 4 positions per chunk, 5 chunks
        assert_same(reference.head_sample_and_score(hidden, weight, temperature, seed=4, offset=9), direct, atol=1e-5)
        monkeypatch.undo()
    # top-k / top-p go through the reference, also in the Triton entry point
    kw = {"top_k": 10, "top_p": 0.8}
    assert_same(TS.head_sample_and_score(hidden, weight, 1.0, seed=1, **kw),
                reference.sample_and_score(logits, 1.0, seed=1, **kw), atol=1e-5)


def test_head_sample_half_weights_and_float64_definition(monkeypatch):
    g = torch.Generator().manual_seed(6)
    hidden, weight = torch.randn(1, 20, 32, generator=g), torch.randn(130, 32, generator=g) * 0.5
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 100)  # vocabulary slices of 3 rows of the weight
    for dtype in (torch.float16, torch.bfloat16):
        h, w = hidden.to(dtype), weight.to(dtype)
        ref = reference.head_sample_and_score(h, w, 0.0)
        exact = (h.double() @ w.double().T)
        assert torch.equal(ref[0], exact.argmax(-1))
        assert torch.allclose(ref[3].double(), torch.special.entr(exact.softmax(-1)).sum(-1), atol=1e-4)
        assert_same(TS.head_sample_and_score(h, w, 0.0), ref, atol=1e-4)


@pytest.mark.parametrize("splits", [2, 3, 7, 10])
def test_head_split_vocabulary_equals_single_pass(splits):
    """Vocabulary split across programs (V = 301: 10 tiles of 32, the last partial) and merged: the single pass's
    tokens exactly (same noise per (row, token), ties across splits to the first index) and its scores."""
    g = torch.Generator().manual_seed(11)
    hidden, weight = torch.randn(2, 9, 24, generator=g), torch.randn(301, 24, generator=g) * 0.4
    hidden[0, 0] = (hidden[0, 0] * 4).round() / 4
    weight[3] = weight[297] = hidden[0, 0].sign() * 2  # row 0: its top logit twice (exact in any summation order),
    # in the first and the last split
    for temperature in (0.0, 0.9):
        one = TS.head_sample_and_score(hidden, weight, temperature, seed=4, offset=9, block_v=32, splits=1)
        ours = TS.head_sample_and_score(hidden, weight, temperature, seed=4, offset=9, block_v=32, splits=splits)
        assert_same(ours, one, atol=1e-6)
        assert_same(ours, reference.head_sample_and_score(hidden, weight, temperature, seed=4, offset=9), atol=1e-5)
    assert int(TS.head_sample_and_score(hidden, weight, 0.0, block_v=32, splits=splits)[0][0, 0]) == 3
    assert float(ours[2][0, 0]) == 0.0  # margin: the tie across splits is also the second largest


def test_vocab_splits_fill_the_device_and_drop_empty_splits(monkeypatch):
    from explorer.kernels.triton_common import vocab_splits

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert vocab_splits(1, 10, cpu) == (1, 10)  # off CUDA: the single pass unless forced
    assert vocab_splits(1, 10, cpu, 6) == (5, 2)  # 6 splits of 2 tiles would leave one empty
    assert vocab_splits(1, 10, cpu, 50) == (10, 1) and vocab_splits(1, 10, cpu, 0) == (1, 10)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: type("P", (), {
        "multi_processor_count": 132}))
    assert vocab_splits(64, 1976, cuda) == (9, 220)  # LLaDA head, 1,024 rows: 64 x 9 >= 4 x 132 programs
    assert vocab_splits(2, 1976, cuda) == (247, 8)  # 264 wanted; 8 tiles each need only 247
    assert vocab_splits(528, 1976, cuda) == (1, 1976)  # rows alone fill the device: the single pass
    assert vocab_splits(1, 3, cuda) == (3, 1)


# --- expected embedding ----------------------------------------------------------------------------

def test_expected_embedding_reference_and_triton_against_float64(monkeypatch):
    logits = spiky_logits((2, 5, 257), seed=8)
    embedding = torch.randn(257, 40)
    for temperature in (0.7, 1.0):
        p = (logits.double() / temperature).softmax(-1)
        exact_mean, exact_entropy = p @ embedding.double(), torch.special.entr(p).sum(-1)
        monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 40 * 8)  # vocabulary chunks of 8, many rescalings
        for mean, entropy in (reference.expected_embedding(logits, embedding, temperature),
                              TE.expected_embedding(logits, embedding, temperature, block_v=32, block_d=16)):
            assert mean.shape == (2, 5, 40) and entropy.shape == (2, 5)
            assert torch.allclose(mean.double(), exact_mean, atol=1e-5)
            assert torch.allclose(entropy.double(), exact_entropy, atol=1e-5)
        monkeypatch.undo()
    mean, entropy = TE.expected_embedding(logits, embedding, 0.0)
    assert torch.equal(mean, embedding[logits.argmax(-1)]) and not entropy.any()
    assert torch.equal(mean, reference.expected_embedding(logits, embedding, 0.0)[0])


def test_expected_embedding_low_precision():
    logits = spiky_logits((3, 4, 100), seed=9).to(torch.bfloat16)
    embedding = torch.randn(100, 24).to(torch.bfloat16)
    ref = reference.expected_embedding(logits, embedding, 0.8)
    ours = TE.expected_embedding(logits, embedding, 0.8)
    assert torch.allclose(ours[0], ref[0], atol=2e-3) and torch.allclose(ours[1], ref[1], atol=1e-5)


@pytest.mark.parametrize("splits", [2, 4, 9])
def test_expected_embedding_split_vocabulary_equals_single_pass(splits):
    """Split over V = 257 (9 tiles of 32, the last of 1 column): splits whose logits are all -inf (rows 0, 1, 3)
    merge to nothing; an all -inf row stays NaN; d = 40 in d blocks of 16 (the last partial)."""
    logits = spiky_logits((2, 5, 257), seed=12)
    logits[0, 3] = INF
    embedding = torch.randn(257, 40)
    for temperature in (0.7, 1.3):
        one = TE.expected_embedding(logits, embedding, temperature, block_v=32, block_d=16, splits=1)
        ours = TE.expected_embedding(logits, embedding, temperature, block_v=32, block_d=16, splits=splits)
        ref = reference.expected_embedding(logits, embedding, temperature)
        for a, b, c in zip(ours, one, ref):
            assert torch.allclose(a, b, atol=1e-6, equal_nan=True) and torch.allclose(a, c, atol=1e-5, equal_nan=True)
        assert torch.isnan(ours[1][0, 3]) and torch.isfinite(ours[1].view(-1)[torch.arange(10) != 3]).all()
    half = logits.to(torch.bfloat16), embedding.to(torch.bfloat16)
    for a, b in zip(TE.expected_embedding(*half, 0.8, block_v=32, splits=splits),
                    reference.expected_embedding(*half, 0.8)):
        assert torch.allclose(a, b, atol=2e-3, equal_nan=True)


# --- energy score ----------------------------------------------------------------------------------

def naive_energy(x, y):
    x, y = x.double(), y.double()
    n, m = x.shape[1], y.shape[1]
    cross = (x[:, :, None] - y[:, None]).norm(dim=-1).sum((1, 2))
    within = (x[:, :, None] - x[:, None]).norm(dim=-1).sum((1, 2))
    return 2 * cross / (n * m) - within / (n * (n - 1))


def test_energy_score_reference_triton_and_naive():
    g = torch.Generator().manual_seed(10)
    x, y = torch.randn(3, 8, 37, generator=g), torch.randn(3, 20, 37, generator=g) + 0.3
    exact = naive_energy(x, y)
    ref = kernels.energy_score(x, y)
    assert ref.shape == (3,) and torch.allclose(ref.double(), exact, atol=1e-5)
    assert torch.allclose(TN.energy_score(x, y, block_l=16).double(), exact, atol=1e-5)
    assert torch.allclose(TN.energy_score(x.half(), y.half()).double(), naive_energy(x.half(), y.half()), atol=1e-5)
    # a proper score: samples drawn like the targets score lower than shifted ones (in expectation)
    near = kernels.energy_score(torch.randn(64, 8, 4, generator=g), torch.randn(64, 20, 4, generator=g)).mean()
    far = kernels.energy_score(torch.randn(64, 8, 4, generator=g) + 1, torch.randn(64, 20, 4, generator=g)).mean()
    assert near < far


def test_energy_score_reference_is_differentiable(force_triton):
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(kernels.energy_score, (x, y))  # forced Triton still defers to autograd
    loss = kernels.energy_score(x.float(), y.float()).sum()
    loss.backward()
    assert torch.isfinite(x.grad).all()


# --- no clash with Hugging Face's `kernels` ------------------------------------------------------------

@pytest.mark.parametrize("cwd", ["root", "elsewhere"])
def test_hugging_face_kernels_stays_importable_beside_ours(cwd, tmp_path):
    """Our kernels live in `explorer.kernels`: nothing in the checkout answers `import kernels`, from the repository
    root or anywhere else, and transformers (which imports Hugging Face's `kernels` eagerly in 5.x) loads."""
    code = ("import importlib.util, json, pathlib, sys\n"
            "spec = importlib.util.find_spec('kernels')\n"
            "import transformers.activations\n"
            "from explorer import kernels as ours\n"
            "print(json.dumps({'theirs': spec and spec.origin, 'ours': ours.__file__}))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT if cwd == "root" else tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found["ours"]).parent == ROOT / "explorer" / "kernels" or "site-packages" in found["ours"]
    assert found["theirs"] is None or "site-packages" in found["theirs"]  # Hugging Face's, installed, or none


def test_no_top_level_kernels_package_ships():
    assert not (ROOT / "kernels").exists()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert packages["include"] == ["explorer*"]


# --- the bench (small sizes only; `python -m explorer bench kernels` defaults to LLaDA scale) ----------

def test_kernels_bench_small_writes_json_and_markdown(tmp_path):
    from explorer.bench.kernels import kernels_table, run_kernels_bench

    out = tmp_path / "kernels.json"
    results = run_kernels_bench(out, repeats=1, length=8, vocab=301, d=16, n=3, m=5, latent=4, memory=False)
    run_kernels_bench(tmp_path / "mem.json", repeats=1, length=8, vocab=301, d=16, cases=("sample_and_score",))
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    assert [r["case"] for r in saved["cpu_rows"]] == ["sample_and_score", "head_sample_and_score",
                                                      "expected_embedding", "energy_score"]
    assert all(r["ours_s"] >= 0 and r["naive_s"] >= 0 and r["time_ratio"] >= 0 for r in saved["cpu_rows"])
    mem = json.loads((tmp_path / "mem.json").read_text())["cpu_rows"][0]
    assert mem["ours_mb"] >= 0 and mem["naive_mb"] >= 0 and "memory_ratio" in mem
    assert out.with_suffix(".md").read_text() == kernels_table(saved)


def test_bench_cli_has_a_kernels_suite(monkeypatch):
    import explorer.bench.kernels
    from explorer.cli import main

    seen = {}
    monkeypatch.setattr(explorer.bench.kernels, "run_kernels_bench", lambda path, repeats, **kw: seen.update(
        path=path, repeats=repeats, **kw))
    main(["bench", "kernels", "--repeats", "2", "--length", "16"])
    assert seen == {"path": "bench_results/kernels.json", "repeats": 2, "length": 16, "vocab": 126_464, "d": 512,
                    "cpu": True}
    main(["bench", "kernels", "--no-cpu"])
    assert seen["cpu"] is False


def test_naive_bench_paths_agree_with_the_kernels():
    from explorer.bench import kernels as bk

    sizes = {"batch": 1, "length": 6, "vocab": 97, "d": 8, "n": 3, "m": 4, "latent": 5}
    logits, = bk.make_inputs("sample_and_score", sizes)
    assert torch.equal(bk.naive_sample_and_score(logits, 0.7)[3], torch.special.entr(logits.softmax(-1)).sum(-1))
    ours = kernels.expected_embedding(*bk.make_inputs("expected_embedding", sizes), 0.7)
    for a, b in zip(ours, bk.naive_expected_embedding(*bk.make_inputs("expected_embedding", sizes), 0.7)):
        assert torch.allclose(a, b, atol=1e-5)
    x, y = bk.make_inputs("energy_score", sizes)
    assert torch.allclose(kernels.energy_score(x, y), bk.naive_energy_score(x, y), atol=1e-5)
