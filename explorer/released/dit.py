"""kuleshov-group MDLM / BD3-LM releases (kuleshov-group/mdlm-owt, kuleshov-group/bd3lm-owt-block_size*).

These Hugging Face folders hold a DiT backbone behind custom `trust_remote_code` files
(configuration_mdlm.py / modeling_mdlm.py, configuration_bd3lm.py / modeling_bd3lm.py). Their config.json
fields: model_type "mdlm" | "bd3lm", architectures ["MDLM"] | ["BD3LM"], vocab_size (50258 = GPT-2's
50257 + a mask token), model_length (1024), hidden_dim, cond_dim, n_blocks, n_heads, dropout,
time_conditioning, and for BD3-LM also block_size, cross_attn, adaln, attn_backend, causal, var_min,
sampling_eps_min / sampling_eps_max. Weights under `backbone.`: vocab_embed.embedding,
sigma_map.mlp.{0,2}.{weight,bias}, blocks.{i}.norm1.weight, blocks.{i}.attn_qkv.weight,
blocks.{i}.attn_out.weight, blocks.{i}.norm2.weight, blocks.{i}.mlp.{0,2}.{weight,bias},
blocks.{i}.adaLN_modulation.{weight,bias}, output_layer.norm_final.weight,
output_layer.linear.{weight,bias}, output_layer.adaLN_modulation.{weight,bias}.

Not loadable into our families yet: the DiT blocks differ from explorer.nn.Transformer's time-conditioned
blocks in ways a weight mapping cannot absorb (LayerNorm without bias vs RMSNorm; a GELU MLP with biases
vs SwiGLU; gates multiply the branch (gate) where ours use (1 + gate); the conditioning is
silu(sigma_map(sigma)) of width cond_dim fed to adaLN_modulation directly, where ours applies silu again
to a d_model-wide condition; a 256-wide cos/sin sigma embedding vs our 64 sin/cos frequencies; a biased
output head). So `load_dit` detects the layout and refuses it with a message naming what is unsupported.
It never unpickles anything and never runs the release's remote code.
"""

from __future__ import annotations

from pathlib import Path

from explorer.models.base import read_config
from explorer.released.memory import PICKLE_SUFFIXES

DIT_MODEL_TYPES = {"mdlm": "MDLM", "bd3lm": "BD3-LM"}
DIT_ARCHITECTURES = {"MDLM": "MDLM", "BD3LM": "BD3-LM"}
DIT_REMOTE_FILES = ("configuration_mdlm", "modeling_mdlm", "configuration_bd3lm", "modeling_bd3lm")
DIT_FIELDS = ("hidden_dim", "cond_dim", "n_blocks", "n_heads", "model_length")  # the backbone's shape fields
BD3LM_FIELDS = ("block_size", "cross_attn", "adaln", "attn_backend", "var_min")
SUPPORTED = "supported released layouts: llada, dream"


def _auto_map_text(config: dict) -> str:
    auto_map = config.get("auto_map")
    return " ".join(str(v) for v in auto_map.values()) if isinstance(auto_map, dict) else ""


def dit_release_kind(config: dict) -> str | None:
    """'MDLM' or 'BD3-LM' for a kuleshov-group DiT release config.json, else None."""
    if not isinstance(config, dict) or "family" in config:  # our own checkpoints carry "family"
        return None
    model_type = str(config.get("model_type", "")).lower()
    if model_type in DIT_MODEL_TYPES:
        return DIT_MODEL_TYPES[model_type]
    for arch in config.get("architectures") or []:
        if arch in DIT_ARCHITECTURES:
            return DIT_ARCHITECTURES[arch]
    auto_map = _auto_map_text(config)
    if any(name in auto_map for name in DIT_REMOTE_FILES):
        return "BD3-LM" if "bd3lm" in auto_map else "MDLM"
    if all(field in config for field in DIT_FIELDS):  # the DiT shape fields with no name at all
        return "BD3-LM" if "block_size" in config else "MDLM"
    return None


def is_dit_release(config: dict) -> bool:
    """True for an MDLM or BD3-LM (kuleshov-group DiT) config.json."""
    return dit_release_kind(config) is not None


def _identifying_fields(config: dict) -> str:
    names = ("model_type", "architectures") + DIT_FIELDS + ("vocab_size",) + BD3LM_FIELDS
    shown = [f"{name}={config[name]!r}" for name in names if name in config]
    auto_map = _auto_map_text(config)
    if auto_map:
        shown.append(f"auto_map -> {auto_map}")
    return ", ".join(shown) or "no identifying fields"


def refuse_pickle(path: Path) -> None:
    """Raise for a pickled checkpoint file (never opened, never unpickled)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: pickled checkpoint ({path.suffix}) refused without being opened - unpickling "
                         f"runs arbitrary code; only safetensors + config.json folders are loaded ({SUPPORTED})")


def unsupported_message(file: Path | str, config: dict) -> str:
    kind = dit_release_kind(config) or "DiT"
    extra = ""
    if kind == "BD3-LM":
        extra = (f" BD3-LM additionally samples block by block (block_size={config.get('block_size', '?')}) "
                 "with its block-causal cross-attention to x0.")
    return (f"{file}: kuleshov-group {kind} release (DiT with adaLN on the noise level sigma, RoPE, GPT-2 tokenizer "
            f"+ mask token; identified by {_identifying_fields(config)}): not supported yet - its blocks condition "
            "bias-free LayerNorm on sigma through adaLN_modulation (cond_dim-wide silu(sigma_map(sigma)), gates "
            "multiplying the branch), with a GELU MLP with biases and a biased output head, which our "
            "masked-diffusion family (RMSNorm, SwiGLU, no time conditioning; cdcd's adaptive norms use "
            f"1 + gate and a different sigma embedding) does not have.{extra} Its trust_remote_code modelling "
            f"files are never run; {SUPPORTED}")


def load_dit(path, device=None, dtype=None):
    """Refuse an MDLM / BD3-LM release with a ValueError naming the file and what is unsupported."""
    path = Path(path)
    if path.is_file():
        refuse_pickle(path)
        file = path if path.name == "config.json" else path.parent / "config.json"
    else:
        file = path / "config.json"
        if path.is_dir() and not any(path.glob("*.safetensors")):  # weights only as pickles: refuse those
            for child in sorted(path.iterdir()):
                if child.is_file():
                    refuse_pickle(child)
    config = read_config(file.parent)
    if not is_dit_release(config):
        raise ValueError(f"{file}: not an MDLM / BD3-LM release ({_identifying_fields(config)})")
    raise ValueError(unsupported_message(file, config))


__all__ = ["dit_release_kind", "is_dit_release", "load_dit", "refuse_pickle", "unsupported_message"]
