import json
import math

import pytest
import torch

from explorer.bench.sampling import llada_generate, run_sampling_bench, sampling_table
from explorer.sampling import generate


def test_llada_reference_loop_matches_our_sampler_at_temperature_zero(tiny_mdlm):
    """On the shipped model too, whose tokens depend on the commit order (a tiny random model's barely do)."""
    import explorer

    for model in (tiny_mdlm, explorer.load("mdlm-tiny")):
        prompt = model.tokenizer.encode("ROMEO:").ids
        ours = generate(model, prompt, "low_confidence", gen_length=32, steps=16, block_length=8, temperature=0.0)
        assert ours.final_tokens == llada_generate(model, prompt, 32, 16, 8, 0.0, seed=0)


def test_llada_reference_loop_samples_at_temperature(tiny_mdlm):
    a = llada_generate(tiny_mdlm, [], 16, 16, 16, 1.0, seed=0)
    b = llada_generate(tiny_mdlm, [], 16, 16, 16, 1.0, seed=1)
    assert a != b and tiny_mdlm.mask_id not in a


def test_the_time_inside_calls_counts_that_method_only_and_leaves_no_wrapper():
    from explorer.bench.measure import time_inside_calls

    layer = torch.nn.Linear(64, 64)
    x = torch.randn(256, 64)
    total, inside = time_inside_calls(layer, "forward", lambda: [layer(x) for _ in range(20)])
    assert 0 < inside <= total
    total, inside = time_inside_calls(layer, "forward", lambda: [x @ x.T for _ in range(20)])  # never called
    assert inside == 0 and total > 0
    assert "forward" not in vars(layer)
    with pytest.raises(RuntimeError):
        time_inside_calls(layer, "forward", lambda: layer(torch.randn(3, 5)))  # a failing run still unwraps
    assert "forward" not in vars(layer) and layer(x).shape == (256, 64)


def test_alternating_rounds_visit_every_run_in_turn_on_the_given_clock():
    from explorer.bench.measure import alternating, median_ratio

    calls, ticks = [], iter(range(100))
    clock = lambda: next(ticks) ** 2  # noqa: E731  a fake clock: round r of run i spans a known interval
    times = alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, clock=clock)
    assert calls == ["a", "b"] * 3
    assert times == {"a": [1, 9, 17], "b": [5, 13, 21]}  # (2k + 1)^2 - (2k)^2 for the k-th timed call
    assert median_ratio(times, "b", "a") == 13 / 9
    assert alternating({"a": lambda: None}, 0) == {"a": []}


def test_sampling_bench_runs_end_to_end_and_writes_json_and_markdown(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "sampling.json"
    results = run_sampling_bench("mdlm-tiny", "ar-tiny", repeats=1, json_path=out, gen_length=32,
                                 synthetic_length=64, samples=2)  # 64: the float64 noise LLaDA adds outweighs the
    # allocator noise of a fresh process (at 16 the two measured 57-88 MB against 76 MB)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    assert [row["record"] for row in saved["overhead"]] == ["none", "tokens", "full"] * 2
    assert all(-100 < row["own_work_pct"] < 1000 for row in saved["overhead"])
    assert saved["vs_llada"]["identical_tokens_at_T0"] is True
    assert all(m["ours_mb"] < m["llada_mb"] for m in saved["step_memory"] if m["vocab"] > 100_000)
    assert saved["threshold"]["fixed"]["nfe_mean"] == 32
    assert all(saved["threshold"][f"threshold_{tau}"]["nfe_mean"] <= 32 for tau in (0.9, 0.7, 0.5, 0.3))
    assert out.with_suffix(".md").read_text() == sampling_table(saved)


def test_app_bench_times_the_page_end_to_end_and_writes_json_and_markdown(tmp_path):
    from explorer.bench.app import app_table, run_app_bench

    out = tmp_path / "app.json"
    from explorer.page import common

    before = common.PAGE
    results = run_app_bench(repeats=1, json_path=out, gen_length=16, users=3)
    assert common.PAGE is before  # a page served earlier in this process keeps its state
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    assert {"date", "machine", "targets", "server_start", "first_paint", "first_paint_skipped", "cold_run", "n1",
            "n4", "replay", "memory"} <= set(saved)
    assert saved["machine"]["cpu_count"] >= 1 and saved["machine"]["torch_threads"] >= 1
    assert saved["server_start"]["launch_to_http_s"] > 0
    assert saved["first_paint_skipped"] is None and saved["first_paint"]["runs"] == 1  # chromium is installed in CI
    for key in ("n1", "n4"):
        assert 0 < saved[key]["first_frame"]["median_s"] < saved[key]["final"]["median_s"]
        assert saved[key]["frames_streamed"] > 2  # intermediate canvases, not only the final one
    assert saved["replay"]["runs"] == 1 and saved["cold_run"]["final_s"] > 0
    table = out.with_suffix(".md").read_text()
    assert table == app_table(saved)
    assert "| first paint in chromium" in table and "< 1 s: " in table and "< 2 s: " in table
    memory = saved["memory"]  # 3 users came, ran and left: the page counted their runs, then let go of them all
    assert memory["users"] == memory["sessions_counted"] == 3 and memory["sessions_left"] == 0
    assert 0 < memory["rss_before_mb"] and 0 < memory["runs_held_mb"] < 10
    assert memory["after_minus_before_mb"] == round(memory["rss_after_mb"] - memory["rss_before_mb"], 1)
    assert "| after they left |" in table


def test_app_bench_rejects_zero_repeats_before_starting_anything(tmp_path, capsys):
    from explorer.cli import main

    assert main(["bench", "app", "--repeats", "0", "--out", str(tmp_path)]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_examples_command_writes_the_first_paint_traces_into_out(tmp_path, capsys):
    from explorer.cli import main
    from explorer.page.examples import EXAMPLE_RUNS, load_examples

    assert main(["examples", "--out", str(tmp_path)]) == 0
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == sorted(EXAMPLE_RUNS)
    assert capsys.readouterr().out.count(f"wrote {tmp_path}") == len(EXAMPLE_RUNS)
    written, shipped = load_examples(tmp_path), load_examples()
    assert all(trace.model["checkpoint"] == EXAMPLE_RUNS[name][0] for name, trace in written.items())
    for name in ("mdlm-tiny", "ar-tiny"):  # temperature 0: the shipped traces are what the command writes
        assert written[name].final_tokens == shipped[name].final_tokens


def test_defaults_bench_marks_the_api_default_the_page_start_and_the_best(tmp_path):
    from explorer.bench.defaults import run_defaults_bench
    from explorer.page.requests import SHOWCASE

    sampler, showcase = SHOWCASE["mdlm"]
    grid = {"mdlm-tiny": [("low_confidence", {}), (sampler, showcase), ("threshold", {"block_length": 8})]}
    out = tmp_path / "defaults.json"
    results = run_defaults_bench(samples=2, json_path=out, grid=grid, gen_length=16)
    rows = results["checkpoints"]["mdlm-tiny"]["rows"]
    assert [r["api_default"] for r in rows] == [True, False, False]
    assert [r["page"] for r in rows] == [False, True, False]
    assert rows[0]["nfe"] == 16 and rows[2]["nfe"] <= 16 and all(r["gen_ppl"] > 1 for r in rows)
    assert results["checkpoints"]["mdlm-tiny"]["best"] in {r["setting"] for r in rows}
    table = out.with_suffix(".md").read_text()
    assert "| API default |" in table and "page |" in table and "**best**" in table
    assert 2.0 < results["corpus"]["unigram_entropy"] <= math.log(16) + 1e-6  # 16 real tokens, mostly distinct


def test_defaults_bench_runs_a_named_grid_on_the_prompts_asked_for(tmp_path, monkeypatch, capsys):
    """`bench defaults --grid continuous --samples N` is issue 21's comparison: the continuous default against
    mdlm-tiny's API default. A bad --samples is refused before any work."""
    from explorer.bench import defaults
    from explorer.cli import build_parser, main

    parser = build_parser()
    assert parser.parse_args(["bench", "defaults"]).grid == "all"
    assert all(parser.parse_args(["bench", "defaults", "--grid", name]).grid == name for name in defaults.GRIDS)
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "defaults", "--grid", "everything"])
    continuous = defaults.GRIDS["continuous"]
    assert ("low_confidence", {}) in continuous["mdlm-tiny"] and ("euler", {}) in continuous["cdcd-tiny"]
    calls = []
    monkeypatch.setattr(defaults, "run_defaults_bench", lambda *args, **knobs: calls.append((args, knobs)))
    out = tmp_path / "d.json"
    assert main(["bench", "defaults", "--grid", "continuous", "--samples", "3", "--json", str(out)]) == 0
    assert main(["bench", "defaults", "--json", str(out)]) == 0  # the function's own default number of prompts
    assert calls == [(("ar-tiny",), {"json_path": str(out), "grid": continuous, "samples": 3}),
                     (("ar-tiny",), {"json_path": str(out), "grid": defaults.GRID})]
    for bad in ("0", "-2"):
        assert main(["bench", "defaults", "--samples", bad, "--json", str(out)]) == 2
        assert "samples (--samples) must be an integer in [1, 100000]" in capsys.readouterr().err
    assert len(calls) == 2


def test_fast_dllm_times_on_its_prompts_and_judges_on_the_quality_prompts(tiny_mdlm, tiny_ar):
    from explorer.bench.block import block_table, fast_dllm
    from explorer.eval import generative_ppl

    prompts = [[5, 6, 7, 8]]
    quality = [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]
    result = fast_dllm(tiny_mdlm, tiny_ar, prompts, quality, block=8, repeats=1)
    assert result["samples"] == 1 and result["quality_samples"] == 3
    base = result["variants"]["no cache"]
    assert base["nfe_mean"] == result["gen_length"] and base["gen_ppl_change_pct"] == 0.0
    quality_ppl = generative_ppl(tiny_ar, quality, [generate(
        tiny_mdlm, p, "low_confidence", seed=i, gen_length=result["gen_length"], steps=result["gen_length"],
        block_length=8, temperature=0.0, record="none").final_tokens for i, p in enumerate(quality)])
    assert base["gen_ppl"] == round(quality_ppl, 2)  # judged on the quality prompts, not the timed one
    table = block_table({"torch_threads": 1, "torch": "x", "fast_dllm": result,
                         "kv_cache": {"checkpoint": "c", "gen_length": 1, "block_size": 1, "nfe": 1, "speedup": 1.0,
                                      "cached_s": 1.0, "recompute_s": 1.0, "identical_tokens": True,
                                      "flop_bound": 2.0},
                         "training_step": {"one_thread_cpu": {"speedup": 1.0, "vectorized_s": 1.0, "two_pass_s": 1.0},
                                           "batch": "1x1", "speedup": 1.0, "vectorized_s": 1.0, "two_pass_s": 1.0,
                                           "forward_gflops": {"vectorized": 1, "two_pass": 1}},
                         "draft_refine": {"gen_length": 1, "samples": 1, "judge": "j", "methods": {}}})
    assert "time: 1 prompts, median of 1 rounds; gen. PPL and NFE: 3 prompts" in table
