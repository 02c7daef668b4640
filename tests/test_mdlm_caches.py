"""Fast-dLLM's approximate caches and draft-and-refine on tiny random models."""

import pytest
import torch

from explorer.sampling import generate
from explorer.sampling.mdlm import _cached_logits


@pytest.fixture(scope="module")
def shifted_mdlm(tokenizer):
    """A tiny masked model with Dream's shift (output i predicts token i + 1)."""
    from explorer.models import MDLMConfig, MDLMModel
    from support import tiny_backbone

    torch.manual_seed(1)
    return MDLMModel(MDLMConfig(backbone=tiny_backbone("bidirectional"), shift=True), tokenizer).eval()


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("shifted", [False, True])
def test_cached_window_equals_a_full_pass_while_the_canvas_is_unchanged(tiny_mdlm, shifted_mdlm, mode, shifted):
    model = shifted_mdlm if shifted else tiny_mdlm
    canvas = torch.randint(4, 2000, (40,))
    canvas[20:] = model.mask_id
    cache = model.new_cache()
    with torch.no_grad():
        full, offset, label = _cached_logits(model, canvas, cache, True, mode, 20, 30)
        window, w_offset, w_label = _cached_logits(model, canvas, cache, False, mode, 20, 30)
    assert (offset, label, w_offset, w_label) == (0, "refresh", 20, mode)
    assert window.shape[0] == (20 if mode == "prefix" else 10)
    assert torch.allclose(window, full[20 : 20 + len(window)], atol=1e-5)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cache_refreshes_once_per_block_and_keeps_the_schedule(tiny_mdlm, mode):
    plain = generate(tiny_mdlm, "to be", gen_length=32, steps=16, block_length=8)
    cached = generate(tiny_mdlm, "to be", gen_length=32, steps=16, block_length=8, cache=mode)
    labels = [f.cache for f in cached.frames[1:]]
    assert labels == (["refresh"] + [mode] * 3) * 4  # 4 blocks of 4 steps
    assert cached.stats["nfe"] == plain.stats["nfe"] == 16
    assert cached.frames[1].tokens == plain.frames[1].tokens  # the refresh step is exact
    assert tiny_mdlm.mask_id not in cached.final_tokens


def test_cache_knob_errors(tiny_mdlm):
    with pytest.raises(ValueError, match="cache must be one of"):
        generate(tiny_mdlm, "", gen_length=8, cache="triple")
    with pytest.raises(ValueError, match="cfg_scale"):
        generate(tiny_mdlm, "x", gen_length=8, cache="dual", cfg_scale=1.0)


@pytest.fixture()
def drafter_folder(tiny_ar):
    return tiny_ar  # draft_refine's drafter is a loaded model


def test_draft_and_refine_revises_only_remasked_tokens(tiny_mdlm, drafter_folder):
    trace = generate(tiny_mdlm, "to be", sampler="draft_refine", drafter=drafter_folder, gen_length=16,
                     rounds=2, fraction=0.25, seed=1)
    draft_frames = [f for f in trace.frames if f.block is None]
    assert len(draft_frames) == 17  # empty canvas + one per drafted token
    draft = draft_frames[-1].tokens
    rounds = [f for f in trace.frames if f.block is not None]
    remask_frames = [f for f in rounds if f.remasked]
    assert len(remask_frames) == 2 and all(len(f.remasked) == 4 for f in remask_frames)
    touched = set().union(*(f.remasked for f in remask_frames))
    assert set(trace.frames[-1].revised) <= touched
    assert all(trace.final_tokens[i] == draft[i] for i in range(16) if i not in touched)
    assert trace.stats["nfe"] == 16 + 2 * 4  # draft + one step per remasked token per round
    steps = [f.step for f in trace.frames]
    assert steps == sorted(set(steps))
    quiet = generate(tiny_mdlm, "to be", sampler="draft_refine", drafter=drafter_folder, gen_length=16, seed=1,
                     record="none")
    assert len(quiet.frames) == 1 and quiet.final_tokens == trace.final_tokens


def test_draft_and_refine_bad_knobs(tiny_mdlm, drafter_folder, tmp_path):
    with pytest.raises(ValueError, match="fraction"):
        generate(tiny_mdlm, "", sampler="draft_refine", drafter=drafter_folder, gen_length=8, fraction=0.0)
    with pytest.raises(ValueError, match="rounds"):
        generate(tiny_mdlm, "", sampler="draft_refine", drafter=drafter_folder, gen_length=8, rounds=-1)
    with pytest.raises(ValueError, match="drafter must be an ar or bd3lm"):
        generate(tiny_mdlm, "", sampler="draft_refine", drafter=tiny_mdlm, gen_length=8)
    with pytest.raises(ValueError, match=r"drafter must be a loaded ar or bd3lm model, e.g. drafter=explorer.load"):
        generate(tiny_mdlm, "", sampler="draft_refine", drafter="ar-tiny", gen_length=8)
