"""Training loop shared by all families: AdamW, warmup + cosine, clipping, JSONL log, atomic resumable state.

    python -m explorer train --family mdlm --preset tiny --out checkpoints/mdlm-tiny --steps 20000

Every step's batch and dropout noise derive from (seed, step), so a run killed and resumed with
`--resume` continues exactly where an uninterrupted run would be. The resumable state lives in
`OUT/train_state/` (fp32 weights and AdamW moments as safetensors, the rest as JSON: no pickles), written
as one unit (a new directory, then a rename; see `write_unit`); a resume cuts `train_log.jsonl` back to
the saved step. A NaN or infinite loss, gradient norm, validation loss or weight stops the run with
`Diverged` (a ValueError) before anything of that step is saved, so the last checkpoint stays good.

Data parallel: `torchrun --nproc_per_node=N -m explorer train ...` runs DDP (gloo on CPU, nccl on
cuda:LOCAL_RANK). `batch_size` is the GLOBAL batch: each step draws the same (seed, step) batch on every
rank and cuts it into S = world_size * grad_accum equal micro-batches; rank r runs micro-batches
r*K .. r*K+K-1. The noise of micro-batch m (masking, dropout) comes from a generator seeded by
(seed, step, m), so a run's randomness depends only on S: N ranks with K micro-batches reproduce one
process with N*K micro-batches up to float error, and with a noise-free loss (ar, dropout 0) any
split reproduces the single batch. S = 1 keeps the historical (seed, step) seed. Only rank 0 writes.

Per family, what DDP has to keep identical across ranks (tests/test_ddp.py checks each against one process):
- every trainable parameter gets a gradient from every loss, so DDP runs without the slower
  find_unused_parameters (a parameter left out of a loss would stop the job at the next step);
- bd3lm: the clip window is decided once by rank 0 (`--clip search` measures it) and broadcast;
- cdcd: the time warp is learned state, but it is fitted by gradient (`TimeWarp.fit_loss` on the detached
  per-row losses), so all-reducing the gradients fits it to every rank's losses, as one process would;
- calm: the autoencoder is frozen (no gradient, nothing to reduce; every rank loads the same --autoencoder
  folder) and the energy loss's head noise and posterior samples come from the micro-batch's generator.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from explorer.data import (
    TokenStream,
    load_corpus,
    load_tokenizer,
    split_works,
    train_tokenizer,
)
from explorer.data.tokenizer import SHIPPED_TOKENIZER
from explorer.models import (
    FAMILIES,
    ARConfig,
    BD3LMConfig,
    CALMConfig,
    CDCDConfig,
    MDLMConfig,
)
from explorer.models.base import load_folder
from explorer.models.bd3lm import PUBLISHED_CLIP, check_clip, clip_variance
from explorer.nn import preset

# Knobs a resumed run may change: the schedule length (to extend or shorten a run) and bookkeeping.
RESUMABLE_CHANGES = {"steps", "eval_every", "save_every", "snapshot_every", "precision"}
PRECISIONS = ("fp32", "bf16")
OBJECTIVES = ("standard", "certainty")  # the family's own loss, or dParallel's distillation (mdlm)
MAX_SEED = 2**32 - 1  # seed * 1_000_003 + step must stay a valid torch seed (< 2**63)


@dataclass(frozen=True)
class TrainConfig:
    family: str  # "ar", "mdlm", "bd3lm", "cdcd" or "calm"
    preset: str = "tiny"  # backbone preset from explorer.nn.PRESETS
    steps: int = 10000  # length of the learning-rate schedule (total optimizer steps)
    batch_size: int = 16  # windows per step (the global batch, over all ranks and micro-batches)
    grad_accum: int = 1  # micro-batches per rank per step (gradients accumulate; same update as one batch)
    precision: str = "fp32"  # "fp32", or "bf16" autocast (CUDA only)
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
    shift: bool = False  # mdlm, bd3lm: Dream's shift (output i predicts token i + 1), for a model adapted from ar
    anneal_steps: int = 0  # mdlm only: DiffuLLaMA's attention annealing, causal -> bidirectional over these steps
    objective: str = "standard"  # the family's loss; "certainty" (mdlm): dParallel's distillation of --init
    teacher_prompts: int = 2048  # certainty only: train-split prompts the teacher continues (explorer/distill.py)
    prompt_len: int = 16  # certainty only: prompt tokens per teacher sequence; seq_len - prompt_len are generated
    distill_block: int = 32  # certainty only: semi-autoregressive block of the teacher's sampler and of the masking
    block_size: int = 16  # bd3lm only: tokens per block L'
    clip: str = "published"  # bd3lm only: mask-rate window: "published", "search", "none" or "beta,omega"
    time_warping: bool = True  # cdcd only: draw noise levels through the learned loss CDF (False: uniform in log t)
    t_min: float = 1.0  # cdcd only: smallest noise scale
    t_max: float = 300.0  # cdcd only: largest noise scale
    chunk: int = 4  # calm only: tokens per latent vector (K); must match the autoencoder
    autoencoder: str | None = None  # calm only: the trained autoencoder's folder (explorer train-autoencoder)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {self.family!r}")
        for knob in ("steps", "batch_size", "grad_accum", "seq_len", "save_every", "eval_every", "block_size", "chunk"):
            check_knob(knob, getattr(self, knob), 1, integer=True)
        for knob in ("warmup", "snapshot_every"):
            check_knob(knob, getattr(self, knob), 0, integer=True)
        for knob in ("d_model", "n_layers"):  # None keeps the preset's
            if getattr(self, knob) is not None:
                check_knob(knob, getattr(self, knob), 1, integer=True)
        check_knob("seed", self.seed, 0, MAX_SEED, integer=True)
        check_knob("lr", self.lr, 0, low_open=True)
        check_knob("min_lr_ratio", self.min_lr_ratio, 0, 1)
        check_knob("weight_decay", self.weight_decay, 0)
        check_knob("grad_clip", self.grad_clip, 0, low_open=True)
        check_knob("dropout", self.dropout, 0, 1, high_open=True)
        check_knob("t_min", self.t_min, 0, low_open=True)
        check_knob("t_max", self.t_max, self.t_min, low_open=True)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")
        if self.family == "bd3lm":
            parse_clip(self.clip, self.block_size)
        if self.family not in ("mdlm", "bd3lm") and self.shift:
            raise ValueError("shift applies to the mdlm and bd3lm families only (a model adapted from an ar one)")
        if self.family != "mdlm" and self.anneal_steps:
            raise ValueError("anneal_steps applies to the mdlm family only (adapting an ar model)")
        check_knob("anneal_steps", self.anneal_steps, 0, integer=True)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.objective == "certainty":
            if self.family != "mdlm" or not self.init:
                raise ValueError("objective 'certainty' distils an mdlm checkpoint into itself: it needs --family mdlm "
                                 "and --init (the teacher, e.g. mdlm-tiny)")
            check_knob("teacher_prompts", self.teacher_prompts, 1, integer=True)
            check_knob("prompt_len", self.prompt_len, 1, self.seq_len - 1, integer=True)
            check_knob("distill_block", self.distill_block, 1, self.seq_len - self.prompt_len, integer=True)
            if (self.seq_len - self.prompt_len) % self.distill_block:
                raise ValueError(f"seq_len - prompt_len ({self.seq_len - self.prompt_len} generated tokens) must be a "
                                 f"multiple of distill_block ({self.distill_block})")


def check_knob(name: str, value, low: float, high: float = math.inf, low_open: bool = False,
               high_open: bool = False, integer: bool = False):
    """`value` if it is a finite number (an integer if `integer`) in the range, else a ValueError naming the knob,
    its command-line flag, the value and the range."""
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool)
    ok = ok and (isinstance(value, numbers.Integral) or math.isfinite(value))  # nan and inf fail here
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        if high == math.inf:
            allowed = f"{'>' if low_open else '>='} {low}"
        else:
            allowed = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} (--{name.replace('_', '-')}) must be {'an integer' if integer else 'a finite number'}"
                         f" {allowed}, got {value!r}")
    return value


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
                             block_size=cfg.block_size, shift=cfg.shift)
        if cfg.seq_len % cfg.block_size:
            raise ValueError(f"seq_len ({cfg.seq_len}) must be a multiple of block_size ({cfg.block_size})")
    elif cfg.family == "calm":
        autoencoder = load_autoencoder(cfg)
        if autoencoder.config.vocab_size != tokenizer.get_vocab_size():
            raise ValueError(f"--autoencoder {cfg.autoencoder} reads {autoencoder.config.vocab_size} token ids but "
                             f"the run's tokenizer has {tokenizer.get_vocab_size()}: the autoencoder and the calm "
                             "model must share one tokenizer")
        base = preset(cfg.preset, attention="causal", **overrides)
        config = CALMConfig(backbone=base.with_(max_seq_len=base.max_seq_len // cfg.chunk),
                            autoencoder=autoencoder.config)
    elif cfg.family == "cdcd":
        config = CDCDConfig(backbone=preset(cfg.preset, attention="bidirectional", time_conditioning=True, **overrides),
                            t_min=cfg.t_min, t_max=cfg.t_max, time_warping=cfg.time_warping)
    else:
        config = MDLMConfig(backbone=preset(cfg.preset, attention="bidirectional", **overrides), shift=cfg.shift)
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
    if getattr(source.config, "shift", False) and not getattr(model.config, "shift", False):
        raise ValueError(f"init: {checkpoint} was trained with Dream's shift (output i predicts token i + 1); a "
                         f"{model.family} run without it would start misaligned: pass --shift or start from an "
                         "unshifted checkpoint such as mdlm-tiny-scratch")
    model.backbone.load_state_dict(theirs)


def annealing(cfg: TrainConfig, step: int) -> dict:
    """The loss's attention knob at `step`: the fraction of future keys each query sees rises linearly from 0
    (causal, as the ar model was trained) to 1 over `anneal_steps` (DiffuLLaMA); {} when not annealing."""
    if not cfg.anneal_steps or step >= cfg.anneal_steps:
        return {}
    return {"attention": step / cfg.anneal_steps}


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
    """The shipped tokenizer for the shipped corpus, a new one for `--corpus`, except for calm: its frozen
    autoencoder reads token ids of the shipped tokenizer (train-autoencoder always uses it), so a calm run keeps
    it on any corpus (byte-level BPE encodes every text)."""
    if (cfg.corpus is None or cfg.family == "calm") and SHIPPED_TOKENIZER.is_file():
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
# A checkpoint is one directory, OUT/train_state: fp32 weights, AdamW moments and state.json, all of one step.
# A save writes OUT/train_state.tmp completely and fsyncs it, moves the current unit aside (train_state.old),
# renames the new one into place and then removes the old one; `recover_unit` finishes a save killed between
# the two renames, so a resume only ever reads the files of one step (the safetensors files name their step too).

SAVE_HOOK = None  # tests: called with each stage of a save (see save_stage); raising there simulates a kill


class Diverged(ValueError):
    """A non-finite loss, gradient norm, validation loss or weight: the run stops without saving."""


def save_stage(stage: str) -> None:
    """A save has finished `stage` (tests kill the run here through SAVE_HOOK)."""
    if SAVE_HOOK is not None:
        SAVE_HOOK(stage)


def fsync(path: Path) -> None:
    """Flush a file's data (or a directory's entries) to the disk, so a crash cannot reorder it after a rename."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_unit(unit: Path) -> None:
    """Finish or clean up a killed `write_unit`: after it, `unit` is a complete unit (or absent) and alone."""
    tmp, old = unit.with_name(unit.name + ".tmp"), unit.with_name(unit.name + ".old")
    if old.exists() and not unit.exists():  # killed between the renames: tmp is complete (synced before the move)
        (tmp if tmp.exists() else old).rename(unit)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def write_unit(unit: Path, fill) -> None:
    """Replace the directory `unit` by the files `fill(folder)` writes, as a whole (see above)."""
    tmp, old = unit.with_name(unit.name + ".tmp"), unit.with_name(unit.name + ".old")
    recover_unit(unit)
    tmp.mkdir(parents=True)
    fill(tmp)
    for path in tmp.iterdir():
        fsync(path)
    fsync(tmp)
    if unit.exists():
        unit.rename(old)
        save_stage(f"{unit.name} moved")
    tmp.rename(unit)  # the commit
    fsync(unit.parent)
    save_stage(f"{unit.name} renamed")
    shutil.rmtree(old, ignore_errors=True)


def save_state(state_dir: Path, weights: dict[str, torch.Tensor], params: list, optimizer, meta: dict) -> None:
    """One resumable checkpoint: `weights` (fp32), the AdamW moments of `params` and state.json (`meta`, which
    holds the step)."""
    moments, opt_steps = {}, {}
    for index, param in enumerate(params):
        if param in optimizer.state:
            opt_steps[str(index)] = float(optimizer.state[param]["step"])
            for name in ("exp_avg", "exp_avg_sq"):
                moments[f"{index}.{name}"] = optimizer.state[param][name].detach().cpu().contiguous()
    tag = {"step": str(meta["step"])}  # a resume refuses files of another step than state.json's

    def fill(folder: Path) -> None:
        save_file(weights, str(folder / "weights.safetensors"), metadata=tag)
        save_stage("weights.safetensors")
        save_file(moments, str(folder / "optimizer.safetensors"), metadata=tag)
        save_stage("optimizer.safetensors")
        text = json.dumps(meta | {"optimizer_steps": opt_steps}, indent=1, allow_nan=False)
        (folder / "state.json").write_text(text)
        save_stage("state.json")

    write_unit(state_dir, fill)


def read_state(state_dir: Path) -> dict:
    """state.json of a checkpoint, checked (it is read from disk, so hostile until validated)."""
    path = state_dir / "state.json"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no training state in {state_dir}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    counts = ("step", "tokens_seen")
    valid = isinstance(meta, dict) and all(isinstance(meta.get(k), int) and meta[k] >= 0 for k in counts)
    valid = valid and isinstance(meta.get("wall_s"), (int, float)) and math.isfinite(meta["wall_s"])
    valid = valid and isinstance(meta.get("train_config"), dict) and isinstance(meta.get("optimizer_steps"), dict)
    valid = valid and all(isinstance(v, (int, float)) and v >= 0 for v in meta["optimizer_steps"].values())
    if not valid:
        raise ValueError(f"{path}: not a training state (needs integers step and tokens_seen >= 0, a finite wall_s, "
                         "train_config and optimizer_steps)")
    return meta


def load_state(state_dir: Path, params: list, optimizer, device) -> tuple[dict, dict[str, torch.Tensor]]:
    """The checkpoint's state.json and fp32 weights; the AdamW moments go into `optimizer` (for `params`)."""
    meta = read_state(state_dir)
    tensors = {}
    for name in ("weights.safetensors", "optimizer.safetensors"):
        path = state_dir / name
        try:
            with safe_open(str(path), "pt", device=str(device)) as f:
                step = (f.metadata() or {}).get("step")
                tensors[name] = {key: f.get_tensor(key) for key in f.keys()}
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path}: missing, corrupt or truncated ({err})") from None
        if step is not None and step != str(meta["step"]):  # runs saved before the tags have none
            raise ValueError(f"{path} holds step {step} but {state_dir / 'state.json'} step {meta['step']}: "
                             "a mixed checkpoint")
    moments = tensors["optimizer.safetensors"]
    for index, param in enumerate(params):
        if str(index) not in meta["optimizer_steps"]:
            continue
        pair = [moments.get(f"{index}.{name}") for name in ("exp_avg", "exp_avg_sq")]
        if any(m is None or m.shape != param.shape for m in pair):
            raise ValueError(f"{state_dir / 'optimizer.safetensors'}: the moments of parameter {index} are missing "
                             "or of the wrong shape")
        step = torch.tensor(float(meta["optimizer_steps"][str(index)]))
        optimizer.state[param] = {"step": step, "exp_avg": pair[0], "exp_avg_sq": pair[1]}
    return meta, tensors["weights.safetensors"]


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"{source}: weights do not fit this run's model ({err})") from None


def truncate_log(log_path: Path, step: int) -> None:
    """Keep the JSONL log's lines up to `step`, atomically: a killed run logged steps after its last save (and
    maybe half a line), which the resumed run logs again."""
    kept = []
    lines = log_path.read_text(errors="replace").splitlines() if log_path.is_file() else []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            break
        if not isinstance(record, dict) or not isinstance(record.get("step"), int) or record["step"] > step:
            break
        kept.append(line + "\n")
    tmp = log_path.with_name(log_path.name + ".tmp")
    tmp.write_text("".join(kept))
    fsync(tmp)
    save_stage("log")
    tmp.replace(log_path)


def check_finite(step: int, values: dict, kept: str) -> None:
    """Stop the run (Diverged) if any of `values` is NaN or infinite; nothing of this step gets saved."""
    bad = [f"{name} = {float(value)}" for name, value in values.items() if not math.isfinite(float(value))]
    if bad:
        raise Diverged(f"training diverged at step {step}: {', '.join(bad)}; stopped without saving ({kept}). "
                       "Lower --lr (or --grad-clip), or raise --warmup")


def largest_weight(model: torch.nn.Module) -> torch.Tensor:
    """max |w| over all parameters (NaN if any weight is NaN): for check_finite before a save."""
    return torch.stack([p.detach().abs().amax() for p in model.parameters()]).amax()


# --- data parallel -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not under torchrun)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def torchrun_env() -> Dist:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist()
    return Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(device: str | None, dist: Dist) -> str:
    """None = cuda:LOCAL_RANK under torchrun when CUDA is available, else cpu; "cuda" gets the local rank."""
    if device is None:
        device = "cuda" if dist.active and torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and dist.active:
        return f"cuda:{dist.local_rank}"
    return device


def check_parallel(cfg: TrainConfig, world_size: int, device: str) -> int:
    """Windows per micro-batch; refuses splits that would make slices unequal (and bf16 off CUDA)."""
    if cfg.precision == "bf16" and torch.device(device).type != "cuda":
        raise ValueError(f"precision 'bf16' needs a CUDA device (got --device {device}); bf16 matmuls are "
                         "~300x slower than fp32 on this CPU, use --precision fp32")
    shards = world_size * cfg.grad_accum
    if cfg.batch_size % shards:
        raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by world_size * grad_accum "
                         f"({world_size} * {cfg.grad_accum} = {shards}) so every micro-batch has equal size")
    return cfg.batch_size // shards


def step_seed(cfg: TrainConfig, step: int, shard: int, shards: int) -> int:
    """The seed of micro-batch `shard` of `shards` at `step` (one shard: the historical (seed, step) seed)."""
    base = cfg.seed * 1_000_003 + step
    return base if shards == 1 else (base * 1_000_033 + shard) % (2**63 - 1)


def broadcast(value, dist: Dist):
    """Rank 0's picklable `value` on every rank."""
    if not dist.active:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


# --- the loop --------------------------------------------------------------------------------

def train(cfg: TrainConfig, out: str | Path, resume: bool = False, max_minutes: float | None = None,
          progress: bool = True, device: str | None = "cpu") -> Path:
    """Train until `cfg.steps` (or `max_minutes` of wall time, then save for `--resume`) on `device`.

    Under torchrun this process joins the DDP job (device None or "cuda": cuda:LOCAL_RANK when CUDA is
    available); the process group is created here and destroyed on the way out."""
    if max_minutes is not None:
        check_knob("max_minutes", max_minutes, 0, low_open=True)
    dist = torchrun_env()
    device = resolve_device(device, dist)
    check_parallel(cfg, dist.world_size, device)  # before the process group: every rank fails alike
    if not dist.active:
        return _train(cfg, Path(out), resume, max_minutes, progress, device, dist)
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(device)
    started_group = not torch.distributed.is_initialized()
    if started_group:
        torch.distributed.init_process_group(backend)
    try:
        return _train(cfg, Path(out), resume, max_minutes, progress, device, dist)
    finally:
        if started_group:
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, out: Path, resume: bool, max_minutes: float | None, progress: bool, device: str,
           dist: Dist) -> Path:
    if dist.main:
        recover_unit(out / "train_state")  # a save killed between its renames
    if dist.active:
        torch.distributed.barrier()
    check_resume(cfg, out, resume, dist)
    run = start_run(cfg, out, resume, dist, device)
    # DDP also broadcasts rank 0's weights, so every rank starts from the same state. No
    # find_unused_parameters: every trainable parameter of every family gets a gradient (see the docstring)
    net = LossOf(run.model, cfg)
    if dist.active:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[torch.device(device).index] if torch.device(device).type == "cuda" else None)
    budget_end = time.time() + max_minutes * 60 if max_minutes else None
    bar = tqdm(total=cfg.steps, initial=run.step, desc=f"train {cfg.family}", disable=not (progress and dist.main),
               unit="step")
    with open(run.log_path, "a") if dist.main else nullcontext() as log:
        while run.step < cfg.steps:
            totals, grad_norm = run.optimizer_step(net)
            val_loss = run.validate() if run.step % cfg.eval_every == 0 or run.step == cfg.steps else None
            if dist.main:
                record = run.record(totals, grad_norm, val_loss)
                log.write(json.dumps(record, allow_nan=False) + "\n")
                log.flush()
                bar.update(1)
                if val_loss is not None:
                    bar.set_postfix(val=record["val_loss"])
                bar.set_postfix(loss=record["loss"], refresh=False)
            if cfg.snapshot_every and run.step % cfg.snapshot_every == 0:  # e.g. metric-vs-training studies
                run.snapshot()  # before the state: a run killed before the state's commit redoes this step
            if run.step % cfg.save_every == 0 or run.step == cfg.steps:
                run.checkpoint(log)
            if budget_end and broadcast(time.time() > budget_end, dist):  # rank 0's clock decides for all
                run.checkpoint(log)
                bar.write(f"stopped at step {run.step} after --max-minutes {max_minutes}; continue with --resume")
                break
    bar.close()
    if dist.active:
        torch.distributed.barrier()  # rank 0's files are complete before any rank returns
    return out


def check_resume(cfg: TrainConfig, out: Path, resume: bool, dist: Dist) -> None:
    """Refuse a resume whose settings differ from the saved run's (beyond RESUMABLE_CHANGES), and a fresh run
    over a saved one. Every rank reads OUT (multi-node runs need it on a shared filesystem to resume)."""
    state_dir = out / "train_state"
    if resume:
        saved = read_state(state_dir)
        defaults = asdict(TrainConfig(family=cfg.family))  # knobs added after the run was saved
        changed = {k for k, v in asdict(cfg).items() if saved["train_config"].get(k, defaults[k]) != v}
        changed -= RESUMABLE_CHANGES
        saved_shards = saved.get("world_size", 1) * saved["train_config"].get("grad_accum", 1)
        if saved_shards == dist.world_size * cfg.grad_accum:  # same micro-batches, same noise: e.g. 8 GPUs -> 1 x 8
            changed.discard("grad_accum")
        if changed:
            raise ValueError(f"--resume: settings differ from the saved run: {sorted(changed)} "
                             f"(only {sorted(RESUMABLE_CHANGES)} may change on resume, and grad_accum when "
                             f"processes x grad_accum stays {saved_shards})")
    elif dist.main and (state_dir / "state.json").is_file():
        raise FileExistsError(f"{out} already holds a training run; pass --resume to continue it or pick another --out")


def start_run(cfg: TrainConfig, out: Path, resume: bool, dist: Dist, device: str) -> Run:
    """The model, optimizer and data of a new run (rank 0 writes its tokenizer and an empty log), or of a saved
    one at the step it reached (its log cut back to that step)."""
    works = load_corpus(cfg.corpus)
    if resume:
        tokenizer = load_tokenizer(out)
    else:  # rank 0 decides (a custom corpus trains one), every rank gets the same
        from tokenizers import Tokenizer

        tokenizer = tokenizer_for(cfg, works) if dist.main else None
        tokenizer = Tokenizer.from_str(broadcast(tokenizer.to_str() if dist.main else None, dist))
    model = build_model(cfg, tokenizer).to(device).train()
    train_stream = TokenStream(works, "train", tokenizer)
    if cfg.objective == "certainty":
        train_stream = distillation_data(cfg, out, train_stream, model, dist)
    run = Run(cfg, out, dist, device, model, make_optimizer(model, cfg), train_stream,
              TokenStream(works, "val", tokenizer))
    if resume:
        meta, weights = load_state(run.state_dir, list(model.parameters()), run.optimizer, device)
        load_weights(model, model.with_tied_head(weights), run.state_dir / "weights.safetensors")
        run.step, run.tokens_seen, run.wall = meta["step"], meta["tokens_seen"], meta["wall_s"]
        run.clip_info = meta.get("clip", {})
        run.saved_step = run.step
        if dist.main:
            truncate_log(run.log_path, run.step)  # drop what the killed run logged after its last save
    else:
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
            tokenizer.save(str(out / "tokenizer.json"))
            run.log_path.write_text("")
            if cfg.family == "bd3lm":
                run.clip_info = choose_clip(model, cfg, run.val_stream)
        run.clip_info = broadcast(run.clip_info, dist)
    return run


def distillation_data(cfg: TrainConfig, out: Path, train_stream: TokenStream, model, dist: Dist):
    """The teacher's sequences of a certainty-forcing run: read from OUT/teacher.safetensors when it was generated
    with these settings (a resumed run), else generated by rank 0 from the --init checkpoint and saved there."""
    from explorer.distill import (
        TEACHER_FILE,
        TeacherSequences,
        load_teacher,
        save_teacher,
        teacher_meta,
        teacher_prompts,
        teacher_sequences,
    )
    from explorer.hub import load

    path = out / TEACHER_FILE
    meta = teacher_meta(cfg.init, cfg.teacher_prompts, cfg.prompt_len, cfg.seq_len, cfg.distill_block, cfg.seed)
    if dist.main and not path.is_file():
        teacher = load(cfg.init, device=model.device.type)
        prompts = teacher_prompts(train_stream, cfg.teacher_prompts, cfg.prompt_len, cfg.seed)
        out.mkdir(parents=True, exist_ok=True)
        save_teacher(path, teacher_sequences(teacher, prompts, cfg.seq_len - cfg.prompt_len, cfg.distill_block), meta)
    if dist.active:
        torch.distributed.barrier()  # rank 0's file is written before any rank reads it
    return TeacherSequences(load_teacher(path, meta, model.tokenizer.get_vocab_size()))


@dataclass
class Run:
    """One process's share of a training run: the model, its optimizer and data, and how far it has come."""

    cfg: TrainConfig
    out: Path
    dist: Dist
    device: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_stream: TokenStream
    val_stream: TokenStream
    step: int = 0
    tokens_seen: int = 0
    wall: float = 0.0  # seconds spent in optimizer steps, over every session of the run
    clip_info: dict = field(default_factory=dict)  # bd3lm's chosen clipped-schedule window
    saved_step: int | None = None  # the last good checkpoint, for the message if the run diverges

    @property
    def state_dir(self) -> Path:
        return self.out / "train_state"

    @property
    def log_path(self) -> Path:
        return self.out / "train_log.jsonl"

    def autocast(self):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16) if self.cfg.precision == "bf16" \
            else nullcontext()

    def kept(self) -> str:
        return f"the last checkpoint, step {self.saved_step} in {self.state_dir}, is untouched" \
            if self.saved_step is not None else "no checkpoint was saved yet"

    def optimizer_step(self, net: torch.nn.Module) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One optimizer step on the global batch of `self.step`, split into this rank's grad_accum micro-batches;
        returns the step's mean losses over every micro-batch of every rank and the gradient norm."""
        cfg, dist = self.cfg, self.dist
        shards = dist.world_size * cfg.grad_accum
        micro = cfg.batch_size // shards
        t0 = time.time()
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        batch = self.train_stream.random_batch(cfg.batch_size, cfg.seq_len, generator)  # the global batch
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(cfg, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss_kwargs = annealing(cfg, self.step)
        if cfg.family == "bd3lm":
            loss_kwargs["clip"] = tuple(self.clip_info["window"]) if self.clip_info.get("window") else None
        totals: dict[str, torch.Tensor] = {}
        for k in range(cfg.grad_accum):
            shard = dist.rank * cfg.grad_accum + k
            seed = step_seed(cfg, self.step, shard, shards)
            torch.manual_seed(seed)  # dropout noise of this micro-batch (seeds CUDA too)
            noise = generator if shards == 1 else torch.Generator().manual_seed(seed)
            part = batch[shard * micro:(shard + 1) * micro].to(self.device)
            sync = k == cfg.grad_accum - 1 or not dist.active
            with (nullcontext() if sync else net.no_sync()), self.autocast():
                out_loss = net(part, noise, loss_kwargs)
            (out_loss["loss"] / cfg.grad_accum).backward()  # DDP then averages over ranks
            for key in ("loss", "warp_loss", "ce", "entropy"):
                if key in out_loss:
                    totals[key] = totals.get(key, 0.0) + out_loss[key].detach().float() / shards
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if dist.active:  # the step's mean loss over all micro-batches of all ranks
            keys = sorted(totals)
            flat = torch.stack([totals[key] for key in keys])
            torch.distributed.all_reduce(flat)
            totals = dict(zip(keys, flat))
        check_finite(self.step + 1, totals | {"grad_norm": grad_norm}, self.kept())  # same values on every rank
        self.optimizer.step()
        self.step += 1
        self.tokens_seen += batch.numel()
        self.wall += time.time() - t0
        return totals, grad_norm

    def validate(self) -> float:
        """The validation loss: rank 0 measures, every rank checks it."""
        with self.autocast():
            val_loss = broadcast(estimate_loss(self.model, self.val_stream, self.cfg) if self.dist.main else None,
                                 self.dist)
        check_finite(self.step, {"val_loss": val_loss}, self.kept())
        return val_loss

    def record(self, totals: dict[str, torch.Tensor], grad_norm: torch.Tensor, val_loss: float | None) -> dict:
        """The step's line of train_log.jsonl."""
        record = {"step": self.step, "loss": round(totals["loss"].item(), 5), "lr": lr_at(self.cfg, self.step - 1),
                  "grad_norm": round(float(grad_norm), 4), "tokens_seen": self.tokens_seen,
                  "wall_s": round(self.wall, 2)}
        for key in ("warp_loss", "ce", "entropy"):  # the cdcd warp's loss; the two terms of certainty forcing
            if key in totals:
                record[key] = round(totals[key].item(), 5)
        if val_loss is not None:
            record["val_loss"] = round(val_loss, 5)
        return record

    def snapshot(self) -> None:
        """A loadable copy of the model at this step under OUT/snapshots/step-N."""
        check_finite(self.step, {"largest |weight|": largest_weight(self.model)}, self.kept())  # every rank alike
        if self.dist.main:
            training = {"steps_done": self.step, "tokens_seen": self.tokens_seen, "wall_s": round(self.wall, 1),
                        "train_config": asdict(self.cfg)}
            write_unit(self.out / "snapshots" / f"step-{self.step}",
                       lambda folder: self.model.save_pretrained(folder, extra={"training": training}))

    def checkpoint(self, log) -> None:
        """The exported model in OUT and the resumable state in OUT/train_state, for this step."""
        check_finite(self.step, {"largest |weight|": largest_weight(self.model)}, self.kept())
        if not self.dist.main:
            return
        dist = self.dist
        extra = {"tokens_seen": self.tokens_seen, "wall_s": round(self.wall, 1), "train_config": asdict(self.cfg),
                 "device": device_name(self.device) + (f" x {dist.world_size} ranks" if dist.active else ""),
                 "world_size": dist.world_size}
        if self.clip_info:
            extra["clip"] = self.clip_info
        # the exported model first: a run killed before the state's commit redoes this step and exports it again
        self.model.save_pretrained(self.out, extra={"training": extra | {"steps_done": self.step}})
        save_stage("export")
        log.flush()
        os.fsync(log.fileno())  # the log holds every step the state is about to cover
        save_state(self.state_dir, self.model.storable_state(), list(self.model.parameters()), self.optimizer,
                   {"step": self.step} | extra)
        self.saved_step = self.step


class LossOf(torch.nn.Module):
    """The run's training loss as a forward, so DDP sees (and reduces) its backward: `model.loss`, or dParallel's
    certainty-forcing loss on the teacher's sequences."""

    def __init__(self, model, cfg: TrainConfig | None = None):  # no cfg: the family's standard loss
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, batch: torch.Tensor, generator: torch.Generator, loss_kwargs: dict) -> dict:
        if self.cfg is not None and self.cfg.objective == "certainty":
            from explorer.distill import certainty_forcing_loss

            return certainty_forcing_loss(self.model, batch, self.cfg.prompt_len, self.cfg.distill_block, generator)
        return self.model.loss(batch, generator=generator, **loss_kwargs)
