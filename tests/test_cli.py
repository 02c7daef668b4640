import json
import os
import subprocess
import sys
from pathlib import Path

import explorer

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, check=True):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "explorer", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_list_prints_the_shipped_checkpoints():
    out = cli("list").stdout
    assert "ar-tiny" in out and "mdlm-tiny" in out


def test_sample_prints_text_and_writes_a_trace(tmp_path):
    trace_path = tmp_path / "t.json"
    result = cli("sample", "--checkpoint", "mdlm-tiny", "--prompt", "ROMEO:", "--gen-length", "32", "--steps", "16",
                 "--block-length", "16", "--sampler", "low_confidence", "--temperature", "0", "--seed", "0",
                 "--record", "full", "--trace", str(trace_path))
    trace = explorer.Trace.load(trace_path)
    assert result.stdout.startswith("ROMEO:") and trace.text in result.stdout
    assert len(trace.frames) == 17 and trace.frames[5].confidence is not None
    assert trace.sampler["block_length"] == 16 and trace.stats["nfe"] == 16


def test_sample_ar_and_pins(tmp_path):
    result = cli("sample", "--checkpoint", "ar-tiny", "--prompt", "KING:", "--gen-length", "16", "--temperature",
                 "0.8", "--seed", "3")
    assert result.stdout.startswith("KING:")
    result = cli("sample", "--checkpoint", "mdlm-tiny", "--gen-length", "16", "--steps", "16", "--pin", "4: love")
    assert " love" in result.stdout


def test_eval_writes_the_documented_keys(tmp_path):
    out = tmp_path / "e.json"
    cli("eval", "--checkpoint", "ar-tiny", "--split", "val", "--max-windows", "8", "--json", str(out))
    result = json.loads(out.read_text())
    assert {"family", "split", "tokens", "nll_per_token", "ppl"} <= set(result)
    assert result["family"] == "ar" and result["split"] == "val" and result["tokens"] == 8 * 128


def test_bad_input_exits_2_with_a_message_naming_the_knob():
    result = cli("sample", "--checkpoint", "mdlm-tiny", "--gen-length", "30", "--block-length", "7", check=False)
    assert result.returncode == 2 and "block_length" in result.stderr and "Traceback" not in result.stderr
    result = cli("sample", "--checkpoint", "mdlm-tiny", "--sampler", "threshold", "--threshold", "1.5", check=False)
    assert result.returncode == 2 and "threshold must be in (0, 1]" in result.stderr
    result = cli("sample", "--checkpoint", "nope", check=False)
    assert result.returncode == 2 and "ar-tiny" in result.stderr
    result = cli("sample", "--checkpoint", "mdlm-tiny", "--pin", "five:x", check=False)
    assert result.returncode == 2 and "--pin" in result.stderr


def test_train_with_a_bad_corpus_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00\x00")
    result = cli("train", "--family", "ar", "--out", str(tmp_path / "o"), "--corpus", str(bad), check=False)
    assert result.returncode == 2 and "binary" in result.stderr


def test_eval_table_compares_checkpoints_with_clip_variances(tmp_path):
    out = tmp_path / "table.json"
    result = cli("eval", "--checkpoint", "ar-tiny", "bd3lm-tiny-b4", "--split", "val", "--max-windows", "4",
                 "--n-t", "1", "--variance-batches", "1", "--table", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [r["family"] for r in rows] == ["ar", "bd3lm"]
    assert rows[1]["block_size"] == 4 and len(rows[1]["clip_variance"]) == 5
    assert "| bd3lm-tiny-b4 | bd3lm | 4 | <= " in result.stdout
    assert out.with_suffix(".png").stat().st_size > 10_000
    result = cli("eval", "--checkpoint", "ar-tiny", "mdlm-tiny", check=False)
    assert result.returncode == 2 and "--table" in result.stderr


def test_sample_block_diffusion_with_and_without_the_kv_cache(tmp_path):
    texts = []
    for flag in ([], ["--no-kv-cache"]):
        trace_path = tmp_path / f"t{len(flag)}.json"
        result = cli("sample", "--checkpoint", "bd3lm-tiny-b16", "--prompt", "KING:", "--gen-length", "48",
                     "--trace", str(trace_path), *flag)
        trace = json.loads(trace_path.read_text())
        assert trace["model"]["family"] == "bd3lm" and {f["cache"] for f in trace["frames"][1:]} == (
            {None} if flag else {"kv"})
        texts.append(result.stdout)
    assert texts[0] == texts[1]


def test_train_bd3lm_from_an_init_checkpoint_with_a_clip_search(tmp_path):
    out = tmp_path / "b4"
    shifted = cli("train", "--family", "bd3lm", "--init", "mdlm-tiny", "--out", str(tmp_path / "no"), check=False)
    assert shifted.returncode == 2 and "--shift" in shifted.stderr and "mdlm-tiny-scratch" in shifted.stderr
    cli("train", "--family", "bd3lm", "--init", "mdlm-tiny", "--shift", "--block-size", "4", "--steps", "1",
        "--batch-size", "2", "--seq-len", "32", "--eval-every", "1", "--out", str(tmp_path / "shifted"))
    assert json.loads((tmp_path / "shifted" / "config.json").read_text())["model"]["shift"] is True
    annealed = cli("train", "--family", "bd3lm", "--anneal-steps", "5", "--out", str(tmp_path / "no"), check=False)
    assert annealed.returncode == 2 and "anneal_steps" in annealed.stderr
    cli("train", "--family", "bd3lm", "--init", "mdlm-tiny-scratch", "--block-size", "4", "--clip", "search",
        "--steps", "2", "--batch-size", "2", "--seq-len", "32", "--eval-every", "2", "--out", str(out))
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["block_size"] == 4 and config["training"]["clip"]["mode"] == "search"
    assert len(config["training"]["clip"]["variance"]) == 5
    result = cli("train", "--family", "bd3lm", "--block-size", "5", "--out", str(tmp_path / "bad"), check=False)
    assert result.returncode == 2 and "block_size" in result.stderr
    result = cli("train", "--family", "bd3lm", "--clip", "0.9,0.2", "--out", str(tmp_path / "bad"), check=False)
    assert result.returncode == 2 and "clip window" in result.stderr


def test_sample_a_released_folder_with_its_chat_template_and_stop(tmp_path):
    from explorer.released.synthetic import EOT_ID, write_tiny_llada

    folder = write_tiny_llada(tmp_path / "LLaDA-tiny", eot=True)
    common = ("sample", "--checkpoint", str(folder), "--prompt", "hi", "--gen-length", "16", "--steps", "16",
              "--block-length", "4", "--pin", "1:<|eot_id|>", "--device", "cpu", "--dtype", "float32",
              "--no-animation", "--trace")
    cli(*common, str(tmp_path / "stop.json"), "--chat")
    stopped = explorer.Trace.load(tmp_path / "stop.json")
    assert stopped.prompt_text.startswith("<|start|>user\nhi<|eot|>") and stopped.stats["stop"] == "eot"
    assert stopped.stats["nfe"] == 3 and EOT_ID in stopped.frames[-1].tokens  # block 0 only: 4 tokens, one pinned
    cli(*common, str(tmp_path / "all.json"), "--no-stop-at-eos")
    every = explorer.Trace.load(tmp_path / "all.json")
    assert every.prompt_text == "hi" and every.stats["nfe"] == 15
    plain = write_tiny_llada(tmp_path / "LLaDA-base", template=None)
    result = cli("sample", "--checkpoint", str(plain), "--chat", "--gen-length", "4", check=False)
    assert result.returncode != 0 and "--chat: LLaDA-base has no chat template" in result.stderr
