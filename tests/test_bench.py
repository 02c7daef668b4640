import json

import torch

from explorer.bench import llada_generate, run_sampling_bench, sampling_table
from explorer.sampling import generate


def test_llada_reference_loop_matches_our_sampler_at_temperature_zero(tiny_mdlm):
    prompt = tiny_mdlm.tokenizer.encode("ROMEO:").ids
    ours = generate(tiny_mdlm, prompt, "low_confidence", gen_length=32, steps=16, block_length=8, temperature=0.0)
    assert ours.final_tokens == llada_generate(tiny_mdlm, prompt, 32, 16, 8, 0.0, seed=0)


def test_llada_reference_loop_samples_at_temperature(tiny_mdlm):
    a = llada_generate(tiny_mdlm, [], 16, 16, 16, 1.0, seed=0)
    b = llada_generate(tiny_mdlm, [], 16, 16, 16, 1.0, seed=1)
    assert a != b and tiny_mdlm.mask_id not in a


def test_sampling_bench_runs_end_to_end_and_writes_json_and_markdown(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "sampling.json"
    results = run_sampling_bench("mdlm-tiny", "ar-tiny", repeats=1, json_path=out, gen_length=32,
                                 synthetic_length=16, samples=2)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    assert [row["record"] for row in saved["overhead"]] == ["none", "tokens", "full"] * 2
    assert saved["vs_llada"]["identical_tokens_at_T0"] is True
    assert all(m["ours_mb"] < m["llada_mb"] for m in saved["step_memory"] if m["vocab"] > 100_000)
    assert saved["threshold"]["fixed"]["nfe_mean"] == 32
    assert all(saved["threshold"][f"threshold_{tau}"]["nfe_mean"] <= 32 for tau in (0.9, 0.7, 0.5, 0.3))
    assert out.with_suffix(".md").read_text() == sampling_table(saved)
