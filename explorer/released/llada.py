"""LLaDA 8B Base / Instruct / 1.5 as a native masked-diffusion model on the shared Transformer.

The released folder (GSAI-ML/LLaDA-8B-*) holds an OLMo-style `config.json` (d_model, n_layers,
n_heads, mlp_hidden_size, rope_theta, ...), `tokenizer.json`, `tokenizer_config.json` (with the chat
template) and safetensors shards whose keys live under `model.transformer.`. Nothing of the
folder's remote code is run: the architecture is rebuilt here from the config fields, and the
weights are mapped onto `explorer.nn.Transformer`:

    wte.weight                                -> backbone.embed.weight
    blocks.{i}.attn_norm.weight               -> backbone.blocks.{i}.attn_norm.weight
    blocks.{i}.q_proj | k_proj | v_proj       -> backbone.blocks.{i}.attn.qkv.weight (stacked q, k, v;
                                                 q and k rows permuted per head, see `rope_permutation`)
    blocks.{i}.attn_out.weight                -> backbone.blocks.{i}.attn.out.weight
    blocks.{i}.ff_norm.weight                 -> backbone.blocks.{i}.mlp_norm.weight
    blocks.{i}.ff_proj (gate) | up_proj       -> backbone.blocks.{i}.mlp.gate_up.weight (gate first)
    blocks.{i}.ff_out.weight (down)           -> backbone.blocks.{i}.mlp.down.weight
    ln_f.weight                               -> backbone.norm.weight
    ff_out.weight (untied head)               -> backbone.head.weight
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from jinja2 import TemplateError
from tokenizers import Tokenizer
from torch import nn

from explorer.data.tokenizer import load_tokenizer
from explorer.models.base import config_float, config_int, read_config
from explorer.models.mdlm import MDLMConfig, MDLMModel
from explorer.models.weights import SafetensorsFolder, check_layout
from explorer.nn import Transformer, TransformerConfig
from explorer.nn.transformer import Block, Rotary
from explorer.released.base import ReleasedModel
from explorer.released.placement import (
    Placement,
    check_placement_memory,
    finish_placement,
    plan_placement,
)

PREFIX = "model.transformer."
CHAT_CONFIG = "tokenizer_config.json"  # holds an Instruct release's chat template
# The released LLaDA-8B ids, used when neither config.json nor the tokenizer names them.
DEFAULT_MASK_ID = 126336  # <|mdm_mask|>
DEFAULT_EOS_ID = 126081  # <|endoftext|> (also the pad id)
DEFAULT_EOT_ID = 126348  # <|eot_id|> (end of an Instruct turn)
TOKENS = {"mask": "<|mdm_mask|>", "eos": "<|endoftext|>", "eot": "<|eot_id|>", "bos": "<|startoftext|>"}
# config.json switches that change the computation and that this loader does not implement: name -> the value it needs
UNSUPPORTED = {"alibi": False, "attention_layer_norm": False, "input_emb_norm": False, "scale_logits": False,
               "include_bias": False, "include_qkv_bias": False, "clip_qkv": None, "multi_query_attention": False,
               "rope": True}


@dataclass(frozen=True)
class LLaDAConfig(MDLMConfig):
    mask_id: int = DEFAULT_MASK_ID  # the [MASK] token the canvas starts from (config mask_token_id)
    eos_id: int | None = DEFAULT_EOS_ID  # end of text (config eos_token_id)
    eot_id: int | None = DEFAULT_EOT_ID  # end of an Instruct turn (tokenizer <|eot_id|>), None if absent
    pad_id: int | None = DEFAULT_EOS_ID  # padding (config pad_token_id)
    bos_id: int | None = None  # start of text (config bos_token_id or tokenizer <|startoftext|>)


def is_llada(config: dict) -> bool:
    """A LLaDA dense layout: model_type "llada" or architecture LLaDAModelLM, with OLMo field names (d_model).
    (LLaDA-MoE also says "llada" but uses hidden_size / experts, a different layout.)"""
    archs = config.get("architectures") or []
    named = config.get("model_type") == "llada" or "LLaDAModelLM" in archs
    return named and "d_model" in config and not any("moe" in a.lower() for a in archs)


def _int(config: dict, file: Path, name: str, default: int | None = None) -> int:
    """An integer field of config.json, in its allowed range; `default` when absent or null (required if None)."""
    if config.get(name) is None:
        if default is None:
            raise ValueError(f"{file}: missing field {name!r} (needed to build the LLaDA architecture)")
        return default
    return config_int(config[name], file, name)


def _float(config: dict, file: Path, name: str, default: float) -> float:
    return default if config.get(name) is None else config_float(config[name], file, name)


def backbone_config(config: dict, file: Path) -> TransformerConfig:
    """TransformerConfig from LLaDA's config.json fields. Defaults for optional fields: n_kv_heads = n_heads,
    mlp_hidden_size = mlp_ratio (4) x d_model, embedding_size = vocab_size, rope_theta = 10000,
    rms_norm_eps = 1e-5, max_sequence_length = 4096, weight_tying = false."""
    for name, needed in UNSUPPORTED.items():
        if name in config and config[name] is not None and config[name] != needed:
            raise ValueError(f"{file}: {name}={config[name]!r} is not supported by the LLaDA loader (needs {needed!r})")
    if config.get("block_type", "llama") != "llama":
        raise ValueError(f"{file}: block_type={config['block_type']!r} is not supported (only 'llama')")
    if config.get("layer_norm_type", "rms") != "rms":
        raise ValueError(f"{file}: layer_norm_type={config['layer_norm_type']!r} is not supported (only 'rms')")
    if config.get("activation_type", "silu") not in ("silu", "swiglu"):
        raise ValueError(f"{file}: activation_type={config['activation_type']!r} is not supported (silu/swiglu)")
    d_model, n_heads = _int(config, file, "d_model"), _int(config, file, "n_heads")
    n_kv_heads = _int(config, file, "n_kv_heads", n_heads)
    if n_kv_heads != n_heads:
        raise ValueError(f"{file}: n_kv_heads={n_kv_heads} differs from n_heads={n_heads}; grouped KV heads "
                         "are not supported by the shared Transformer")
    if d_model % n_heads or (d_model // n_heads) % 2:
        raise ValueError(f"{file}: d_model={d_model} must split into n_heads={n_heads} heads of even size")
    vocab = _int(config, file, "embedding_size", 0) or _int(config, file, "vocab_size")
    d_ff = _int(config, file, "mlp_hidden_size", 0) or config_int(
        int(_float(config, file, "mlp_ratio", 4.0) * d_model), file, "mlp_ratio x d_model")
    return TransformerConfig(
        vocab_size=vocab, d_model=d_model, n_layers=_int(config, file, "n_layers"), n_heads=n_heads, d_ff=d_ff,
        max_seq_len=_int(config, file, "max_sequence_length", 4096), attention="bidirectional",
        rope_theta=_float(config, file, "rope_theta", 10000.0),
        norm_eps=_float(config, file, "rms_norm_eps", _float(config, file, "layer_norm_eps", 1e-5)),
        tie_embeddings=bool(config.get("weight_tying", False)),
    )


def special_ids(config: dict, tokenizer: Tokenizer, vocab_size: int, file: Path) -> dict[str, int | None]:
    """mask / eos / eot / pad / bos ids: config.json's *_token_id first, then the tokenizer's token of that
    name, then the released LLaDA-8B default when it fits the vocabulary (mask is required)."""
    def pick(field: str | None, token: str | None, default: int | None):
        value = config.get(field) if field else None
        if value is None and token is not None:
            value = tokenizer.token_to_id(token)
        if value is None and default is not None and default < vocab_size:
            value = default
        return None if value is None else config_int(value, file, field or token, lo=0, hi=vocab_size - 1)

    ids = {"mask_id": pick("mask_token_id", TOKENS["mask"], DEFAULT_MASK_ID),
           "eos_id": pick("eos_token_id", TOKENS["eos"], DEFAULT_EOS_ID),
           "eot_id": pick(None, TOKENS["eot"], DEFAULT_EOT_ID),
           "bos_id": pick("bos_token_id", TOKENS["bos"], None)}
    ids["pad_id"] = pick("pad_token_id", None, None)
    if ids["pad_id"] is None:
        ids["pad_id"] = ids["eos_id"]
    if ids["mask_id"] is None:
        raise ValueError(f"{file}: no mask id (set mask_token_id, or give the tokenizer a {TOKENS['mask']} token)")
    return ids


def rope_permutation(head_dim: int) -> torch.Tensor:
    """(Dh,) row order that turns LLaDA's rotate-half RoPE (pairs (j, j + Dh/2)) into our interleaved one
    (pairs (2j, 2j + 1)): output row 2j takes input row j, row 2j + 1 takes j + Dh/2. Applied to q and k alike,
    it leaves every q.k product unchanged."""
    half = torch.arange(head_dim // 2)
    return torch.stack([half, half + head_dim // 2], dim=-1).flatten()


def source_keys(backbone: TransformerConfig) -> list[str]:
    """Every key a released LLaDA folder holds for this architecture."""
    keys = [PREFIX + "wte.weight", PREFIX + "ln_f.weight"]
    if not backbone.tie_embeddings:
        keys.append(PREFIX + "ff_out.weight")
    for i in range(backbone.n_layers):
        keys += [f"{PREFIX}blocks.{i}.{name}.weight" for name in
                 ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out")]
    return keys


def expected_shapes(backbone: TransformerConfig) -> dict[str, tuple[int, ...]]:
    d, f, v = backbone.d_model, backbone.d_ff, backbone.vocab_size
    shapes = {}
    for key in source_keys(backbone):
        name = key.rsplit(".", 2)[-2]
        if key == PREFIX + "wte.weight" or key == PREFIX + "ff_out.weight":
            shapes[key] = (v, d)
        elif name in ("attn_norm", "ff_norm", "ln_f"):
            shapes[key] = (d,)
        elif name in ("q_proj", "k_proj", "v_proj", "attn_out"):
            shapes[key] = (d, d)
        elif name in ("ff_proj", "up_proj"):
            shapes[key] = (f, d)
        else:  # blocks.{i}.ff_out: the down projection
            shapes[key] = (d, f)
    return shapes


class LLaDAModel(ReleasedModel, MDLMModel):
    """A released LLaDA checkpoint in the mdlm family: same samplers, same denoiser interface."""

    config_class = LLaDAConfig

    def __init__(self, config: LLaDAConfig, tokenizer: Tokenizer):
        # LanguageModel.__init__ is skipped on purpose: the released embedding (126464 rows) is padded
        # beyond the tokenizer's size, and the special ids come from config.json, not our token names.
        nn.Module.__init__(self)
        self.config = config
        self.tokenizer = tokenizer
        self.backbone = Transformer(config.backbone)
        self.name = "llada"
        self.layout = "llada"

    @property
    def special(self) -> dict[str, int | None]:
        c = self.config
        return {"mask": c.mask_id, "bos": c.bos_id, "eos": c.eos_id, "pad": c.pad_id, "eot": c.eot_id}


def _mapped_state(weights: SafetensorsFolder, backbone: TransformerConfig,
                  placement: Placement) -> dict[str, torch.Tensor]:
    """Our state dict, read one released tensor at a time straight to the device `placement` gives its module
    (q/k rows permuted for the RoPE convention)."""
    H, Dh = backbone.n_heads, backbone.d_model // backbone.n_heads
    perm = rope_permutation(Dh)

    def get(name: str, module: str) -> torch.Tensor:  # their key, read onto the device of our `module`
        return weights.tensor(PREFIX + name, placement.device_of(module), placement.dtype)

    def rope_rows(w: torch.Tensor) -> torch.Tensor:  # (d, d) -> (d, d), rows permuted within each head
        return w.view(H, Dh, -1)[:, perm.to(w.device)].reshape(H * Dh, -1)

    def part(i: int, name: str) -> torch.Tensor:  # blocks.{i}.{name}.weight, onto block i's device
        return get(f"blocks.{i}.{name}.weight", f"backbone.blocks.{i}")

    state = {"backbone.embed.weight": get("wte.weight", "backbone.embed"),
             "backbone.norm.weight": get("ln_f.weight", "backbone.norm")}
    state["backbone.head.weight"] = (state["backbone.embed.weight"] if backbone.tie_embeddings
                                     else get("ff_out.weight", "backbone.head"))
    for i in range(backbone.n_layers):
        ours = f"backbone.blocks.{i}."
        state[ours + "attn_norm.weight"] = part(i, "attn_norm")
        state[ours + "attn.qkv.weight"] = torch.cat(
            [rope_rows(part(i, "q_proj")), rope_rows(part(i, "k_proj")), part(i, "v_proj")])  # (3d, d)
        state[ours + "attn.out.weight"] = part(i, "attn_out")
        state[ours + "mlp_norm.weight"] = part(i, "ff_norm")
        state[ours + "mlp.gate_up.weight"] = torch.cat([part(i, "ff_proj"), part(i, "up_proj")])  # gate, then up
        state[ours + "mlp.down.weight"] = part(i, "ff_out")
    return state


def load_llada(path: str | Path, device=None, dtype=None, device_map=None, max_memory=None) -> LLaDAModel:
    """Build a LLaDA folder's model on `device` (default CUDA if any, else CPU) in `dtype` (default bf16 on
    CUDA, fp32 on CPU), after checking keys, shapes and memory from the safetensors headers. `device_map`
    ("auto", "balanced", "sequential" or {module name: device}, within `max_memory`) spreads whole blocks over
    several devices instead (see explorer.released.placement); memory is then checked per device."""
    path = Path(path)
    file = path / "config.json"
    config = read_config(path)
    backbone = backbone_config(config, file)
    tokenizer = load_tokenizer(path)
    ids = special_ids(config, tokenizer, backbone.vocab_size, file)
    weights = SafetensorsFolder(path)
    check_layout(weights, expected_shapes(backbone), "LLaDA")
    with torch.device("meta"):  # no allocation, no random init: every parameter is assigned below
        model = LLaDAModel(LLaDAConfig(backbone=backbone, **ids), tokenizer)
    placement = plan_placement(model, device_map, max_memory, dtype, no_split=(Block.__name__,), device=device)
    check_placement_memory(placement, str(path))
    try:
        state = _mapped_state(weights, backbone, placement)
    finally:
        weights.close()
    model.load_state_dict(state, strict=True, assign=True)
    if backbone.tie_embeddings:
        model.backbone.head.weight = model.backbone.embed.weight
    rotary = Rotary(backbone.d_model // backbone.n_heads, backbone.max_seq_len, backbone.rope_theta)
    # non-persistent buffers, rebuilt off meta on the embedding's device, where the positions are made
    model.backbone.rotary = rotary.to(device=placement.main, dtype=placement.dtype)
    finish_placement(model, placement, root="backbone")  # the samplers call the backbone (denoiser_logits)
    model.device_map = placement.as_dict()
    model.name = path.name
    model.checkpoint_path = str(path)
    model.checkpoint_info = config
    model.chat_template = read_chat_template(path)
    return model.eval().requires_grad_(False)


def read_chat_template(folder: str | Path) -> str | None:
    """tokenizer_config.json's `chat_template` (Instruct releases): a string, or the "default" entry of a list of
    {"name", "template"} objects; None when the folder has none."""
    file = Path(folder) / CHAT_CONFIG
    if not file.is_file():
        return None
    try:
        settings = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None
    template = settings.get("chat_template") if isinstance(settings, dict) else None
    if template is None:
        return None
    # [{"name": ..., "template": ...}, ...]: the default one, else the first
    entries = template if isinstance(template, list) else [{"name": "default", "template": template}]
    if not entries or not all(isinstance(t, dict) and isinstance(t.get("template"), str) for t in entries):
        raise ValueError(f"{file}: chat_template must be a string or a list of {{'name', 'template'}} objects with "
                         f"string templates, got {str(template)[:100]}")
    named = {t.get("name"): t["template"] for t in entries}
    return named.get("default", entries[0]["template"]) or None


class ChatTemplateError(TemplateError, ValueError):
    """A chat template that fails to render within its limits (a ValueError too: the CLI and the page report it)."""


# The template comes from the folder: it is rendered in a child process (Jinja's immutable sandbox, which also caps
# range() at 100,000) under a CPU-time and memory limit, and its output is capped, so that no loop or string
# multiplication in it can hang or exhaust this process.
CHAT_LIMITS = {"cpu_s": 2, "wall_s": 20, "memory": 512 * 1024**2, "chars": 200_000}
RENDER = """
import json, sys
try:
    import resource
    resource.setrlimit(resource.RLIMIT_CPU, (LIMITS["cpu_s"],) * 2)
    resource.setrlimit(resource.RLIMIT_AS, (LIMITS["memory"],) * 2)
except (ImportError, ValueError, OSError):  # no such limits here (Windows, macOS): the output cap and timeout apply
    pass
from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

def raise_exception(message):  # what transformers gives templates to refuse a conversation
    raise TemplateError(message)

job = json.load(sys.stdin)
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
env.globals["raise_exception"] = raise_exception
pieces, size = [], 0
try:
    for piece in env.from_string(job["template"]).generate(**job["variables"]):
        size += len(piece)
        if size > LIMITS["chars"]:
            raise TemplateError(f"its output exceeds {LIMITS['chars']:,} characters")
        pieces.append(piece)
    print(json.dumps({"text": "".join(pieces)}))
except Exception as err:
    print(json.dumps({"error": ": ".join(filter(None, (type(err).__name__, str(err))))}))
"""


def render_chat_template(template: str, variables: dict, file: Path | str) -> str:
    """`template` rendered with `variables` (JSON values) within CHAT_LIMITS; a ChatTemplateError naming `file`
    when it fails, runs too long, takes too much memory or writes too much."""
    code = f"LIMITS = {CHAT_LIMITS!r}\n{RENDER}"
    job = json.dumps({"template": template, "variables": variables})  # ASCII: safe in any locale
    try:
        done = subprocess.run([sys.executable, "-I", "-c", code], input=job, capture_output=True, text=True,
                              timeout=CHAT_LIMITS["wall_s"])
    except subprocess.TimeoutExpired:
        raise ChatTemplateError(f"{file}: the chat template ran past {CHAT_LIMITS['wall_s']} s") from None
    try:
        result = json.loads(done.stdout)
    except json.JSONDecodeError:  # killed: past the CPU-time or memory limit (or the child could not start)
        limits = f"{CHAT_LIMITS['cpu_s']} s of CPU, {CHAT_LIMITS['memory'] // 1024**2} MiB"
        last = done.stderr.strip().splitlines()[-1:]
        raise ChatTemplateError(f"{file}: the chat template was stopped at its limits ({limits}; exit code "
                                f"{done.returncode}{': ' + last[0] if last else ''})") from None
    if "error" in result:
        raise ChatTemplateError(f"{file}: the chat template could not be rendered ({result['error']})")
    return result["text"]


def chat_prompt(model, text: str, system: str | None = None) -> str:
    """`text` as one user turn in the model's chat template (tokenizer_config.json), ready for generation;
    `text` unchanged when the folder has no template. Rendered by `render_chat_template` (no code from the folder
    runs outside Jinja's sandbox, within time, memory and size limits)."""
    template = model.chat_template
    if not template:
        return text
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    tok = model.tokenizer

    def name(token_id):
        return tok.id_to_token(token_id) if token_id is not None else None

    variables = {"messages": messages, "add_generation_prompt": True, "bos_token": name(model.bos_id) or "",
                 "eos_token": name(model.eos_id) or ""}
    return render_chat_template(template, variables, Path(model.checkpoint_path or model.name) / CHAT_CONFIG)
