import math

import pytest
import torch
import torch.nn.functional as F

import explorer
from explorer.models.mdlm import low_discrepancy_t, mask_tokens


def test_low_discrepancy_t_covers_the_unit_interval_evenly():
    t = low_discrepancy_t(64, 1e-3, torch.Generator().manual_seed(0))
    gaps = t.sort().values.diff()
    assert torch.all(t >= 1e-3) and torch.all(t <= 1)
    assert torch.allclose(gaps, torch.full_like(gaps, (1 - 1e-3) / 64), atol=1e-5)


def test_forward_process_masks_at_rate_t(tokenizer):
    x0 = torch.randint(4, 2048, (4, 4096))
    t = torch.tensor([0.1, 0.3, 0.5, 0.9])
    xt, masked = mask_tokens(x0, t, 3, torch.Generator().manual_seed(0))
    assert torch.allclose(masked.float().mean(1), t, atol=0.03)
    assert torch.equal(xt[~masked], x0[~masked]) and torch.all(xt[masked] == 3)


def test_subs_mask_logit_is_minus_inf_and_unmasked_positions_carry_over(tiny_mdlm):
    x = torch.tensor([[10, 3, 20, 3, 30]])
    logits = tiny_mdlm(x)
    assert torch.all(logits[..., tiny_mdlm.mask_id] == float("-inf"))
    for pos in (0, 2, 4):
        probs = logits[0, pos].softmax(-1)
        assert probs[x[0, pos]] == 1.0
    assert torch.isfinite(logits[0, 1]).sum() == 2047  # a masked position: every token but [MASK]


def test_subs_logits_equal_their_definition_with_gradients():
    """SUBS written as the definition says (a one-hot carry where unmasked, the logits elsewhere), values and
    gradients; from a non-contiguous input too."""
    from explorer.models.mdlm import subs_logits

    def definition(logits, x_t, mask_id):
        carry = torch.full_like(logits, float("-inf")).scatter(-1, x_t[..., None], 0.0)
        return torch.where((x_t != mask_id)[..., None], carry, logits)

    g = torch.Generator().manual_seed(0)
    for logits in (torch.randn(3, 17, 50, generator=g), torch.randn(17, 3, 50, generator=g).transpose(0, 1)):
        logits.requires_grad_(True)
        x_t = torch.randint(0, 50, (3, 17), generator=g)
        x_t[torch.rand(3, 17, generator=g) < 0.5] = 49
        weights = torch.randn(50, generator=g)
        ours, theirs = subs_logits(logits * 1.0, x_t, 49), definition(logits, x_t, 49)  # not the leaf
        assert torch.equal(ours, theirs)
        grad_ours = torch.autograd.grad((ours.nan_to_num(neginf=0) * weights).sum(), logits)[0]
        grad_theirs = torch.autograd.grad((theirs.nan_to_num(neginf=0) * weights).sum(), logits)[0]
        assert torch.equal(grad_ours, grad_theirs)


def test_mdlm_loss_is_masked_ce_weighted_by_one_over_t(tiny_mdlm):
    batch = torch.randint(4, 2048, (2, 16))
    t = torch.tensor([0.25, 0.75])
    out = tiny_mdlm.loss(batch, generator=torch.Generator().manual_seed(5), t=t)
    # recompute by hand with the same noise draw
    xt, masked = mask_tokens(batch, t, tiny_mdlm.mask_id, torch.Generator().manual_seed(5))
    logits = tiny_mdlm.denoiser_logits(xt)
    ce = F.cross_entropy(logits.flatten(0, 1), batch.flatten(), reduction="none").view(2, 16)
    expected = ((ce * masked).sum(1) / t).sum() / batch.numel()
    assert torch.allclose(out["loss"], expected, atol=1e-6)
    assert out["tokens"] == 32


def test_untrained_mdlm_bound_is_near_log_vocab(tiny_mdlm):
    batch = torch.randint(4, 2048, (64, 32))
    nll = tiny_mdlm.loss(batch, generator=torch.Generator().manual_seed(0))["loss"].item()
    assert abs(nll - math.log(2047)) < 1.0  # E[1/t * t] = 1: the bound averages to the per-token CE


def test_ar_loss_and_right_to_left(tiny_ar, tiny_ar_r2l):
    batch = torch.randint(4, 2048, (2, 10))
    out = tiny_ar.loss(batch)
    logits = tiny_ar(torch.cat([torch.full((2, 1), tiny_ar.bos_id), batch[:, :-1]], 1))
    assert torch.allclose(out["loss"], F.cross_entropy(logits.flatten(0, 1), batch.flatten()), atol=1e-6)
    # a right-to-left model reading reversed text sees the original order
    flipped = tiny_ar_r2l.loss(batch.flip(-1))
    logits = tiny_ar_r2l.backbone(torch.cat([torch.full((2, 1), tiny_ar_r2l.bos_id), batch[:, :-1]], 1))
    assert torch.allclose(flipped["loss"], F.cross_entropy(logits.flatten(0, 1), batch.flatten()), atol=1e-6)


def test_save_and_load_round_trip_in_half_precision(tiny_mdlm, tmp_path):
    tiny_mdlm.save_pretrained(tmp_path / "m", extra={"training": {"steps_done": 1}})
    loaded = explorer.load(tmp_path / "m")
    assert loaded.family == "mdlm" and loaded.name == "m"
    x = torch.randint(4, 2048, (1, 12))
    assert torch.allclose(loaded(x).nan_to_num(neginf=0), tiny_mdlm(x).nan_to_num(neginf=0), atol=5e-3)
    assert loaded.backbone.embed.weight.dtype == torch.float32


def test_corrupt_and_truncated_weights_give_clear_errors(tiny_ar, tmp_path):
    path = tiny_ar.save_pretrained(tmp_path / "a")
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        explorer.load(path)
    weights.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        explorer.load(path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="missing weights"):
        explorer.load(path)


def test_unknown_checkpoint_lists_the_known_ones():
    with pytest.raises(ValueError, match="shipped checkpoints"):
        explorer.load("no-such-model")


def test_unknown_family_in_config(tiny_ar, tmp_path):
    import json

    path = tiny_ar.save_pretrained(tmp_path / "a")
    config = json.loads((path / "config.json").read_text())
    config["family"] = "quantum"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown family 'quantum'"):
        explorer.load(path)


def test_shifted_mdlm_reads_position_i_from_output_i_minus_1(tokenizer):
    """Dream's shift: logits at i are the backbone's output at i - 1 (position 0 keeps its own)."""
    from explorer.models import MDLMConfig, MDLMModel
    from support import tiny_backbone

    torch.manual_seed(0)
    model = MDLMModel(MDLMConfig(backbone=tiny_backbone("bidirectional"), shift=True), tokenizer).eval()
    x = torch.randint(4, 2000, (2, 12))
    with torch.no_grad():
        raw = model.backbone(x)
        logits = model.denoiser_logits(x)
    keep = torch.ones(2048, dtype=torch.bool)
    keep[model.mask_id] = False
    assert torch.equal(logits[:, 1:, keep], raw[:, :-1, keep]) and torch.equal(logits[:, 0, keep], raw[:, 0, keep])
    assert model.logit_shift == 1


def test_annealed_attention_goes_from_causal_to_bidirectional():
    from explorer.models.mdlm import annealed_mask

    g = torch.Generator().manual_seed(0)
    assert torch.equal(annealed_mask(16, 0.0, g), torch.ones(16, 16, dtype=torch.bool).tril())
    assert bool(annealed_mask(16, 1.0, g).all())
    half = annealed_mask(64, 0.5, g)
    future = half.triu(1).sum() / (64 * 63 / 2)
    assert bool(half[torch.ones(64, 64, dtype=torch.bool).tril()].all()) and 0.4 < float(future) < 0.6


def test_mdlm_loss_under_a_causal_mask_ignores_the_future(tokenizer):
    """attention=0 is causal: changing tokens after the masked ones changes nothing before them."""
    from explorer.models import MDLMConfig, MDLMModel
    from support import tiny_backbone

    torch.manual_seed(0)
    model = MDLMModel(MDLMConfig(backbone=tiny_backbone("bidirectional"), shift=True), tokenizer).eval()
    x = torch.randint(4, 2000, (1, 16))
    y = x.clone()
    y[0, 10:] = torch.randint(4, 2000, (6,))
    mask = torch.ones(16, 16, dtype=torch.bool).tril()
    with torch.no_grad():
        a, b = model.denoiser_logits(x, mask=mask), model.denoiser_logits(y, mask=mask)
    assert torch.allclose(a[:, :11], b[:, :11])  # shifted: position 10's logits come from output 9
    assert not torch.allclose(a[:, 11:], b[:, 11:])
