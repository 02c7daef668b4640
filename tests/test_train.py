import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from explorer.train import TrainConfig, lr_at, recover_unit, train

ROOT = Path(__file__).resolve().parents[1]


def tiny_args(corpus, out, steps):
    return ["--family", "ar", "--out", str(out), "--steps", str(steps), "--d-model", "32", "--n-layers", "1",
            "--batch-size", "4", "--seq-len", "32", "--save-every", "10", "--eval-every", "50", "--warmup", "5",
            "--corpus", str(corpus)]


def saved_step(out) -> int:
    """The step of OUT's checkpoint while the run writes it (0 while none is readable, e.g. mid-save)."""
    try:
        return json.loads((out / "train_state" / "state.json").read_text())["step"]
    except (OSError, ValueError):
        return 0


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(family="ar", steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(1e-4)
    assert lr_at(cfg, 9) == pytest.approx(1e-3)
    assert lr_at(cfg, 55) < lr_at(cfg, 20)
    assert lr_at(cfg, 100) == pytest.approx(1e-4)


def test_killed_run_resumes_exactly_where_an_uninterrupted_run_would_be(corpus, tmp_path):
    steps = 300
    killed = tmp_path / "killed"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "explorer", "train", *tiny_args(corpus, killed, steps), "--threads", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "train_state" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if saved_step(killed) >= 20:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    recover_unit(killed / "train_state")  # the kill may have hit a save between its renames (resume does this too)
    stopped_at = json.loads(state.read_text())["step"]
    assert 20 <= stopped_at < steps, "the run should have been killed mid-way"

    resumed = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(state.read_text())["step"] == steps

    torch.set_num_threads(1)
    cfg = TrainConfig(family="ar", steps=steps, d_model=32, n_layers=1, batch_size=4, seq_len=32, save_every=10,
                      eval_every=50, warmup=5, corpus=str(corpus))
    straight = train(cfg, tmp_path / "straight", progress=False)
    a = load_file(str(killed / "train_state" / "weights.safetensors"))
    b = load_file(str(straight / "train_state" / "weights.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    log = [json.loads(line) for line in (killed / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, steps + 1)), "each step logged once"
    assert log[-1]["loss"] < log[0]["loss"]


def test_training_refuses_to_overwrite_and_checks_resume_settings(corpus, tmp_path):
    cfg = TrainConfig(family="ar", steps=10, d_model=32, n_layers=1, batch_size=2, seq_len=16, save_every=5,
                      corpus=str(corpus))
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="settings differ .*lr"):
        train(TrainConfig(**{**cfg.__dict__, "lr": 1.0}), tmp_path / "run", resume=True, progress=False)
    longer = train(TrainConfig(**{**cfg.__dict__, "steps": 15}), tmp_path / "run", resume=True, progress=False)
    assert json.loads((longer / "train_state" / "state.json").read_text())["step"] == 15
    with pytest.raises(FileNotFoundError, match="no training state"):
        train(cfg, tmp_path / "elsewhere", resume=True, progress=False)


def test_bad_training_knobs():
    with pytest.raises(ValueError, match="family must be one of"):
        TrainConfig(family="gan")
    with pytest.raises(ValueError, match=r"dropout \(--dropout\) must be a finite number in \[0, 1\), got 1.5"):
        TrainConfig(family="ar", dropout=1.5)


def test_runs_saved_before_the_parallel_knobs_still_resume(corpus, tmp_path):
    """A train_config without grad_accum / precision (older runs) resumes with their defaults."""
    cfg = TrainConfig(family="ar", steps=4, d_model=32, n_layers=1, batch_size=2, seq_len=16, save_every=2,
                      corpus=str(corpus))
    train(cfg, tmp_path / "run", progress=False)
    state = tmp_path / "run" / "train_state" / "state.json"
    for name in ("weights.safetensors", "optimizer.safetensors"):  # older runs' files name no step either
        save_file(load_file(str(state.parent / name)), str(state.parent / name))
    meta = json.loads(state.read_text())
    meta["step"] = 2
    for knob in ("grad_accum", "precision"):
        del meta["train_config"][knob]
    state.write_text(json.dumps(meta))
    train(cfg, tmp_path / "run", resume=True, progress=False)
    assert json.loads(state.read_text())["step"] == 4
    with pytest.raises(ValueError, match="grad_accum"):
        train(TrainConfig(**{**cfg.__dict__, "grad_accum": 2}), tmp_path / "run", resume=True, progress=False)
