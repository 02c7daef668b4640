"""Dream-7B (Dream-org/Dream-v0-*-7B): a Qwen2.5 network run bidirectionally as a masked-diffusion model.

Built from transformers' own Qwen2 classes (never trust_remote_code), weights from safetensors only. Dream
predicts position i from the hidden state at i - 1, so its logits are shifted right by one position.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from explorer.data.tokenizer import load_tokenizer
from explorer.models.base import config_float, config_int, read_config, shift_right
from explorer.models.mdlm import MDLMModel
from explorer.models.weights import INDEX, SINGLE, SafetensorsFolder
from explorer.released.base import ReleasedModel
from explorer.released.llada import read_chat_template
from explorer.released.placement import (
    Placement,
    check_placement_memory,
    finish_placement,
    plan_placement,
)

DREAM_MASK_ID = 151666
DREAM_CONTEXT = 2048  # tokens Dream was trained on (its config allows far more RoPE positions)
BEGIN_OF_TEXT = "<|beginoftext|>"  # Dream's bos token
END_OF_TEXT = "<|endoftext|>"
END_OF_TURN = "<|im_end|>"  # ends an Instruct answer


def is_dream(config: dict) -> bool:
    """True for a Dream config.json (model_type "Dream" or architecture DreamModel)."""
    if not isinstance(config, dict):
        return False
    return str(config.get("model_type", "")).lower() == "dream" or "DreamModel" in (config.get("architectures") or [])


@dataclass(frozen=True)
class DreamBackbone:
    """The backbone fields our samplers and views read (mirrors explorer.nn.TransformerConfig's names)."""
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    vocab_size: int
    max_seq_len: int
    tie_embeddings: bool
    attention: str = "bidirectional"


@dataclass(frozen=True)
class DreamConfig:
    backbone: DreamBackbone
    mask_token_id: int = DREAM_MASK_ID


def qwen2_config(config: dict, file: Path | str = "config.json"):
    """A transformers.Qwen2Config from Dream's config.json fields (clear error naming a missing field)."""
    from transformers import Qwen2Config

    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in required if k not in config]
    if missing:
        raise ValueError(f"{file}: Dream config lacks {missing}")
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{file}: hidden_act {config['hidden_act']!r} is not Dream's silu")
    if config.get("use_sliding_window"):
        raise ValueError(f"{file}: sliding-window attention is not supported for Dream")
    defaults = {"num_key_value_heads": config["num_attention_heads"], "max_position_embeddings": 32768}
    sizes = {name: config_int(config.get(name, defaults.get(name)), file, name) for name in required + tuple(defaults)}
    heads, kv_heads = sizes["num_attention_heads"], sizes["num_key_value_heads"]
    if sizes["hidden_size"] % heads or (sizes["hidden_size"] // heads) % 2 or heads % kv_heads:
        raise ValueError(f"{file}: hidden_size={sizes['hidden_size']} must split into num_attention_heads={heads} "
                         f"heads of even size, in groups of num_key_value_heads={kv_heads}")
    if config.get("rope_scaling") is not None and not isinstance(config["rope_scaling"], dict):
        raise ValueError(f"{file}: rope_scaling must be an object or null, got {config['rope_scaling']!r}")
    fields = sizes | {
        "rms_norm_eps": config_float(config.get("rms_norm_eps", 1e-6), file, "rms_norm_eps"),
        "rope_theta": config_float(config.get("rope_theta", 10000.0), file, "rope_theta"),
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "use_cache": False,
    } | special_token_ids(config, file)
    if config.get("rope_scaling"):
        fields["rope_scaling"] = config["rope_scaling"]
    try:
        return Qwen2Config(**fields)
    except (KeyError, TypeError, ValueError) as err:  # transformers' own checks (rope_scaling, ...)
        raise ValueError(f"{file}: not a valid Qwen2 configuration ({err!r})") from None


def make_bidirectional(network: nn.Module) -> None:
    """Turn every Qwen2 attention module non-causal (sdpa / flash read `is_causal` when no mask is passed)."""
    found = 0
    for module in network.modules():
        if type(module).__name__.endswith("Attention") and hasattr(module, "is_causal"):
            module.is_causal = False
            found += 1
    if found != network.config.num_hidden_layers:
        raise RuntimeError(f"expected {network.config.num_hidden_layers} attention modules, found {found}: "
                           "this transformers version's Qwen2 layout is not supported")


class DreamModel(ReleasedModel, nn.Module):
    """Dream wrapped for our masked-diffusion samplers: (B, L) ids -> (B, L, V) SUBS logits, like MDLMModel."""

    family = "mdlm"
    default_sampler = "dream"  # Dream's own loop (explorer.sampling.dream); LLaDA's rules stay selectable
    time_conditioned = False  # Dream's network takes no noise level
    logit_shift = 0  # Dream shifts inside `raw_logits`: callers see ordinary per-position logits (no cache windows)

    def __init__(self, network: nn.Module, tokenizer: Tokenizer, config: DreamConfig, special: dict[str, int | None]):
        super().__init__()
        self.network = network  # transformers Qwen2ForCausalLM, attention made non-causal
        self.tokenizer = tokenizer
        self.config = config
        self.special = special | {"mask": config.mask_token_id}
        self.name = "dream"
        self.layout = "dream"
        make_bidirectional(network)

    @property
    def max_seq_len(self) -> int:
        return self.config.backbone.max_seq_len

    @property
    def device(self) -> torch.device:
        return self.network.model.embed_tokens.weight.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self):
        raise NotImplementedError("Dream: Fast-dLLM key/value caches are not supported; use cache='none'")

    def _attention_masks(self) -> dict:
        # A prepared per-layer-type mapping skips transformers' causal-mask builder; None + is_causal=False
        # means full attention (and lets SDPA pick its fastest kernel).
        return {"full_attention": None, "sliding_attention": None}

    def raw_logits(self, ids: torch.Tensor, return_hidden: bool = False):
        """Dream's logits (B, L, V) shifted right by one (position i predicted from i - 1), float32; with
        `return_hidden` also the last hidden state (B, L, d), after the final norm and unshifted."""
        if ids.dim() != 2:
            raise ValueError(f"Dream expects (B, L) token ids, got shape {tuple(ids.shape)}")
        if ids.shape[1] > self.max_seq_len:
            raise ValueError(f"Dream: {ids.shape[1]} tokens exceed the context of {self.max_seq_len}")
        out = self.network.model(input_ids=ids, attention_mask=self._attention_masks(), use_cache=False)
        hidden = out.last_hidden_state.to(ids.device)  # (B, L, d), back from the last layer's device (device maps)
        logits = self.network.lm_head(hidden).float().to(ids.device)  # (B, L, V)
        logits = shift_right(logits)
        return (logits, hidden.float()) if return_hidden else logits

    def denoiser_logits(self, x_t: torch.Tensor, return_hidden: bool = False, t: float | None = None, **cache_args):
        """Shifted logits (B, L, V) of x0 with the mask token and the padded vocabulary rows past the
        tokenizer excluded (-inf). `t` is ignored: Dream has no time conditioning."""
        if cache_args:
            raise NotImplementedError("Dream: Fast-dLLM key/value caches are not supported; use cache='none'")
        logits, hidden = self.raw_logits(x_t, return_hidden=True)
        logits[..., self.mask_id] = float("-inf")
        logits[..., self.tokenizer.get_vocab_size():] = float("-inf")
        return (logits, hidden) if return_hidden else logits

    forward = MDLMModel.forward  # SUBS on top of denoiser_logits, as every masked-diffusion model


def load_weights(network: nn.Module, weights: SafetensorsFolder, placement: Placement) -> None:
    """Fill a meta-device network tensor by tensor (peak host memory: one tensor), each straight to the device
    `placement` gives its module, checking names and shapes."""
    expected = network.state_dict()  # meta tensors: names and shapes only
    stored = dict(weights.tensors)
    tied = network.config.tie_word_embeddings
    if tied:
        expected.pop("lm_head.weight", None)
        stored.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    where = weights.folder / (INDEX if (weights.folder / INDEX).is_file() else SINGLE)
    if missing or unexpected:
        raise ValueError(f"{where}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]} "
                         "(not a Dream / Qwen2 checkpoint?)")
    for key, info in stored.items():
        if info.shape != tuple(expected[key].shape):
            raise ValueError(f"{info.file}: {key} has shape {info.shape}, expected {tuple(expected[key].shape)}")
    for key in sorted(stored):
        tensor = weights.tensor(key, placement.device_of(key), placement.dtype)
        network.load_state_dict({key: tensor}, strict=False, assign=True)
    if tied:
        network.lm_head.weight = network.model.embed_tokens.weight


def special_token_ids(config: dict, file: Path | str) -> dict[str, int | None]:
    """config.json's pad / bos / eos token ids (None when absent), each checked to be an id."""
    names = ("pad_token_id", "bos_token_id", "eos_token_id")
    return {name: None if config.get(name) is None else config_int(config[name], file, name, lo=0) for name in names}


def _special_ids(config: dict, tokenizer: Tokenizer) -> dict[str, int | None]:
    """bos / eos / pad ids: Dream's tokenizer tokens first, then config.json (checked by `qwen2_config`); eot
    (<|im_end|>) from the tokenizer."""
    bos = tokenizer.token_to_id(BEGIN_OF_TEXT)
    eos = tokenizer.token_to_id(END_OF_TEXT)
    return {"bos": bos if bos is not None else config.get("bos_token_id"),
            "eos": config.get("eos_token_id") if config.get("eos_token_id") is not None else eos,
            "pad": config.get("pad_token_id"), "eot": tokenizer.token_to_id(END_OF_TURN)}


def load_dream(path: str | Path, device=None, dtype: torch.dtype | None = None, device_map=None,
               max_memory=None) -> DreamModel:
    """Load a Dream folder (config.json, safetensors weights, tokenizer.json) as an eval-mode DreamModel.
    dtype None: bfloat16 on CUDA, float32 elsewhere. Logits are always returned in float32. `device_map`
    ("auto", "balanced", "sequential" or {module name: device} over the Qwen2 network's modules, within
    `max_memory`) spreads whole decoder layers over several devices (see explorer.released.placement)."""
    from transformers import Qwen2ForCausalLM

    path = Path(path)
    config_file = path / "config.json"
    config = read_config(path)
    if not is_dream(config):
        raise ValueError(f"{config_file}: not a Dream config (model_type {config.get('model_type')!r})")
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"{tokenizer_file}: missing tokenizer.json")
    tokenizer = load_tokenizer(tokenizer_file)

    hf_config = qwen2_config(config, config_file)
    mask_id = config_int(config.get("mask_token_id", DREAM_MASK_ID), config_file, "mask_token_id", lo=0)
    if not mask_id < min(hf_config.vocab_size, tokenizer.get_vocab_size()):
        raise ValueError(f"{config_file}: mask_token_id {mask_id} is outside the vocabulary "
                         f"(config {hf_config.vocab_size}, tokenizer {tokenizer.get_vocab_size()})")
    if tokenizer.get_vocab_size() > hf_config.vocab_size:
        raise ValueError(f"{tokenizer_file}: {tokenizer.get_vocab_size()} tokens exceed the model's "
                         f"vocab_size {hf_config.vocab_size}")
    weights = SafetensorsFolder(path)  # refuses pickles, names a missing shard, before building anything
    with torch.device("meta"):
        network = Qwen2ForCausalLM(hf_config)
    layer = type(network.model.layers[0]).__name__  # Qwen2DecoderLayer: kept whole on one device
    placement = plan_placement(network, device_map, max_memory, dtype, no_split=(layer,), device=device)
    check_placement_memory(placement, str(path))
    load_weights(network, weights, placement)
    rotary = type(network.model.rotary_emb)
    with torch.device(placement.main):  # where the embeddings, hence the positions, are
        network.model.rotary_emb = rotary(hf_config)  # non-persistent inv_freq buffer: rebuild off meta
    leftover = [n for n, t in list(network.named_parameters()) + list(network.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"{path}: tensors left unloaded: {leftover[:5]}")
    finish_placement(network, placement)  # raw_logits brings the logits back to the input's device

    backbone = DreamBackbone(
        d_model=hf_config.hidden_size, n_layers=hf_config.num_hidden_layers, n_heads=hf_config.num_attention_heads,
        n_kv_heads=hf_config.num_key_value_heads, d_ff=hf_config.intermediate_size, vocab_size=hf_config.vocab_size,
        max_seq_len=min(DREAM_CONTEXT, hf_config.max_position_embeddings),
        tie_embeddings=hf_config.tie_word_embeddings,
    )
    network.requires_grad_(False)  # inference only: no activations kept for a backward pass
    model = DreamModel(network, tokenizer, DreamConfig(backbone, mask_id), _special_ids(config, tokenizer))
    model.name = path.name
    model.checkpoint_path = str(path)
    model.checkpoint_info = {"family": "mdlm", "released": "dream", "config": config}
    model.device_map = placement.as_dict()
    model.chat_template = read_chat_template(path)
    return model.eval()
