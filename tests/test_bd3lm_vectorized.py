"""BD3-LM's training passes: vectorized and two-pass agree in loss and gradients, and the last layer skips the
outputs nothing reads (the clean tokens past their keys and values)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import explorer
from explorer.bench.block import training_step_flops
from explorer.models.bd3lm import BD3LMConfig, BD3LMModel
from explorer.nn import Transformer, bd3_flex_mask, block_causal_mask
from explorer.nn.masks import bd3_split_mask
from explorer.released.synthetic import tiny_dit_config, write_tiny_dit
from support import tiny_backbone


@pytest.fixture()
def bd3(tokenizer):
    torch.manual_seed(0)
    backbone = tiny_backbone("block_causal").with_(max_seq_len=32, n_layers=2)
    return BD3LMModel(BD3LMConfig(backbone=backbone, block_size=4), tokenizer)


def loss_and_grads(model, batch, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def full_width_loss(model, batch):
    """The vectorized loss as it was before `outputs`: every layer over all 2L positions, logits sliced after."""
    original = model.noisy_logits

    def noisy_logits(x_t, x0, vectorized=True):
        L = x_t.shape[1]
        logits = model.backbone(torch.cat([x_t, x0], 1), mask=bd3_split_mask(L, model.block_size),
                                positions=torch.arange(L).repeat(2), logits_for=slice(0, L))
        return model._exclude_mask(logits)

    model.noisy_logits = noisy_logits
    try:
        return model.loss(batch, generator=torch.Generator().manual_seed(0))["loss"]
    finally:
        model.noisy_logits = original


def test_vectorized_two_pass_and_full_width_losses_and_gradients_match(bd3):
    batch = torch.randint(4, 2048, (3, 32), generator=torch.Generator().manual_seed(1))
    runs = {
        "vectorized": loss_and_grads(bd3, batch, lambda m, b: m.loss(b, torch.Generator().manual_seed(0))["loss"]),
        "two_pass": loss_and_grads(bd3, batch, lambda m, b: m.loss(b, torch.Generator().manual_seed(0),
                                                                   vectorized=False)["loss"]),
        "full_width": loss_and_grads(bd3, batch, full_width_loss),
    }
    loss, grads = runs["vectorized"]
    assert loss > 0
    for name in ("two_pass", "full_width"):
        other_loss, other_grads = runs[name]
        assert torch.allclose(loss, other_loss, atol=1e-6), name
        for param, grad in grads.items():
            assert torch.allclose(grad, other_grads[param], atol=1e-6), (name, param)


def test_last_layer_runs_only_the_noisy_half(bd3):
    rows = {}
    hooks = [block.mlp.register_forward_hook(lambda mod, args, out, i=i: rows.setdefault(i, []).append(out.shape[1]))
             for i, block in enumerate(bd3.backbone.blocks)]
    batch = torch.randint(4, 2048, (2, 32))
    bd3.loss(batch, torch.Generator().manual_seed(0))
    assert rows == {0: [64], 1: [32]}  # [x_t | x0] in the first layer, x_t alone in the last
    rows.clear()
    bd3.loss(batch, torch.Generator().manual_seed(0), vectorized=False)
    assert rows == {0: [32, 32], 1: [0, 32]}  # the clean pass stops at the last layer's keys and values
    for hook in hooks:
        hook.remove()


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_outputs_equal_the_first_rows_of_the_full_pass(attention):
    torch.manual_seed(0)
    model = Transformer(tiny_backbone(attention).with_(n_layers=2)).eval()
    ids = torch.randint(0, 2048, (2, 12))
    mask = torch.rand(12, 12) < 0.7
    mask.fill_diagonal_(True)
    with torch.no_grad():
        for kwargs in ({}, {"mask": mask}):
            full = model(ids, **kwargs)
            first = model(ids, outputs=5, **kwargs)
            assert first.shape == (2, 5, 2048)
            assert torch.allclose(first, full[:, :5], atol=1e-5)


def test_outputs_refuses_masks_it_cannot_cut():
    model = Transformer(tiny_backbone("block_causal").with_(max_seq_len=16))
    ids = torch.randint(0, 2048, (1, 16))
    with pytest.raises(ValueError, match="outputs with a SplitMask must be 8"):
        model(ids, mask=bd3_split_mask(8, 4), positions=torch.arange(8).repeat(2), outputs=5)
    with pytest.raises(ValueError, match=r"outputs must be in \[0, 16\]"):
        model(ids, outputs=-1)
    with pytest.raises(ValueError, match="outputs needs a dense mask"):
        model(ids, mask=bd3_flex_mask(8, 4), positions=torch.arange(8).repeat(2), outputs=8)


@pytest.mark.parametrize("shift", [False, True], ids=["plain", "shifted"])
@pytest.mark.parametrize("vectorized", [True, False])
def test_training_step_flops_match_the_counted_matmuls(tokenizer, vectorized, shift):
    """A shifted model runs the clean half's last layer too, and the head on the 7 clean outputs that end a block
    (not on all 32: counted, so the test fails if the head ran on every clean position)."""
    torch.manual_seed(0)
    backbone = tiny_backbone("block_causal").with_(max_seq_len=32, n_layers=2)
    model = BD3LMModel(BD3LMConfig(backbone=backbone, block_size=4, shift=shift), tokenizer)
    batch = torch.randint(4, 2048, (3, 32))
    with FlopCounterMode(display=False) as counter:
        model.loss(batch, torch.Generator().manual_seed(0), vectorized=vectorized)
    flops = training_step_flops(model, 3, vectorized)
    assert flops["linear"] + flops["head"] == counter.get_flop_counts()["Global"][torch.ops.aten.mm]
    assert flops["attention"] > flops["attention_needed"] > 0
    assert flops["head"] == 2 * 3 * (32 + (7 if shift else 0)) * backbone.d_model * backbone.vocab_size


def test_released_dit_backbone_cuts_its_last_layer_the_same_way(tmp_path):
    model = explorer.load(write_tiny_dit(tmp_path / "bd3lm", tiny_dit_config("bd3lm")))
    L = model.backbone.config.max_seq_len
    ids = torch.randint(0, 2049, (2, L), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(L)
    mask = block_causal_mask(positions, positions, model.block_size)
    with torch.no_grad():
        full = model.backbone(ids, mask=mask)
        first = model.backbone(ids, mask=mask, outputs=L // 2)
    assert first.shape[1] == L // 2 and torch.allclose(first, full[:, :L // 2], atol=1e-5)
