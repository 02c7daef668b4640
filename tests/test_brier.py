"""BrierLM: the two-sample estimator, the exact one for ar, every family's continuations, the correlation."""

import numpy as np
import pytest
import torch

from explorer.brier import ORDERS, brier_lm, pearson, spearman, two_sample_brier


def test_two_sample_estimate_is_unbiased_for_the_brier_score():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x1 = torch.multinomial(probs, n, replacement=True, generator=g)[:, None]
    x2 = torch.multinomial(probs, n, replacement=True, generator=g)[:, None]
    for y in range(4):
        estimate = float(two_sample_brier(x1, x2, torch.full((n, 1), y)).mean())
        exact = float(2 * probs[y] - probs.pow(2).sum())
        assert abs(estimate - exact) < 0.01, (y, estimate, exact)


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
        result = brier_lm(model, "val", context=16, max_windows=2, batch_size=2, progress=False)
        assert result["family"] == model.family and result["windows"] == 2


def test_brier_lm_bad_input(tiny_mdlm, tiny_ar):
    with pytest.raises(ValueError, match="estimator='exact' needs token probabilities"):
        brier_lm(tiny_mdlm, estimator="exact", max_windows=1, progress=False)
    with pytest.raises(ValueError, match="context must be in"):
        brier_lm(tiny_ar, context=200, max_windows=1, progress=False)
    with pytest.raises(ValueError, match="estimator must be one of"):
        brier_lm(tiny_ar, estimator="magic", max_windows=1, progress=False)
