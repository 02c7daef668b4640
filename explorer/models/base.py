"""What every family shares: the backbone, the tokenizer, special ids, save / load (safetensors + JSON), and the
interface the samplers read (`SamplerModel`), which the released checkpoints' models implement too."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import nn

from explorer.data.tokenizer import BOS, EOS, MASK, PAD, SPECIAL_TOKENS, TOKENIZER, load_tokenizer
from explorer.models.weights import SafetensorsFolder, check_layout, check_memory
from explorer.nn import KVCache, Transformer

WEIGHTS = "model.safetensors"
TIED_HEAD = "backbone.head.weight"  # shares the embedding matrix when tie_embeddings; stored once
CONFIG = "config.json"
# Largest integers config.json may hold: far above any model here or released (LLaDA-8B: 32 layers, 4096 positions,
# 126464 tokens), low enough that a hostile value is refused before it is multiplied out. Layers are capped hardest:
# the memory estimate builds the model on the meta device, one module per layer.
MAX_SIZE = 2**24
MAX_LAYERS = 1024
MAX_CONTEXT = 2**20
INT_LIMITS = {name: MAX_LAYERS for name in ("n_layers", "head_layers", "n_blocks", "num_hidden_layers")} | {
    name: MAX_CONTEXT for name in ("max_seq_len", "max_sequence_length", "model_length", "max_position_embeddings")}


@typing.runtime_checkable
class SamplerModel(typing.Protocol):
    """What a sampler may read from a model: our `LanguageModel`s and the released models (LLaDA, Dream, the DiT
    releases) provide exactly this. Families add their own on top (bd3lm: block_size; calm: chunk and the head)."""

    family: str  # "ar", "mdlm", "bd3lm", "cdcd" or "calm": which samplers run it
    name: str  # the checkpoint's name, for traces
    tokenizer: Tokenizer
    config: typing.Any  # the family config; config.backbone.d_model sizes recorded hidden states
    default_sampler: str | None  # the sampler a run gets when none is named (None: the family's first)
    time_conditioned: bool  # the network reads the sampler's noise level t (a released DiT may)
    logit_shift: int  # 1: position i's logits come from output i - 1 (Dream's shift)
    stop_ids: tuple[int, ...]  # tokens that end an answer (released Instruct models); () for ours
    checkpoint_path: str | None  # the folder it was read from
    chat_template: str | list | None  # a released Instruct model's Jinja chat template

    @property
    def mask_id(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    @property
    def pad_id(self) -> int | None: ...

    @property
    def max_seq_len(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def num_parameters(self) -> int: ...

    def new_cache(self) -> KVCache: ...

    def __call__(self, *args, **kwargs) -> typing.Any: ...


class LanguageModel(nn.Module):
    """Base of all families: a shared Transformer plus a tokenizer. Subclasses define `loss`."""

    family: str = ""
    config_class: type = None
    default_sampler: str | None = None
    time_conditioned = False
    logit_shift = 0
    stop_ids: tuple[int, ...] = ()
    checkpoint_path: str | None = None
    checkpoint_info: dict = {}  # config.json of the folder it was read from (set on loading)
    chat_template = None  # our checkpoints have none (released Instruct models do)

    def __init__(self, config, tokenizer: Tokenizer):
        super().__init__()
        if config.backbone.vocab_size != tokenizer.get_vocab_size():
            raise ValueError(
                f"vocab_size {config.backbone.vocab_size} does not match the tokenizer ({tokenizer.get_vocab_size()})"
            )
        self.config = config
        self.tokenizer = tokenizer
        self.backbone = Transformer(config.backbone)
        self.name = self.family  # replaced by the checkpoint name when loaded

    @property
    def mask_id(self) -> int:
        return self.tokenizer.token_to_id(MASK)

    @property
    def bos_id(self) -> int:
        return self.tokenizer.token_to_id(BOS)

    @property
    def eos_id(self) -> int:
        return self.tokenizer.token_to_id(EOS)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.token_to_id(PAD)

    @property
    def max_seq_len(self) -> int:
        return self.config.backbone.max_seq_len

    @property
    def device(self) -> torch.device:
        return self.backbone.embed.weight.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self) -> KVCache:
        """An empty key/value cache for this backbone (exact for ar and bd3lm, approximate for mdlm), its buffers
        sized for the whole context (no position goes past it)."""
        return KVCache(self.config.backbone.n_layers, capacity=self.max_seq_len)

    def config_dict(self) -> dict:
        return {"family": self.family, "model": asdict(self.config)}

    @property
    def tied(self) -> dict[str, str]:
        """Keys the safetensors file leaves out -> the key whose tensor they share (the tied head)."""
        return {TIED_HEAD: "backbone.embed.weight"} if self.config.backbone.tie_embeddings else {}

    def storable_state(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """State dict for safetensors: contiguous CPU tensors (cast to dtype), a tied head left out."""
        return {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.state_dict().items() if k not in self.tied}

    def with_tied_head(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inverse of `storable_state` for the key layout: put the tied head back."""
        for key, source in self.tied.items():
            if source in state:
                state.setdefault(key, state[source])
        return state

    def save_pretrained(self, path: str | Path, extra: dict | None = None, dtype=torch.float16) -> Path:
        """Write config.json, model.safetensors (half precision by default) and tokenizer.json atomically."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = self.storable_state(dtype)
        atomic_write(path / WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
        config = self.config_dict() | (extra or {})
        atomic_write(path / CONFIG, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
        atomic_write(path / "tokenizer.json", lambda tmp: self.tokenizer.save(str(tmp)))
        return path

    @classmethod
    def from_config(cls, config, tokenizer: Tokenizer, file: Path | str = CONFIG) -> "LanguageModel":
        """The model of a config parsed from `file` (see `parse_config`), with the checks that need the tokenizer."""
        head_dim = config.backbone.d_model // config.backbone.n_heads
        if head_dim % 2:
            raise ValueError(f"{file}: model.backbone: d_model / n_heads = {head_dim} must be even (rotary pairs)")
        try:
            return cls(config, tokenizer)
        except ValueError as err:  # vocab_size against the tokenizer, a dropout outside [0, 1], ...
            raise ValueError(f"{file}: {err}") from None


def shift_right(logits: torch.Tensor) -> torch.Tensor:
    """Dream's shift read back (B, L, V): position i gets output i - 1 (position 0 keeps its own), so a model whose
    output i predicts token i + 1 gives ordinary per-position logits."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def shifted_rows(length: int, device) -> torch.Tensor:
    """(length,) the output row each position reads under `shift_right`: 0, 0, 1, ..., length - 2. As a backbone's
    `logits_for` it shifts the (B, L, d) hidden states before the head instead of the (B, L, V) logits after it."""
    return (torch.arange(length, device=device) - 1).clamp_(min=0)


def config_int(value, file: Path | str, name: str, lo: int = 1, hi: int | None = None) -> int:
    """`value` when it is an integer in [lo, hi] (a bool is not), else a ValueError naming the file and field.
    `hi` defaults to the field's limit in INT_LIMITS, else MAX_SIZE."""
    hi = INT_LIMITS.get(name.rsplit(".", 1)[-1], MAX_SIZE) if hi is None else hi
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{file}: {name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def config_float(value, file: Path | str, name: str) -> float:
    """`value` as a float when it is a finite number (a bool is not), else a ValueError naming the file and field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{file}: {name} must be a finite number, got {value!r}")
    return float(value)


def parse_config(cls: type, values, file: Path | str, where: str):
    """The config dataclass `cls` from JSON `values`, each field checked against its type: integers in
    [1, MAX_SIZE] (layers up to MAX_LAYERS, positions up to MAX_CONTEXT), finite floats, bools, strings, nested
    configs (required). Unknown fields are refused; other missing fields take their defaults (older checkpoints).
    Errors name `file` and the field (`where`.name)."""
    if not isinstance(values, dict):
        raise ValueError(f"{file}: {where} must be a JSON object, got {type(values).__name__}")
    types = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{file}: unknown fields {unknown} in {where}; known: {known}")
    fields = {}
    for name in known:
        kind, label = types[name], f"{where}.{name}"
        if dataclasses.is_dataclass(kind):
            if name not in values:
                raise ValueError(f"{file}: missing field {label}")
            fields[name] = parse_config(kind, values[name], file, label)
        elif name not in values:
            continue
        elif kind is int:
            fields[name] = config_int(values[name], file, label)
        elif kind is float:
            fields[name] = config_float(values[name], file, label)
        elif not isinstance(values[name], kind):  # bool, str
            raise ValueError(f"{file}: {label} must be a {kind.__name__}, got {values[name]!r}")
        else:
            fields[name] = values[name]
    try:
        return cls(**fields)
    except ValueError as err:  # the config's own checks (attention mode, divisibility, ...)
        raise ValueError(f"{file}: {where}: {err}") from None


def atomic_write(target: Path, write) -> None:
    tmp = target.with_name(target.name + ".tmp")
    write(tmp)
    tmp.replace(target)


def read_config(path: Path) -> dict:
    """config.json of a checkpoint folder as a dict (a clear error when missing, not JSON, or not an object)."""
    file = path / CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing config.json")
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file}: must hold a JSON object, got {type(config).__name__}")
    return config


def load_folder(path: Path, families: dict[str, type]) -> LanguageModel:
    """A checkpoint folder of our layout as an eval-mode model. Everything is checked before memory is spent:
    config.json's fields, the tokenizer, the memory the model needs (sized on the meta device), and the
    weights' keys and shapes (from the safetensors header)."""
    file = path / CONFIG
    config = read_config(path)
    family = config.get("family")
    if not isinstance(family, str) or family not in families:
        raise ValueError(f"{file}: unknown family {family!r}; known: {sorted(families)}")
    if "model" not in config:
        raise ValueError(f"{file}: missing field 'model' (the {family} model's configuration)")
    tokenizer = load_tokenizer(path)
    missing = [token for token in SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
    if missing:
        raise ValueError(f"{path / TOKENIZER}: lacks the special tokens {missing} every family needs")
    model_class = families[family]
    model_config = parse_config(model_class.config_class, config["model"], file, "model")
    model = build_and_load(lambda: model_class.from_config(model_config, tokenizer, file), path, family)
    model.name = path.name
    model.checkpoint_info = config
    return model.eval()


def build_and_load(build, path: Path, layout: str, weights: str = WEIGHTS) -> nn.Module:
    """`build()` (a module from a checked config) sized on the meta device and refused when it would not fit in
    memory, then the keys and shapes of `path / weights` checked against it from the safetensors header; only
    then built for real and loaded (float32, never a pickle)."""
    with torch.device("meta"):  # sizes only: nothing allocated, nothing initialised
        sized = build()
    elements = sum(p.numel() for p in sized.parameters()) + sum(b.numel() for b in sized.buffers())
    check_memory(elements, torch.device("cpu"), torch.float32, str(path / CONFIG),
                 hint="its sizes are too large for this machine")
    tied = getattr(sized, "tied", {})  # a language model's file leaves its tied head out
    expected = {key: tuple(v.shape) for key, v in sized.state_dict().items() if key not in tied}
    stored = SafetensorsFolder(path, weights)  # headers only: keys, shapes and dtypes
    try:
        check_layout(stored, expected, layout)
        model = build()
        state = {key: stored.tensor(key, dtype=torch.float32) for key in stored.tensors}
    finally:
        stored.close()
    model.load_state_dict(state | {key: state[source] for key, source in tied.items()})
    return model
