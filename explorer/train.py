"""Training loop shared by all families: AdamW, warmup + cosine, clipping, JSONL log, atomic resumable state.

    python -m explorer train --family mdlm --preset tiny --out checkpoints/mdlm-tiny --steps 20000

Every step's batch and dropout noise derive from (seed, step), so a run killed and resumed with
`--resume` continues exactly where an uninterrupted run would be. The resumable state lives in
`OUT/train_state/` (fp32 weights and AdamW moments as safetensors, the rest as JSON: no pickles).
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

from explorer.data import TokenStream, load_corpus, load_tokenizer, split_works, train_tokenizer
from explorer.data.corpus import DATA_DIR
from explorer.models import FAMILIES, ARConfig, BD3LMConfig, CALMConfig, CDCDConfig, MDLMConfig
from explorer.models.base import atomic_write, load_folder
from explorer.models.bd3lm import PUBLISHED_CLIP, check_clip, clip_variance
from explorer.nn import preset

SHIPPED_TOKENIZER = DATA_DIR / "tokenizer.json"
# Knobs a resumed run may change: the schedule length (to extend or shorten a run) and bookkeeping.
RESUMABLE_CHANGES = {"steps", "eval_every", "save_every", "snapshot_every"}


@dataclass(frozen=True)
class TrainConfig:
    family: str  # "ar", "mdlm", "bd3lm", "cdcd" or "calm"
    preset: str = "tiny"  # backbone preset from explorer.nn.PRESETS
    steps: int = 10000  # length of the learning-rate schedule (total optimizer steps)
    batch_size: int = 16  # windows per step
    seq_len: int = 128  # tokens per window (<= the preset's max_seq_len)
    lr: float = 2e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup: int = 200  # linear warmup steps
    weight_decay: float = 0.1  # AdamW decoupled weight decay (matrices only)
    grad_clip: float = 1.0  # max global gradient norm
    dropout: float = 0.1  # backbone dropout
    seed: int = 0  # model init, batches and dropout all derive from it
    direction: str = "l2r"  # ar only: "r2l" trains right-to-left
    d_model: int | None = None  # override the preset's width (tests use tiny models)
    n_layers: int | None = None  # override the preset's depth
    eval_every: int = 500  # steps between validation estimates
    save_every: int = 250  # steps between resumable checkpoints
    snapshot_every: int = 0  # also keep the weights every N steps in OUT/snapshots/step-N (0 = never)
    corpus: str | None = None  # a .txt file or folder; None = the shipped Shakespeare corpus
    init: str | None = None  # start from this checkpoint's weights (name or folder), e.g. bd3lm from mdlm-tiny
    block_size: int = 16  # bd3lm only: tokens per block L'
    clip: str = "published"  # bd3lm only: mask-rate window: "published", "search", "none" or "beta,omega"
    time_warping: bool = True  # cdcd only: draw noise levels through the learned loss CDF (False: uniform in log t)
    t_min: float = 1.0  # cdcd only: smallest noise scale
    t_max: float = 300.0  # cdcd only: largest noise scale
    chunk: int = 4  # calm only: tokens per latent vector (K); must match the autoencoder
    autoencoder: str | None = None  # calm only: folder of the trained autoencoder (python -m explorer train-autoencoder)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {self.family!r}")
        for knob in ("steps", "batch_size", "seq_len", "save_every", "eval_every"):
            if getattr(self, knob) < 1:
                raise ValueError(f"{knob} must be >= 1, got {getattr(self, knob)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.family == "bd3lm":
            parse_clip(self.clip, self.block_size)
        if not 0 < self.t_min < self.t_max:
            raise ValueError(f"t_min must be > 0 and < t_max, got t_min={self.t_min}, t_max={self.t_max}")


def parse_clip(clip: str, block_size: int) -> tuple[float, float] | None | str:
    """The training clip window: a (beta, omega) pair, None (unclipped) or "search" (decided at step 0)."""
    if clip == "published":
        return PUBLISHED_CLIP.get(block_size)
    if clip in ("none", "search"):
        return None if clip == "none" else clip
    try:
        lo, hi = (float(x) for x in clip.split(","))
    except ValueError:
        raise ValueError(f"clip must be 'published', 'search', 'none' or 'beta,omega', got {clip!r}") from None
    return check_clip((lo, hi))


def build_model(cfg: TrainConfig, tokenizer):
    overrides = {"vocab_size": tokenizer.get_vocab_size(), "dropout": cfg.dropout}
    if cfg.d_model:
        overrides |= {"d_model": cfg.d_model, "d_ff": int(cfg.d_model * 8 / 3 // 8 * 8)}
    if cfg.n_layers:
        overrides["n_layers"] = cfg.n_layers
    if cfg.family == "ar":
        config = ARConfig(backbone=preset(cfg.preset, attention="causal", **overrides), direction=cfg.direction)
    elif cfg.family == "bd3lm":
        config = BD3LMConfig(backbone=preset(cfg.preset, attention="block_causal", **overrides),
                             block_size=cfg.block_size)
        if cfg.seq_len % cfg.block_size:
            raise ValueError(f"seq_len ({cfg.seq_len}) must be a multiple of block_size ({cfg.block_size})")
    elif cfg.family == "calm":
        autoencoder = load_autoencoder(cfg)
        base = preset(cfg.preset, attention="causal", **overrides)
        config = CALMConfig(backbone=base.with_(max_seq_len=base.max_seq_len // cfg.chunk), autoencoder=autoencoder.config)
    elif cfg.family == "cdcd":
        config = CDCDConfig(backbone=preset(cfg.preset, attention="bidirectional", time_conditioning=True, **overrides),
                            t_min=cfg.t_min, t_max=cfg.t_max, time_warping=cfg.time_warping)
    else:
        config = MDLMConfig(backbone=preset(cfg.preset, attention="bidirectional", **overrides))
    context = config.backbone.max_seq_len * (cfg.chunk if cfg.family == "calm" else 1)
    if cfg.seq_len > context:
        raise ValueError(f"seq_len must be <= {context} for preset {cfg.preset}, got {cfg.seq_len}")
    torch.manual_seed(cfg.seed)
    model = FAMILIES[cfg.family](config, tokenizer)
    if cfg.family == "calm":
        model.autoencoder.load_state_dict(autoencoder.state_dict())
    if cfg.init:
        init_from(model, cfg.init)
    return model


def load_autoencoder(cfg: TrainConfig):
    """The frozen autoencoder a calm run trains against; its chunk size must be the run's."""
    from explorer.models.calm import Autoencoder

    if not cfg.autoencoder:
        raise ValueError("the calm family needs --autoencoder FOLDER (train one with python -m explorer "
                         "train-autoencoder --chunk K)")
    autoencoder = Autoencoder.from_pretrained(cfg.autoencoder)
    if autoencoder.config.chunk != cfg.chunk:
        raise ValueError(f"chunk ({cfg.chunk}) must match the autoencoder's K={autoencoder.config.chunk}")
    if cfg.seq_len % cfg.chunk:
        raise ValueError(f"seq_len ({cfg.seq_len}) must be a multiple of chunk ({cfg.chunk})")
    return autoencoder


def init_from(model, checkpoint: str) -> None:
    """Copy the backbone weights of another checkpoint (same shapes; the attention mode may differ)."""
    from explorer.hub import resolve

    source = load_folder(resolve(checkpoint), FAMILIES)
    mine, theirs = model.backbone.state_dict(), source.backbone.state_dict()
    if {k: v.shape for k, v in mine.items()} != {k: v.shape for k, v in theirs.items()}:
        raise ValueError(f"init: {checkpoint} has a different backbone shape than this run")
    model.backbone.load_state_dict(theirs)


def device_name(device: str) -> str:
    """What trained the model, for the card: the GPU's name, or the CPU with its torch threads."""
    if torch.device(device).type == "cuda":
        return f"one {torch.cuda.get_device_name(device)} GPU"
    return f"a CPU ({torch.get_num_threads()} torch threads)"


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def tokenizer_for(cfg: TrainConfig, works: dict[str, str]):
    if cfg.corpus is None and SHIPPED_TOKENIZER.is_file():
        return load_tokenizer(SHIPPED_TOKENIZER)
    return train_tokenizer(list(split_works(works, "train").values()))


@torch.no_grad()
def estimate_loss(model, stream: TokenStream, cfg: TrainConfig, batches: int = 8) -> float:
    """Mean loss over fixed validation windows (same windows and noise at every evaluation)."""
    model.eval()
    generator = torch.Generator().manual_seed(1234)
    windows = stream.windows(cfg.seq_len)[: batches * cfg.batch_size]
    total, tokens = 0.0, 0
    for batch in windows.split(cfg.batch_size):
        out = model.loss(batch.to(model.device), generator=generator)
        total, tokens = total + float(out["nll_sum"]), tokens + out["tokens"]
    model.train()
    return total / tokens


def choose_clip(model, cfg: TrainConfig, val_stream: TokenStream) -> dict:
    """The bd3lm training window; with clip="search", the candidate with the lowest loss variance on
    validation batches (the variances are kept for the model card)."""
    choice = parse_clip(cfg.clip, cfg.block_size)
    if choice != "search":
        return {"mode": cfg.clip, "window": list(choice) if choice else None}
    windows = val_stream.windows(cfg.seq_len)[: 4 * cfg.batch_size].split(cfg.batch_size)
    variances = clip_variance(model, list(windows))
    best = min(variances, key=variances.get)
    return {"mode": "search", "window": [float(x) for x in best.split(",")], "variance": variances}


# --- resumable state --------------------------------------------------------------------------

def save_state(state_dir: Path, model, optimizer, step: int, extra: dict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    weights = model.storable_state()  # float32, the resumable copy
    moments = {}
    for index, param in enumerate(model.parameters()):
        for name, value in optimizer.state.get(param, {}).items():
            if torch.is_tensor(value) and value.dim() > 0:
                moments[f"{index}.{name}"] = value.detach().cpu().contiguous()
    opt_steps = {str(i): float(optimizer.state[p]["step"]) for i, p in enumerate(model.parameters()) if p in optimizer.state}
    atomic_write(state_dir / "weights.safetensors", lambda tmp: save_file(weights, str(tmp)))
    atomic_write(state_dir / "optimizer.safetensors", lambda tmp: save_file(moments, str(tmp)))
    meta = {"step": step, "optimizer_steps": opt_steps} | extra
    atomic_write(state_dir / "state.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))  # written last


def load_state(state_dir: Path, model, optimizer) -> dict:
    meta = json.loads((state_dir / "state.json").read_text())
    device = model.device
    model.load_state_dict(model.with_tied_head(load_file(str(state_dir / "weights.safetensors"))))
    moments = load_file(str(state_dir / "optimizer.safetensors"), device=str(device))
    for index, param in enumerate(model.parameters()):
        if str(index) in meta["optimizer_steps"]:
            optimizer.state[param] = {
                "step": torch.tensor(meta["optimizer_steps"][str(index)]),
                "exp_avg": moments[f"{index}.exp_avg"],
                "exp_avg_sq": moments[f"{index}.exp_avg_sq"],
            }
    return meta


# --- the loop --------------------------------------------------------------------------------

def train(cfg: TrainConfig, out: str | Path, resume: bool = False, max_minutes: float | None = None,
          progress: bool = True, device: str = "cpu") -> Path:
    """Train until `cfg.steps` (or `max_minutes` of wall time, then save for `--resume`) on `device`."""
    out = Path(out)
    state_dir = out / "train_state"
    log_path = out / "train_log.jsonl"
    if resume:
        if not (state_dir / "state.json").is_file():
            raise FileNotFoundError(f"--resume: no training state in {state_dir}")
        saved = json.loads((state_dir / "state.json").read_text())
        changed = {k for k in asdict(cfg) if saved["train_config"].get(k) != asdict(cfg)[k]} - RESUMABLE_CHANGES
        if changed:
            raise ValueError(f"--resume: settings differ from the saved run: {sorted(changed)} "
                             f"(only {sorted(RESUMABLE_CHANGES)} may change on resume)")
    elif (state_dir / "state.json").is_file():
        raise FileExistsError(f"{out} already holds a training run; pass --resume to continue it or pick another --out")

    works = load_corpus(cfg.corpus)
    tokenizer = load_tokenizer(out) if resume else tokenizer_for(cfg, works)
    train_stream = TokenStream(works, "train", tokenizer)
    val_stream = TokenStream(works, "val", tokenizer)
    model = build_model(cfg, tokenizer).to(device).train()
    optimizer = make_optimizer(model, cfg)
    step, tokens_seen, wall = 0, 0, 0.0
    clip_info: dict = {}
    if resume:
        meta = load_state(state_dir, model, optimizer)
        step, tokens_seen, wall = meta["step"], meta["tokens_seen"], meta["wall_s"]
        clip_info = meta.get("clip", {})
    else:
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(out / "tokenizer.json"))
        log_path.write_text("")
        if cfg.family == "bd3lm":
            clip_info = choose_clip(model, cfg, val_stream)
    loss_kwargs = {"clip": tuple(clip_info["window"]) if clip_info.get("window") else None} if cfg.family == "bd3lm" else {}

    def checkpoint():
        extra = {"tokens_seen": tokens_seen, "wall_s": round(wall, 1), "train_config": asdict(cfg),
                 "device": device_name(device)}
        if clip_info:
            extra["clip"] = clip_info
        save_state(state_dir, model, optimizer, step, extra)
        model.save_pretrained(out, extra={"training": extra | {"steps_done": step}})

    started = time.time()
    budget_end = started + max_minutes * 60 if max_minutes else None
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.family}", disable=not progress, unit="step")
    with open(log_path, "a") as log:
        while step < cfg.steps:
            t0 = time.time()
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout noise of this step
            batch = train_stream.random_batch(cfg.batch_size, cfg.seq_len, generator).to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step)
            out_loss = model.loss(batch, generator=generator, **loss_kwargs)
            optimizer.zero_grad(set_to_none=True)
            out_loss["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            tokens_seen += batch.numel()
            wall += time.time() - t0
            record = {"step": step, "loss": round(out_loss["loss"].item(), 5), "lr": lr_at(cfg, step - 1),
                      "grad_norm": round(float(grad_norm), 4), "tokens_seen": tokens_seen, "wall_s": round(wall, 2)}
            if "warp_loss" in out_loss:
                record["warp_loss"] = round(out_loss["warp_loss"].item(), 5)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                record["val_loss"] = round(estimate_loss(model, val_stream, cfg), 5)
                bar.set_postfix(val=record["val_loss"])
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(loss=record["loss"], refresh=False)
            if step % cfg.save_every == 0 or step == cfg.steps:
                checkpoint()
            if cfg.snapshot_every and step % cfg.snapshot_every == 0:  # e.g. for metric-vs-training studies
                model.save_pretrained(out / "snapshots" / f"step-{step}", extra={"training": {
                    "steps_done": step, "tokens_seen": tokens_seen, "wall_s": round(wall, 1), "train_config": asdict(cfg)}})
            if budget_end and time.time() > budget_end:
                checkpoint()
                bar.write(f"stopped at step {step} after --max-minutes {max_minutes}; continue with --resume")
                break
    bar.close()
    return out
