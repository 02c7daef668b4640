"""Continuous diffusion (cdcd): the time-conditioned backbone, time warping, the loss, the Euler sampler, views."""

import math

import numpy as np
import pytest
import torch

import explorer
from explorer.models import CDCDConfig, CDCDModel
from explorer.models.cdcd import TimeWarp, ce_per_noise_level
from explorer.nn import Transformer, TransformerConfig
from explorer.sampling import build_sampler
from explorer.sampling.cdcd import ContinuousParams
from explorer.viz import entropy_heatmap, latent_trajectories, trajectory_points
from explorer.viz.latent import vocabulary_points

PROMPT = [5, 6, 7]


def test_adaptive_norm_starts_as_the_plain_block_and_then_depends_on_the_noise_level():
    torch.manual_seed(0)
    plain = Transformer(TransformerConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, d_ff=32,
                                          attention="bidirectional"))
    timed = Transformer(plain.config.with_(time_conditioning=True))
    timed.load_state_dict(plain.state_dict(), strict=False)
    ids = torch.randint(0, 50, (2, 7))
    noise = torch.tensor([0.1, 1.2])
    torch.testing.assert_close(timed(ids, noise_feature=noise), plain(ids))  # zero-initialised modulation
    for layer in [b.modulation for b in timed.blocks] + [timed.final_modulation]:
        torch.nn.init.normal_(layer.weight, std=0.1)
    a, b = timed(ids, noise_feature=noise), timed(ids, noise_feature=noise.flip(0))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="noise_feature"):
        timed(ids)
    with pytest.raises(ValueError, match="noise_feature"):
        plain(ids, noise_feature=noise)


def test_time_warp_is_monotone_and_its_inverse_undoes_it():
    warp = TimeWarp(bins=10, initial_scale=5.0)
    with torch.no_grad():
        warp.bin_logits.copy_(torch.linspace(-0.3, 0.3, 10))
    knots = warp.knots().detach()
    assert knots[0] == 0 and abs(float(knots[-1]) - 1) < 1e-6 and bool((knots.diff() > 0).all())
    u = torch.rand(200, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(warp.cdf(warp.inverse(u)), u, atol=1e-5, rtol=0)


def test_time_warp_fit_moves_samples_to_where_the_loss_rises():
    """Fit the curve to a loss that rises only on s in [0.6, 0.8]: F^-1 must then put most draws there."""
    warp = TimeWarp(bins=20, initial_scale=1.0)
    opt = torch.optim.Adam(warp.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(600):
        s = torch.rand(256, generator=g)
        ce = 1 + 4 * ((s - 0.6) / 0.2).clamp(0, 1)
        loss = warp.fit_loss(s, ce)
        opt.zero_grad()
        loss.backward()
        opt.step()
    draws = warp.inverse(torch.rand(4000, generator=g))
    inside = float(((draws > 0.6) & (draws < 0.8)).float().mean())
    assert inside > 0.6, inside  # uniform draws would put 20% there
    assert abs(float(warp.predicted_loss(torch.tensor(0.0)).detach()) - 1) < 0.3


def test_config_rejects_bad_noise_range_and_backbone():
    backbone = TransformerConfig(attention="bidirectional", time_conditioning=True)
    with pytest.raises(ValueError, match="t_min"):
        CDCDConfig(backbone=backbone, t_min=5.0, t_max=5.0)
    with pytest.raises(ValueError, match="t_min"):
        CDCDConfig(backbone=backbone, t_min=0.0)
    with pytest.raises(ValueError, match="time_conditioning"):
        CDCDConfig(backbone=TransformerConfig(attention="bidirectional"))


def test_embeddings_are_normalised_to_sqrt_d(tiny_cdcd):
    norms = tiny_cdcd.embeddings().norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, math.sqrt(16)))


def test_conditioning_masks_cover_prefix_infill_and_unconditional_rows(tiny_cdcd):
    g = torch.Generator().manual_seed(0)
    clean = tiny_cdcd.conditioning_mask(2000, 32, g)
    assert not bool(clean.all(1).any())  # every row has something to generate
    nothing = ~clean.any(1)
    assert 0.05 < float(nothing.float().mean()) < 0.25  # cond_dropout 0.1 plus empty prefixes
    suffix = clean[:, -1] & ~clean[:, 0]
    assert bool(suffix.any())  # infilling rows (clean end) exist ...
    first_noisy = (~clean).float().argmax(1)
    prefix_ok = [bool(clean[i, : first_noisy[i]].all()) for i in range(200)]
    assert all(prefix_ok)  # ... and clean positions before the first noisy one form a prefix


def test_loss_ignores_clean_positions_and_trains_the_warp(tiny_cdcd):
    model = tiny_cdcd
    batch = torch.randint(10, 2000, (4, 24), generator=torch.Generator().manual_seed(1))
    model.train()
    try:
        out = model.loss(batch, generator=torch.Generator().manual_seed(2))
        out["loss"].backward()
        assert model.warp.bin_logits.grad is not None and model.token_embedding.grad is not None
        assert torch.isfinite(out["loss"]) and "warp_loss" in out
        assert 0 < out["tokens"] <= batch.numel()
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    with torch.no_grad():
        evaluated = model.loss(batch, generator=torch.Generator().manual_seed(2))
    assert "warp_loss" not in evaluated  # evaluation draws noise levels evenly, no warp fit
    assert abs(float(evaluated["loss"]) - math.log(2048)) < 1.5  # untrained: about uniform over the vocabulary


def test_ce_per_noise_level_reports_every_level(tiny_cdcd):
    windows = torch.randint(10, 2000, (4, 16), generator=torch.Generator().manual_seed(0))
    curve = ce_per_noise_level(tiny_cdcd, windows, levels=4, batch_size=2)
    assert curve["t"][0] == pytest.approx(1.0) and curve["t"][-1] == pytest.approx(300.0)
    assert len(curve["ce"]) == 4 and all(c > 0 for c in curve["ce"])


def test_sampling_times_descend_to_zero(tiny_cdcd):
    for schedule in ("log", "warped", "auto"):
        times = tiny_cdcd.sampling_times(10, schedule)
        assert len(times) == 11 and times[0] == pytest.approx(300.0) and times[-2] == pytest.approx(1.0)
        assert times[-1] == 0 and bool((times.diff() < 0).all())


def test_sampler_frames_latents_and_determinism(tiny_cdcd):
    trace = explorer.generate(tiny_cdcd, prompt=PROMPT, steps=6, gen_length=10, record="full", seed=3)
    assert [f.step for f in trace.frames] == list(range(7))
    assert trace.stats["nfe"] == 6
    first, last = trace.frames[0], trace.frames[-1]
    assert first.noise == pytest.approx(300.0) and last.noise == 0 and last.t == 0
    assert len(last.latent) == 10 and len(last.latent[0]) == 16
    assert len(last.entropy) == 10 and all(0 <= e <= math.log(2048) + 1e-3 for e in last.entropy)
    assert all(0 < c <= 1 for c in last.confidence)
    assert last.committed == list(range(10))
    # the last Euler step lands on E[x0]; its rounding (nearest embedding) is the output
    E = tiny_cdcd.embeddings()
    nearest = (torch.tensor(last.latent) @ E.T).argmax(-1).tolist()
    assert nearest == last.tokens
    again = explorer.generate(tiny_cdcd, prompt=PROMPT, steps=6, gen_length=10, record="none", seed=3)
    assert again.final_tokens == last.tokens and len(again.frames) == 1
    other = explorer.generate(tiny_cdcd, prompt=PROMPT, steps=6, gen_length=10, seed=4)
    assert other.final_tokens != last.tokens


def test_clamping_snaps_each_estimate_to_a_token(tiny_cdcd):
    trace = explorer.generate(tiny_cdcd, steps=4, gen_length=8, record="full", clamp=True, seed=0)
    E = tiny_cdcd.embeddings()
    final = torch.tensor(trace.frames[-1].latent)
    torch.testing.assert_close(final, E[trace.final_tokens], atol=1e-3, rtol=0)


def test_pinned_tokens_stay_clean_and_guidance_and_churn_run(tiny_cdcd):
    trace = explorer.generate(tiny_cdcd, prompt=PROMPT, steps=5, gen_length=8, pinned={2: 77}, cfg_scale=1.5,
                              churn=2.0, record="tokens", seed=1)
    assert all(frame.tokens[2] == 77 for frame in trace.frames)
    assert trace.stats["nfe"] == 10  # guidance: two passes per step


@pytest.mark.parametrize("knobs, message", [
    ({"steps": 0, "gen_length": 8}, "steps must be in"),
    ({"gen_length": 0}, "gen_length must be in"),
    ({"churn": -1.0, "gen_length": 8}, "churn must be in"),
    ({"schedule": "cosine", "gen_length": 8}, "schedule must be one of"),
    ({"cfg_scale": 1.0, "gen_length": 8}, "cfg_scale=1.0 guides toward a prompt"),
    ({"top_k": 5}, "top_k do not apply"),
    ({"gen_length": 60}, "exceeds the model's context"),
])
def test_bad_knobs_name_the_knob(tiny_cdcd, knobs, message):
    with pytest.raises(ValueError, match=message):
        explorer.generate(tiny_cdcd, **knobs)


def test_guidance_needs_a_model_trained_with_conditioning_dropout(tokenizer, tiny_cdcd):
    config = CDCDConfig(backbone=tiny_cdcd.config.backbone, embed_dim=16, cond_dropout=0.0)
    model = CDCDModel(config, tokenizer).eval()
    with pytest.raises(ValueError, match="cond_dropout"):
        explorer.generate(model, prompt=PROMPT, cfg_scale=1.0, steps=2, gen_length=4)


def test_continuous_knobs_are_refused_by_other_families():
    with pytest.raises(ValueError, match="cdcd"):
        build_sampler("mdlm", None, clamp=True)
    assert isinstance(build_sampler("cdcd", None)[0], ContinuousParams)


def test_save_load_round_trip_keeps_the_warp(tiny_cdcd, tmp_path):
    tiny_cdcd.save_pretrained(tmp_path / "c", dtype=torch.float32)
    loaded = explorer.load(tmp_path / "c")
    torch.testing.assert_close(loaded.warp.knots(), tiny_cdcd.warp.knots())
    a = explorer.generate(tiny_cdcd, steps=3, gen_length=6, seed=0)
    b = explorer.generate(loaded, steps=3, gen_length=6, seed=0)
    assert a.final_tokens == b.final_tokens


def test_latent_views_share_axes_and_reproduce(tiny_cdcd):
    runs = [explorer.generate(tiny_cdcd, steps=4, gen_length=6, record="full", seed=s) for s in (0, 1)]
    points, strings = vocabulary_points(tiny_cdcd)
    fig = latent_trajectories(runs, points, strings, positions=[0, 3])
    assert len(fig.data) == 1 + 2 * 2  # the cloud, then one path per (run, position)
    meta = fig.layout.meta
    assert meta["method"] == "pca"
    path = trajectory_points(runs[1], 3)
    xy = (path - np.asarray(meta["params"]["mean"])) @ np.asarray(meta["params"]["components"]).T
    np.testing.assert_allclose(xy, np.stack([fig.data[4].x, fig.data[4].y], axis=1), atol=1e-6)
    assert list(fig.data[1].marker.color) == [0, 1, 2, 3, 4]  # coloured by step
    heat = entropy_heatmap(runs[0])
    assert np.asarray(heat.data[0].z, dtype=float).shape == (5, 6)
    with pytest.raises(ValueError, match="positions"):
        latent_trajectories(runs, points, strings, positions=[6])
    plain = explorer.generate(tiny_cdcd, steps=2, gen_length=6, record="tokens")
    with pytest.raises(ValueError, match="full"):
        latent_trajectories(plain, points, strings)


def test_clamping_can_cover_only_the_last_part_of_the_trajectory(tiny_cdcd):
    """clamp = the fraction of steps, from the end, that snap E[x0] to a token: the states equal the unclamped
    run's until the first clamped step, and differ from there on."""
    import explorer

    runs = {c: explorer.generate(tiny_cdcd, "ROMEO:", gen_length=8, steps=8, clamp=c, record="full", seed=0)
            for c in (0.0, 0.25, 1.0, True)}
    latents = {c: [f.latent for f in t.frames] for c, t in runs.items()}
    assert latents[0.25][:7] == latents[0.0][:7] and latents[0.25][7] != latents[0.0][7]  # steps 7 and 8 clamp
    assert latents[1.0][1] != latents[0.0][1] and latents[True] == latents[1.0]
    assert runs[0.25].sampler["clamp"] == 0.25 and runs[True].sampler["clamp"] == 1.0
    with pytest.raises(ValueError, match=r"clamp must be in \[0, 1\]"):
        explorer.generate(tiny_cdcd, "ROMEO:", gen_length=8, steps=8, clamp=1.5)


def test_self_conditioning_can_be_switched_off(tiny_cdcd, monkeypatch):
    """self_condition=True feeds each step's E[x0] back (the first pass sees zeros); False gives every pass none."""
    assert tiny_cdcd.config.self_conditioning > 0
    seen = {}
    forward = type(tiny_cdcd).forward

    def spy(model, x, t, clean, self_cond=None, **kwargs):
        seen.setdefault(run, []).append(None if self_cond is None else float(self_cond.abs().sum()))
        return forward(model, x, t, clean, self_cond, **kwargs)

    monkeypatch.setattr(type(tiny_cdcd), "forward", spy)
    traces = {}
    for run in (True, False):
        traces[run] = explorer.generate(tiny_cdcd, "ROMEO:", gen_length=8, steps=4, self_condition=run, seed=0)
    assert seen[True][0] == 0 and all(s > 0 for s in seen[True][1:]) and seen[False] == [None] * 4
    assert traces[True].sampler["self_condition"] is True and traces[False].sampler["self_condition"] is False
    with pytest.raises(ValueError, match="self_condition"):
        explorer.generate(tiny_cdcd, gen_length=8, steps=2, self_condition="no")
