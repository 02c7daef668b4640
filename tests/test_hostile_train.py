"""Training under hostile conditions (issue 17): a kill at every stage of a save, bad knobs, a diverging run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import explorer.train as train_module
import explorer.train_autoencoder as ae_module
from explorer.cli import main
from explorer.data import load_corpus
from explorer.models.calm import Autoencoder
from explorer.train import Diverged, TrainConfig, train
from explorer.train_autoencoder import AutoencoderTrainConfig, train_autoencoder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the runs compared bit for bit use the same, and two threads on a busy 2-core machine
    make these tiny runs ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Killed(BaseException):
    """A kill at a stage of a save: like SIGKILL, no `except Exception` or cleanup of the save path catches it."""


def kill_at(monkeypatch, stage: str, nth: int) -> None:
    """Kill the run the `nth` time a save reaches `stage` (explorer.train.save_stage)."""
    seen = []

    def hook(name):
        seen.append(name)
        if name == stage and seen.count(stage) == nth:
            raise Killed(stage)

    monkeypatch.setattr(train_module, "SAVE_HOOK", hook)


def run_with_kills(run, kills, monkeypatch) -> None:
    """`run(resume)` killed at each (stage, nth) of `kills` in turn (each resume counts anew), then to the end."""
    for i, (stage, nth) in enumerate(kills):
        kill_at(monkeypatch, stage, nth)
        with pytest.raises(Killed):
            run(resume=i > 0)
    monkeypatch.setattr(train_module, "SAVE_HOOK", None)
    run(resume=True)


def strict_log(path) -> list[dict]:
    """The JSONL log, refusing NaN / Infinity (not JSON)."""

    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def without_wall(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "wall_s"} for record in log]


def files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_same_tensors(a, b) -> None:
    a, b = load_file(str(a)), load_file(str(b))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_run(run, reference, exported: list[str]) -> None:
    """`run` ended with the files, weights, optimizer state and log (but for wall times) of `reference`."""
    assert files(run) == files(reference)  # nothing left over (no train_state.tmp / .old, no *.tmp)
    for name in ["train_state/weights.safetensors", "train_state/optimizer.safetensors", *exported]:
        assert_same_tensors(run / name, reference / name)
    assert without_wall(strict_log(run / "train_log.jsonl")) == without_wall(strict_log(reference / "train_log.jsonl"))


# --- train: a kill at every stage of a save ----------------------------------------------------

def tiny_config(corpus, **changes) -> TrainConfig:
    knobs = dict(family="ar", steps=30, d_model=32, n_layers=1, batch_size=4, seq_len=32, save_every=10,
                 eval_every=10, snapshot_every=10, warmup=5, corpus=str(corpus))
    return TrainConfig(**knobs | changes)


@pytest.fixture(scope="module")
def reference_run(corpus, tmp_path_factory):
    """The uninterrupted run: saves (and snapshots) at steps 10, 20 and 30."""
    return train(tiny_config(corpus), tmp_path_factory.mktemp("reference") / "run", progress=False)


# (stage, nth): the nth time a save reaches the stage. Saves at 10, 20, 30; "train_state moved" happens from
# step 20 on (step 10 has no unit to move aside); the snapshot of step 20 is a unit of its own, written first.
KILLS = {
    "snapshot written, state not": [("step-20 renamed", 1)],
    "export written, state not": [("export", 2)],
    "state: weights written": [("weights.safetensors", 2)],
    "state: optimizer written": [("optimizer.safetensors", 2)],
    "state: state.json written": [("state.json", 2)],
    "between the renames": [("train_state moved", 1)],
    "committed, old unit not removed": [("train_state renamed", 2)],
    "final save: export written": [("export", 3)],
    "final save: between the renames": [("train_state moved", 2)],
    "again while the resume cuts the log": [("weights.safetensors", 2), ("log", 1)],
}


@pytest.mark.parametrize("kills", KILLS.values(), ids=KILLS.keys())
def test_a_kill_at_any_stage_of_a_save_resumes_to_the_uninterrupted_run(kills, corpus, tmp_path, monkeypatch,
                                                                      reference_run):
    out = tmp_path / "run"
    run_with_kills(lambda resume: train(tiny_config(corpus), out, resume=resume, progress=False), kills, monkeypatch)
    assert_same_run(out, reference_run, ["model.safetensors", "snapshots/step-20/model.safetensors"])


def test_a_real_kill_in_a_subprocess_resumes_to_the_uninterrupted_run(corpus, tmp_path, reference_run):
    """os._exit (no cleanup, no flush of Python buffers) between the renames of step 20's save, then --resume."""
    out = tmp_path / "run"
    args = ["train", "--family", "ar", "--out", str(out), "--steps", "30", "--d-model", "32", "--n-layers", "1",
            "--batch-size", "4", "--seq-len", "32", "--save-every", "10", "--eval-every", "10", "--snapshot-every",
            "10", "--warmup", "5", "--corpus", str(corpus), "--threads", "1"]
    driver = ("import os, sys\nimport explorer.train as t\nfrom explorer.cli import main\n"
              "t.SAVE_HOOK = lambda stage: os._exit(9) if stage == 'train_state moved' else None\n"
              f"sys.exit(main({args!r}))\n")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", driver], cwd=ROOT, env=env, capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr
    assert not (out / "train_state").exists() and (out / "train_state.old").is_dir()
    assert main(args + ["--resume"]) == 0
    assert_same_run(out, reference_run, ["model.safetensors", "snapshots/step-20/model.safetensors"])


def test_a_kill_between_the_renames_leaves_both_units_and_the_resume_takes_the_new_one(corpus, tmp_path,
                                                                                      monkeypatch):
    out = tmp_path / "run"
    kill_at(monkeypatch, "train_state moved", 1)
    with pytest.raises(Killed):
        train(tiny_config(corpus), out, progress=False)
    assert not (out / "train_state").exists()
    assert json.loads((out / "train_state.old" / "state.json").read_text())["step"] == 10
    assert json.loads((out / "train_state.tmp" / "state.json").read_text())["step"] == 20
    monkeypatch.setattr(train_module, "SAVE_HOOK", None)
    train(tiny_config(corpus, steps=20), out, resume=True, progress=False)  # nothing left to do at step 20
    assert json.loads((out / "train_state" / "state.json").read_text())["step"] == 20
    assert [r["step"] for r in strict_log(out / "train_log.jsonl")] == list(range(1, 21))
    assert not (out / "train_state.old").exists() and not (out / "train_state.tmp").exists()


def untagged(state_dir) -> None:
    """Rewrite the state's safetensors files as the code before issue 17 did: no step in their metadata."""
    for name in ("weights.safetensors", "optimizer.safetensors"):
        save_file(load_file(str(state_dir / name)), str(state_dir / name))


def test_a_run_saved_the_old_way_resumes_to_the_uninterrupted_run(corpus, tmp_path, monkeypatch, reference_run):
    """Today's layout is the old one (train_state/ with the same three files); old files carry no step tag."""
    out = tmp_path / "run"
    kill_at(monkeypatch, "export", 2)  # killed at step 20's save: the state is step 10's
    with pytest.raises(Killed):
        train(tiny_config(corpus), out, progress=False)
    untagged(out / "train_state")
    with safe_open(str(out / "train_state" / "weights.safetensors"), "pt") as f:
        assert "step" not in (f.metadata() or {})
    monkeypatch.setattr(train_module, "SAVE_HOOK", None)
    train(tiny_config(corpus), out, resume=True, progress=False)
    assert_same_run(out, reference_run, ["model.safetensors"])


def test_resume_refuses_a_mixed_or_broken_state(corpus, tmp_path, monkeypatch, reference_run):
    out = tmp_path / "run"
    kill_at(monkeypatch, "export", 2)
    with pytest.raises(Killed):
        train(tiny_config(corpus), out, progress=False)
    monkeypatch.setattr(train_module, "SAVE_HOOK", None)
    state = out / "train_state"
    good = state.with_name("good")
    shutil.copytree(state, good)
    shutil.copy(reference_run / "train_state" / "weights.safetensors", state)  # step 30's weights, step 10's state
    with pytest.raises(ValueError, match=r"weights.safetensors holds step 30 but .*state.json step 10: a mixed"):
        train(tiny_config(corpus), out, resume=True, progress=False)
    for text, message in [("{not json", "not valid JSON"), ("[]", "not a training state"),
                          ('{"step": -1}', "not a training state")]:
        (state / "state.json").write_text(text)
        with pytest.raises(ValueError, match=message):
            train(tiny_config(corpus), out, resume=True, progress=False)
    shutil.rmtree(state)
    shutil.copytree(good, state)
    (state / "optimizer.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(ValueError, match="optimizer.safetensors: missing, corrupt or truncated"):
        train(tiny_config(corpus), out, resume=True, progress=False)


# --- train-autoencoder: the same kills ----------------------------------------------------------

AE_CONFIG = AutoencoderTrainConfig(chunk=2, steps=30, batch_size=2, d_model=16, latent_dim=4, save_every=10)


@pytest.fixture
def small_corpus(corpus, monkeypatch):
    """train-autoencoder reads the shipped corpus; the small one keeps these runs at a second."""
    works = load_corpus(str(corpus))
    monkeypatch.setattr(ae_module, "load_corpus", lambda: works)


@pytest.fixture(scope="module")
def ae_reference(corpus, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        works = load_corpus(str(corpus))
        patch.setattr(ae_module, "load_corpus", lambda: works)
        return train_autoencoder(AE_CONFIG, tmp_path_factory.mktemp("ae-reference") / "ae", progress=False)


def assert_same_autoencoder(out, reference) -> None:
    assert_same_run(out, reference, ["autoencoder.safetensors"])
    metrics = [json.loads((folder / "config.json").read_text())["metrics"] for folder in (out, reference)]
    assert metrics[0] == metrics[1]


# saves at 10 and 20 in the loop, then the final one (with the metrics) at 30
AE_KILLS = {
    "export written, state not": [("export", 2)],
    "state: weights written": [("weights.safetensors", 2)],
    "state: optimizer written": [("optimizer.safetensors", 2)],
    "state: state.json written": [("state.json", 2)],
    "between the renames": [("train_state moved", 1)],
    "committed, old unit not removed": [("train_state renamed", 2)],
    "final save: export written": [("export", 3)],
    "final save: between the renames": [("train_state moved", 2)],
    "again while the resume cuts the log": [("optimizer.safetensors", 2), ("log", 1)],
}


@pytest.mark.parametrize("kills", AE_KILLS.values(), ids=AE_KILLS.keys())
def test_autoencoder_killed_at_any_stage_of_a_save_resumes_to_the_uninterrupted_run(kills, tmp_path, monkeypatch,
                                                                                   small_corpus, ae_reference):
    out = tmp_path / "ae"
    run_with_kills(lambda resume: train_autoencoder(AE_CONFIG, out, resume=resume, progress=False), kills,
                   monkeypatch)
    assert_same_autoencoder(out, ae_reference)


def test_autoencoder_saved_the_old_way_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, small_corpus,
                                                                         ae_reference):
    """Before issue 17 the moments lived in OUT/train_state.safetensors ({i}.m / {i}.v) and the step and weights
    in the export (config.json's training, autoencoder.safetensors)."""
    out = tmp_path / "ae"
    kill_at(monkeypatch, "train_state renamed", 1)  # step 10 saved in full, export included
    with pytest.raises(Killed):
        train_autoencoder(AE_CONFIG, out, progress=False)
    moments = load_file(str(out / "train_state" / "optimizer.safetensors"))
    save_file({key.replace("exp_avg_sq", "v").replace("exp_avg", "m"): value for key, value in moments.items()},
              str(out / "train_state.safetensors"))
    shutil.rmtree(out / "train_state")
    monkeypatch.setattr(train_module, "SAVE_HOOK", None)
    train_autoencoder(AE_CONFIG, out, resume=True, progress=False)
    assert not (out / "train_state.safetensors").exists()  # the resumed run now has the new layout
    assert_same_autoencoder(out, ae_reference)


# --- bad knobs ----------------------------------------------------------------------------------

def cli(args: list[str], capsys) -> tuple[int, str]:
    """main's exit status (argparse's errors exit through SystemExit) and stderr."""
    try:
        rc = main(args)
    except SystemExit as stop:
        rc = stop.code
    return rc, capsys.readouterr().err


TRAIN_KNOBS = [("--lr", "inf"), ("--lr", "nan"), ("--lr", "0"), ("--weight-decay", "nan"), ("--weight-decay", "-0.1"),
               ("--grad-clip", "nan"), ("--grad-clip", "-1"), ("--grad-clip", "inf"), ("--warmup", "-5"),
               ("--min-lr-ratio", "nan"), ("--min-lr-ratio", "1.5"), ("--snapshot-every", "-1"), ("--steps", "0"),
               ("--batch-size", "0"), ("--seq-len", "0"), ("--eval-every", "0"), ("--save-every", "-2"),
               ("--grad-accum", "0"), ("--dropout", "nan"), ("--seed", "-1"), ("--seed", str(2**40)),
               ("--d-model", "0"), ("--n-layers", "-1"), ("--block-size", "0"), ("--chunk", "0"),
               ("--t-min", "nan"), ("--t-max", "inf"), ("--t-max", "0.5"), ("--max-minutes", "nan"),
               ("--max-minutes", "-1"), ("--threads", "0"), ("--threads", "-1")]


@pytest.mark.parametrize("flag, value", TRAIN_KNOBS)
def test_cli_train_refuses_bad_knobs_naming_flag_value_and_range(flag, value, tmp_path, capsys):
    rc, err = cli(["train", "--family", "ar", "--out", str(tmp_path / "run"), flag, value], capsys)
    assert rc == 2
    assert "error:" in err and f"(--{flag[2:]}) must be" in err and "Traceback" not in err, err
    assert f"got {value}" in err or f"got {float(value)}" in err or f"got '{value}'" in err, err
    assert (">" in err or "in [" in err or "in (" in err), err  # the range
    assert not (tmp_path / "run").exists()


AE_KNOBS = [("--lr", "inf"), ("--lr", "nan"), ("--lr", "-1"), ("--chunk", "0"), ("--chunk", "3"), ("--chunk", "256"),
            ("--steps", "0"), ("--batch-size", "0"), ("--latent-dim", "0"), ("--d-model", "-4"), ("--seed", "-1"),
            ("--save-every", "0"), ("--threads", "0")]


@pytest.mark.parametrize("flag, value", AE_KNOBS)
def test_cli_train_autoencoder_refuses_bad_knobs(flag, value, tmp_path, capsys):
    rc, err = cli(["train-autoencoder", "--out", str(tmp_path / "ae"), flag, value], capsys)
    assert rc == 2
    assert "error:" in err and f"(--{flag[2:]}) must" in err and "Traceback" not in err, err
    assert not (tmp_path / "ae").exists()


def test_knobs_in_the_api_too():
    with pytest.raises(ValueError, match=r"lr \(--lr\) must be a finite number > 0, got inf"):
        TrainConfig(family="ar", lr=float("inf"))
    with pytest.raises(ValueError, match=r"steps \(--steps\) must be an integer >= 1, got 2.5"):
        TrainConfig(family="ar", steps=2.5)
    with pytest.raises(ValueError, match=r"min_lr_ratio \(--min-lr-ratio\) must be a finite number in \[0, 1\]"):
        TrainConfig(family="ar", min_lr_ratio=float("nan"))
    with pytest.raises(ValueError, match=r"max_minutes \(--max-minutes\) must be a finite number > 0, got inf"):
        train(TrainConfig(family="ar"), "unused", max_minutes=float("inf"))
    with pytest.raises(ValueError, match=r"chunk \(--chunk\) must divide the 128-token window"):
        AutoencoderTrainConfig(chunk=5)


# --- a diverging run stops and keeps the last good checkpoint ---------------------------------

@pytest.mark.parametrize("poison, message", [
    ("loss", r"at step 13: loss = nan, grad_norm = nan"),
    ("val_loss", r"at step 20: val_loss = inf"),
    ("weights", r"at step 20: largest \|weight\| = nan"),
])
def test_a_non_finite_value_stops_the_run_and_keeps_the_last_good_checkpoint(poison, message, corpus, tmp_path,
                                                                             monkeypatch):
    out = tmp_path / "run"
    committed = {}

    def hook(name):  # the weights file as the step-10 save committed it
        if name == "train_state renamed" and "bytes" not in committed:
            committed["bytes"] = (out / "train_state" / "weights.safetensors").read_bytes()

    monkeypatch.setattr(train_module, "SAVE_HOOK", hook)
    if poison == "loss":  # the 13th step's loss is NaN
        original, calls = train_module.LossOf.forward, []

        def forward(self, batch, generator, loss_kwargs):
            calls.append(1)
            result = original(self, batch, generator, loss_kwargs)
            return result | {"loss": result["loss"] * float("nan")} if len(calls) == 13 else result

        monkeypatch.setattr(train_module.LossOf, "forward", forward)
    elif poison == "val_loss":  # the second evaluation (step 20) is infinite
        original, calls = train_module.estimate_loss, []

        def estimate(*args):
            calls.append(1)
            return float("inf") if len(calls) == 2 else original(*args)

        monkeypatch.setattr(train_module, "estimate_loss", estimate)
    else:  # the 20th update leaves a NaN weight (a finite loss and gradient before it; no evaluation at step 20)
        original, calls = train_module.make_optimizer, []

        def make_optimizer(model, cfg):
            optimizer = original(model, cfg)
            step = optimizer.step

            def poisoned_step(*args, **kwargs):
                calls.append(1)
                result = step(*args, **kwargs)
                if len(calls) == 20:
                    with torch.no_grad():
                        next(model.parameters())[0, 0] = float("nan")
                return result

            optimizer.step = poisoned_step
            return optimizer

        monkeypatch.setattr(train_module, "make_optimizer", make_optimizer)
    with pytest.raises(Diverged, match=message + r".*stopped without saving \(the last checkpoint, step 10 in"):
        train(tiny_config(corpus, eval_every=30 if poison == "weights" else 10), out, progress=False)
    assert issubclass(Diverged, ValueError)  # the CLI prints it as `error: ...` and exits 2
    assert json.loads((out / "train_state" / "state.json").read_text())["step"] == 10
    assert (out / "train_state" / "weights.safetensors").read_bytes() == committed["bytes"]
    assert json.loads((out / "config.json").read_text())["training"]["steps_done"] == 10
    assert not (out / "snapshots" / "step-20").exists()
    log = strict_log(out / "train_log.jsonl")
    last = {"loss": 12, "val_loss": 19, "weights": 20}[poison]  # the weights' step is logged, then not saved
    assert [r["step"] for r in log] == list(range(1, last + 1))


def test_cli_a_diverging_run_exits_2_without_saving_nan_weights(corpus, tmp_path, capsys):
    """--lr 1e30 is a finite, valid knob; before issue 17 such a run saved NaN weights and exited 0."""
    out = tmp_path / "run"
    args = ["train", "--family", "ar", "--out", str(out), "--steps", "5", "--d-model", "32", "--n-layers", "1",
            "--batch-size", "2", "--seq-len", "16", "--save-every", "1", "--warmup", "1", "--lr", "1e30",
            "--corpus", str(corpus)]
    rc, err = cli(args, capsys)
    assert rc == 2 and "error: training diverged at step 2" in err and "Traceback" not in err, err
    state = json.loads((out / "train_state" / "state.json").read_text())
    assert state["step"] == 1
    weights = load_file(str(out / "train_state" / "weights.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert [r["step"] for r in strict_log(out / "train_log.jsonl")] == [1]


def test_autoencoder_stops_on_a_non_finite_loss(tmp_path, monkeypatch, small_corpus):
    out = tmp_path / "ae"
    original, calls = Autoencoder.loss, []

    def loss(self, *args):
        calls.append(1)
        result = original(self, *args)
        return result | {"loss": result["loss"] * float("nan")} if len(calls) == 13 else result

    monkeypatch.setattr(Autoencoder, "loss", loss)
    with pytest.raises(Diverged, match=r"at step 13: loss = nan.*the last checkpoint, step 10"):
        train_autoencoder(AE_CONFIG, out, progress=False)
    assert json.loads((out / "train_state" / "state.json").read_text())["step"] == 10
    assert json.loads((out / "config.json").read_text())["training"]["steps_done"] == 10
    weights = load_file(str(out / "autoencoder.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert [r["step"] for r in strict_log(out / "train_log.jsonl")] == list(range(1, 13))
