"""Train CALM's autoencoder (K tokens <-> one vector) on chunks of the corpus, then measure its robustness.

    python -m explorer train-autoencoder --chunk 4 --out checkpoints/autoencoders/calm-ae-k4 --steps 3000

Batches are random 128-token windows of the train split cut into chunks of K tokens (so chunk
boundaries fall anywhere in words, as in the language model's inputs). The run is short (minutes);
it saves every `save_every` steps (OUT/train_state, one unit as in explorer.train), and `--resume`
continues from the last save (the batch of each step derives from the seed and the step; `--steps` may
grow on resume to train longer); a non-finite loss stops the run without saving. The card numbers
(accuracy, accuracy under noise, collapsed dimensions) are measured on the validation split at the end
and stored in config.json.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm

from explorer.data import TokenStream, load_corpus, load_tokenizer
from explorer.data.tokenizer import MASK, SHIPPED_TOKENIZER
from explorer.eval import robustness
from explorer.models.base import read_config
from explorer.models.calm import Autoencoder, AutoencoderConfig
from explorer.train import (
    MAX_SEED,
    check_finite,
    check_knob,
    device_name,
    largest_weight,
    load_state,
    load_weights,
    recover_unit,
    save_stage,
    save_state,
    truncate_log,
)

WINDOW = 128  # tokens per training window, cut into WINDOW / K chunks
LEGACY_STATE = "train_state.safetensors"  # the AdamW moments of runs saved before OUT/train_state


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    chunk: int = 4  # K
    steps: int = 3000  # optimizer steps (cosine schedule length)
    batch_size: int = 32  # 128-token windows per step (32 x 128 / K chunks)
    lr: float = 1e-3  # peak learning rate (AdamW, 100 warmup steps, cosine to 10%)
    latent_dim: int = 64  # l
    d_model: int = 128  # token embedding / hidden width
    seed: int = 0  # init and batches
    save_every: int = 500  # steps between atomic saves

    def __post_init__(self):
        check_knob("chunk", self.chunk, 1, WINDOW, integer=True)
        if WINDOW % self.chunk:  # chunks never straddle two windows
            raise ValueError(f"chunk (--chunk) must divide the {WINDOW}-token window (1, 2, 4, ..., {WINDOW}), "
                             f"got {self.chunk}")
        for knob in ("steps", "batch_size", "latent_dim", "d_model", "save_every"):
            check_knob(knob, getattr(self, knob), 1, integer=True)
        check_knob("seed", self.seed, 0, MAX_SEED, integer=True)
        check_knob("lr", self.lr, 0, low_open=True)


def _lr(cfg: AutoencoderTrainConfig, step: int) -> float:
    if step < 100:
        return cfg.lr * (step + 1) / 100
    progress = min(1.0, (step - 100) / max(1, cfg.steps - 100))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_autoencoder(cfg: AutoencoderTrainConfig, out: str | Path, device: str = "cpu", resume: bool = False,
                      progress: bool = True) -> Path:
    out = Path(out)
    tokenizer = load_tokenizer(SHIPPED_TOKENIZER)
    mask_id = tokenizer.token_to_id(MASK)
    state_dir, log_path = out / "train_state", out / "train_log.jsonl"
    recover_unit(state_dir)  # a save killed between its renames
    if not resume and ((out / "config.json").is_file() or (state_dir / "state.json").is_file()):
        raise FileExistsError(f"{out} already holds an autoencoder; pass --resume or pick another --out")
    works = load_corpus()
    train_stream, val_stream = TokenStream(works, "train", tokenizer), TokenStream(works, "val", tokenizer)
    torch.manual_seed(cfg.seed)
    model = Autoencoder(AutoencoderConfig(vocab_size=tokenizer.get_vocab_size(), chunk=cfg.chunk,
                                          d_model=cfg.d_model, d_ff=2 * cfg.d_model,
                                          latent_dim=cfg.latent_dim)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    step, wall, runs = 0, 0.0, []
    if resume:
        meta = resume_state(out, model, optimizer, device)
        changed = {k for k, v in asdict(cfg).items() if meta["train_config"].get(k) != v} - {"steps", "save_every"}
        if changed:
            raise ValueError(f"--resume: settings differ from the saved autoencoder run: {sorted(changed)} (only "
                             "steps and save_every may change)")
        step, wall = meta["step"], meta["wall_s"]
        runs = meta["runs"] if isinstance(meta.get("runs"), list) else []
        truncate_log(log_path, step)  # drop what the killed run logged after its last save
    runs = runs + [{"steps": cfg.steps, "resume": resume}]  # every invocation, so the card can list them all
    saved_step = step if resume else None  # the last good checkpoint, for the message if the run diverges
    out.mkdir(parents=True, exist_ok=True)

    def kept() -> str:
        return f"the last checkpoint, step {saved_step} in {state_dir}, is untouched" if saved_step is not None \
            else "no checkpoint was saved yet"

    def save(extra: dict | None = None):
        nonlocal saved_step
        check_finite(step, {"largest |weight|": largest_weight(model)}, kept())
        training = {"train_config": asdict(cfg), "steps_done": step, "wall_s": round(wall, 1),
                    "tokens_seen": step * cfg.batch_size * WINDOW, "device": device_name(device), "runs": runs}
        # the exported model first: a run killed before the state's commit redoes this step and exports it again
        model.save_pretrained(out, extra={"training": training} | (extra or {}))
        save_stage("export")
        log.flush()
        os.fsync(log.fileno())  # the log holds every step the state is about to cover
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        meta = {"step": step, "tokens_seen": training["tokens_seen"], "wall_s": training["wall_s"],
                "train_config": training["train_config"], "runs": runs}
        save_state(state_dir, weights, list(model.parameters()), optimizer, meta)
        (out / LEGACY_STATE).unlink(missing_ok=True)  # a resumed run of the old layout now has the new one
        saved_step = step

    bar = tqdm(total=cfg.steps, initial=step, desc=f"train autoencoder K={cfg.chunk}", disable=not progress)
    with open(log_path, "a" if resume else "w") as log:
        while step < cfg.steps:
            t0 = time.time()
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            windows = train_stream.random_batch(cfg.batch_size, WINDOW, generator).to(device)
            for group in optimizer.param_groups:
                group["lr"] = _lr(cfg, step)
            result = model.loss(windows.view(-1, cfg.chunk), mask_id, generator)
            optimizer.zero_grad(set_to_none=True)
            result["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            check_finite(step + 1, {"loss": result["loss"].detach(), "grad_norm": grad_norm}, kept())
            optimizer.step()
            step += 1
            wall += time.time() - t0
            record = {"step": step, "loss": round(float(result["loss"].detach()), 5),
                      "ce": round(float(result["ce"]), 5), "kl": round(float(result["kl"]), 4),
                      "accuracy": round(float(result["accuracy"]), 5), "wall_s": round(wall, 2)}
            log.write(json.dumps(record, allow_nan=False) + "\n")
            bar.update(1)
            bar.set_postfix(acc=f"{float(result['accuracy']):.4f}", refresh=False)
            if step % cfg.save_every == 0 and step < cfg.steps:
                save()
        bar.close()
        val_chunks = val_stream.windows(WINDOW)[:256].reshape(-1, cfg.chunk).to(device)
        save({"metrics": {"val": robustness(model.eval(), val_chunks)}})
    return out


def resume_state(out: Path, model: Autoencoder, optimizer, device) -> dict:
    """Load the saved run into `model` and `optimizer`; its state.json (step, wall_s, train_config, runs).
    Runs saved before OUT/train_state existed kept the moments in OUT/train_state.safetensors and the rest
    in the exported autoencoder (config.json's "training", autoencoder.safetensors): they resume too."""
    state_dir = out / "train_state"
    if (state_dir / "state.json").is_file() or not (out / LEGACY_STATE).is_file():
        meta, weights = load_state(state_dir, list(model.parameters()), optimizer, device)
        load_weights(model, weights, state_dir / "weights.safetensors")
        return meta
    config = read_config(out)
    training = config.get("training") if isinstance(config, dict) else None
    if not (isinstance(training, dict) and isinstance(training.get("steps_done"), int) and training["steps_done"] >= 0
            and isinstance(training.get("train_config"), dict) and isinstance(training.get("wall_s"), (int, float))
            and math.isfinite(training["wall_s"])):
        raise ValueError(f"{out / 'config.json'}: no valid \"training\" record (steps_done, wall_s, train_config)")
    try:
        weights = load_file(str(out / "autoencoder.safetensors"), device=str(device))
        moments = load_file(str(out / LEGACY_STATE), device=str(device))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{out}: autoencoder.safetensors or {LEGACY_STATE} is missing or corrupt ({err})") from None
    load_weights(model, weights, out / "autoencoder.safetensors")
    for i, p in enumerate(model.parameters()):
        pair = [moments.get(f"{i}.{k}") for k in ("m", "v")]
        if any(m is None or m.shape != p.shape for m in pair):
            raise ValueError(f"{out / LEGACY_STATE}: the moments of parameter {i} are missing or of the wrong shape")
        optimizer.state[p] = {"step": torch.tensor(float(training["steps_done"])), "exp_avg": pair[0],
                              "exp_avg_sq": pair[1]}
    return {"step": training["steps_done"]} | training
