"""Train CALM's autoencoder (K tokens <-> one vector) on chunks of the corpus, then measure its robustness.

    python -m explorer train-autoencoder --chunk 4 --out checkpoints/autoencoders/calm-ae-k4 --steps 3000

Batches are random 128-token windows of the train split cut into chunks of K tokens (so chunk
boundaries fall anywhere in words, as in the language model's inputs). The run is short (minutes);
it saves atomically every `save_every` steps, and `--resume` continues from the last save (the batch
of each step derives from the seed and the step; `--steps` may grow on resume to train longer). The card numbers (accuracy, accuracy under noise,
collapsed dimensions) are measured on the validation split at the end and stored in config.json.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from explorer.data import TokenStream, load_corpus, load_tokenizer
from explorer.data.tokenizer import MASK
from explorer.models.base import atomic_write
from explorer.models.calm import Autoencoder, AutoencoderConfig, collapsed_dimensions, reconstruction_accuracy
from explorer.train import SHIPPED_TOKENIZER, device_name

NOISE_SIGMAS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)  # the robustness curve: accuracy of decode(mean + sigma eps)


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


def _lr(cfg: AutoencoderTrainConfig, step: int) -> float:
    if step < 100:
        return cfg.lr * (step + 1) / 100
    progress = min(1.0, (step - 100) / max(1, cfg.steps - 100))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def robustness(autoencoder: Autoencoder, chunks: torch.Tensor) -> dict:
    """Accuracy (clean and under Gaussian noise on the latent) and collapsed dimensions on `chunks` (N, K)."""
    curve = {str(s): round(reconstruction_accuracy(autoencoder, chunks, s), 6) for s in NOISE_SIGMAS}
    return {"accuracy": curve["0.0"], "accuracy_under_noise": curve, "chunks": int(len(chunks)),
            "collapsed_dims": collapsed_dimensions(autoencoder, chunks), "latent_dim": autoencoder.config.latent_dim}


def train_autoencoder(cfg: AutoencoderTrainConfig, out: str | Path, device: str = "cpu", resume: bool = False,
                      progress: bool = True) -> Path:
    out = Path(out)
    tokenizer = load_tokenizer(SHIPPED_TOKENIZER)
    mask_id = tokenizer.token_to_id(MASK)
    works = load_corpus()
    train_stream, val_stream = TokenStream(works, "train", tokenizer), TokenStream(works, "val", tokenizer)
    torch.manual_seed(cfg.seed)
    model = Autoencoder(AutoencoderConfig(vocab_size=tokenizer.get_vocab_size(), chunk=cfg.chunk,
                                          d_model=cfg.d_model, d_ff=2 * cfg.d_model,
                                          latent_dim=cfg.latent_dim)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    step, wall, runs = 0, 0.0, []
    state_file = out / "train_state.safetensors"
    if resume:
        meta = json.loads((out / "config.json").read_text())["training"]
        changed = {k for k, v in asdict(cfg).items() if meta["train_config"].get(k) != v} - {"steps", "save_every"}
        if changed:
            raise ValueError(f"--resume: settings differ from the saved autoencoder run: {sorted(changed)} (only "
                             "steps and save_every may change)")
        model.load_state_dict(load_file(str(out / "autoencoder.safetensors"), device=str(device)))
        moments = load_file(str(state_file), device=str(device))
        for i, p in enumerate(model.parameters()):
            optimizer.state[p] = {"step": torch.tensor(float(meta["steps_done"])), "exp_avg": moments[f"{i}.m"],
                                  "exp_avg_sq": moments[f"{i}.v"]}
        step, wall, runs = meta["steps_done"], meta["wall_s"], meta.get("runs", [])
    elif (out / "config.json").is_file():
        raise FileExistsError(f"{out} already holds an autoencoder; pass --resume or pick another --out")
    runs = runs + [{"steps": cfg.steps, "resume": resume}]  # every invocation, so the card can list them all
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "train_log.jsonl", "a" if resume else "w")

    def save(extra: dict | None = None):
        moments = {f"{i}.{k[-1]}": optimizer.state[p][name].detach().cpu().contiguous()
                   for i, p in enumerate(model.parameters()) if p in optimizer.state
                   for name, k in (("exp_avg", "m"), ("exp_avg_sq", "v"))}
        atomic_write(state_file, lambda tmp: save_file(moments, str(tmp)))
        training = {"train_config": asdict(cfg), "steps_done": step, "wall_s": round(wall, 1),
                    "tokens_seen": step * cfg.batch_size * 128, "device": device_name(device), "runs": runs}
        model.save_pretrained(out, extra={"training": training} | (extra or {}))

    bar = tqdm(total=cfg.steps, initial=step, desc=f"train autoencoder K={cfg.chunk}", disable=not progress)
    while step < cfg.steps:
        t0 = time.time()
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        windows = train_stream.random_batch(cfg.batch_size, 128, generator).to(device)
        for group in optimizer.param_groups:
            group["lr"] = _lr(cfg, step)
        result = model.loss(windows.view(-1, cfg.chunk), mask_id, generator)
        optimizer.zero_grad(set_to_none=True)
        result["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        wall += time.time() - t0
        log.write(json.dumps({"step": step, "loss": round(float(result["loss"].detach()), 5), "ce": round(float(result["ce"]), 5),
                              "kl": round(float(result["kl"]), 4), "accuracy": round(float(result["accuracy"]), 5),
                              "wall_s": round(wall, 2)}) + "\n")
        bar.update(1)
        bar.set_postfix(acc=f"{float(result['accuracy']):.4f}", refresh=False)
        if step % cfg.save_every == 0 and step < cfg.steps:
            save()
    log.close()
    bar.close()
    val_chunks = val_stream.windows(128)[:256].reshape(-1, cfg.chunk).to(device)
    save({"metrics": {"val": robustness(model.eval(), val_chunks)}})
    return out
