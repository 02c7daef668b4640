"""CALM: the autoencoder, the energy-head language model, its sampler, and temperature without likelihoods."""

import json
import math
import random

import pytest
import torch

import explorer
from explorer.data.tokenizer import MASK
from explorer.models import CALMConfig, CALMModel
from explorer.models.calm import (
    Autoencoder,
    AutoencoderConfig,
    collapsed_dimensions,
    reconstruction_accuracy,
)
from explorer.nn import TransformerConfig
from explorer.sampling.calm import (
    batch_temperature_sample,
    check_temperature,
    exact_temperature_sample,
    temperature_parts,
)

TOY = [0.5, 0.25, 0.15, 0.07, 0.03]  # a base distribution P over 5 outcomes
CRITICAL_4DF = 23.51  # chi-square, 4 degrees of freedom, upper 1e-4 tail


def toy_draw(rng: random.Random):
    return lambda k: rng.choices(range(len(TOY)), weights=TOY, k=k)


def tempered(temperature: float) -> list[float]:
    powered = [p ** (1 / temperature) for p in TOY]
    return [p / sum(powered) for p in powered]


def chi_square(samples: list[int], probs: list[float]) -> float:
    n = len(samples)
    counts = [samples.count(i) for i in range(len(probs))]
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs))


def test_temperature_parts():
    assert temperature_parts(1.0) == (1, 0.0)
    assert temperature_parts(0.5) == (2, 0.0)
    n, alpha = temperature_parts(0.7)
    assert n == 1 and alpha == pytest.approx(1 / 0.7 - 1)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.7, 0.4])
def test_exact_algorithm_samples_p_to_the_one_over_t(temperature):
    rng = random.Random(0)
    draw = toy_draw(random.Random(1))
    samples = [exact_temperature_sample(draw, temperature, rng)[0] for _ in range(12000)]
    assert chi_square(samples, tempered(temperature)) < CRITICAL_4DF
    if temperature < 1:  # and it is not the base distribution
        assert chi_square(samples, TOY) > 10 * CRITICAL_4DF


def test_exact_algorithm_cost_grows_as_t_falls_and_is_capped():
    costs = {}
    for temperature in (1.0, 0.5, 0.25):
        rng, draw = random.Random(0), toy_draw(random.Random(1))
        costs[temperature] = sum(exact_temperature_sample(draw, temperature, rng)[1] for _ in range(2000)) / 2000
    assert costs[1.0] == 1 and costs[0.5] < costs[0.25]
    outcome, used = exact_temperature_sample(toy_draw(random.Random(2)), 0.05, random.Random(0), max_draws=50)
    assert used <= 50 + 20 and (outcome is None or outcome in range(5))


def test_batch_approximation_converges_as_n_grows_and_is_biased_at_small_n():
    """Total-variation distance to P^(1/T) at T = 1/2: large with N = 4 (pulled toward P), small with N = 400."""
    target = tempered(0.5)

    def tv(n_candidates: int) -> float:
        rng, base = random.Random(0), random.Random(1)
        picks = [batch_temperature_sample(base.choices(range(5), weights=TOY, k=n_candidates), 0.5, rng)
                 for _ in range(6000)]
        return 0.5 * sum(abs(picks.count(i) / len(picks) - target[i]) for i in range(5))

    small, large = tv(4), tv(400)
    assert large < 0.03 and small > 2 * large, (small, large)


def test_temperatures_each_algorithm_can_represent():
    check_temperature(0.7, "exact", 200)
    check_temperature(0.25, "batch", 200)
    with pytest.raises(ValueError, match="temperature must be in \\(0, 1\\]"):
        check_temperature(1.5, "exact", 200)
    with pytest.raises(ValueError, match="temperature must be in"):
        check_temperature(0.0, "batch", 200)
    with pytest.raises(ValueError, match="1/2, 1/3"):
        check_temperature(0.7, "batch", 200)
    with pytest.raises(ValueError, match="n_candidates"):
        check_temperature(0.5, "batch", 1)


@pytest.fixture(scope="module")
def tiny_autoencoder():
    torch.manual_seed(0)
    return Autoencoder(AutoencoderConfig(chunk=4, d_model=32, d_ff=64, latent_dim=8))


def test_autoencoder_round_trip_shapes_and_loss(tiny_autoencoder, tokenizer):
    tokens = torch.randint(10, 2000, (6, 4), generator=torch.Generator().manual_seed(0))
    mean, log_std = tiny_autoencoder.encode(tokens)
    assert mean.shape == (6, 8) and log_std.shape == (6, 8)
    assert tiny_autoencoder.decode(mean).shape == (6, 4, 2048)
    tiny_autoencoder.train()
    out = tiny_autoencoder.loss(tokens, tokenizer.token_to_id(MASK), torch.Generator().manual_seed(1))
    out["loss"].backward()
    tiny_autoencoder.zero_grad(set_to_none=True)
    tiny_autoencoder.eval()
    assert torch.isfinite(out["loss"]) and 0 <= float(out["accuracy"]) <= 1
    assert 0 <= reconstruction_accuracy(tiny_autoencoder, tokens, 0.3) <= 1
    assert 0 <= collapsed_dimensions(tiny_autoencoder, tokens) <= 8


def test_autoencoder_learns_to_reconstruct_a_small_set(tokenizer):
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(chunk=2, d_model=32, d_ff=64, latent_dim=8, drop_token=0.0, drop_latent=0.0))
    tokens = torch.randint(10, 2000, (64, 2), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    ae.train()
    for step in range(300):
        loss = ae.loss(tokens, tokenizer.token_to_id(MASK), torch.Generator().manual_seed(step))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert reconstruction_accuracy(ae, tokens) > 0.95


def test_autoencoder_save_load_round_trip(tiny_autoencoder, tmp_path):
    tiny_autoencoder.save_pretrained(tmp_path / "ae")
    loaded = Autoencoder.from_pretrained(tmp_path / "ae")
    tokens = torch.randint(10, 2000, (3, 4))
    torch.testing.assert_close(loaded.encode(tokens)[0], tiny_autoencoder.encode(tokens)[0])


@pytest.fixture(scope="module")
def tiny_calm(tokenizer, tiny_autoencoder):
    torch.manual_seed(0)
    backbone = TransformerConfig(vocab_size=2048, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=16)
    config = CALMConfig(backbone=backbone, autoencoder=tiny_autoencoder.config, head_layers=2, head_noise_dim=8,
                        n_samples=4, n_targets=10)
    model = CALMModel(config, tokenizer)
    model.autoencoder.load_state_dict(tiny_autoencoder.state_dict())
    torch.nn.init.normal_(model.head.out.weight, std=1.0)  # spread the head's samples (it starts at a point)
    return model.eval()


def test_calm_loss_trains_the_backbone_and_head_not_the_autoencoder(tiny_calm):
    batch = torch.randint(10, 2000, (2, 32), generator=torch.Generator().manual_seed(0))
    tiny_calm.train()
    out = tiny_calm.loss(batch, generator=torch.Generator().manual_seed(1))
    out["loss"].backward()
    assert out["tokens"] == 2 * 8  # one energy score per chunk position
    assert tiny_calm.head.out.weight.grad is not None and tiny_calm.backbone.blocks[0].attn.qkv.weight.grad is not None
    assert all(p.grad is None for p in tiny_calm.autoencoder.parameters())
    tiny_calm.zero_grad(set_to_none=True)
    tiny_calm.eval()
    with pytest.raises(ValueError, match="multiple of the chunk size"):
        tiny_calm.loss(batch[:, :30])


def test_energy_head_starts_at_zero_and_draws_differ_per_noise(tiny_calm):
    hidden = torch.randn(3, 32)
    fresh = CALMModel(tiny_calm.config, tiny_calm.tokenizer)
    with torch.no_grad():
        assert float(fresh.sample_latents(hidden, 2).abs().max()) == 0  # zero-initialised output layer
    torch.nn.init.normal_(fresh.head.out.weight, std=0.1)
    draws = fresh.sample_latents(hidden, 5, torch.Generator().manual_seed(0))
    assert draws.shape == (3, 5, 8) and not torch.allclose(draws[:, 0], draws[:, 1])


def test_calm_sampler_frames_chunks_and_determinism(tiny_calm):
    trace = explorer.generate(tiny_calm, prompt=[5, 6, 7], gen_length=12, record="full", seed=0)
    assert [f.step for f in trace.frames] == [0, 1, 2, 3]  # one frame per chunk of K = 4
    assert trace.frames[2].committed == [4, 5, 6, 7] and trace.frames[2].block == 1
    last = trace.frames[-1]
    assert len(last.latent) == 1 and len(last.latent[0]) == 8 and len(last.samples) == 16
    assert all(0 < c <= 1 for c in last.confidence)
    assert trace.stats["nfe"] == 3
    again = explorer.generate(tiny_calm, prompt=[5, 6, 7], gen_length=12, record="none", seed=0)
    assert again.final_tokens == last.tokens  # the scatter draws never shift the sampled tokens


def test_calm_temperature_algorithms_run_and_warn_when_the_exact_cap_is_hit(tiny_calm):
    batch = explorer.generate(tiny_calm, gen_length=8, sampler="batch", temperature=0.5, n_candidates=20, seed=0)
    assert len(batch.final_tokens) == 8
    with pytest.warns(UserWarning, match="max_draws"):
        explorer.generate(tiny_calm, gen_length=8, sampler="exact", temperature=0.05, max_draws=3, seed=0)


@pytest.mark.parametrize("knobs, message", [
    ({"gen_length": 6}, "multiple of the chunk size K=4"),
    ({"temperature": 1.5}, "temperature must be in"),
    ({"temperature": 0.7, "sampler": "batch"}, "not representable by the batch approximation"),
    ({"sampler": "batch", "n_candidates": 1, "temperature": 0.5}, "n_candidates"),
    ({"steps": 5}, "steps do not apply to CALM"),
    ({"gen_length": 68}, "exceeds the model.s context"),
])
def test_bad_calm_knobs(tiny_calm, knobs, message):
    with pytest.raises(ValueError, match=message):
        explorer.generate(tiny_calm, **knobs)


def test_calm_save_load_keeps_the_autoencoder(tiny_calm, tmp_path):
    tiny_calm.save_pretrained(tmp_path / "calm", dtype=torch.float32)
    loaded = explorer.load(tmp_path / "calm")
    torch.testing.assert_close(loaded.autoencoder.embed.weight, tiny_calm.autoencoder.embed.weight)
    assert (explorer.generate(loaded, gen_length=8, seed=1).final_tokens
            == explorer.generate(tiny_calm, gen_length=8, seed=1).final_tokens)
    assert math.isclose(loaded.max_seq_len, 64)


def test_brier_lm_for_calm_uses_chunk_aligned_prefixes(tiny_calm):
    from explorer.brier import brier_lm

    result = brier_lm(tiny_calm, "val", context=16, max_windows=4, batch_size=2, progress=False)
    assert result["family"] == "calm" and result["windows"] == 4
    with pytest.raises(ValueError, match="multiple of K=4"):
        brier_lm(tiny_calm, "val", context=18, max_windows=2, progress=False)


def test_equivalent_temperature_interpolates_the_ar_collision_curve():
    from explorer.bench.calm import equivalent_temperature

    ar = [{"temperature": 1.0, "collision": 0.2}, {"temperature": 0.8, "collision": 0.3},
          {"temperature": 0.6, "collision": 0.5}]
    assert equivalent_temperature(0.3, ar) == 0.8
    assert equivalent_temperature(0.4, ar) == pytest.approx(0.7)
    assert equivalent_temperature(0.1, ar) is None and equivalent_temperature(0.9, ar) is None


def test_calm_bench_end_to_end_on_tiny_models(tiny_calm, tiny_ar, tmp_path):
    from explorer.bench.calm import calm_table, run_calm_bench

    torch.manual_seed(0)
    ae2 = Autoencoder(AutoencoderConfig(chunk=2, d_model=32, d_ff=64, latent_dim=8))
    backbone = TransformerConfig(vocab_size=2048, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=64)
    k2 = CALMModel(CALMConfig(backbone=backbone, autoencoder=ae2.config, head_layers=2, head_noise_dim=8),
                   tiny_ar.tokenizer)
    k2.autoencoder.load_state_dict(ae2.state_dict())
    k4 = CALMModel(tiny_calm.config.__class__(**{**tiny_calm.config.__dict__,
                                                  "backbone": tiny_calm.config.backbone.with_(max_seq_len=32)}),
                   tiny_ar.tokenizer)
    k4.load_state_dict(tiny_calm.state_dict(), strict=False)
    for name, model in (("ar", tiny_ar), ("k2", k2), ("k4", k4)):
        model.save_pretrained(tmp_path / name, dtype=torch.float32)
    out = tmp_path / "calm.json"
    results = run_calm_bench([str(tmp_path / "k2"), str(tmp_path / "k4")], str(tmp_path / "ar"), repeats=1, samples=1,
                             gen_length=8, brier_stride=4000, temperature_prefixes=6, batch_n=(2, 4),
                             exact_temperatures=(0.5,), json_path=out)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    assert out.with_suffix(".md").read_text() == calm_table(saved) and out.with_suffix(".png").stat().st_size > 0
    ar_row, k2_row, k4_row = saved["tradeoff"]
    assert [r["K"] for r in saved["tradeoff"]] == [1, 2, 4]
    assert (ar_row["backbone_passes"], k2_row["backbone_passes"], k4_row["backbone_passes"]) == (1.0, 0.5, 0.25)
    assert "exact" in ar_row["brierlm"] and "exact" not in k4_row["brierlm"]
    c = tiny_ar.backbone.config  # FLOPs from the config: blocks, attention over 16 + 8/2 tokens, tied head
    macs = c.n_layers * (4 * c.d_model**2 + 3 * c.d_model * c.d_ff) + 2 * c.n_layers * c.d_model * 20 + c.d_model * 2048
    assert ar_row["flops"] == 2 * macs and ar_row["speedup"] == 1.0
    temperature = saved["temperature"]
    assert temperature["checkpoint"] == "k4" and len(temperature["ar"]) == 12
    batch = [r for r in temperature["calm"] if r["algorithm"] == "batch"]
    assert [(round(1 / r["temperature"]), r["N"]) for r in batch] == [(2, 2), (2, 4)]
    assert all(r["head_samples_per_chunk"] == r["N"] for r in batch)
    exact = [r for r in temperature["calm"] if r["algorithm"] == "exact"]
    assert exact[0]["temperature"] == 1.0 and exact[0]["head_samples_per_chunk"] == 1.0
    assert exact[1]["head_samples_per_chunk"] >= 2  # T = 1/2 needs two equal draws at least
    for row in temperature["ar"] + temperature["calm"]:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["collision"] <= 1


def test_autoencoder_then_calm_training_then_cards(tmp_path):
    """The whole CALM pipeline at toy size: train-autoencoder, train --family calm on it, both cards."""
    from explorer.cards import write_card
    from explorer.train import TrainConfig, train
    from explorer.train_autoencoder import AutoencoderTrainConfig, train_autoencoder

    torch.set_num_threads(1)
    ae_dir = train_autoencoder(AutoencoderTrainConfig(chunk=4, steps=20, batch_size=2, latent_dim=8, d_model=32),
                               tmp_path / "ae", progress=False)
    ae_card = write_card(str(ae_dir)).read_text()
    assert "robustness.png" in ae_card
    assert "train-autoencoder --chunk 4 --latent-dim 8 --d-model 32 --steps 20" in ae_card
    with pytest.raises(ValueError, match="K=4"):
        train(TrainConfig(family="calm", chunk=2, autoencoder=str(ae_dir), steps=2), tmp_path / "bad", progress=False)
    cfg = TrainConfig(family="calm", chunk=4, autoencoder=str(ae_dir), steps=3, batch_size=2, seq_len=32, d_model=32,
                      n_layers=1, warmup=1, eval_every=3, save_every=3)
    lm_dir = train(cfg, tmp_path / "calm-tiny-test", progress=False)
    model = explorer.load(str(lm_dir))
    assert model.family == "calm" and model.chunk == 4
    torch.testing.assert_close(model.autoencoder.decode(torch.zeros(1, 8)),
                               Autoencoder.from_pretrained(ae_dir).decode(torch.zeros(1, 8)), atol=1e-3, rtol=0)
    card = write_card(str(lm_dir)).read_text()
    assert "BrierLM on the test split" in card and "T = 1/3, batch approximation, N = 200" in card
    score = json.loads((lm_dir / "config.json").read_text())["metrics"]["test"]["brierlm"]
    assert score["brierlm"] >= 0 and score["beats_unigram"] is False  # three steps of training do not
    assert "The floor, the unigram model of the train split" in card
    assert "Above it at every order by two standard errors: **no**" in card


def test_choosing_a_calm_model_by_k_lists_the_trained_values(tiny_calm_checkpoints, monkeypatch, capsys):
    from explorer.cli import main

    monkeypatch.setattr(explorer.hub, "CHECKPOINT_DIR", tiny_calm_checkpoints)
    assert explorer.hub.calm_chunk_sizes() == {"calm-tiny-k2": 2, "calm-tiny-k4": 4}
    assert explorer.hub.calm_for_chunk(4) == "calm-tiny-k4"
    with pytest.raises(ValueError, match=r"K=3 has no trained calm checkpoint; trained K values: \[2, 4\]"):
        explorer.hub.calm_for_chunk(3)
    assert main(["sample", "--chunk", "2", "--gen-length", "8", "--no-animation"]) == 0
    assert main(["sample", "--chunk", "3", "--no-animation"]) != 0
    assert "trained K values: [2, 4]" in capsys.readouterr().err


def test_energy_head_projects_the_condition_once_for_all_samples(tiny_calm):
    hidden = torch.randn(3, 32)
    noise = torch.rand(3, 5, 8) - 0.5
    expanded = tiny_calm.head(hidden[:, None, :].expand(3, 5, 32), noise)
    torch.testing.assert_close(tiny_calm.head(hidden[:, None, :], noise), expanded)
