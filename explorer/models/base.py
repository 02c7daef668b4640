"""What every family shares: the backbone, the tokenizer, special ids, save / load (safetensors + JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from explorer.data.tokenizer import BOS, EOS, MASK, PAD, load_tokenizer
from explorer.nn import KVCache, Transformer, TransformerConfig

WEIGHTS = "model.safetensors"
TIED_HEAD = "backbone.head.weight"  # shares the embedding matrix when tie_embeddings; stored once
CONFIG = "config.json"


class LanguageModel(nn.Module):
    """Base of all families: a shared Transformer plus a tokenizer. Subclasses define `loss`."""

    family: str = ""
    config_class: type = None

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
        """An empty key/value cache for this backbone (exact for ar and bd3lm, approximate for mdlm)."""
        return KVCache(self.config.backbone.n_layers)

    def config_dict(self) -> dict:
        return {"family": self.family, "model": asdict(self.config)}

    def storable_state(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """State dict for safetensors: contiguous CPU tensors (cast to dtype), a tied head left out."""
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.state_dict().items()}
        if self.config.backbone.tie_embeddings:
            state.pop(TIED_HEAD)
        return state

    def with_tied_head(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inverse of `storable_state` for the key layout: put the tied head back."""
        if self.config.backbone.tie_embeddings and "backbone.embed.weight" in state:
            state.setdefault(TIED_HEAD, state["backbone.embed.weight"])
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
    def from_config_dict(cls, model_config: dict, tokenizer: Tokenizer) -> "LanguageModel":
        fields = dict(model_config)
        fields["backbone"] = TransformerConfig(**fields["backbone"])
        return cls(cls.config_class(**fields), tokenizer)

    def load_weights(self, path: Path) -> None:
        """Load model.safetensors (never a pickle) into this model as float32, with clear errors."""
        file = path / WEIGHTS
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing weights file")
        try:
            state = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{file}: corrupt or truncated safetensors file ({err})") from None
        state = self.with_tied_head(state)
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{file}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        for key, tensor in state.items():
            if tensor.shape != expected[key].shape:
                raise ValueError(f"{file}: {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}")
        self.load_state_dict({k: v.float() for k, v in state.items()})


def atomic_write(target: Path, write) -> None:
    tmp = target.with_name(target.name + ".tmp")
    write(tmp)
    tmp.replace(target)


def read_config(path: Path) -> dict:
    file = path / CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing config.json")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None


def load_folder(path: Path, families: dict[str, type]) -> LanguageModel:
    config = read_config(path)
    family = config.get("family")
    if family not in families:
        raise ValueError(f"{path / CONFIG}: unknown family {family!r}; known: {sorted(families)}")
    model = families[family].from_config_dict(config["model"], load_tokenizer(path))
    model.load_weights(path)
    model.name = path.name
    model.checkpoint_info = config
    return model.eval()
