"""BrierLM: the S-sample estimator, the exact one for ar, every family's continuations, the correlation."""

import numpy as np
import pytest
import torch

from explorer.bench.brier_study import brier_vs_cross_entropy, pearson, spearman
from explorer.brier import ORDERS, ar_continuations, beats, brier_lm, sample_brier, unigram_brier


def test_two_sample_estimate_is_unbiased_for_the_brier_score():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    g = torch.Generator().manual_seed(0)
    n = 200_000
    draws = torch.multinomial(probs, 2 * n, replacement=True, generator=g).view(n, 2, 1)
    for y in range(4):
        estimate = float(sample_brier(draws, torch.full((n, 1), y)).mean())
        exact = float(2 * probs[y] - probs.pow(2).sum())
        assert abs(estimate - exact) < 0.01, (y, estimate, exact)
    x1, x2 = draws[:, 0], draws[:, 1]  # S = 2 is CALM's estimator: 1{x1 = y} + 1{x2 = y} - 1{x1 = x2}
    y = torch.zeros(n, 1, dtype=torch.long)
    assert torch.equal(sample_brier(draws, y), (x1 == y).all(-1).float() + (x2 == y).all(-1).float()
                       - (x1 == x2).all(-1).float())


def test_the_many_sample_estimator_matches_the_exact_brier_n_of_a_toy_ngram_model():
    """Tokens drawn independently from p: P(y_1:n) = prod p(y_i) and sum_z P(z)^2 = (sum p^2)^n, known exactly.
    The 16-sample estimate's mean over prefixes is within 4 standard errors of the exact Brier-n, and its spread is
    far smaller than the two-sample estimate's (whose collision term is a single coin)."""
    p = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    g = torch.Generator().manual_seed(1)
    prefixes, n_max = 4000, 4
    y = torch.multinomial(p, prefixes * n_max, replacement=True, generator=g).view(prefixes, n_max)
    for samples in (2, 16):
        drawn = torch.multinomial(p, prefixes * samples * n_max, replacement=True, generator=g).view(
            prefixes, samples, n_max)
        spread = []
        for n in (1, 2, 3, 4):
            estimates = sample_brier(drawn[..., :n], y[:, :n]).double()
            exact = float((2 * p[y[:, :n]].prod(-1) - p.pow(2).sum() ** n).double().mean())
            se = float(estimates.std()) / prefixes**0.5
            assert abs(float(estimates.mean()) - exact) < 4 * se + 1e-9, (samples, n, float(estimates.mean()), exact)
            spread.append(se)
        if samples == 2:
            two_sample = spread
    assert all(many < 0.5 * two for many, two in zip(spread, two_sample))


def test_correlations_match_numpy_and_ranks():
    x = [3.1, 2.7, 2.2, 2.0, 1.9, 1.85]
    y = [0.5, 0.9, 1.7, 2.0, 2.4, 2.3]
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert spearman(x, y) == pytest.approx(-0.9428571, abs=1e-6)  # one swapped pair out of six
    assert spearman(x, [-v for v in x]) == pytest.approx(-1.0)


@pytest.mark.parametrize("estimator", ["sample", "exact"])
def test_brier_lm_on_a_tiny_ar_model(tiny_ar, estimator):
    result = brier_lm(tiny_ar, "val", context=16, max_windows=8, batch_size=4, estimator=estimator, progress=False)
    assert set(result["brier"]) == {str(n) for n in ORDERS} and result["windows"] == 8
    assert -1 <= min(result["brier"].values()) and max(result["brier"].values()) <= 1
    assert "brierlm" in result and result["brierlm"] >= 0


def test_brier_lm_samples_every_family(tiny_mdlm, tiny_bd3lm, tiny_cdcd):
    for model in (tiny_mdlm, tiny_bd3lm, tiny_cdcd):
        result = brier_lm(model, "val", context=16, max_windows=1, batch_size=1, progress=False, samples=3)
        assert result["family"] == model.family and result["windows"] == 1 and result["samples"] == 3
        assert set(result["brier_se"]) == set(result["brier"])


def test_brier_lm_bad_input(tiny_mdlm, tiny_ar):
    with pytest.raises(ValueError, match="estimator='exact' needs token probabilities"):
        brier_lm(tiny_mdlm, estimator="exact", max_windows=1, progress=False)
    with pytest.raises(ValueError, match="context must be in"):
        brier_lm(tiny_ar, context=200, max_windows=1, progress=False)
    with pytest.raises(ValueError, match="estimator must be one of"):
        brier_lm(tiny_ar, estimator="magic", max_windows=1, progress=False)
    with pytest.raises(ValueError, match=r"samples must be an integer in \[2, 1024\]"):
        brier_lm(tiny_ar, samples=1, max_windows=1, progress=False)


def test_continuations_of_one_prefix_share_its_pass(tiny_ar):
    """S samples per prefix run the prefix once and repeat its keys: the same tokens as S copies of the prefix."""
    prefixes = torch.randint(5, tiny_ar.config.backbone.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    for temperature in (0.0, 1.0):
        shared = ar_continuations(tiny_ar, prefixes, 4, seed=3, temperature=temperature, samples=3)
        copied = ar_continuations(tiny_ar, prefixes.repeat_interleave(3, 0), 4, seed=3, temperature=temperature)
        assert shared.shape == (6, 4) and torch.equal(shared, copied)
    assert not torch.equal(shared[0], shared[1]) or not torch.equal(shared[1], shared[2])  # T = 1: they differ


def test_unigram_brier_is_the_exact_brier_n_of_independent_draws():
    """Against brute force: every continuation z of n tokens enumerated, P(z) the product of its unigram
    probabilities."""
    import itertools

    p = torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=torch.float64)
    targets = torch.tensor([[0, 1, 3, 2], [3, 3, 0, 1]])
    got = unigram_brier(p, targets)  # (2, 4)
    for n in ORDERS:
        collision = sum(float(p[list(z)].prod()) ** 2 for z in itertools.product(range(4), repeat=n))
        for row, y in enumerate(targets.tolist()):
            assert float(got[row, n - 1]) == pytest.approx(2 * float(p[y[:n]].prod()) - collision, abs=1e-12)


def test_the_brier_study_sets_every_checkpoint_against_the_unigram_floor(tiny_ar, tmp_path):
    """Three random ar checkpoints: each row says whether it beats the train split's unigram model at every order
    (random weights do not: their cross-entropy is above the unigram's), and the table and plot show the floor."""
    folders = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = type(tiny_ar)(tiny_ar.config, tiny_ar.tokenizer)
        folders.append(str(tmp_path / f"step-{seed}"))
        model.save_pretrained(folders[-1], dtype=torch.float32)
    result = brier_vs_cross_entropy(folders, str(tmp_path / "study.json"), context=16, stride=512, samples=4)
    unigram = result["unigram"]
    assert unigram["windows"] == result["rows"][0]["windows"] and 0 < unigram["brier"]["1"] < 0.05
    assert all(row["beats_unigram"] is False and row["cross_entropy"] > unigram["cross_entropy"]
               for row in result["rows"])
    table = (tmp_path / "study.md").read_text()
    assert "| unigram | - |" in table and table.count("| no |") == 3
    assert (tmp_path / "study.png").stat().st_size > 0


def test_beating_the_floor_needs_every_order_above_it_by_two_standard_errors():
    floor = {"brier": {"1": 0.015, "2": 6e-4, "3": 8e-6, "4": -2e-8}, "brier_se": {"1": 6e-4, "2": 3e-5, "3": 1e-6,
                                                                                    "4": 2e-9}}
    good = {"brier": {"1": 0.16, "2": 0.047, "3": 0.01, "4": 0.0036},
            "brier_se": {"1": 0.003, "2": 0.002, "3": 0.001, "4": 0.0004}}
    assert beats(good, floor)
    assert not beats({**good, "brier": {**good["brier"], "4": -1.7e-5}}, floor)  # calm-tiny-k1's Brier-4
    assert not beats({**good, "brier": {**good["brier"], "4": 5e-4}}, floor)  # above, within two standard errors
    unseen = {"brier": {**good["brier"], "4": 0.0}, "brier_se": {**good["brier_se"], "4": 0.0}}  # calm-tiny-k8's
    assert not beats(unseen, floor)  # no 4-gram hit or collision in any sample: not measured, not above the floor
