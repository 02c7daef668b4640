"""dParallel's certainty-forcing distillation (explorer/distill.py): the masks, the loss restated from the published
trainer, the teacher file and a resumable `train --objective certainty` run."""

import json

import pytest
import torch
import torch.nn.functional as F

from explorer.distill import (
    ENTROPY_TEMPERATURE,
    ENTROPY_WEIGHT,
    certainty_forcing_loss,
    load_teacher,
    save_teacher,
    semi_ar_masks,
    teacher_meta,
)
from explorer.train import TrainConfig, train


def test_each_block_token_is_a_target_of_exactly_one_of_the_two_rows():
    B, L, P, block = 64, 40, 8, 8
    masked, target = semi_ar_masks(B, L, P, block, torch.Generator().manual_seed(0))
    first, second = target[:B], target[B:]
    assert not (first & second).any()
    union = first | second
    starts = set()
    for b in range(B):
        where = union[b].nonzero().flatten()
        lo = int(where[0])
        assert where.tolist() == list(range(lo, lo + block)) and (lo - P) % block == 0
        starts.add(lo)
        for row in (b, B + b):
            assert not masked[row, :lo].any()  # the prompt and the clean blocks
            assert masked[row, lo + block:].all()  # every later position is masked in both rows
            assert (masked[row, lo:lo + block] == target[row, lo:lo + block]).all()
    assert starts == {P + k * block for k in range(4)}  # every block is drawn, none past the end
    assert 0.35 < first[union].float().mean() < 0.65  # the first row masks about half of the block


def published_loss(model, x0, noisy, targets):
    """dParallel's DLMTrainer.compute_loss (github.com/czg1225/dParallel, LLaDA/llada_train.py), restated: one forward
    per masking; mean CE over its masked block tokens; mean entropy of softmax(logits / 0.5) over the masked tokens the
    argmax gets right; total = ce + ce_rev + 2 (entropy + entropy_rev)."""
    total = 0.0
    for x_t, masked in zip(noisy, targets):
        logits = model.denoiser_logits(x_t)
        ce = F.cross_entropy(logits[masked], x0[masked], reduction="none").sum() / masked.sum()
        probs = F.softmax(logits / 0.5, dim=-1)
        entropy = -(probs * torch.log(probs + 1e-12)).sum(-1)
        right = (logits.argmax(-1) == x0) & masked
        total = total + ce + 2 * (entropy * right).sum() / right.sum().clamp_min(1)
    return total


def test_the_loss_equals_the_published_trainers_on_the_same_masks(tiny_mdlm):
    assert (ENTROPY_WEIGHT, ENTROPY_TEMPERATURE) == (2.0, 0.5)
    B, L, P, block = 3, 24, 8, 8
    x0 = torch.randint(0, 2000, (B, L), generator=torch.Generator().manual_seed(1))
    masked, target = semi_ar_masks(B, L, P, block, torch.Generator().manual_seed(2))
    with torch.no_grad():
        # make the argmax right at about half of the first row's targets (masked in its input, so its logits there
        # stay as they are), so the entropy term is not empty
        logits = tiny_mdlm.denoiser_logits(torch.where(masked[:B], tiny_mdlm.mask_id, x0))
        coin = torch.rand(B, L, generator=torch.Generator().manual_seed(3)) < 0.5
        x0 = torch.where(target[:B] & coin, logits.argmax(-1), x0)
        noisy = [torch.where(masked[h * B:(h + 1) * B], tiny_mdlm.mask_id, x0) for h in (0, 1)]
        targets = [target[h * B:(h + 1) * B] for h in (0, 1)]
        expected = published_loss(tiny_mdlm, x0, noisy, targets)
        ours = certainty_forcing_loss(tiny_mdlm, x0, P, block, torch.Generator().manual_seed(2))
    assert float(expected) > 0 and ours["entropy"] > 0
    torch.testing.assert_close(ours["loss"], expected, rtol=1e-5, atol=1e-5)


def test_the_teacher_file_is_read_only_with_its_own_settings(tmp_path):
    meta = teacher_meta("mdlm-tiny", 4, 8, 24, 8, 0)
    path = tmp_path / "teacher.safetensors"
    save_teacher(path, torch.arange(96).view(4, 24), meta)
    assert load_teacher(path, meta, 2048).tolist() == torch.arange(96).view(4, 24).tolist()
    with pytest.raises(ValueError, match="other settings"):
        load_teacher(path, teacher_meta("mdlm-tiny", 4, 8, 24, 4, 0), 2048)
    save_teacher(path, torch.full((4, 24), 5000), meta)
    with pytest.raises(ValueError, match="token ids below 2048"):
        load_teacher(path, meta, 2048)


@pytest.mark.parametrize("knobs, message", [
    ({"family": "mdlm", "objective": "sharpen", "init": "x"}, "objective must be one of"),
    ({"family": "mdlm", "objective": "certainty"}, "needs --family mdlm and --init"),
    ({"family": "ar", "objective": "certainty", "init": "x"}, "needs --family mdlm and --init"),
    ({"family": "mdlm", "objective": "certainty", "init": "x", "seq_len": 80, "prompt_len": 16,
      "distill_block": 48}, "multiple of distill_block"),
    ({"family": "mdlm", "objective": "certainty", "init": "x", "seq_len": 80, "prompt_len": 80}, "prompt_len"),
])
def test_bad_distillation_settings_name_the_knob(knobs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**knobs)


def test_a_certainty_run_generates_its_teacher_once_and_resumes(corpus, tmp_path):
    small = {"d_model": 32, "n_layers": 1, "batch_size": 4, "seq_len": 24, "warmup": 1, "corpus": str(corpus),
             "eval_every": 2, "save_every": 2}
    teacher = train(TrainConfig(family="mdlm", steps=2, **small), tmp_path / "teacher", progress=False)
    cfg = TrainConfig(family="mdlm", steps=2, objective="certainty", init=str(teacher), teacher_prompts=6,
                      prompt_len=8, distill_block=8, **small)
    out = train(cfg, tmp_path / "student", progress=False)
    sequences = load_teacher(out / "teacher.safetensors", teacher_meta(str(teacher), 6, 8, 24, 8, 0), 2048)
    assert sequences.shape == (6, 24)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["ce"] > 0 and "entropy" in r for r in log)
    assert json.loads((out / "config.json").read_text())["training"]["train_config"]["objective"] == "certainty"
    stamp = (out / "teacher.safetensors").stat().st_mtime_ns
    train(TrainConfig(family="mdlm", steps=4, objective="certainty", init=str(teacher), teacher_prompts=6,
                      prompt_len=8, distill_block=8, **small), out, resume=True, progress=False)
    assert (out / "teacher.safetensors").stat().st_mtime_ns == stamp  # read back, not generated again
    assert json.loads((out / "train_state" / "state.json").read_text())["step"] == 4


def test_the_cards_plot_draws_network_evaluations_against_perplexity(tmp_path):
    from PIL import Image

    from explorer.cards import plot_parallel_decoding

    rows = [{"nfe": nfe, "gen_ppl": ppl, "knobs": {"block_length": 32} | ({"threshold": tau} if tau else {})}
            for nfe, ppl, tau in ((64, 6.2, None), (35, 7.1, 0.9), (9, 65.0, 0.5))]
    results = {"gen_length": 64, "checkpoints": {"teacher": {"rows": rows[:2]}, "student": {"rows": rows}}}
    out = plot_parallel_decoding(results, tmp_path / "plot.png")
    pixels = Image.open(out).convert("L")
    assert pixels.size[0] > 400 and len(set(pixels.getdata())) > 20  # drawn, not blank
