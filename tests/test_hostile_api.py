"""Hostile input through the API, the CLI and the page: samplers run without autograd whatever the caller's grad
mode, and bad knobs, prompts, seeds, devices and output paths are refused with a ValueError (CLI: `error: ...`, exit
2) that names the knob, the value and the allowed range."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import explorer
from explorer.cli import main
from explorer.sampling import stream
from explorer.sampling.calm import MAX_CANDIDATES

FAMILIES = {  # fixture -> knobs of a short run
    "tiny_ar": dict(gen_length=4),
    "tiny_mdlm": dict(gen_length=4, steps=4),
    "tiny_bd3lm": dict(gen_length=8, steps=2),
    "tiny_cdcd": dict(gen_length=4, steps=3),
    "tiny_calm": dict(gen_length=4, sampler="batch", temperature=0.5, n_candidates=4),
}


@pytest.fixture(scope="module")
def tiny_calm(tiny_calm_checkpoints):
    return explorer.load(tiny_calm_checkpoints / "calm-tiny-k2")


def grad_modes_of_calls(model):
    """Record torch.is_grad_enabled() at every module call of `model`; returns (the list, a remover)."""
    seen = []
    handles = [m.register_forward_pre_hook(lambda *_: seen.append(torch.is_grad_enabled())) for m in model.modules()]
    return seen, lambda: [h.remove() for h in handles]


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_stream_steps_run_without_autograd_and_leave_the_callers_grad_mode(request, family, grad):
    model = request.getfixturevalue(family)
    seen, remove = grad_modes_of_calls(model)
    try:
        with torch.set_grad_enabled(grad):
            _description, _ids, frames = stream(model, "ROMEO:", **FAMILIES[family])
            count = 0
            for _frame in frames:
                assert torch.is_grad_enabled() == grad  # the caller's mode between frames
                count += 1
            assert torch.is_grad_enabled() == grad
    finally:
        remove()
    assert count >= 2 and seen and not any(seen), seen  # every network call ran with autograd off


def test_cli_samples_cdcd_with_grad_enabled(capsys):
    """docs/cli.md: `sample --checkpoint cdcd-tiny --prompt "ROMEO:" --steps 400 [--clamp 0] [--churn 0]` (shrunk)."""
    assert torch.is_grad_enabled()
    code = main(["sample", "--checkpoint", "cdcd-tiny", "--prompt", "ROMEO:", "--steps", "3", "--gen-length", "6",
                 "--clamp", "--churn", "20", "--schedule", "log"])
    out, err = capsys.readouterr()
    assert code == 0 and out.startswith("ROMEO:") and "nfe 3" in err, err


# --- the API: every knob checked where it is defined, with the knob, the value and the range in the message ------

BAD_KNOBS = [
    ("tiny_mdlm", dict(cfg_scale=float("nan")), r"cfg_scale must be in \[0, inf\), got nan"),
    ("tiny_mdlm", dict(cfg_scale=float("inf")), r"cfg_scale must be in \[0, inf\), got inf"),
    ("tiny_mdlm", dict(sampler="threshold", threshold=float("nan")), r"threshold must be in \(0, 1\], got nan"),
    ("tiny_mdlm", dict(sampler="factor", factor=float("inf")), r"factor must be in \(0, inf\), got inf"),
    ("tiny_mdlm", dict(temperature=float("nan")), r"temperature must be in \[0, inf\), got nan"),
    ("tiny_mdlm", dict(top_p=float("nan")), r"top_p must be in \(0, 1\], got nan"),
    ("tiny_mdlm", dict(top_k=2.5), r"top_k must be an integer in \[1, inf\), got 2.5"),
    ("tiny_mdlm", dict(gen_length=8, block_length=0), r"block_length must be in \[1, 8\], got 0"),
    ("tiny_mdlm", dict(gen_length=10**9), r"gen_length must be in \[1, 65536\], got 1000000000"),
    ("tiny_mdlm", dict(steps=10**9), r"steps must be in \[1, 100000\], got 1000000000"),
    ("tiny_mdlm", dict(gen_length="64"), r"gen_length must be an integer in \[1, 65536\], got '64'"),
    ("tiny_mdlm", dict(gen_length=8, pinned={9: 5}), r"pinned position must be in \[0, 7\], got 9"),
    ("tiny_mdlm", dict(sampler="draft_refine", fraction=float("nan")), r"fraction must be in \(0, 1\], got nan"),
    ("tiny_bd3lm", dict(gen_length=10**9), r"gen_length must be in \[1, 65536\], got 1000000000"),
    ("tiny_bd3lm", dict(block_length=0), r"block_length must be in \[1, 32\], got 0"),
    ("tiny_bd3lm", dict(steps=10**9), r"steps must be in \[1, 100000\], got 1000000000"),
    ("tiny_bd3lm", dict(min_entropy=float("nan")), r"min_entropy must be in \[0, inf\), got nan"),
    ("tiny_bd3lm", dict(min_entropy=float("inf")), r"min_entropy must be in \[0, inf\), got inf"),
    ("tiny_bd3lm", dict(kv_cache="no"), r"kv_cache must be True or False, got 'no'"),
    ("tiny_cdcd", dict(churn=float("nan")), r"churn must be in \[0, inf\), got nan"),
    ("tiny_cdcd", dict(churn=float("inf")), r"churn must be in \[0, inf\), got inf"),
    ("tiny_cdcd", dict(cfg_scale=float("nan")), r"cfg_scale must be in \[0, inf\), got nan"),
    ("tiny_cdcd", dict(temperature=float("inf")), r"temperature must be in \[0, inf\), got inf"),
    ("tiny_cdcd", dict(steps=10**9), r"steps must be in \[1, 100000\], got 1000000000"),
    ("tiny_ar", dict(temperature=float("nan")), r"temperature must be in \[0, inf\), got nan"),
    ("tiny_ar", dict(top_p=float("inf")), r"top_p must be in \(0, 1\], got inf"),
    ("tiny_calm", dict(sampler="batch", n_candidates=MAX_CANDIDATES + 1),
     rf"n_candidates \(N\) must be in \[2, {MAX_CANDIDATES}\], got {MAX_CANDIDATES + 1}"),
    ("tiny_calm", dict(n_candidates=10**9), rf"n_candidates \(N\) must be in \[2, {MAX_CANDIDATES}\]"),
    ("tiny_calm", dict(temperature=float("nan")), r"temperature must be in \(0, 1\]"),
    ("tiny_calm", dict(temperature=1e-300), rf"temperature must be at least 1/{MAX_CANDIDATES}"),
    ("tiny_calm", dict(max_draws=10**9), r"max_draws must be in \[1, 100000\], got 1000000000"),
]


@pytest.mark.parametrize("family, knobs, message", BAD_KNOBS, ids=[f"{f}-{'-'.join(k)}" for f, k, _ in BAD_KNOBS])
def test_bad_knobs_are_refused_naming_the_knob_the_value_and_the_range(request, family, knobs, message):
    model = request.getfixturevalue(family)
    with pytest.raises(ValueError, match=message):
        explorer.generate(model, "ROMEO:", **knobs)


@pytest.mark.parametrize("prompt, message", [
    ([2048], r"prompt token id \(position 0\) must be in \[0, 2047\], got 2048"),
    ([5, -1], r"prompt token id \(position 1\) must be in \[0, 2047\], got -1"),
    ([5, 1.5], r"prompt token id \(position 1\) must be an integer in \[0, 2047\], got 1.5"),
    (b"ROMEO:", r"prompt must be text \(str\) or a list of token ids, got bytes"),
    (42, r"prompt must be text \(str\) or a list of token ids, got int"),
    ("RO\udcffMEO", r"prompt is not valid UTF-8 text: '\\udcff' at character 2"),
])
def test_bad_prompts_are_refused(tiny_mdlm, prompt, message):
    with pytest.raises(ValueError, match=message):
        stream(tiny_mdlm, prompt, gen_length=4, steps=4)


def test_prompt_ids_may_be_a_tensor_and_pinned_text_must_be_unicode(tiny_mdlm):
    _description, ids, _frames = stream(tiny_mdlm, torch.tensor([5, 6]), gen_length=4, steps=4)
    assert ids == [5, 6]
    with pytest.raises(ValueError, match=r"pinned text at 1 is not valid UTF-8 text"):
        stream(tiny_mdlm, "", gen_length=4, steps=4, pinned={1: "a\ud800"})
    with pytest.raises(ValueError, match=r"pinned position must be an integer in \[0, inf\), got 'x'"):
        stream(tiny_mdlm, "", gen_length=4, steps=4, pinned={"x": 5})


@pytest.mark.parametrize("seed", [2**70, 2**63, -1, 1.5])
def test_seeds_outside_0_to_2_63_are_refused(tiny_mdlm, seed):
    with pytest.raises(ValueError, match=r"seed must be (an integer )?in \[0, 9223372036854775807\]"):
        stream(tiny_mdlm, "", seed=seed, gen_length=4, steps=4)
    stream(tiny_mdlm, "", seed=2**63 - 1, gen_length=4, steps=4)


# --- the CLI: the same messages, `error: ...` and exit 2, before any work ---------------------------------------

def cli_error(capsys, *argv) -> str:
    """Run the CLI in process; assert it refused (exit 2) and return the message."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: "), err
    return err


def test_cli_refuses_bad_knobs_with_the_api_messages(capsys):
    sample = ["sample", "--checkpoint", "mdlm-tiny", "--gen-length", "8", "--steps", "4"]
    assert "cfg_scale must be in [0, inf), got nan" in cli_error(capsys, *sample, "--cfg-scale", "nan")
    assert "block_length must be in [1, 8], got 0" in cli_error(capsys, *sample, "--block-length", "0")
    assert "seed must be in [0, 9223372036854775807]" in cli_error(capsys, *sample, "--seed", str(2**70))
    assert "steps must be in [1, 100000]" in cli_error(capsys, *sample, "--steps", str(10**9))
    err = cli_error(capsys, "sample", "--chunk", "4", "--gen-length", "8", "--sampler", "batch", "--temperature",
                    "0.5", "--n-candidates", str(MAX_CANDIDATES + 1))
    assert f"n_candidates (N) must be in [2, {MAX_CANDIDATES}], got {MAX_CANDIDATES + 1}" in err


@pytest.mark.parametrize("device, message", [
    ("bogus", "device = 'bogus' is not a device; allowed: 'cpu'"),
    ("mps", "device = 'mps' is not a device"),
    ("cuda:7", "device: cuda:7 is not on this machine"),
])
def test_cli_refuses_a_bad_device_before_loading(capsys, monkeypatch, device, message):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a GPU 7")
    monkeypatch.setattr(explorer, "load", lambda *a, **k: pytest.fail("loaded a model"))
    assert message in cli_error(capsys, "sample", "--checkpoint", "mdlm-tiny", "--device", device)


def test_load_options_gives_the_device_torch_names():
    from explorer.released import load_options

    assert load_options("cpu") == {"device": "cpu"}
    assert load_options(None, "float32") == {"dtype": "float32"}
    if torch.cuda.is_available():
        assert load_options("0") == {"device": "cuda:0"}  # `--device 0`: GPU 0
    else:
        with pytest.raises(ValueError, match=r"device: cuda:0 is not on this machine \(0 CUDA devices\)"):
            load_options("0")


def test_cli_checks_output_paths_before_running(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(explorer, "load", lambda *a, **k: pytest.fail("ran before checking the output path"))
    (tmp_path / "file.txt").write_text("x")
    sample = ["sample", "--checkpoint", "mdlm-tiny", "--trace"]
    assert f"--trace {tmp_path} is a folder" in cli_error(capsys, *sample, str(tmp_path))
    assert "does not exist" in cli_error(capsys, *sample, str(tmp_path / "missing" / "t.json"))
    assert "is not a folder" in cli_error(capsys, *sample, str(tmp_path / "file.txt" / "t.json"))
    assert f"--json {tmp_path} is a folder" in cli_error(capsys, "eval", "--checkpoint", "ar-tiny", "--json",
                                                          str(tmp_path))
    assert "is not a folder" in cli_error(capsys, "eval", "--checkpoint", "ar-tiny", "mdlm-tiny", "--table",
                                          str(tmp_path / "file.txt" / "t.json"))
    assert "--out" in cli_error(capsys, "bench", "sampling", "--out", str(tmp_path / "file.txt"))


def test_cli_export_checks_both_outputs_before_writing_either(capsys, tiny_mdlm, tmp_path):
    trace = explorer.generate(tiny_mdlm, "ROMEO:", gen_length=4, steps=4).save(tmp_path / "t.json")
    html = tmp_path / "t.html"
    err = cli_error(capsys, "export", str(trace), "--html", str(html), "--gif", str(tmp_path))
    assert f"--gif {tmp_path} is a folder" in err and not html.exists()


def test_cli_refuses_a_prompt_that_is_not_utf8():
    """Undecodable argv bytes arrive as lone surrogates: refused with a message, no traceback."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUTF8": "1"}
    argv = [sys.executable.encode(), b"-m", b"explorer", b"sample", b"--checkpoint", b"mdlm-tiny", b"--gen-length",
            b"4", b"--steps", b"4", b"--prompt", b"ROMEO \xff:"]
    result = subprocess.run(argv, env=env, capture_output=True, timeout=300)
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2 and "error: prompt is not valid UTF-8 text" in err and "Traceback" not in err, err


# --- the page: its N agrees with the API and the CLI ---------------------------------------------------------------

def test_page_api_takes_calm_n_up_to_the_samplers_limit(app_url):
    """The page's API used to refuse calm's N above 8 (the runs slider's maximum) while its calm slider went to
    500; now N is checked by the family: calm's sampler up to MAX_CANDIDATES, the others' runs up to MAX_RUNS."""
    from gradio_client import Client

    from explorer.page.denoise import family_controls, generate
    from explorer.page.requests import MAX_RUNS

    client = Client(app_url, verbose=False)

    def run(checkpoint, sampler, n):
        return client.predict(checkpoint, "ROMEO:", sampler, 8, 8, 8, 1.0, 0.9, 0, "confidence", "kv", n, 0.0, "",
                              api_name="/generate")

    view, _stats, error, *_ = run("calm-tiny-k4", "batch", 200)
    assert not error and view.count('class="dlm-token"') == 8, error
    with pytest.raises(Exception, match=f"greater than maximum value {MAX_CANDIDATES}"):  # Gradio's own bound
        run("calm-tiny-k4", "batch", MAX_CANDIDATES + 1)
    error = run("mdlm-tiny", "low_confidence", MAX_RUNS + 1)[2]
    assert f"N (runs) must be in [1, {MAX_RUNS}], got {MAX_RUNS + 1}" in error, error
    assert family_controls("calm-tiny-k4")[6]["maximum"] == MAX_CANDIDATES
    *_, last = generate("calm-tiny-k4", "ROMEO:", "batch", 8, 8, 8, 1.0, 0.9, 0, "confidence", "kv",
                        MAX_CANDIDATES + 1)  # in process, past Gradio: the sampler's message
    assert f"n_candidates (N) must be in [2, {MAX_CANDIDATES}], got {MAX_CANDIDATES + 1}" in last[2], last[2]
