"""The explorer page's rules without Gradio (explorer/page/folders.py, requests.py, memory.py, examples.py):
checkpoint allow-listing, the model cache, request costs and knobs, the per-user run registry, N runs in lockstep and
the shipped example traces."""

from __future__ import annotations

import os
import threading
import time
import warnings
from types import SimpleNamespace

import pytest
import torch

import explorer
from explorer.models.base import WEIGHTS
from explorer.page import examples, folders, memory
from explorer.page.examples import load_examples
from explorer.page.folders import ModelCache, local_checkpoints, resolve_checkpoint
from explorer.page.memory import LiveRuns, RunRegistry, unpacked
from explorer.page.requests import (
    CACHES,
    MAX_RUNS,
    MAX_WORK,
    Request,
    check_request,
    parse_constraints,
    parse_positions,
    request_work,
    sampler_knobs,
)
from explorer.sampling import Trace, generate
from explorer.viz import hidden_state_paths

PROMPT = "ROMEO:"


def save(model, folder):
    """A checkpoint folder of `model` (float32 so a reload gives back the same weights)."""
    return model.save_pretrained(folder, dtype=torch.float32)


@pytest.fixture
def roots(tmp_path, tiny_mdlm):
    """An allowed root `root` with a checkpoint at root/runs/m, and a checkpoint outside it at elsewhere/m."""
    root = tmp_path / "root"
    save(tiny_mdlm, root / "runs" / "m")
    save(tiny_mdlm, tmp_path / "elsewhere" / "m")
    return [root]


# --- checkpoints ---------------------------------------------------------------------------------------------------

def test_resolve_shipped_name_ignores_the_roots(tmp_path):
    shipped = explorer.shipped()
    if "mdlm-tiny" not in shipped:
        pytest.skip("shipped checkpoints are not present")
    assert resolve_checkpoint("mdlm-tiny", [tmp_path / "nowhere"]) == shipped["mdlm-tiny"]


def test_resolve_folder_inside_a_root_by_path_and_by_label(roots, tmp_path):
    folder = (tmp_path / "root" / "runs" / "m").resolve()
    assert resolve_checkpoint(str(folder), roots) == folder
    assert resolve_checkpoint("root/runs/m", roots) == folder  # the label local_checkpoints shows
    assert resolve_checkpoint(str(tmp_path / "root" / "runs" / "." / "m"), roots) == folder


def test_resolve_refuses_a_folder_outside_the_roots(roots, tmp_path):
    with pytest.raises(ValueError, match="outside the allowed roots"):
        resolve_checkpoint(str(tmp_path / "elsewhere" / "m"), roots)


def test_resolve_refuses_a_sibling_whose_name_extends_the_root(roots, tmp_path, tiny_mdlm):
    save(tiny_mdlm, tmp_path / "root-evil" / "m")  # a string prefix of the root is not inside it
    with pytest.raises(ValueError, match="outside the allowed roots"):
        resolve_checkpoint(str(tmp_path / "root-evil" / "m"), roots)


def test_resolve_refuses_dotdot_escapes(roots, tmp_path):
    for choice in (f"{tmp_path}/root/../elsewhere/m", f"{tmp_path}/root/runs/../../elsewhere/m"):
        with pytest.raises(ValueError, match="outside the allowed roots"):
            resolve_checkpoint(choice, roots)


def test_resolve_refuses_a_symlink_path_that_leaves_the_root(roots, tmp_path):
    link = tmp_path / "root" / "link"
    os.symlink(tmp_path / "elsewhere" / "m", link, target_is_directory=True)
    with pytest.raises(ValueError, match="outside the allowed roots"):
        resolve_checkpoint(str(link), roots)


def test_resolve_refuses_a_folder_without_weights(roots, tmp_path):
    folder = tmp_path / "root" / "runs" / "m"
    (folder / WEIGHTS).unlink()
    with pytest.raises(ValueError, match="has no config.json and model.safetensors"):
        resolve_checkpoint(str(folder), roots)
    (tmp_path / "root" / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        resolve_checkpoint(str(tmp_path / "root" / "empty"), roots)


def test_resolve_refuses_an_empty_choice(roots):
    for choice in ("", None):
        with pytest.raises(ValueError, match="checkpoint is empty"):
            resolve_checkpoint(choice, roots)


def test_local_checkpoints_finds_nested_folders_with_weights_only(tmp_path, tiny_mdlm, tiny_ar):
    root = tmp_path / "root"
    save(tiny_mdlm, root / "a")
    save(tiny_ar, root / "runs" / "b")
    save(tiny_mdlm, root / "x" / "y" / "c")
    save(tiny_mdlm, root / "x" / "y" / "z" / "too-deep")  # 4 levels below the root
    save(tiny_mdlm, root / "runs" / "half")
    (root / "runs" / "half" / WEIGHTS).unlink()  # config.json without weights: a run still starting
    (root / "notes").mkdir()
    found = local_checkpoints([root, tmp_path / "missing-root"])
    assert found == {"root/a": (root / "a").resolve(), "root/runs/b": (root / "runs" / "b").resolve(),
                     "root/x/y/c": (root / "x" / "y" / "c").resolve()}
    assert "root/x/y/z/too-deep" in local_checkpoints([root], depth=4)


# --- model cache ---------------------------------------------------------------------------------------------------

def test_model_cache_reuses_until_the_weights_change(tmp_path, tiny_mdlm):
    folder = save(tiny_mdlm, tmp_path / "m")
    cache = ModelCache()
    first = cache.get(folder)
    assert first.name == "m" and first.family == "mdlm" and not first.training
    assert cache.get(folder) is first
    weights = folder / WEIGHTS
    stamp = weights.stat().st_mtime_ns
    os.utime(weights, ns=(stamp + 5_000_000_000, stamp + 5_000_000_000))  # a training run rewrote it
    second = cache.get(folder)
    assert second is not first
    assert cache.get(folder) is second


def test_model_cache_evicts_beyond_its_size(tmp_path, tiny_mdlm):
    folders = [save(tiny_mdlm, tmp_path / f"m{k}") for k in range(3)]
    cache = ModelCache(size=2)
    first = cache.get(folders[0])
    cache.get(folders[1])
    cache.get(folders[2])
    assert len(cache.models) == 2 and folders[0] not in cache.models
    assert cache.get(folders[0]) is not first  # loaded again
    assert len(cache.models) == 2


def test_model_cache_names_a_checkpoint_it_cannot_load(tmp_path, tiny_mdlm, monkeypatch):
    folder = save(tiny_mdlm, tmp_path / "broken")
    (folder / WEIGHTS).write_bytes(b"not a safetensors file")
    monkeypatch.setattr(folders, "time", SimpleNamespace(sleep=lambda s: None, monotonic=time.monotonic,
                                                        perf_counter=time.perf_counter))
    with pytest.raises(ValueError, match="could not load checkpoint 'broken'"):
        ModelCache().get(folder)


# --- requests ------------------------------------------------------------------------------------------------------

def test_parse_positions_reads_lists_and_ranges_and_names_the_box():
    assert parse_positions("5-7, 2 , 6") == [2, 5, 6, 7] and parse_positions("  ") is None
    for bad, said in (("a", "must look like"), ("3-", "must look like"), ("-2", "must look like"),
                      ("7-5", "must run upwards"), ("0-100000", "at most 256 long")):
        with pytest.raises(ValueError, match=f"follow positions.*{said}"):
            parse_positions(bad)


def test_parse_constraints():
    assert parse_constraints("0:Once, 5:upon") == {0: "Once", 5: " upon"}
    assert parse_constraints(" 3 : a time ,") == {3: " a time"}
    assert parse_constraints("") == {} and parse_constraints(None) == {} and parse_constraints(" , ") == {}
    for bad in ("5 upon", "x:upon", "-1:upon", "1.5:upon", "5:", "5:  ", ":upon", "0:Once, upon"):
        with pytest.raises(ValueError, match="word constraints must look like 0:Once, 5:upon"):
            parse_constraints(bad)


def request(**kw):
    fields = {"sampler": None, "gen_length": 16, "steps": 8, "block_length": 16, "temperature": 0.0} | kw
    return Request(**fields)


def test_request_work_per_family():
    req = request(gen_length=32, steps=4, n=3)
    assert request_work("mdlm", req) == 32 * 4 * 3
    assert request_work("bd3lm", req) == 32 * 4 * 3
    assert request_work("cdcd", req) == 32 * 4 * 3
    assert request_work("ar", req) == 32 * 32 * 3  # one step per token, whatever `steps` says
    assert request_work("calm", req, chunk=4) == 8 * 3  # 8 chunks of 4 tokens, 3 head samples each
    assert request_work("calm", req, chunk=0) == 32 * 3


def test_check_request_boundary_at_max_work():
    assert MAX_WORK == 65_536
    check_request("mdlm", request(gen_length=256, steps=256))  # exactly MAX_WORK
    check_request("mdlm", request(gen_length=1, steps=MAX_WORK))
    with pytest.raises(ValueError, match=r"request too large: gen_length 1 x steps 65537 x N 1 runs = 65,537"):
        check_request("mdlm", request(gen_length=1, steps=MAX_WORK + 1))
    check_request("ar", request(gen_length=256, steps=10**6))  # ar ignores steps: 256 x 256
    with pytest.raises(ValueError, match=r"gen_length 128 x steps 128 x N 5 runs = 81,920"):
        check_request("ar", request(gen_length=128, steps=1, n=5))
    check_request("calm", request(gen_length=MAX_WORK * 4, n=1), chunk=4)
    too_large = r"16385 chunks x N 4 head samples = 65,540; this server allows at most 65,536"
    with pytest.raises(ValueError, match=too_large):
        check_request("calm", request(gen_length=16_385 * 4, n=4), chunk=4)


def test_check_request_bounds_n_except_for_calm():
    for family in ("mdlm", "ar", "bd3lm", "cdcd"):
        check_request(family, request(gen_length=8, steps=8, n=1))
        check_request(family, request(gen_length=8, steps=8, n=MAX_RUNS))
        for n in (0, -1, MAX_RUNS + 1):
            with pytest.raises(ValueError, match=rf"N \(runs\) must be in \[1, {MAX_RUNS}\], got {n}"):
                check_request(family, request(gen_length=8, steps=8, n=n))
    check_request("calm", request(gen_length=8, n=200), chunk=4)  # N is head samples for calm


def test_sampler_knobs_per_family():
    base = {"gen_length": 16, "steps": 8, "block_length": 8, "temperature": 0.5}
    assert sampler_knobs("mdlm", request(**base)) == {"gen_length": 16, "temperature": 0.5, "steps": 8,
                                                       "block_length": 8, "cache": "none", "cfg_scale": 0.0,
                                                       "pinned": {}}
    mdlm = sampler_knobs("mdlm", request(**base, sampler="threshold", threshold=0.7, cache="dual", cfg_scale=1.5,
                                         constraints="0:Once", pinned={3: "x"}))
    assert mdlm["threshold"] == 0.7 and mdlm["cache"] == "dual" and mdlm["cfg_scale"] == 1.5
    assert mdlm["pinned"] == {0: "Once", 3: "x"}
    assert "threshold" not in sampler_knobs("mdlm", request(**base, sampler="low_confidence", threshold=0.7))
    with pytest.raises(ValueError, match=r"cache must be one of \['none', 'prefix', 'dual'\] for the mdlm family"):
        sampler_knobs("mdlm", request(**base, cache="kv"))

    assert sampler_knobs("bd3lm", request(**base, cache="kv"))["kv_cache"] is True
    assert sampler_knobs("bd3lm", request(**base, cache="none"))["kv_cache"] is False
    bd3lm = sampler_knobs("bd3lm", request(**base))
    assert bd3lm["kv_cache"] is (CACHES["bd3lm"][0] == "kv") and "cache" not in bd3lm and "pinned" not in bd3lm
    with pytest.raises(ValueError, match="cache must be one of"):
        sampler_knobs("bd3lm", request(**base, cache="dual"))

    assert sampler_knobs("ar", request(**base, cache="kv")) == {"gen_length": 16, "temperature": 0.5}

    calm = sampler_knobs("calm", request(**base, n=50))
    assert calm == {"gen_length": 16, "temperature": 0.5, "n_candidates": 50}

    cdcd = sampler_knobs("cdcd", request(**base, cfg_scale=2.0, constraints="2:upon"))
    assert cdcd == {"gen_length": 16, "temperature": 0.5, "steps": 8, "cfg_scale": 2.0, "pinned": {2: " upon"}}


@pytest.mark.parametrize("family", ["ar", "bd3lm"])
def test_sampler_knobs_refuse_word_constraints_for_ordered_families(family):
    with pytest.raises(ValueError, match=f"word constraints need a masked-diffusion.*the {family} family"):
        sampler_knobs(family, request(constraints="0:Once"))
    with pytest.raises(ValueError, match="word constraints need"):
        sampler_knobs(family, request(pinned={1: "x"}))


def test_sampler_knobs_refuse_guidance_outside_mdlm_and_cdcd():
    for family in ("ar", "bd3lm"):
        refused = rf"guidance \(cfg_scale\) applies to the mdlm and cdcd families, not {family}$"
        with pytest.raises(ValueError, match=refused):
            sampler_knobs(family, request(cfg_scale=1.0))


def test_sampler_knobs_run_on_each_family(tiny_mdlm, tiny_ar, tiny_bd3lm, tiny_cdcd):
    """What sampler_knobs returns is accepted by the samplers (no knob one of them refuses)."""
    for model, sampler, extra in ((tiny_mdlm, "threshold", {"cache": "prefix", "constraints": "0:Once"}),
                                  (tiny_ar, "ar", {}), (tiny_bd3lm, "low_confidence", {"cache": "none"}),
                                  (tiny_cdcd, "euler", {"constraints": "1:upon"})):
        knobs = sampler_knobs(model.family, request(sampler=sampler, gen_length=8, steps=4, block_length=8, **extra))
        trace = generate(model, PROMPT, sampler, 0, **knobs)
        assert len(trace.final_tokens) == 8, model.family


# --- run registry --------------------------------------------------------------------------------------------------

@pytest.fixture
def clock(monkeypatch):
    """memory's time.monotonic (the run registry's clock) as a clock the test moves."""
    now = SimpleNamespace(t=1000.0)
    fake = SimpleNamespace(monotonic=lambda: now.t, perf_counter=time.perf_counter, sleep=time.sleep)
    monkeypatch.setattr(memory, "time", fake)
    return now


def test_run_registry_caps_each_user(clock):
    registry = RunRegistry()
    token = registry.start("alice")
    with pytest.raises(ValueError, match="a run of yours is still going"):
        registry.start("alice")
    clock.t += 1
    bob = registry.start("bob")  # other users are not affected
    registry.finish("alice", token)
    clock.t += 1
    registry.start("alice")
    with pytest.raises(ValueError, match="still going"):
        registry.start("bob")
    registry.finish("bob", bob)
    registry.start("bob")


def test_run_registry_finish_frees_only_that_run(clock):
    registry = RunRegistry(per_user=2)
    first = registry.start("u")
    clock.t += 1
    second = registry.start("u")
    with pytest.raises(ValueError, match=r"at most 2 run per user"):
        registry.start("u")
    registry.finish("u", first)
    assert registry.runs["u"] == [second]
    clock.t += 1
    registry.start("u")
    with pytest.raises(ValueError, match="still going"):
        registry.start("u")
    registry.cancel("u")  # all of them (the Stop button)
    assert "u" not in registry.runs
    registry.start("u")  # the slot is free again
    registry.finish("nobody", 1.0)  # unknown user or token: nothing to do


def test_run_registry_ignores_stale_runs(clock, monkeypatch):
    registry = RunRegistry()
    registry.start("u")
    clock.t += memory.STALE_RUN_S - 1
    with pytest.raises(ValueError, match="still going"):
        registry.start("u")
    clock.t += 1  # the first run is now STALE_RUN_S old: its generator was dropped
    token = registry.start("u")
    assert registry.runs["u"] == [token]  # the stale entry is forgotten
    monkeypatch.setattr(memory, "STALE_RUN_S", 0.5)
    clock.t += 0.5
    registry.start("u")


# --- N runs in lockstep --------------------------------------------------------------------------------------------

MDLM_KNOBS = {"gen_length": 8, "steps": 4, "block_length": 8, "temperature": 1.0}


def test_live_runs_advance_in_lockstep_and_match_generate(tiny_mdlm):
    live = LiveRuns(tiny_mdlm, PROMPT, "low_confidence", 7, 3, dict(MDLM_KNOBS))
    counts = [[len(t.frames) for t in traces] for traces in live]
    assert counts == [[k, k, k] for k in range(1, MDLM_KNOBS["steps"] + 2)]
    assert [t.sampler["seed"] for t in live.traces] == [7, 8, 9]
    for k, trace in enumerate(live.traces):
        alone = generate(tiny_mdlm, PROMPT, "low_confidence", 7 + k, record="full", **MDLM_KNOBS)
        assert [f.tokens for f in trace.frames] == [f.tokens for f in alone.frames]
        assert trace.text == alone.text and trace.stats["nfe"] == alone.stats["nfe"]
        assert trace.frames[-1].hidden is not None  # 8 x 5 x 3 rows: kept
    assert len({tuple(t.final_tokens) for t in live.traces}) > 1  # the seeds differ
    assert live.notices == []


def test_live_runs_keep_finished_runs_while_others_go_on(tiny_bd3lm):
    """bd3lm stops early when its text degenerates, at a different block per seed: a finished run keeps its frames,
    the others step on."""
    knobs = {"gen_length": 24, "block_length": 8, "temperature": 0.05, "kv_cache": True, "entropy_window": 4,
             "min_entropy": 1.38}  # stop at any repeated token among the last 4
    alone = [generate(tiny_bd3lm, PROMPT, "first_hitting", k, record="full", **knobs) for k in range(3)]
    lengths = [len(t.frames) for t in alone]
    assert len(set(lengths)) > 1, lengths  # the runs do finish at different rounds
    live = LiveRuns(tiny_bd3lm, PROMPT, "first_hitting", 0, 3, knobs)
    rounds = 0
    for traces in live:
        rounds += 1  # every run still going has one frame per round; a finished one keeps its last
        assert [len(t.frames) for t in traces] == [min(rounds, n) for n in lengths]
    assert rounds == max(lengths)
    assert [t.final_tokens for t in live.traces] == [t.final_tokens for t in alone]


def test_live_runs_collect_a_warning_once(tiny_bd3lm):
    knobs = sampler_knobs("bd3lm", request(sampler="first_hitting", gen_length=16, steps=16, block_length=16,
                                           temperature=1.0))
    live = LiveRuns(tiny_bd3lm, PROMPT, "first_hitting", 0, 3, knobs)
    list(live)
    warned = [n for n in live.notices if "block_length 16 differs from the block size" in n]
    assert len(warned) == 1 and len(live.notices) == 1
    assert len(live.traces) == 3


def test_live_runs_keep_every_kth_hidden_state_of_large_requests(tiny_mdlm, monkeypatch):
    rows = MDLM_KNOBS["gen_length"] * (MDLM_KNOBS["steps"] + 1) * 3  # 120
    monkeypatch.setattr(memory, "HIDDEN_ROWS", rows)
    live = LiveRuns(tiny_mdlm, PROMPT, "low_confidence", 0, 3, dict(MDLM_KNOBS))
    list(live)
    assert live.notices == [] and all(f.hidden is not None for t in live.traces for f in t.frames)

    monkeypatch.setattr(memory, "HIDDEN_ROWS", rows // 2 - 1)  # three times too many rows: every third frame
    live = LiveRuns(tiny_mdlm, PROMPT, "low_confidence", 0, 3, dict(MDLM_KNOBS))
    list(live)
    for trace in live.traces:
        last = len(trace.frames) - 1
        assert [i for i, f in enumerate(trace.frames) if f.hidden is not None] == sorted({*range(0, last, 3), last})
    assert len(live.notices) == 1 and "kept every 3 steps" in live.notices[0] and "120 rows" in live.notices[0]
    assert all(f.proposal is not None for f in live.traces[0].frames)  # the rest of the full record stays
    assert hidden_state_paths(unpacked(live.traces[0])).data  # the latent view still draws the run


def test_hidden_rows_count_bd3lm_steps_per_block_and_diffusion_gemma_steps_per_canvas():
    from types import SimpleNamespace

    from explorer.page.memory import frames_per_run

    def model(family, **sizes):
        return SimpleNamespace(family=family, **sizes)

    assert frames_per_run(model("mdlm"), {"gen_length": 16, "steps": 8}) == 8  # steps of the whole run
    assert frames_per_run(model("ar"), {"gen_length": 16}) == 16
    assert frames_per_run(model("bd3lm", block_size=16), {"gen_length": 32, "steps": 4}) == 4 * 3
    assert frames_per_run(model("bd3lm", block_size=16), {"gen_length": 32, "steps": 4, "block_length": 8}) == 4 * 5
    assert frames_per_run(model("bd3lm", block_size=16), {"gen_length": 32, "steps": None}) == 32
    assert frames_per_run(model("bd3lm", block_size=16), {"gen_length": 32, "steps": 64}) == 16 * 3  # <= a token a step
    assert frames_per_run(model("diffusion_gemma", canvas_length=4), {"gen_length": 10, "steps": 3}) == 3 * 3


def test_live_runs_ar_counts_one_frame_per_token_for_hidden_rows(tiny_ar, monkeypatch):
    monkeypatch.setattr(memory, "HIDDEN_ROWS", 8 * 9 * 2 - 1)  # ar: gen_length x (gen_length + 1) x N = 144
    live = LiveRuns(tiny_ar, PROMPT, "ar", 0, 2, {"gen_length": 8, "temperature": 1.0})
    list(live)
    assert "144 rows" in live.notices[0] and "every 2 steps" in live.notices[0]
    assert [f.hidden is not None for f in live.traces[0].frames] == [i % 2 == 0 or i == 8 for i in range(9)]


# --- shipped examples ----------------------------------------------------------------------------------------------

def test_load_examples_are_traces_of_the_example_runs():
    found = load_examples()
    assert sorted(found) == sorted(examples.EXAMPLE_RUNS)
    for name, trace in found.items():
        checkpoint, prompt, sampler, knobs = examples.EXAMPLE_RUNS[name]
        assert isinstance(trace, Trace) and len(trace.frames) > 1, name
        assert trace.model["checkpoint"] == checkpoint and trace.sampler["name"] == sampler
        assert trace.prompt_text == prompt
        assert len(trace.final_tokens) <= knobs["gen_length"] and trace.text
        assert all(f.hidden is None for f in trace.frames)


def test_load_examples_of_an_empty_folder(tmp_path):
    assert load_examples(tmp_path) == {}


def test_the_page_lists_each_shipped_checkpoint_once():
    import explorer
    from explorer.page import common

    choices = common.Page().choices()  # the default root is the shipped checkpoints' own folder
    assert choices[: len(explorer.shipped())] == list(explorer.shipped())
    assert len(choices) == len(set(choices)) and not any(c.startswith("checkpoints/") for c in choices)


def test_the_rules_import_without_gradio():
    """The page's rules serve the CLI (`python -m explorer examples`) and tests without loading Gradio."""
    import subprocess
    import sys

    code = ("import sys\nfrom explorer.page import examples, folders, memory, requests\n"
            "print(sorted(m for m in ('gradio', 'explorer.page.layout') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]


# --- issue 20: a run's own notes ------------------------------------------------------------------------------------

STEPS_OVER = {"gen_length": 8, "steps": 16, "block_length": 8, "temperature": 1.0}  # more steps than tokens


@pytest.mark.filterwarnings("ignore:another user's note")
def test_live_runs_note_their_own_run_and_not_warnings_from_other_threads(tiny_mdlm, monkeypatch):
    """A warning raised in another thread (another user's request; Gradio's queue) while the run steps is not one of
    the run's notes; the run's own note (steps reduced to fit) is, once."""
    forward = tiny_mdlm.forward

    def busy_server(*args, **kwargs):  # another thread warns while this run's step is in progress
        other = threading.Thread(target=warnings.warn, args=("another user's note",))
        other.start()
        other.join()
        return forward(*args, **kwargs)

    monkeypatch.setattr(tiny_mdlm, "forward", busy_server)
    live = LiveRuns(tiny_mdlm, PROMPT, "low_confidence", 0, 2, dict(STEPS_OVER))
    list(live)
    assert live.notices == ["steps reduced to fit: 16 steps for 8 masked tokens, and a step commits at least one "
                            "token, so 8 steps run"]
    assert [t.stats["steps"] for t in live.traces] == [8, 8]


def test_the_steps_reduced_note_is_on_the_first_frame_and_is_a_warning_for_python_code(tiny_mdlm, tiny_bd3lm):
    with pytest.warns(UserWarning, match="steps reduced to fit: 16 steps for 8 masked tokens"):
        trace = generate(tiny_mdlm, PROMPT, "low_confidence", 0, **STEPS_OVER)
    assert trace.frames[0].notes and "so 8 steps run" in trace.frames[0].notes[0]
    assert all(f.notes is None for f in trace.frames[1:]) and trace.stats["steps"] == 8
    # two blocks of 4: 4 steps per block > 4 tokens per block would be fine; 8 per block is not
    trace = generate(tiny_mdlm, PROMPT, "low_confidence", 0, gen_length=8, steps=16, block_length=4)
    assert "16 steps for 8 masked tokens" in trace.frames[0].notes[0] and trace.stats["steps"] == 8
    exact = generate(tiny_mdlm, PROMPT, "low_confidence", 0, gen_length=8, steps=8, block_length=4)
    assert all(f.notes is None for f in exact.frames)
    assert all(f.notes is None for f in generate(tiny_mdlm, PROMPT, "ancestral", 0, gen_length=8, steps=16).frames)
    # at level "none" the note waits for the one frame kept
    assert "steps reduced" in generate(tiny_mdlm, PROMPT, "low_confidence", 0, "none", **STEPS_OVER).frames[0].notes[0]
    # bd3lm: steps per block beyond the block's tokens
    knobs = {"gen_length": 8, "block_length": tiny_bd3lm.block_size, "steps": 2 * tiny_bd3lm.block_size,
             "stop_at_eos": False, "min_entropy": 0.0}
    trace = generate(tiny_bd3lm, PROMPT, "low_confidence", 0, **knobs)
    assert trace.frames[0].notes == [f"steps reduced to fit: {knobs['steps']} steps per block for blocks of "
                                     f"{knobs['block_length']} tokens, and a step commits at least one token, so at "
                                     f"most {knobs['block_length']} steps per block run"]


def test_notes_round_trip_through_a_trace_file_and_are_checked(tiny_mdlm, tmp_path):
    trace = generate(tiny_mdlm, PROMPT, "low_confidence", 0, **STEPS_OVER)
    again = Trace.load(trace.save(tmp_path / "t.json"))
    assert again.frames[0].notes == trace.frames[0].notes
    data = trace.to_dict()
    data["frames"][0]["notes"] = ["fine", 3]
    with pytest.raises(ValueError, match=r"frames\[0\]\.notes\[1\] must be a string, got an int"):
        Trace.from_dict(data)


# --- issue 20: the sliders' ranges follow the checkpoint -----------------------------------------------------------

def shipped_config(name: str) -> dict:
    from explorer.models.base import read_config

    return read_config(explorer.shipped()[name])


def settings(name: str, sampler: str | None = None) -> dict:
    from explorer.page.requests import slider_settings
    from explorer.sampling import sampler_for

    config = shipped_config(name)
    return slider_settings(config["family"], sampler_for(config["family"], sampler), config)


def test_checkpoint_shape_reads_context_chunk_and_block_size_without_loading():
    from explorer.page.requests import checkpoint_shape

    assert checkpoint_shape(shipped_config("mdlm-tiny")) == (128, 1, None)
    assert checkpoint_shape(shipped_config("bd3lm-tiny-b4")) == (128, 1, 4)
    assert checkpoint_shape(shipped_config("calm-tiny-k8")) == (128, 8, None)  # 16 chunk positions x K = 8
    assert checkpoint_shape({"max_sequence_length": 64}) == (64, 1, None)  # LLaDA's field
    assert checkpoint_shape({"model_length": 1024, "block_size": 4}) == (1024, 1, 4)  # the DiT releases
    for hostile in ({}, {"model": {"backbone": {"max_seq_len": "128"}}}, {"model": [1]}, {"model_length": -3}):
        assert checkpoint_shape(hostile) == (None, 1, None)


def test_the_gen_length_slider_stops_at_the_checkpoints_context():
    from explorer.page.requests import MAX_LENGTH, slider_settings
    from explorer.sampling import sampler_for

    for name in ("mdlm-tiny", "cdcd-tiny"):
        assert settings(name)["gen_length"] == {"minimum": 1, "maximum": 128, "step": 1, "value": 64}, name
    assert settings("ar-tiny")["gen_length"] == {"minimum": 1, "maximum": MAX_LENGTH, "step": 1, "value": 64}
    assert settings("bd3lm-tiny-b16")["gen_length"]["maximum"] == MAX_LENGTH  # both slide their window past 128
    calm = settings("calm-tiny-k8")["gen_length"]
    assert (calm["minimum"], calm["maximum"], calm["step"], calm["value"]) == (8, 128, 8, 64)  # whole chunks
    small = slider_settings("mdlm", sampler_for("mdlm"), {"max_sequence_length": 48})  # a released folder
    assert small["gen_length"]["maximum"] == small["gen_length"]["value"] == 48 == small["steps"]["maximum"]
    assert slider_settings("mdlm", sampler_for("mdlm"), {})["gen_length"]["maximum"] == MAX_LENGTH  # not given


def test_other_sliders_follow_the_family():
    from explorer.page.requests import MAX_LENGTH

    mdlm = settings("mdlm-tiny")
    assert mdlm["steps"]["maximum"] == 128 and mdlm["block_length"]["maximum"] == 128  # more steps are skipped
    assert settings("cdcd-tiny")["steps"] == {"minimum": 1, "maximum": 2 * MAX_LENGTH, "value": 400}
    bd3lm = settings("bd3lm-tiny-b4")
    assert bd3lm["block_length"]["value"] == bd3lm["steps"]["value"] == 4  # the block size it was trained with
    assert bd3lm["block_length"]["maximum"] == bd3lm["steps"]["maximum"] == 128  # per block, within its context
    assert settings("calm-tiny-k4")["temperature"] == {"minimum": 0, "maximum": 1, "value": 1.0}
    assert settings("ar-tiny")["temperature"]["maximum"] == 2


def test_a_family_switch_takes_the_new_familys_registry_defaults():
    """Each checkpoint's settings are the registry defaults of its family: cdcd-tiny's 400 steps and temperature do
    not reach ar-tiny (whose one step per token is its gen length), nor mdlm's 0 a cdcd run."""
    from explorer.sampling import sampler_for

    cdcd, ar, mdlm = settings("cdcd-tiny"), settings("ar-tiny"), settings("mdlm-tiny")
    cdcd_defaults = sampler_for("cdcd")
    assert (cdcd["steps"]["value"], cdcd["temperature"]["value"]) == (cdcd_defaults.default("steps"),
                                                                      cdcd_defaults.default("temperature"))
    assert cdcd["steps"]["value"] != mdlm["steps"]["value"]
    assert ar["temperature"]["value"] == sampler_for("ar").default("temperature")
    assert ar["steps"]["value"] == sampler_for("ar").default("gen_length") == ar["gen_length"]["value"]
    assert (mdlm["steps"]["value"], mdlm["temperature"]["value"]) == (64, 0.0)
    assert settings("mdlm-tiny", "ancestral")["temperature"]["value"] == 1.0  # the sampler's own default


def test_the_chat_template_box_is_offered_only_where_a_template_is(tmp_path):
    from explorer.released.synthetic import write_tiny_llada

    assert folders.has_chat_template(write_tiny_llada(tmp_path / "chat"))
    assert not folders.has_chat_template(write_tiny_llada(tmp_path / "base", template=None))
    assert not any(folders.has_chat_template(folder) for folder in explorer.shipped().values())
