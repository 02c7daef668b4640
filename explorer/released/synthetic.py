"""A tiny random LLaDA folder with the released file layout, key names and config.json fields, for tests, the
notebook and trying the page without an 8B download. Its weights are random: what it generates is noise."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer

from explorer.data.tokenizer import SHIPPED_TOKENIZER

D, LAYERS, HEADS, FF, THETA, EPS = 32, 2, 4, 48, 500000.0, 1e-5
VOCAB, EMBED = 2048, 2112  # the shipped tokenizer's size; the embedding padded beyond it, like LLaDA's 126464
MASK_ID, EOS_ID = 3, 2  # the shipped tokenizer's [MASK] and <eos>
TEMPLATE = ("{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|eot|>{% endfor %}"
            "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}")
EOT_TOKEN, EOT_ID = "<|eot_id|>", VOCAB  # with eot=True: LLaDA's end-of-turn token, added after the shipped vocabulary


def released_config(**changes) -> dict:
    """LLaDA-8B's config.json fields at a tiny size (`changes` override any of them)."""
    config = {"architectures": ["LLaDAModelLM"], "model_type": "llada",
              "auto_map": {"AutoModel": "modeling_llada.LLaDAModelLM"},  # remote code: never run
              "d_model": D, "n_layers": LAYERS, "n_heads": HEADS, "n_kv_heads": HEADS, "mlp_ratio": 4,
              "mlp_hidden_size": FF, "vocab_size": VOCAB, "embedding_size": EMBED, "rope_theta": THETA,
              "rope": True, "rms_norm_eps": EPS, "layer_norm_type": "rms", "max_sequence_length": 64,
              "block_type": "llama", "activation_type": "silu", "include_bias": False, "weight_tying": False,
              "alibi": False, "attention_layer_norm": False, "scale_logits": False,
              "mask_token_id": MASK_ID, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID}
    return config | changes


def released_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under LLaDA's released key names (`model.transformer.blocks.{i}.q_proj.weight`, ...)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    p = "model.transformer."
    tensors = {p + "wte.weight": rand(EMBED, D, scale=1.0), p + "ln_f.weight": 1 + rand(D),
               p + "ff_out.weight": rand(EMBED, D)}
    for i in range(LAYERS):
        b = f"{p}blocks.{i}."
        tensors |= {b + "attn_norm.weight": 1 + rand(D), b + "ff_norm.weight": 1 + rand(D),
                    b + "q_proj.weight": rand(D, D), b + "k_proj.weight": rand(D, D), b + "v_proj.weight": rand(D, D),
                    b + "attn_out.weight": rand(D, D), b + "ff_proj.weight": rand(FF, D),
                    b + "up_proj.weight": rand(FF, D), b + "ff_out.weight": rand(D, FF)}
    return tensors


def write_folder(folder: str | Path, tensors: dict[str, torch.Tensor], config: dict | None = None,
                 shards: int = 1, template: str | None = TEMPLATE, eot: bool = False) -> Path:
    """Write `tensors` as a released folder: config.json, the shipped tokenizer (with `eot`, plus <|eot_id|> as
    id EOT_ID), tokenizer_config.json with `template` as its chat template (None: none, like a Base release),
    and model.safetensors (or `shards` files named in model.safetensors.index.json, like the 8B releases)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or released_config()))
    shipped_tokenizer_plus(EOT_TOKEN if eot else None).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template} if template else {}))
    save_weights(tensors, folder, shards)
    return folder


def shipped_tokenizer_plus(token: str | None) -> Tokenizer:
    """The shipped tokenizer, with one special token of a release appended after its 2,048 (None: as shipped)."""
    tokenizer = Tokenizer.from_file(str(SHIPPED_TOKENIZER))
    if token is not None:
        tokenizer.add_special_tokens([AddedToken(token, special=True)])
    return tokenizer


def save_weights(tensors: dict[str, torch.Tensor], folder: Path, shards: int = 1) -> None:
    """model.safetensors, or `shards` files with the model.safetensors.index.json that names them (the released
    sharded layout)."""
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    keys = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[s::shards]
        save_file({k: tensors[k] for k in part}, str(folder / name), metadata={"format": "pt"})
        weight_map |= {k: name for k in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_tiny_llada(folder: str | Path, seed: int = 0, shards: int = 1, template: str | None = TEMPLATE,
                     eot: bool = False) -> Path:
    """A tiny random LLaDA-layout folder at `folder` (about 1 MB; `explorer.load(folder)` reads it); `template`
    and `eot` as in `write_folder`."""
    return write_folder(folder, released_tensors(seed), shards=shards, template=template, eot=eot)


DIT_D, DIT_HEADS, DIT_LAYERS, DIT_COND, DIT_LENGTH = 32, 4, 2, 16, 32
DIT_EOS = "<|endoftext|>"  # GPT-2's end of text, which the releases' eos id names


def tiny_dit_config(kind: str = "mdlm", **changes) -> dict:
    """A kuleshov-group MDLM ("mdlm") or BD3-LM ("bd3lm", block size 4) config.json at a tiny size."""
    if kind not in ("mdlm", "bd3lm"):
        raise ValueError(f"kind must be 'mdlm' or 'bd3lm', got {kind!r}")
    config = {"architectures": [kind.upper()], "model_type": kind,
              "auto_map": {"AutoModelForMaskedLM": f"modeling_{kind}.{kind.upper()}"},  # remote code: never run
              "vocab_size": VOCAB + 2, "model_length": DIT_LENGTH, "hidden_dim": DIT_D, "cond_dim": DIT_COND,
              "n_blocks": DIT_LAYERS, "n_heads": DIT_HEADS, "dropout": 0.1, "time_conditioning": False}
    if kind == "bd3lm":
        config |= {"block_size": 4, "cross_attn": True, "adaln": True, "attn_backend": "sdpa", "causal": False,
                   "var_min": True, "sampling_eps_min": 1e-3, "sampling_eps_max": 0.999}
    return config | changes


def dit_tensors(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the kuleshov-group DiT release key names for a DiT config.json (`backbone.*`), plus
    the buffers the upstream `save_pretrained` writes beside them (rotary frequencies; BD3-LM's noise window)."""
    from explorer.released.dit import dit_configs, expected_shapes

    g = torch.Generator().manual_seed(seed)
    tokenizer = shipped_tokenizer_plus(DIT_EOS)
    family_config, spec = dit_configs(config, tokenizer, Path("config.json"))
    tensors = {}
    for key, shape in expected_shapes(family_config.backbone, spec).items():
        gain = key.endswith(("norm1.weight", "norm2.weight", "norm_final.weight"))
        scale = 1.0 if key.endswith("embedding") else 0.2
        tensors[key] = (1.0 if gain else 0.0) + torch.randn(shape, generator=g) * scale
    head_dim = family_config.backbone.d_model // family_config.backbone.n_heads
    tensors["backbone.rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    if config.get("var_min"):
        tensors["sampling_eps_min"] = torch.tensor(float(config["sampling_eps_min"]))
        tensors["sampling_eps_max"] = torch.tensor(float(config["sampling_eps_max"]))
    return tensors


def write_tiny_dit(folder: str | Path, config: dict, seed: int = 0, shards: int = 1) -> Path:
    """A tiny random MDLM / BD3-LM release folder for `config` (a DiT config.json with vocab_size = the stand-in
    tokenizer's 2049 tokens + 1 for the mask): config.json, tokenizer.json and the weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    shipped_tokenizer_plus(DIT_EOS).save(str(folder / "tokenizer.json"))
    save_weights(dit_tensors(config, seed), folder, shards)
    return folder


DG_CANVAS = 8  # tokens per canvas (DiffusionGemma's released models: 256)


def diffusion_gemma_config(**changes):
    """transformers' DiffusionGemmaConfig at a tiny size, over the shipped tokenizer's 2,048 ids (pad 0, bos 1,
    eos 2); `changes` override the top-level fields (canvas_length, ...). Two decoder layers, a sliding one and a
    full one, two experts, and a one-layer vision tower (the class always builds one)."""
    from transformers import DiffusionGemmaConfig
    from transformers.models.diffusion_gemma import DiffusionGemmaTextConfig

    text = DiffusionGemmaTextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, global_head_dim=16, sliding_window=16, max_position_embeddings=512,
        layer_types=["sliding_attention", "full_attention"], num_experts=2, top_k_experts=1,
        moe_intermediate_size=32, pad_token_id=0, bos_token_id=1, eos_token_id=EOS_ID)
    vision = {"model_type": "gemma4_vision", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8, "patch_size": 4,
              "position_embedding_size": 16}
    fields = {"canvas_length": DG_CANVAS, "boi_token_id": VOCAB - 3, "eoi_token_id": VOCAB - 2,
              "image_token_id": VOCAB - 1} | changes
    return DiffusionGemmaConfig(text_config=text, vision_config=vision, **fields)


def tiny_diffusion_gemma(seed: int = 0, **changes):
    """A random DiffusionGemmaForBlockDiffusion (about 0.2M parameters) in eval mode, built by transformers."""
    from transformers import DiffusionGemmaForBlockDiffusion

    torch.manual_seed(seed)  # transformers initialises from the global generator
    return DiffusionGemmaForBlockDiffusion(diffusion_gemma_config(**changes)).eval()


def write_tiny_diffusion_gemma(folder: str | Path, seed: int = 0, **changes) -> Path:
    """A tiny random DiffusionGemma folder at `folder` as transformers saves one (config.json, generation_config.json,
    model.safetensors) plus the shipped tokenizer.json; `explorer.load(folder)` reads it."""
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        tiny_diffusion_gemma(seed, **changes).save_pretrained(folder)
    shipped_tokenizer_plus(None).save(str(folder / "tokenizer.json"))
    return folder
