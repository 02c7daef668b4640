"""The explorer page's API, driven by gradio_client against a server started in this process."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def call(client, checkpoint="mdlm-tiny", sampler="low_confidence", gen_length=16, steps=16, block_length=16,
         temperature=0.0, threshold=0.9, seed=0, color_by="confidence"):
    return client.predict(checkpoint, "ROMEO:", sampler, gen_length, steps, block_length, temperature, threshold,
                          seed, color_by, api_name="/generate")


def test_generate_mdlm_streams_to_coloured_tokens(client):
    view, stats, error, plot, *_ = call(client)
    assert view.count('class="dlm-token"') >= 8, view
    assert "background:rgb" in view
    assert 'class="dlm-mask"' not in view  # the final frame has every position committed
    assert "nfe" in stats and "tokens/s" in stats
    assert not error


def test_generate_streams_one_update_per_step(client):
    job = client.submit("mdlm-tiny", "ROMEO:", "low_confidence", 8, 8, 8, 0.0, 0.9, 0, "confidence",
                        api_name="/generate")
    job.result()
    views = [out[0] for out in job.outputs() if isinstance(out[0], str)]
    assert len(views) >= 5, len(views)  # intermediate canvases arrived before the final one
    assert any('class="dlm-mask"' in v for v in views[:-1])


def test_replay_redraws_a_stored_frame(client):
    call(client, gen_length=16, steps=16, block_length=16)
    view, _plot, _latent = client.predict(4, "commit_step", api_name="/replay")
    assert view.count('class="dlm-token"') == 4 and view.count('class="dlm-mask"') == 12, view


def test_bad_knob_shows_a_message_naming_it(client):
    _view, _stats, error, *_ = call(client, gen_length=30, steps=30, block_length=7)
    assert "dlm-error" in error and "block_length" in error, error


def test_sampler_of_another_family_is_an_error(client):
    _view, _stats, error, *_ = call(client, checkpoint="mdlm-tiny", sampler="ar")
    assert "sampler" in error, error


def test_generate_ar(client):
    view, stats, error, *_ = call(client, checkpoint="ar-tiny", sampler="ar")
    assert view.count('class="dlm-token"') == 16, view
    assert "nfe" in stats and not error


def test_generate_block_diffusion_with_and_without_kv_cache(client):
    views = []
    for cache in ("kv", "none"):
        view, stats, error, *_ = client.predict("bd3lm-tiny-b4", "ROMEO:", "first_hitting", 24, 4, 4, 1.0, 0.9, 0,
                                                "confidence", cache, api_name="/generate")
        assert not error and view.count('class="dlm-token"') == 24, error or view
        assert ("cache kv" in stats) == (cache == "kv"), stats
        views.append(view)
    assert views[0] == views[1]  # the exact cache changes the cost, not the tokens


def test_fast_dllm_cache_and_wrong_cache_for_the_family(client):
    _view, stats, error, *_ = client.predict("mdlm-tiny", "ROMEO:", "low_confidence", 32, 32, 16, 0.0, 0.9, 0,
                                             "confidence", "dual", api_name="/generate")
    assert not error and "cache dual/refresh" in stats, stats
    _view, _stats, error, *_ = client.predict("mdlm-tiny", "ROMEO:", "low_confidence", 32, 32, 16, 0.0, 0.9, 0,
                                              "confidence", "kv", api_name="/generate")
    assert "cache must be one of" in error, error


def test_untrained_block_size_runs_with_a_visible_note(client):
    view, _stats, note, *_ = client.predict("bd3lm-tiny-b16", "ROMEO:", "first_hitting", 16, 8, 8, 1.0, 0.9, 0,
                                            "confidence", "kv", api_name="/generate")
    assert view.count('class="dlm-token"') == 16
    assert "dlm-warning" in note and "block_length 8 differs" in note, note


def test_continuous_diffusion_shows_entropy_and_latent_paths_and_replays(client):
    view, stats, error, plot, _step, latent = client.predict(  # the trace state stays on the server
        "cdcd-tiny", "ROMEO:", "euler", 12, 10, 16, 1.0, 0.9, 0, "confidence", "none", api_name="/generate")
    assert not error and view.count('class="dlm-token"') == 12, error or view
    assert "**nfe** 10 " in stats and "11 frames" in stats, stats
    assert "entropy" in str(plot) and "vocabulary" in str(latent), str(latent)[:300]
    _view, _plot, replayed = client.predict(3, "confidence", api_name="/replay")
    assert "vocabulary" in str(replayed)  # the paths up to step 3, drawn without the model
    _view, _stats, error, *_ = client.predict("cdcd-tiny", "ROMEO:", "euler", 200, 10, 16, 1.0, 0.9, 0,
                                              "confidence", "none", api_name="/generate")
    assert "gen_length (200) exceeds the model" in error, error


@pytest.fixture
def calm_hub(tiny_calm_checkpoints, monkeypatch):
    """The app's checkpoint list is two random CALM models, K = 2 and K = 4."""
    import explorer.hub

    monkeypatch.setattr(explorer.hub, "CHECKPOINT_DIR", tiny_calm_checkpoints)


def run_calm(algorithm, temperature, n_candidates, gen_length=12):
    """The page's generate for calm-tiny-k4; returns its last outputs."""
    from app import generate

    *_, last = generate("calm-tiny-k4", "ROMEO:", algorithm, gen_length, 64, 64, temperature, 0.9, 0, "confidence",
                        "kv", n_candidates)
    return last


def test_calm_checkpoint_shows_k_algorithm_and_n_instead_of_the_other_knobs(calm_hub):
    from app import on_checkpoint, on_chunk_size

    sampler, cache, block, steps, temperature, threshold, n_candidates, chunk_size = on_checkpoint("calm-tiny-k4")
    assert sampler["choices"] == ["exact", "batch"] and sampler["label"].startswith("algorithm")
    assert not any(u["visible"] for u in (cache, block, steps, threshold)) and n_candidates["visible"]
    assert temperature["value"] == 1.0 and temperature["maximum"] == 1
    assert chunk_size["choices"] == [2, 4] and chunk_size["value"] == 4 and chunk_size["visible"]
    assert on_chunk_size(2, "calm-tiny-k4")["value"] == "calm-tiny-k2"  # K switches the checkpoint
    assert "value" not in on_chunk_size(4, "calm-tiny-k4")  # already there


def test_other_families_hide_the_calm_knobs():
    from app import on_checkpoint

    sampler, cache, *_, n_candidates, chunk_size = on_checkpoint("mdlm-tiny")
    assert sampler["label"] == "sampler" and cache["visible"]
    assert not n_candidates["visible"] and not chunk_size["visible"]


@pytest.mark.parametrize("algorithm", ["exact", "batch"])
def test_calm_knobs_reach_the_sampler_and_the_head_scatter_replays(calm_hub, algorithm):
    from app import replay

    view, _stats, error, _plot, _step, trace, latent = run_calm(algorithm, 0.5, 7)
    assert not error and view.count('class="dlm-token"') == 12, error or view
    assert trace.sampler["algorithm"] == algorithm and trace.sampler["n_candidates"] == 7
    assert latent["visible"] and [len(d.x) for d in latent["value"].data] == [2, 16, 1]  # earlier, samples, chosen
    _view, _plot, replayed = replay(trace, 1, "confidence")
    assert [len(d.x) for d in replayed["value"].data] == [0, 16, 1]
    assert all(text.startswith("'") for text in replayed["value"].data[1].text)  # samples decoded to their chunks


def test_unrepresentable_batch_temperature_shows_the_error_box(calm_hub):
    with pytest.warns(UserWarning, match="not representable"):
        _view, _stats, error, *_ = run_calm("batch", 0.7, 7)
    assert "dlm-error" in error and "not representable by the batch approximation with N=7" in error, error
