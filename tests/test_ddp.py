"""Data-parallel training (issue 8): 2 gloo ranks, gradient accumulation, the batch split and bf16 checks."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from explorer.data import load_tokenizer
from explorer.train import TrainConfig, check_parallel, train

ROOT = Path(__file__).resolve().parents[1]
# Measured on this 2-core CPU (fp32, 12 steps, gloo, 2 ranks against one process), max |difference|:
#   ar    (batch 8 against 2 x 4): logged loss 1e-5 (one rounding unit of the log's 5 decimals), weights 1.1e-8
#   mdlm, bd3lm, cdcd (incl. the warp fit) (2 x 1 against 1 x 2): 0.0 and 0.0 (summing two halves is exact)
#   calm  (2 ranks x 2 micro-batches against 1 x 4): logged loss 0.0, weights 1.2e-7 (another summation order)
# The bounds allow one rounding unit of the log (plus float error) and ~8x the largest weight difference.
LOSS_TOL, WEIGHT_TOL = 2e-5, 1e-6


def knobs(corpus, family, dropout, **extra) -> dict:
    return {"family": family, "steps": 12, "d_model": 32, "n_layers": 1, "batch_size": 8, "seq_len": 32,
            "save_every": 6, "eval_every": 12, "warmup": 3, "dropout": dropout, "corpus": str(corpus)} | extra


@pytest.fixture(scope="module")
def tiny_autoencoder(tmp_path_factory, tokenizer):
    """A random (untrained) calm autoencoder on the shipped tokenizer: frozen in calm training, so its quality
    does not matter to the data-parallel check."""
    from explorer.models.calm import Autoencoder, AutoencoderConfig

    torch.manual_seed(0)
    config = AutoencoderConfig(vocab_size=tokenizer.get_vocab_size(), chunk=4, d_model=32, d_ff=64, latent_dim=8)
    return Autoencoder(config).save_pretrained(tmp_path_factory.mktemp("autoencoder"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(cfg: dict, out: Path):
    args = [f"--{k.replace('_', '-')}={v}" for k, v in cfg.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "explorer", "train", *args, "--out", str(out), "--threads", "1"]
    done = subprocess.run(cmd, cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def assert_same_run(a: Path, b: Path):
    """Same steps, per-step losses (and cdcd's warp fit, and the gradient norms), tokens and final weights."""
    log_a = [json.loads(line) for line in (a / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (b / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b] == list(range(1, 13))
    for key in ("loss", "warp_loss", "val_loss", "grad_norm"):
        pairs = [(x[key], y[key]) for x, y in zip(log_a, log_b) if key in x or key in y]
        assert max((abs(x - y) for x, y in pairs), default=0.0) < LOSS_TOL, key
    assert log_a[-1]["tokens_seen"] == log_b[-1]["tokens_seen"]
    wa = load_file(str(a / "train_state" / "weights.safetensors"))
    wb = load_file(str(b / "train_state" / "weights.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=0, atol=WEIGHT_TOL), key


@pytest.mark.parametrize("family, dropout, ddp_accum, single_accum, extra", [
    ("ar", 0.0, 1, 1, {}),
    ("mdlm", 0.1, 1, 2, {}),
    ("bd3lm", 0.1, 1, 2, {"block_size": 8, "clip": "search"}),  # rank 0 measures the window, every rank uses it
    ("cdcd", 0.1, 1, 2, {}),  # time warping is on by default: the learned warp must stay the same on both ranks
    ("calm", 0.1, 2, 4, {"chunk": 4}),  # 2 ranks x 2 micro-batches (no_sync) against 1 x 4
], ids=["ar", "mdlm", "bd3lm", "cdcd", "calm"])
def test_two_gloo_ranks_match_one_process_at_the_same_global_batch(corpus, tmp_path, tiny_autoencoder, family,
                                                                    dropout, ddp_accum, single_accum, extra):
    """ar without dropout has no noise: 2 ranks = 1 process at batch 8. The others draw noise (dropout, masks,
    noise levels, energy-head samples) per micro-batch, so 2 ranks x K micro-batches reproduce 1 process x 2K."""
    torch.set_num_threads(1)
    if family == "calm":
        extra = extra | {"autoencoder": str(tiny_autoencoder)}
    cfg = knobs(corpus, family, dropout, **extra)
    done = torchrun(cfg | {"grad_accum": ddp_accum}, tmp_path / "ddp")
    assert done.stdout.count("saved") == 1, "only rank 0 reports"
    single = train(TrainConfig(**cfg, grad_accum=single_accum), tmp_path / "single", progress=False)
    assert_same_run(tmp_path / "ddp", single)
    meta = json.loads((tmp_path / "ddp" / "train_state" / "state.json").read_text())
    assert meta["step"] == 12 and "x 2 ranks" in meta["device"]
    single_meta = json.loads((single / "train_state" / "state.json").read_text())
    assert meta.get("clip") == single_meta.get("clip")  # bd3lm's searched window (absent for the other families)
    if family == "bd3lm":
        assert meta["clip"]["mode"] == "search"
    if family == "cdcd":
        assert "warp_loss" in json.loads((single / "train_log.jsonl").read_text().splitlines()[-1])


def test_calm_keeps_the_autoencoders_tokenizer_on_a_custom_corpus(corpus, tmp_path, tiny_autoencoder, tokenizer):
    """The frozen autoencoder reads shipped-tokenizer ids, so --corpus must not train a new tokenizer for calm."""
    torch.set_num_threads(1)
    cfg = knobs(corpus, "calm", 0.0, chunk=4, autoencoder=str(tiny_autoencoder), steps=1, save_every=1, eval_every=1)
    out = train(TrainConfig(**cfg), tmp_path / "calm", progress=False)
    assert load_tokenizer(out).to_str() == tokenizer.to_str()


def test_a_two_rank_run_resumes_on_one_process_with_twice_the_micro_batches(corpus, tmp_path):
    """2 ranks x 1 micro-batch and 1 process x 2 draw the same noise, so grad_accum may change on resume when
    processes x grad_accum stays the same (8 GPUs -> 1 GPU x 8); any other change is refused."""
    torch.set_num_threads(1)
    cfg = knobs(corpus, "mdlm", 0.1)
    torchrun(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "train_state" / "state.json").read_text())["world_size"] == 2
    with pytest.raises(ValueError, match=r"settings differ .*grad_accum.*processes x grad_accum stays 2"):
        train(TrainConfig(**cfg | {"steps": 13}, grad_accum=4), tmp_path / "run", resume=True, progress=False)
    train(TrainConfig(**cfg | {"steps": 13}, grad_accum=2), tmp_path / "run", resume=True, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 14)) and math.isfinite(log[-1]["loss"])


def test_grad_accumulation_matches_one_big_batch(corpus, tmp_path):
    torch.set_num_threads(1)
    one = train(TrainConfig(**knobs(corpus, "ar", 0.0)), tmp_path / "k1", progress=False)
    two = train(TrainConfig(**knobs(corpus, "ar", 0.0), grad_accum=2), tmp_path / "k2", progress=False)
    assert_same_run(one, two)


def test_batch_that_does_not_split_evenly_is_refused(corpus, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"batch_size \(6\) must be divisible by grad_accum \(4\)"):
        TrainConfig(family="ar", batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match=r"world_size \* grad_accum \(2 \* 2 = 4\)"):
        check_parallel(TrainConfig(family="ar", batch_size=6, grad_accum=2), world_size=2, device="cpu")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")  # as torchrun would: refused before any process group forms
    with pytest.raises(ValueError, match="batch_size"):
        train(TrainConfig(**knobs(corpus, "ar", 0.0, batch_size=6)), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_bf16_is_refused_on_cpu(corpus, tmp_path):
    with pytest.raises(ValueError, match="precision 'bf16' needs a CUDA device"):
        train(TrainConfig(**knobs(corpus, "ar", 0.0), precision="bf16"), tmp_path / "run", progress=False,
              device="cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(family="ar", precision="fp16")
