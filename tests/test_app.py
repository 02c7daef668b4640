"""The explorer page's API, driven by gradio_client against a server started in this process (one client per test
module session; a second client is a second user)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

GENERATE = dict(checkpoint="mdlm-tiny", prompt="ROMEO:", sampler="low_confidence", gen_length=16, steps=16,
                block_length=16, temperature=0.0, threshold=0.9, seed=0, color_by="confidence", cache="none", n=1,
                cfg_scale=0.0, constraints="")


def args(**changes) -> list:
    return list((GENERATE | changes).values())


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def call(client, **changes):
    """/generate's final outputs: view, stats, error, plot, step, multiples, latent view, latent step, latent, edit."""
    return client.predict(*args(**changes), api_name="/generate")


def without_scores(view: str) -> str:
    return re.sub(r'(data-value|title|style)="[^"]*"', "", view)


def masks(view: str) -> int:
    return view.count('class="dlm-mask"')


def test_generate_streams_frames_in_order_to_coloured_tokens(client):
    job = client.submit(*args(gen_length=8, steps=8, block_length=8), api_name="/generate")
    view, stats, error, *_ = job.result()
    streamed = [out[0] for out in job.outputs() if isinstance(out[0], str) and "dlm-tokens" in out[0]]
    assert len(streamed) >= 5, len(streamed)  # intermediate canvases arrived before the final one
    counts = [masks(v) for v in streamed]
    assert counts == sorted(counts, reverse=True) and counts[0] > 0 and counts[-1] == 0, counts
    assert view.count('class="dlm-token"') == 8 and "background:rgb" in view
    assert "nfe" in stats and "tokens/s" in stats and not error


def test_n_runs_show_as_small_multiples_with_their_diversity(client):
    outputs = call(client, n=3, temperature=1.0, sampler="random")
    multiples = outputs[5]
    assert multiples.count('class="dlm-multiple"') == 3 and "distinct outputs" in multiples, multiples[:300]
    assert "3 runs" in outputs[1]


def test_replay_step_buttons_and_play_redraw_stored_frames(client, monkeypatch):
    from explorer.page.common import page

    call(client)
    monkeypatch.setattr(page().models, "get", lambda path: pytest.fail(f"model requested for {path}"))
    view, *_ = client.predict(4, "commit_step", "pca", "this run", api_name="/replay")
    assert view.count('class="dlm-token"') == 4 and masks(view) == 12, view
    view, _plot, step, *_ = client.predict(4, "confidence", "pca", "this run", api_name="/step_back")
    assert masks(view) == 13 and step == 3
    view, _plot, step, *_ = client.predict(4, "confidence", "pca", "this run", api_name="/step_forward")
    assert masks(view) == 11 and step == 5
    job = client.submit(10, "confidence", 20, "pca", "this run", api_name="/play")
    job.result()
    steps = [out[2] for out in job.outputs()]
    assert steps == list(range(11, 17)), steps  # from the next frame to the last, in order


def test_bad_knob_shows_a_message_naming_it_and_the_page_stays_usable(client):
    error = call(client, gen_length=30, steps=30, block_length=7)[2]
    assert "dlm-error" in error and "block_length" in error, error
    view, _stats, error, *_ = call(client)
    assert not error and masks(view) == 0


@pytest.mark.parametrize("changes, message", [
    (dict(gen_length=256, steps=512), "request too large: gen_length 256 x steps 512 x N 1 runs = 131,072"),
    (dict(sampler="ar"), "sampler must be one of"),
    (dict(cache="kv"), "cache must be one of"),
    (dict(checkpoint="/etc"), "outside the allowed roots"),
    (dict(checkpoint="../../etc"), "outside the allowed roots"),
    (dict(constraints="five:upon"), "word constraints must look like"),
    (dict(checkpoint="ar-tiny", sampler="ar", constraints="3:upon"), "word constraints need a masked-diffusion"),
])
def test_bad_requests_name_the_knob(client, changes, message):
    error = call(client, **changes)[2]
    assert "dlm-error" in error and message in error, error


def test_word_constraints_pin_words(client):
    view = call(client, constraints="0:Once, 5:upon")[0]
    fixed = re.findall(r'title="position (\d+): fixed"[^>]*>([^<]*)<', view)
    assert fixed == [("0", "O"), ("1", "nce"), ("5", "&nbsp;upon")], fixed  # "Once" is two tokens


def test_generate_ar_and_block_diffusion_with_and_without_kv_cache(client):
    view, stats, error, *_ = call(client, checkpoint="ar-tiny", sampler="ar", cache="kv")
    assert view.count('class="dlm-token"') == 16 and not error
    views = []
    for cache in ("kv", "none"):
        view, stats, error, *_ = call(client, checkpoint="bd3lm-tiny-b4", sampler="first_hitting", gen_length=24,
                                      steps=4, block_length=4, temperature=1.0, cache=cache)
        assert not error and view.count('class="dlm-token"') == 24, error or view
        assert ("cache kv" in stats) == (cache == "kv"), stats
        views.append(view)
    assert views[0] == views[1]  # the exact cache changes the cost, not the tokens


def test_untrained_block_size_runs_with_a_visible_note(client):
    view, _stats, note, *_ = call(client, checkpoint="bd3lm-tiny-b16", sampler="first_hitting", steps=8,
                                  block_length=8, temperature=1.0, cache="kv")
    assert view.count('class="dlm-token"') == 16
    assert "dlm-warning" in note and "block_length 8 differs" in note, note


def test_continuous_diffusion_shows_entropy_and_latent_paths(client, monkeypatch):
    from explorer.page.common import page

    view, stats, error, plot, *_ = call(client, checkpoint="cdcd-tiny", sampler="euler", gen_length=12, steps=10,
                                        temperature=1.0)
    assert not error and view.count('class="dlm-token"') == 12, error or view
    assert "**nfe** 10 " in stats and "11 frames" in stats, stats
    assert "entropy" in plot["plot"]
    monkeypatch.setattr(page().models, "get", lambda path: pytest.fail(f"model requested for {path}"))
    figure = client.predict(3, "pca", "this run", api_name="/latent")
    assert "vocabulary" in figure["plot"]  # the paths up to step 3 over the embedding cloud, without the model
    monkeypatch.undo()
    error = call(client, checkpoint="cdcd-tiny", sampler="euler", gen_length=200, steps=10)[2]
    assert "gen_length (200) exceeds the model" in error, error


def test_two_users_never_see_each_others_runs(app_url, client):
    from gradio_client import Client

    other = Client(app_url, verbose=False)
    call(client, gen_length=16)
    other.predict(*args(checkpoint="ar-tiny", sampler="ar", gen_length=8, cache="kv"), api_name="/generate")
    mine = client.predict(16, "confidence", "pca", "this run", api_name="/replay")[0]
    theirs = other.predict(8, "confidence", "pca", "this run", api_name="/replay")[0]
    assert mine.count('class="dlm-token"') == 16 and theirs.count('class="dlm-token"') == 8


def test_stop_cancels_a_run_and_frees_the_users_slot(app_url):
    import time

    from gradio_client import Client

    user = Client(app_url, verbose=False)
    job = user.submit(*args(gen_length=96, steps=512, block_length=96), api_name="/generate")
    deadline = time.monotonic() + 60
    while not any(isinstance(out[0], str) and "dlm-tokens" in out[0] for out in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), job.outputs()
        time.sleep(0.05)  # the run has started streaming
    busy = user.predict(*args(), api_name="/generate")[2]
    assert "a run of yours is still going" in busy, busy  # one run per user at a time
    assert "run stopped" in user.predict(api_name="/stop")
    job.cancel()
    time.sleep(0.5)
    view, _stats, error, *_ = user.predict(*args(), api_name="/generate")
    assert not error and masks(view) == 0


def test_compare_runs_side_by_side_on_a_shared_progress_timeline(client, monkeypatch):
    from explorer.page.common import page

    slots = ["ar-tiny", "ar", "mdlm-tiny", "low_confidence", "bd3lm-tiny-b16", "first_hitting"]
    inputs = ["ROMEO:", 16, 8, 0.0, 0, "confidence"]
    for k in range(4):
        inputs += [k < 3, *(slots[2 * k : 2 * k + 2] if k < 3 else ["calm-tiny-k4", "batch"])]
    job = client.submit(*inputs, api_name="/compare")
    side, plot, table, error = job.result()
    assert not error and side.count('class="dlm-panel"') == 3, error or side
    assert len(job.outputs()) > 3  # the panels filled in while the runs went
    assert table.count("\n") == 4 and "ar-tiny · ar" in table  # header, rule, three runs
    monkeypatch.setattr(page().models, "get", lambda path: pytest.fail(f"model requested for {path}"))
    side, plot = client.predict(0.5, "confidence", api_name="/compare_view")
    frames = [int(part.split('"')[0]) for part in side.split('data-frame="')[1:]]
    assert frames == [8, 4, 8], frames  # ar: 17 frames, mdlm 8 steps: 9 frames, bd3lm 16 steps: 17 frames
    assert len(plot["plot"]) > 100 and "progress" in plot["plot"]
    job = client.submit(0.5, "confidence", 20, api_name="/compare_play")
    job.result()
    progress = [out[2] for out in job.outputs()]
    assert progress[0] == 0.5 and progress[-1] == 1.0 and progress == sorted(progress), progress
    error = client.predict(*inputs[:6], True, "ar-tiny", "ar", *([False, None, None] * 3), api_name="/compare")[3]
    assert "compare needs 2 to 4" in error, error


def test_latent_plot_and_a_click_jump_replay_without_the_model(client, monkeypatch):
    from explorer.page.common import page

    call(client)
    monkeypatch.setattr(page().models, "get", lambda path: pytest.fail(f"model requested for {path}"))
    figure = json.loads(client.predict(5, "pca", "this run", api_name="/latent")["plot"])
    indices = {point[0] for trace in figure["data"] for point in trace.get("customdata") or []}
    assert indices == set(range(1, 6)), indices  # every marker names its frame (frame 0 has no state yet), up to 5
    view, _plot, step, *_ = client.predict("7|1234", "confidence", "pca", "this run", api_name="/jump")
    assert step == 7 and masks(view) == 9


def test_following_positions_fades_the_other_paths_and_a_bad_box_keeps_the_last(client):
    call(client, gen_length=16, steps=16)
    figure = json.loads(client.predict("3, 5-6", 16, "pca", "this run", api_name="/follow")[0]["plot"])
    faded, followed, _now = ({point[1] for point in trace["customdata"]} for trace in figure["data"]
                             if trace["mode"] == "markers")
    assert followed == {3, 5, 6} and faded == set(range(16)) - followed
    plot, error = client.predict("3, x", 16, "pca", "this run", api_name="/follow")
    assert "follow positions must look like 2, 5-7" in error and "got &#x27;x&#x27;" in error
    figure = json.loads(client.predict(16, "pca", "this run", api_name="/latent")["plot"])
    assert {point[1] for point in figure["data"][3]["customdata"]} == {3, 5, 6}  # the last good choice stays
    figure = json.loads(client.predict("40", 16, "pca", "this run", api_name="/follow")[0]["plot"])
    assert "positions must be one or more of 0 .. 15" in figure["layout"]["annotations"][0]["text"]
    client.predict("", 16, "pca", "this run", api_name="/follow")  # empty: every path alike again


def test_the_latent_tab_says_what_a_run_will_show_before_there_is_one(client):
    client.predict("mdlm-tiny", "confidence", api_name="/example")
    figure = json.loads(client.predict(3, "pca", "this run", api_name="/latent")["plot"])
    said = figure["layout"]["annotations"][0]["text"].replace("<br>", " ")
    assert "saved without its hidden states" in said and "Press Generate" in said


def test_learn_more_links_open_the_executed_notebooks_served_by_the_page(app_url):
    import urllib.error
    import urllib.request

    from explorer.page import denoise
    from support import ROOT

    links = re.findall(r"\]\((/gradio_api/file=[^)]+)\)", denoise.LEARN)
    stems = [Path(link).stem for link in links]
    assert "00_tour" in stems and "07_train_and_sample_by_hand" in stems, denoise.LEARN
    with urllib.request.urlopen(app_url.rstrip("/") + links[0]) as reply:  # the page serves the executed copy
        assert reply.headers["content-type"].startswith("text/html") and b"<html" in reply.read(2000).lower()
    with pytest.raises(urllib.error.HTTPError, match="403"):  # and nothing else of the checkout
        urllib.request.urlopen(f"{app_url}gradio_api/file={(ROOT / 'README.md').as_posix()}")


def test_a_diffusion_gemma_folder_runs_and_replays_in_every_tab(client):
    """A library's model (transformers' DiffusionGemma, a tiny random folder) on the page: its run streams to the
    canvas, replays, compares, exports and loads back; the Latent tab projects its decoder's hidden states; the
    Diagnostics tab draws all four diagnostics of it."""
    from gradio_client import handle_file

    gemma = dict(checkpoint="released/DiffusionGemma-tiny", sampler="entropy_bound", gen_length=8, steps=8,
                 block_length=8, temperature=1.0)
    view, stats, error, *_ = call(client, **gemma)
    assert "dlm-error" not in error and view.count('class="dlm-token"') == 8 and "DiffusionGemma" in stats, error
    assert client.predict(1, "confidence", "pca", "this run", api_name="/replay")[0] != view
    figure = json.loads(client.predict(1, "pca", "this run", api_name="/latent")["plot"])
    assert "hidden states" in figure["layout"]["title"]["text"] and any(t.get("x") for t in figure["data"])
    path, error = client.predict("confidence", api_name="/export_json")
    assert not error and json.loads(open(path).read())["model"]["family"] == "diffusion_gemma"
    loaded = client.predict(handle_file(path), "confidence", api_name="/load_trace")[0]
    assert loaded.count('class="dlm-token"') == 8
    from explorer.page.diagnostics import CHOICES

    for which, said in zip(CHOICES, ("ECE", "keys/values", "pairs committed together", "where position 3")):
        layout = json.loads(client.predict(which, False, 0, 0, 3, api_name="/diagnostic")["plot"])["layout"]
        assert said in layout.get("title", {}).get("text", ""), (which, layout)  # drawn, not a message


def test_edit_a_paused_run_then_rewind(client):
    original = call(client, gen_length=16, steps=16)[0]
    update, error = client.predict(6, 10, api_name="/candidates")
    assert not error and len(update["choices"]) == 8
    label, token = update["choices"][1]  # the second likeliest token at position 10
    edited = client.predict(6, 10, token, "confidence", api_name="/resume")[0]
    assert masks(edited) == 0 and 'data-pos="10"' in edited
    spans = {int(s.split('"')[0]): s for s in edited.split('data-pos="')[1:]}
    shown = label.split("  p=")[0].strip("'").replace(" ", "&nbsp;")
    assert shown in spans[10], (label, spans[10])
    assert client.predict("confidence", api_name="/rewind")[0] == original
    assert "nothing to rewind" in client.predict("confidence", api_name="/rewind")[2]
    error = client.predict(6, 99, api_name="/candidates")[1]
    assert "position" in error, error


def test_export_json_html_gif_and_load_back(client, tmp_path):
    from gradio_client import handle_file

    view = call(client, gen_length=8, steps=8, block_length=8)[0]
    path, error = client.predict("confidence", api_name="/export_json")
    assert not error and json.loads(open(path).read())["schema"] == 1
    html_path, _ = client.predict("confidence", api_name="/export_html")
    assert "<html" in open(html_path).read().lower()
    gif_path, _ = client.predict("confidence", api_name="/export_gif")
    assert open(gif_path, "rb").read(6) == b"GIF89a"
    call(client, checkpoint="ar-tiny", sampler="ar", cache="kv")
    loaded = client.predict(handle_file(path), "confidence", api_name="/load_trace")[0]
    assert without_scores(loaded) == without_scores(view)  # the same canvas, drawn from the file (scores rounded)


def test_load_a_trace_written_by_the_cli_and_a_bad_file(client, tmp_path):
    from gradio_client import handle_file

    from explorer.cli import main

    trace = tmp_path / "cli.json"
    main(["sample", "--checkpoint", "mdlm-tiny", "--prompt", "ROMEO:", "--gen-length", "12", "--steps", "6",
          "--record", "full", "--trace", str(trace), "--no-animation"])
    view, stats, error, *_, prompt, export_error = client.predict(handle_file(str(trace)), "confidence",
                                                                  api_name="/load_trace")
    assert not error and not export_error and view.count('class="dlm-token"') == 12 and "nfe** 6" in stats
    assert prompt == "ROMEO:"  # the loaded trace's prompt fills the prompt box
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": 99}')
    error = client.predict(handle_file(str(bad)), "confidence", api_name="/load_trace")[-1]  # the Export tab's box
    assert "could not load the trace" in error and "schema" in error, error


def test_releasing_a_slider_reruns_only_when_asked():
    from explorer.page.denoise import rerun_on_release

    (untouched,) = list(rerun_on_release(*args(gen_length=8, steps=8, block_length=8), False))
    assert all(type(value).__name__ == "dict" and value.get("__type__") == "update" for value in untouched)
    *_, last = rerun_on_release(*args(gen_length=8, steps=8, block_length=8), True)
    assert last[0].count('class="dlm-token"') == 8 and masks(last[0]) == 0


def test_first_paint_is_a_precomputed_example_that_matches_its_checkpoint():
    import explorer
    from explorer.page.examples import COMPARED, EXAMPLE_RUNS, load_examples
    from explorer.page.layout import first_paint
    from explorer.sampling import generate

    examples = load_examples()
    assert set(examples) == set(EXAMPLE_RUNS)
    session, compared = first_paint(examples)
    assert session.trace is examples["mdlm-tiny"] and [t.model["checkpoint"] for t in compared] == list(COMPARED)
    assert len({t.prompt_text for t in compared}) == 1  # the Compare tab's first runs share one prompt
    checkpoint, prompt, sampler, knobs = EXAMPLE_RUNS["mdlm-tiny"]
    again = generate(explorer.load(checkpoint), prompt, sampler, 0, record="tokens", **knobs)
    assert again.final_tokens == examples["mdlm-tiny"].final_tokens  # rerun `python -m explorer examples` if not
    assert len({examples[name].prompt_text for name in EXAMPLE_RUNS}) >= 3  # the picker offers varied prompts


def test_example_picker_replays_an_example_and_fills_prompt_and_checkpoint(client):
    from explorer.page.examples import load_examples

    trace = load_examples()["mdlm-tiny-rosalind"]
    view, stats, error, *_, prompt, checkpoint = client.predict("mdlm-tiny-rosalind", "confidence", api_name="/example")
    assert not error and prompt == trace.prompt_text and checkpoint == "mdlm-tiny"
    assert view.count('class="dlm-token"') == len(trace.final_tokens) and masks(view) == 0
    played = client.predict(3, "confidence", "pca", "this run", api_name="/replay")[0]  # as a run of one's own
    assert masks(played) > 0
    with pytest.raises(Exception, match="not in the list of choices"):  # Gradio checks the picker's choices
        client.predict("nope", "confidence", api_name="/example")


# --- in-process: the CALM controls ----------------------------------------------------------------------------

@pytest.fixture
def calm_hub(tiny_calm_checkpoints, monkeypatch):
    """The app's checkpoint list is two random CALM models, K = 2 and K = 4."""
    import explorer.hub

    monkeypatch.setattr(explorer.hub, "CHECKPOINT_DIR", tiny_calm_checkpoints)


def run_calm(algorithm, temperature, n_candidates, gen_length=12):
    """The page's generate for calm-tiny-k4 (called in process); returns its last outputs."""
    from explorer.page.denoise import generate

    *_, last = generate("calm-tiny-k4", "ROMEO:", algorithm, gen_length, 64, 64, temperature, 0.9, 0, "confidence",
                        "kv", n_candidates)
    return last


def test_calm_checkpoint_shows_k_algorithm_and_n_instead_of_the_other_knobs(calm_hub):
    from explorer.page.denoise import family_controls, on_chunk_size

    sampler, cache, block, steps, temperature, threshold, n, gen_length, chunk_size, cfg, pins = family_controls(
        "calm-tiny-k4")
    assert sampler["choices"] == ["exact", "batch"] and sampler["label"].startswith("algorithm")
    assert not any(u["visible"] for u in (cache, block, steps, threshold, cfg, pins))
    assert n["label"].startswith("N (head samples") and n["maximum"] == 500
    assert temperature["value"] == 1.0 and temperature["maximum"] == 1
    assert gen_length["maximum"] == 64 and gen_length["step"] == gen_length["minimum"] == 4  # 16 chunks of K = 4
    assert chunk_size["choices"] == [2, 4] and chunk_size["value"] == 4 and chunk_size["visible"]
    assert on_chunk_size(2, "calm-tiny-k4")["value"] == "calm-tiny-k2"  # K switches the checkpoint
    assert "value" not in on_chunk_size(4, "calm-tiny-k4")  # already there


def test_other_families_show_their_own_knobs():
    from explorer.page.denoise import family_controls

    sampler, cache, block, *_, n, _gen_length, chunk_size, cfg, pins = family_controls("mdlm-tiny")
    assert sampler["label"].startswith("sampler") and cache["visible"] and block["visible"] and cfg["visible"]
    assert n["label"].startswith("N (runs") and not chunk_size["visible"]
    _sampler, _cache, block, steps, *_ = family_controls("bd3lm-tiny-b4")
    assert block["value"] == steps["value"] == 4  # the block size it was trained with


@pytest.mark.parametrize("algorithm", ["exact", "batch"])
def test_calm_knobs_reach_the_sampler_and_the_head_scatter_replays(calm_hub, algorithm):
    from explorer.page.views import latent_figure

    view, _stats, error, _plot, _step, session, *_ = run_calm(algorithm, 0.5, 7)
    assert not error and view.count('class="dlm-token"') == 12, error or view
    trace = session.trace
    assert trace.sampler["algorithm"] == algorithm and trace.sampler["n_candidates"] == 7
    figure = latent_figure(session, -1, "pca")
    assert [len(d.x) for d in figure.data] == [2, 16, 1]  # earlier, samples, chosen
    replayed = latent_figure(session, 1, "pca")
    assert [len(d.x) for d in replayed.data] == [0, 16, 1]
    assert all(text.startswith("'") for text in replayed.data[1].text)  # samples decoded to their chunks


def test_unrepresentable_batch_temperature_shows_the_error_box(calm_hub):
    with pytest.warns(UserWarning, match="not representable"):
        _view, _stats, error, *_ = run_calm("batch", 0.7, 7)
    assert "dlm-error" in error and "not representable by the batch approximation with N=7" in error, error


# --- hardening: memory, hostile traces, checkpoint identity, server paths ----------------------------------------

PAYLOAD = '<img src=x onerror="window.__pwned=1">'


def wait_for(condition, seconds: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_closed_session_lets_go_of_its_runs(app_url, monkeypatch):
    from gradio_client import Client

    from explorer.page.common import page

    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.25")  # the client notices its own close sooner
    user = Client(app_url, verbose=False)
    user.predict(*args(), api_name="/generate")
    session, nbytes = page().memory.sessions[user.session_hash]
    assert session.trace is not None and 0 < nbytes < 5_000_000  # 16 tokens x 17 frames, hidden states packed
    user.close()  # as a closed tab: the page hears its heartbeat connection end
    wait_for(lambda: user.session_hash not in page().memory.sessions)
    assert session.trace is None and session.runs == [] and session.history == []


def test_a_user_whose_run_was_dropped_to_free_memory_is_told_so(app_url, client, monkeypatch):
    from gradio_client import Client

    from explorer.page.common import page

    call(client)
    monkeypatch.setattr(page().memory, "budget", 1)  # room for one session's runs: the latest
    other = Client(app_url, verbose=False)
    other.predict(*args(), api_name="/generate")
    assert client.session_hash not in page().memory.sessions
    view = client.predict(4, "confidence", "pca", "this run", api_name="/replay")[0]
    assert "your run was dropped to free memory; Generate again" in view, view
    assert "dropped to free memory" in client.predict("confidence", api_name="/export_json")[1]
    assert "dropped to free memory" in client.predict(6, 10, api_name="/candidates")[1]
    view, _stats, error, *_ = call(client)  # generating again works (and drops the other user's run)
    assert not error and masks(view) == 0
    other.close()


def test_rewind_keeps_at_most_max_rewind_edits():
    from explorer.page.denoise import generate
    from explorer.page.edit import candidates, continue_with, rewind
    from explorer.page.memory import MAX_REWIND
    from explorer.page.views import Outputs

    *_, last = generate(*args(gen_length=8, steps=8, block_length=8))
    session = dict(zip(Outputs.names, last))["session"]
    for _ in range(MAX_REWIND + 2):
        update, error = candidates(session, 3, 5)
        *_, last = continue_with(session, 3, 5, update["value"], "confidence")
        assert not dict(zip(Outputs.names, last))["error"]
    assert len(session.history) == MAX_REWIND
    for _ in range(MAX_REWIND):
        rewind(session, "confidence")
    assert "nothing to rewind" in dict(zip(Outputs.names, rewind(session, "confidence")))["error"]


def test_an_upload_over_the_cap_is_refused_with_a_clear_message(tmp_path, monkeypatch):
    from explorer.page import export, layout
    from explorer.page.examples import EXAMPLES_DIR

    assert layout.launch_options()["max_file_size"] == f"{layout.MAX_UPLOAD_MB}mb"  # Gradio refuses larger uploads too
    big = tmp_path / "big.json"
    big.write_bytes((EXAMPLES_DIR / "mdlm-tiny.json").read_bytes())
    monkeypatch.setattr(export, "MAX_UPLOAD_MB", 0.05)
    error = export.load_trace(str(big), "confidence", None)[-1]  # the Export tab's box
    assert "could not load the trace: big.json has 0.1 MB; a trace may have at most 0.05 MB here" in error, error


def test_exports_and_loading_wait_in_the_runs_queue_and_closing_a_tab_is_heard():
    from explorer.page import common, layout

    before = common.PAGE
    try:
        fns = list(layout.build_demo().fns.values())
    finally:
        common.PAGE = before
    limits = {fn.api_name: (fn.concurrency_id, fn.concurrency_limit) for fn in fns}
    assert limits["generate"] == ("runs", common.RUN_CONCURRENCY)
    for name in ("export_json", "export_html", "export_gif", "load_trace", "resume", "compare"):
        assert limits[name] == limits["generate"], name
    assert [fn.fn for fn in fns if any(target[1] == "unload" for target in fn.targets)] == [common.close_session]


def hostile_trace(folder) -> str:
    """A trace that passes every check but carries a script payload in each of its strings."""
    from explorer.page.examples import EXAMPLES_DIR

    data = json.loads((EXAMPLES_DIR / "mdlm-tiny.json").read_text())
    data["model"]["name"] = data["model"]["checkpoint"] = data["sampler"]["name"] = PAYLOAD
    data["prompt_text"] = data["text"] = data["stats"]["stop"] = PAYLOAD
    data["token_strings"] = {k: PAYLOAD for k in data["token_strings"]}
    for frame in data["frames"]:
        frame["cache"] = PAYLOAD
    path = folder / f"{PAYLOAD[:4]}hostile.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_a_hostile_trace_is_escaped_wherever_the_page_shows_it(client, tmp_path):
    from gradio_client import handle_file

    view, stats, error, _plot, _step, multiples, latent_view, _ls, _latent, edit_view, prompt, export_error = (
        client.predict(handle_file(hostile_trace(tmp_path)), "confidence", api_name="/load_trace"))
    assert prompt == PAYLOAD  # as text in the prompt box
    assert not error and not export_error and view.count("&lt;img&nbsp;src=x&nbsp;onerror=") == 65  # prompt, 64 tokens
    for shown in (view, stats, multiples, latent_view, edit_view):
        assert "<img" not in shown, shown[:300]
    assert "&lt;img" in stats and "step 64 of 64" in edit_view
    path, error = client.predict("confidence", api_name="/export_json")
    name = "img_src_x_onerror_window.__pwned_1"  # model and sampler name, each sanitised
    assert not error and Path(path).name == f"{name}_-_{name}.json"
    html_path, _ = client.predict("confidence", api_name="/export_html")
    assert "<img" not in open(html_path).read()


def test_show_escapes_values_that_bypassed_the_checks():
    from explorer.page.common import Session
    from explorer.page.examples import load_examples
    from explorer.page.views import show

    trace = load_examples()["mdlm-tiny"]
    trace.frames[-1].step = PAYLOAD  # not from a file: Trace.load would refuse it
    shown = show(Session(trace=trace, runs=[trace]), -1, "confidence")
    assert not any("<img" in part for part in shown if isinstance(part, str))
    assert "step 64 of 64" in shown[-2]  # the edit view numbers frames as the scrubber does, not by the bad value


def test_a_bad_trace_file_is_named_without_the_servers_upload_path(client, tmp_path):
    from gradio_client import handle_file

    bad = tmp_path / "broken.json"
    bad.write_text('{"schema": 1, "frames": [')
    *_, error = client.predict(handle_file(str(bad)), "confidence", api_name="/load_trace")  # the Export tab's box
    assert "could not load the trace: broken.json is not a trace JSON file" in error and "/tmp" not in error, error
    bad.write_text(json.dumps([]))
    error = client.predict(handle_file(str(bad)), "confidence", api_name="/load_trace")[-1]
    assert "could not load the trace: broken.json is not a trace JSON file: a trace must be a JSON object, got a " \
           "list" in error, error


@pytest.fixture
def lab(tmp_path, tiny_mdlm):
    """The page with one more root, `lab`: a random mdlm named like the shipped `mdlm-tiny`, and a tiny LLaDA."""
    import torch

    from explorer.page import common, layout
    from explorer.page.folders import default_roots
    from explorer.released.synthetic import write_tiny_llada

    root = tmp_path / "lab"
    tiny_mdlm.save_pretrained(root / "mdlm-tiny", dtype=torch.float32)
    write_tiny_llada(root / "LLaDA-x")
    before = common.PAGE
    layout.build_demo(default_roots() + [root])
    yield root
    common.PAGE = before


def run_on(label: str):
    from explorer.page.denoise import generate
    from explorer.page.views import Outputs

    *_, last = generate(*args(checkpoint=label, gen_length=8, steps=8, block_length=8))
    out = dict(zip(Outputs.names, last))
    assert not out["error"], out["error"]
    return out["session"]


@pytest.mark.parametrize("label", ["lab/mdlm-tiny", "lab/LLaDA-x"])
def test_the_edit_tab_uses_the_model_that_made_the_run(lab, label):
    import explorer
    from explorer.page.edit import candidates
    from explorer.page.memory import unpacked
    from explorer.sampling.edit import top_candidates

    session = run_on(label)
    assert session.trace.model["checkpoint"] == label  # relative to the root's parent, never the server's path
    update, error = candidates(session, 3, 5)
    assert not error, error
    ours = top_candidates(explorer.load(lab / label.split("/")[1], device="cpu"), unpacked(session.trace), 3, 5, k=8)
    assert [int(v) for _, v in update["choices"]] == [o["id"] for o in ours]
    if label == "lab/mdlm-tiny":  # the shipped checkpoint of the same name proposes other tokens
        shipped = top_candidates(explorer.load("mdlm-tiny"), unpacked(session.trace), 3, 5, k=8)
        assert [o["id"] for o in shipped] != [o["id"] for o in ours]


def test_exported_and_edited_traces_name_their_checkpoint_relative_to_its_root(lab):
    from explorer.page.edit import candidates, continue_with
    from explorer.page.export import export

    session = run_on("lab/LLaDA-x")
    update, _ = candidates(session, 3, 5)
    list(continue_with(session, 3, 5, update["value"], "confidence"))
    path, error = export("json")(session, "confidence")
    saved = json.loads(Path(path).read_text())
    assert not error and saved["model"]["checkpoint"] == "lab/LLaDA-x" and str(lab) not in Path(path).read_text()


def test_a_comparison_counts_as_its_own_users_run(app_url):
    from gradio_client import Client

    from explorer.page.common import page

    user = Client(app_url, verbose=False)  # Gradio hands the request to /compare too: its run slot and memory
    slots = [True, "ar-tiny", "ar", True, "mdlm-tiny", "low_confidence"] + [False, None, None] * 2
    *_, error = user.predict("ROMEO:", 8, 8, 0.0, 0, "confidence", *slots, True, api_name="/compare")
    assert not error and len(page().memory.sessions[user.session_hash][0].compared) == 2
    user.close()


def test_the_scrubbers_span_the_first_paints_frames():
    """Scrubbing the example before any run: the server's sliders must allow its frames (they stopped at 1)."""
    from explorer.page import common, layout
    from explorer.page.examples import load_examples

    before = common.PAGE
    try:
        demo = layout.build_demo()
    finally:
        common.PAGE = before
    frames = len(load_examples()["mdlm-tiny"].frames)
    sliders = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None) in ("step", "latent_step")}
    assert [(s.minimum, s.maximum, s.value) for s in sliders.values()] == [(0, frames - 1, frames - 1)] * 2


# --- the launcher ------------------------------------------------------------------------------------------------

def test_the_launcher_names_a_bad_device_in_one_line():
    import subprocess
    import sys

    from support import ROOT

    result = subprocess.run([sys.executable, "app.py", "--device", "bogus"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and result.stdout == "", result.stderr[-2000:]
    assert result.stderr.startswith("error: device = 'bogus' is not a device") and result.stderr.count("\n") == 1


# --- issue 20: messages where they belong, knob ranges that follow the model, the server's address -----------------

SKIP = {"__type__": "update"}  # gr.skip(): the output is left as it is


def test_a_bad_upload_is_named_on_the_export_tab_by_its_base_name_and_the_denoise_tab_keeps_its_run(tmp_path,
                                                                                                    monkeypatch):
    import tempfile

    from explorer.page import export

    uploads = tmp_path / "uploads" / "3f9a"  # an upload folder the page does not know as a temporary one
    uploads.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "elsewhere"))
    bad = uploads / "broken.json"
    bad.write_text('{"schema": 1, "frames": [')
    *denoise, prompt, box = export.load_trace(str(bad), "confidence", None)
    assert "could not load the trace: broken.json is not a trace JSON file: Expecting value" in box, box
    assert str(tmp_path) not in box and "uploads" not in box
    assert denoise == [SKIP] * len(denoise) and prompt == SKIP  # the Denoise tab's run and message stay
    *_, prompt, box = export.load_trace(None, "confidence", None)
    assert "choose a trace JSON file" in box and prompt == SKIP


def test_a_checkpoint_of_another_family_takes_its_own_defaults_and_ranges():
    """cdcd-tiny's 400 steps and temperature do not carry over to ar-tiny; each slider's range is the checkpoint's."""
    from explorer.page.denoise import FAMILY_CONTROLS, family_controls
    from explorer.page.requests import SHOWCASE
    from explorer.sampling import sampler_for

    cdcd = dict(zip(FAMILY_CONTROLS, family_controls("cdcd-tiny")))
    assert cdcd["steps"]["value"] == 400 and cdcd["gen_length"]["maximum"] == 128
    ar = dict(zip(FAMILY_CONTROLS, family_controls("ar-tiny")))
    assert ar["temperature"]["value"] == SHOWCASE["ar"][1]["temperature"] != cdcd["temperature"]["value"]
    assert ar["steps"]["value"] == ar["gen_length"]["value"] == sampler_for("ar").default("gen_length")
    assert not ar["steps"]["visible"] and ar["gen_length"]["maximum"] == 256  # it slides its window past 128
    bd3lm = dict(zip(FAMILY_CONTROLS, family_controls("bd3lm-tiny-b16")))
    assert bd3lm["gen_length"]["maximum"] == 256 and bd3lm["block_length"]["value"] == 16
    mdlm = dict(zip(FAMILY_CONTROLS, family_controls("mdlm-tiny")))
    assert mdlm["gen_length"]["value"] == sampler_for("mdlm").default("gen_length")
    assert (mdlm["block_length"]["value"], mdlm["temperature"]["value"]) == (16, 0.7)  # the page's SHOWCASE
    assert cdcd["temperature"]["value"] == sampler_for("cdcd").default("temperature")


def test_ar_runs_past_its_context_on_the_page_and_gen_lengths_help_names_each_family():
    from explorer.page.denoise import SAMPLER_CONTROLS, generate, sampler_controls
    from explorer.page.views import Outputs

    *_, last = generate(*args(checkpoint="ar-tiny", sampler="ar", gen_length=140, temperature=0.7))
    out = dict(zip(Outputs.names, last))
    assert "dlm-error" not in out["error"], out["error"]  # a note (hidden states not kept) may stand there
    assert len(out["session"].trace.final_tokens) == 140  # ar-tiny's context is 128 tokens
    for checkpoint, sampler in (("ar-tiny", "ar"), ("mdlm-tiny", "low_confidence")):
        info = dict(zip(SAMPLER_CONTROLS, sampler_controls(checkpoint, sampler)))["gen_length"]["info"]
        assert "ar and bd3lm generate past the model's context" in info and "mdlm, cdcd and calm cannot" in info


def test_calms_temperature_slider_explains_zero_and_zero_is_refused_in_words(calm_hub):
    from explorer.page.denoise import FAMILY_CONTROLS, SAMPLER_CONTROLS, family_controls, sampler_controls

    temperature = dict(zip(FAMILY_CONTROLS, family_controls("calm-tiny-k4")))["temperature"]
    assert temperature["minimum"] == 0 and temperature["maximum"] == 1  # no raw "less than minimum" error at 0
    info = dict(zip(SAMPLER_CONTROLS, sampler_controls("calm-tiny-k4", "exact")))["temperature"]["info"]
    assert "not 0: greedy decoding needs likelihoods" in info, info
    error = run_calm("exact", 0.0, 7)[2]
    assert "temperature must be in (0, 1]" in error and "0, greedy decoding, needs likelihoods" in error, error


def test_more_steps_than_tokens_says_it_was_reduced_to_fit():
    from explorer.page.denoise import generate
    from explorer.page.views import Outputs

    *_, last = generate(*args(gen_length=8, steps=16, block_length=8))
    out = dict(zip(Outputs.names, last))
    assert "steps reduced to fit: 16 steps for 8 masked tokens" in out["error"] and "so 8 steps run" in out["error"]
    assert out["session"].trace.stats["steps"] == 8
    *_, last = generate(*args(gen_length=8, steps=8, block_length=8))
    assert "steps reduced" not in dict(zip(Outputs.names, last))["error"]


@pytest.mark.parametrize("flags, environ, expected", [
    ((None, None), {}, ("127.0.0.1", 7860)),  # neither: this machine only, Gradio's port
    ((None, None), {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "8080"}, ("0.0.0.0", 8080)),
    (("127.0.0.1", 9000), {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "8080"}, ("127.0.0.1", 9000)),
    ((None, 9000), {"GRADIO_SERVER_NAME": "0.0.0.0"}, ("0.0.0.0", 9000)),
    ((None, None), {"GRADIO_SERVER_NAME": "", "GRADIO_SERVER_PORT": " 7861 "}, ("127.0.0.1", 7861)),
])
def test_flags_win_over_gradios_environment_variables_and_neither_serves_this_machine(flags, environ, expected):
    from explorer.page.launch import server_address

    assert server_address(*flags, environ=environ) == expected


@pytest.mark.parametrize("flags, environ, where, shown", [
    ((None, None), {"GRADIO_SERVER_PORT": "abc"}, "GRADIO_SERVER_PORT", "'abc'"),
    ((None, None), {"GRADIO_SERVER_PORT": "70000"}, "GRADIO_SERVER_PORT", "'70000'"),
    ((None, 0), {"GRADIO_SERVER_PORT": "8080"}, "--port", "'0'"),
])
def test_a_bad_port_is_named_with_where_it_came_from(flags, environ, where, shown):
    from explorer.page.launch import server_address

    with pytest.raises(ValueError) as caught:
        server_address(*flags, environ=environ)
    assert str(caught.value) == f"{where} must be a port number in [1, 65535], got {shown}"


def test_app_py_and_the_cli_app_command_serve_where_flags_or_the_environment_say(monkeypatch):
    """The launchers hand Gradio the address (no server is started: build_demo is a stand-in)."""
    import explorer.viz.latent
    from explorer.cli import main as cli
    from explorer.page import launch, layout

    launched = []
    monkeypatch.setattr(layout, "build_demo", lambda *a: SimpleNamespace(launch=lambda **kw: launched.append(kw)))
    monkeypatch.setattr(explorer.viz.latent, "warm_umap", lambda: None)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8080")
    launch.main([])
    assert cli(["app", "--port", "9000"]) == 0
    monkeypatch.setenv("GRADIO_SERVER_PORT", "not a port")  # a flag wins, and Gradio is handed the port it serves
    launch.main(["--host", "127.0.0.1", "--port", "9001"])
    assert os.environ["GRADIO_SERVER_PORT"] == "9001"
    assert [(kw["server_name"], kw["server_port"]) for kw in launched] == [("0.0.0.0", 8080), ("0.0.0.0", 9000),
                                                                          ("127.0.0.1", 9001)]


def test_a_bad_gradio_server_port_is_one_error_line_before_gradio_reads_it():
    import subprocess
    import sys

    from support import ROOT

    result = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=os.environ | {"GRADIO_SERVER_PORT": "abc"})
    assert result.returncode == 2 and result.stdout == "", result.stderr[-2000:]
    assert result.stderr == "error: GRADIO_SERVER_PORT must be a port number in [1, 65535], got 'abc'\n"


def test_diagnostics_tab_draws_the_four_diagnostics_of_the_run_and_says_what_is_wrong(client):
    from explorer.page.diagnostics import BEFORE, CHOICES, draw

    call(client, gen_length=16, steps=4, block_length=8)  # 4 tokens per step, two blocks

    def title(which, head=0, judge=True):
        figure = json.loads(client.predict(which, judge, 1, head, 3, api_name="/diagnostic")["plot"])
        layout = figure["layout"]
        return layout["title"]["text"] if "title" in layout else layout["annotations"][0]["text"]

    assert "ECE" in title(CHOICES[0]) and "judge's top-1" in title(CHOICES[0])
    assert "survives to the end" in title(CHOICES[0], judge=False)
    drift = title(CHOICES[1])
    assert "prompt keys/values" in drift and "cache=prefix" in drift and "gen-PPL" in drift
    assert "pairs committed together" in title(CHOICES[2])
    assert "layer 1, head 0: where position 3" in title(CHOICES[3])
    assert "head must be an int in [0, 3]" in title(CHOICES[3], head=9)  # the page stays usable
    assert "ECE" in title(CHOICES[0])
    said = draw(None, CHOICES[0], False, 0, 0, 0).layout.annotations[0].text.replace("<br>", " ")
    assert said == BEFORE
