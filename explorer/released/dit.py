"""kuleshov-group MDLM / BD3-LM releases (kuleshov-group/mdlm-owt, kuleshov-group/bd3lm-owt-block_size*).

These Hugging Face folders hold a DiT backbone behind `trust_remote_code` files (configuration_mdlm.py /
modeling_mdlm.py, configuration_bd3lm.py / modeling_bd3lm.py) that are never run here. Their config.json
fields: model_type "mdlm" | "bd3lm", architectures ["MDLM"] | ["BD3LM"], vocab_size (50258 = GPT-2's 50257
+ a mask token), model_length (1024), hidden_dim, cond_dim, n_blocks, n_heads, dropout, time_conditioning,
and for BD3-LM also block_size, cross_attn, adaln, attn_backend, causal, var_min, sampling_eps_min / max.

The architecture is rebuilt from those fields (`DiTBackbone`, same call signature as explorer.nn.Transformer,
so the mdlm and bd3lm samplers, caches and traces run on it unchanged):

    x = embedding[ids]                                   (B, L, d)
    c = silu(sigma_map(sigma))                           (B, cond_dim); sigma_map: 256 cos/sin features -> MLP
    per block:  shift1, scale1, gate1, shift2, scale2, gate2 = adaLN_modulation(c)
                x = x + gate1 * attn(LN(x) * (1 + scale1) + shift1)     LN: LayerNorm without bias
                x = x + gate2 * mlp(LN(x) * (1 + scale2) + shift2)      mlp: Linear, GELU (tanh), Linear, biased
    logits = linear(LN(x) * (1 + scale) + shift)         (B, L, V), a biased head; shift, scale from c

Attention is bias-free, multi-head, with rotate-half RoPE (base 10000) on q and k; MDLM's is bidirectional,
BD3-LM's block-causal (the samplers pass the mask). Released weights, under `backbone.`:

    vocab_embed.embedding                        -> backbone.embed.weight
    sigma_map.mlp.{0,2}.{weight,bias}            -> backbone.sigma_map.mlp.{0,2}.*
    blocks.{i}.attn_qkv.weight                   -> backbone.blocks.{i}.attn.qkv.weight (q, k rows permuted per
                                                    head from rotate-half to our interleaved RoPE pairs)
    blocks.{i}.attn_out.weight                   -> backbone.blocks.{i}.attn.out.weight
    blocks.{i}.norm1 | norm2 | mlp.{0,2} | adaLN_modulation   -> the same names under backbone.blocks.{i}
    output_layer.norm_final | linear | adaLN_modulation       -> the same names under backbone.output_layer

Besides parameters, the upstream classes' `save_pretrained` writes buffers: `backbone.rotary_emb.inv_freq` (the
rotary frequencies, checked to be base 10000's) and, for a BD3-LM with a variable noise floor (var_min), the
scalars `sampling_eps_min` / `sampling_eps_max` (the training noise window, checked to lie in [0, 1] and to agree
with config.json; sampling does not use them). Any other key is refused with its file named.

The released models were trained without time conditioning (sigma = 0, so c is one constant vector); a
folder with time_conditioning=true gets sigma(t) = -log(1 - (1 - eps) t) (the log-linear schedule) at the
sampler's t where the sampler has one (MDLM's ancestral sampler, Dream's), else at t = the masked fraction of the
window it is given (LLaDA's rules, the block sampler).
GPT-2's tokenizer is not part of the release: the folder needs GPT-2's `tokenizer.json` beside config.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from explorer.data.tokenizer import load_tokenizer
from explorer.models.base import config_int, read_config
from explorer.models.bd3lm import BD3LMConfig, BD3LMModel
from explorer.models.mdlm import MDLMConfig, MDLMModel
from explorer.models.weights import PICKLE_SUFFIXES, SafetensorsFolder, check_layout
from explorer.nn import KVCache, TransformerConfig
from explorer.nn.transformer import Attention, Rotary, window
from explorer.released.base import ReleasedModel
from explorer.released.llada import rope_permutation
from explorer.released.placement import (
    Placement,
    check_placement_memory,
    finish_placement,
    plan_placement,
)

DIT_MODEL_TYPES = {"mdlm": "MDLM", "bd3lm": "BD3-LM"}
DIT_ARCHITECTURES = {"MDLM": "MDLM", "BD3LM": "BD3-LM"}
DIT_REMOTE_FILES = ("configuration_mdlm", "modeling_mdlm", "configuration_bd3lm", "modeling_bd3lm")
DIT_FIELDS = ("hidden_dim", "cond_dim", "n_blocks", "n_heads", "model_length")  # the backbone's shape fields
BD3LM_FIELDS = ("block_size", "cross_attn", "adaln", "attn_backend", "var_min")
PREFIX = "backbone."
EOS_TOKEN = "<|endoftext|>"  # GPT-2's end of text (also its bos and pad)
SIGMA_FEATURES = 256  # cos/sin features of sigma before sigma_map's MLP
SCHEDULE_EPS = 1e-3  # the log-linear schedule's epsilon, for time-conditioned folders
MLP_RATIO = 4  # the DiT MLP's width over hidden_dim


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


def dit_family(config: dict) -> str:
    """The explorer family a DiT release loads into: "bd3lm" for BD3-LM, "mdlm" for MDLM."""
    return "bd3lm" if dit_release_kind(config) == "BD3-LM" else "mdlm"


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
                         f"runs arbitrary code; only safetensors + config.json folders are loaded")


# --- the architecture ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DiTSpec:
    """What a DiT release adds to the shared TransformerConfig (read from its config.json)."""

    cond_dim: int  # width of the noise-level conditioning c
    adaln: bool = True  # blocks modulated by c (BD3-LM's `adaln`; MDLM always)
    time_conditioning: bool = False  # False: sigma = 0 (the released models)
    mask_id: int = 50257  # the [MASK] id: the last embedding row (GPT-2's vocabulary + 1)
    eos_id: int | None = 50256  # GPT-2's <|endoftext|> (also bos and pad)


class BiasFreeLayerNorm(nn.Module):
    """LayerNorm with a gain and no bias, computed in float32 (as the release does) and cast back."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)
        return normed * self.weight


def sigma_frequencies(device=None) -> torch.Tensor:
    """(128,) float32 frequencies 10^(-4 j / 128) of the sigma features."""
    half = SIGMA_FEATURES // 2
    return torch.exp(-math.log(10000) * torch.arange(half, device=device) / half)


class SigmaEmbedding(nn.Module):
    """sigma (B,) -> (B, cond_dim): cos / sin at periods 2 pi .. 2 pi 10^4 (cos first), then an MLP."""

    def __init__(self, cond_dim: int):
        super().__init__()
        self.register_buffer("frequencies", sigma_frequencies(), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(SIGMA_FEATURES, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        angles = sigma.float()[:, None] * self.frequencies.float()  # (B, 128)
        features = torch.cat([angles.cos(), angles.sin()], dim=-1).to(self.mlp[0].weight.dtype)
        return self.mlp(features)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    def __init__(self, config: TransformerConfig, spec: DiTSpec):
        super().__init__()
        d = config.d_model
        self.norm1 = BiasFreeLayerNorm(d)
        self.attn = Attention(config)  # bias-free qkv and out, our RoPE and masks and KV cache
        self.norm2 = BiasFreeLayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, MLP_RATIO * d), nn.GELU(approximate="tanh"), nn.Linear(MLP_RATIO * d, d))
        self.adaLN_modulation = nn.Linear(spec.cond_dim, 6 * d) if spec.adaln else None

    def forward(self, x, angles, layer, cache, start, store, mask, c, outputs: int | None = None):
        if self.adaLN_modulation is None:
            x = x[:, :outputs] + self.attn(self.norm1(x), angles, layer, cache, start, store, mask, outputs)
            return x + self.mlp(self.norm2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)
        h = self.attn(_modulate(self.norm1(x), shift1, scale1), angles, layer, cache, start, store, mask, outputs)
        x = x[:, :outputs] + gate1 * h
        return x + gate2 * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class DiTOutput(nn.Module):
    def __init__(self, config: TransformerConfig, spec: DiTSpec):
        super().__init__()
        self.norm_final = BiasFreeLayerNorm(config.d_model)
        self.linear = nn.Linear(config.d_model, config.vocab_size)
        self.adaLN_modulation = nn.Linear(spec.cond_dim, 2 * config.d_model) if spec.adaln else None

    def hidden(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        x = self.norm_final(x)
        if self.adaLN_modulation is None:
            return x
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)
        return _modulate(x, shift, scale)


class DiTBackbone(nn.Module):
    """A released DiT with explorer.nn.Transformer's forward signature: token ids (B, L) -> logits (B, L, V)."""

    def __init__(self, config: TransformerConfig, spec: DiTSpec):
        super().__init__()
        self.config = config
        self.spec = spec
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.sigma_map = SigmaEmbedding(spec.cond_dim) if spec.adaln else None
        self.rotary = Rotary(config.d_model // config.n_heads, config.max_seq_len, config.rope_theta)
        self.blocks = nn.ModuleList(DiTBlock(config, spec) for _ in range(config.n_layers))
        self.output_layer = DiTOutput(config, spec)

    def sigma(self, input_ids: torch.Tensor, time: float | None = None) -> torch.Tensor:
        """(B,) noise levels: 0 (no time conditioning), else sigma(t) = -log(1 - (1 - eps) t) at the sampler's
        t (`time`), or, where the sampler has none, at t = the masked fraction of each row."""
        if not self.spec.time_conditioning:
            return torch.zeros(input_ids.shape[0], device=input_ids.device)
        if time is not None:
            t = torch.full((input_ids.shape[0],), float(time), device=input_ids.device)
        else:
            t = (input_ids == self.spec.mask_id).float().mean(-1).clamp(max=1.0)
        return -torch.log1p(-(1 - SCHEDULE_EPS) * t)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None, return_hidden: bool = False,
                mask=None, positions: torch.Tensor | None = None, start: int | None = None,
                store: int | None = None, logits_for: slice = slice(None), time: float | None = None,
                outputs: int | None = None):
        """As explorer.nn.Transformer.forward (token ids only): `mask`, `positions`, the cache window
        (`start`, `store`), `logits_for` and `outputs` mean the same there and here; `time`: the sampler's t (see
        `sigma`)."""
        start, store, positions = window(cache, input_ids.shape[1], start, store, positions, self.config.max_seq_len,
                                         input_ids.device)
        angles = self.rotary.angles(positions)
        x = self.embed(input_ids)  # (B, L, d)
        c = F.silu(self.sigma_map(self.sigma(input_ids, time))) if self.sigma_map is not None else None  # (B, cond)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, angles, i, cache, start, store, mask, c, outputs if i == last else None)
        if cache is not None and store:
            cache.length = max(cache.length, start + store)
        hidden = self.output_layer.hidden(x, c)  # (B, L or outputs, d)
        logits = self.output_layer.linear(hidden[:, logits_for])  # (B, positions in logits_for, V)
        return (logits, hidden) if return_hidden else logits

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class DiTRelease(ReleasedModel):
    """What the MDLM and BD3-LM releases share on top of their family: the DiT backbone and the ids of the
    release (the mask is the extra last row, which GPT-2's tokenizer does not name)."""

    def _build(self, config, spec: DiTSpec, tokenizer: Tokenizer, layout: str) -> None:
        # LanguageModel.__init__ is skipped on purpose: the embedding has one row more than the tokenizer
        # (the mask), and the backbone is the DiT, not the shared Transformer.
        nn.Module.__init__(self)
        self.config = config
        self.spec = spec
        self.tokenizer = tokenizer
        self.backbone = DiTBackbone(config.backbone, spec)
        self.name = layout
        self.layout = layout  # the released layout this model was read from

    @property
    def special(self) -> dict[str, int | None]:
        """GPT-2's end of text is also its bos and pad; the mask is the extra last row."""
        eos = self.spec.eos_id
        return {"mask": self.spec.mask_id, "bos": eos, "eos": eos, "pad": eos}


class DiTMDLMModel(DiTRelease, MDLMModel):
    """A kuleshov-group MDLM release in the mdlm family (SUBS parameterization, every masked sampler)."""

    def __init__(self, config: MDLMConfig, spec: DiTSpec, tokenizer: Tokenizer):
        self._build(config, spec, tokenizer, "mdlm-release")

    @property
    def time_conditioned(self) -> bool:
        return self.spec.time_conditioning


class DiTBD3LMModel(DiTRelease, BD3LMModel):
    """A kuleshov-group BD3-LM release in the bd3lm family (block-causal attention, exact KV cache)."""

    def __init__(self, config: BD3LMConfig, spec: DiTSpec, tokenizer: Tokenizer):
        self._build(config, spec, tokenizer, "bd3lm-release")


# --- reading a folder ---------------------------------------------------------------------------


def _field(config: dict, file: Path, name: str) -> int:
    """An integer field of config.json, in its allowed range."""
    if name not in config:
        raise ValueError(f"{file}: missing field {name!r} (needed to build the DiT architecture)")
    return config_int(config[name], file, name)


def dit_configs(config: dict, tokenizer: Tokenizer, file: Path) -> tuple[MDLMConfig | BD3LMConfig, DiTSpec]:
    """The family config and DiTSpec of a release's config.json, with its unsupported variants refused."""
    kind = dit_release_kind(config)
    if config.get("causal"):
        raise ValueError(f"{file}: causal=true (the autoregressive baseline of the BD3-LM code) is not supported; "
                         "only the MDLM and BD3-LM diffusion releases load")
    d, heads = _field(config, file, "hidden_dim"), _field(config, file, "n_heads")
    if d % heads or (d // heads) % 2:
        raise ValueError(f"{file}: hidden_dim={d} must split into n_heads={heads} heads of even size")
    vocab, length = _field(config, file, "vocab_size"), _field(config, file, "model_length")
    words = tokenizer.get_vocab_size()
    mask_id = config.get("mask_token_id", config.get("mask_index"))
    if mask_id is None:
        if words >= vocab:
            raise ValueError(f"{file}: the tokenizer has {words} tokens, but vocab_size={vocab} leaves no row for "
                             "the mask (the releases append it after GPT-2's 50257 tokens)")
        mask_id = vocab - 1
    mask_id = config_int(mask_id, file, "mask id", lo=0, hi=vocab - 1)
    backbone = TransformerConfig(
        vocab_size=vocab, d_model=d, n_layers=_field(config, file, "n_blocks"), n_heads=heads, d_ff=MLP_RATIO * d,
        max_seq_len=length, attention="block_causal" if kind == "BD3-LM" else "bidirectional",
        rope_theta=10000.0, tie_embeddings=False)
    spec = DiTSpec(cond_dim=_field(config, file, "cond_dim"), adaln=bool(config.get("adaln", True)),
                   time_conditioning=bool(config.get("time_conditioning", False)), mask_id=int(mask_id),
                   eos_id=tokenizer.token_to_id(EOS_TOKEN))
    if kind == "BD3-LM":
        block_size = _field(config, file, "block_size")
        if not 1 <= block_size <= length or length % block_size:
            raise ValueError(f"{file}: block_size={block_size} must divide model_length={length}")
        return BD3LMConfig(backbone=backbone, block_size=block_size, attention_backend="sdpa"), spec
    return MDLMConfig(backbone=backbone), spec


def expected_shapes(backbone: TransformerConfig, spec: DiTSpec) -> dict[str, tuple[int, ...]]:
    """Every key of a release for this architecture, with its shape."""
    d, v, c, f = backbone.d_model, backbone.vocab_size, spec.cond_dim, MLP_RATIO * backbone.d_model
    p = PREFIX
    shapes = {p + "vocab_embed.embedding": (v, d), p + "output_layer.norm_final.weight": (d,),
              p + "output_layer.linear.weight": (v, d), p + "output_layer.linear.bias": (v,)}
    if spec.adaln:
        shapes |= {p + "sigma_map.mlp.0.weight": (c, SIGMA_FEATURES), p + "sigma_map.mlp.0.bias": (c,),
                   p + "sigma_map.mlp.2.weight": (c, c), p + "sigma_map.mlp.2.bias": (c,),
                   p + "output_layer.adaLN_modulation.weight": (2 * d, c),
                   p + "output_layer.adaLN_modulation.bias": (2 * d,)}
    for i in range(backbone.n_layers):
        b = f"{p}blocks.{i}."
        shapes |= {b + "norm1.weight": (d,), b + "norm2.weight": (d,), b + "attn_qkv.weight": (3 * d, d),
                   b + "attn_out.weight": (d, d), b + "mlp.0.weight": (f, d), b + "mlp.0.bias": (f,),
                   b + "mlp.2.weight": (d, f), b + "mlp.2.bias": (d,)}
        if spec.adaln:
            shapes |= {b + "adaLN_modulation.weight": (6 * d, c), b + "adaLN_modulation.bias": (6 * d,)}
    return shapes


def saved_buffers(config: dict, backbone: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """The non-parameter entries an upstream `save_pretrained` writes, with their shapes (see the docstring)."""
    buffers = {PREFIX + "rotary_emb.inv_freq": (backbone.d_model // backbone.n_heads // 2,)}
    if config.get("var_min"):
        buffers |= {"sampling_eps_min": (), "sampling_eps_max": ()}
    return buffers


def check_buffers(weights: SafetensorsFolder, config: dict, backbone: TransformerConfig) -> list[str]:
    """Validate the saved buffers a folder holds (values, not only shapes); returns their names."""
    present = [key for key in saved_buffers(config, backbone) if key in weights.tensors]
    for key in present:
        value = weights.tensor(key, "cpu", torch.float32)
        where = f"{weights.tensors[key].file}: {key}"
        if key.endswith("inv_freq"):
            head_dim = backbone.d_model // backbone.n_heads
            base = 1.0 / backbone.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
            if not torch.allclose(value, base, rtol=1e-2):
                raise ValueError(f"{where} is not the rotary frequencies of base {backbone.rope_theta:g} "
                                 "(a different rotary base is not supported)")
            continue
        eps = float(value)
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"{where} = {eps} must be a noise level in [0, 1]")
        stated = config.get(key)
        if isinstance(stated, (int, float)) and not math.isclose(eps, stated, rel_tol=1e-3, abs_tol=1e-6):
            raise ValueError(f"{where} = {eps} disagrees with config.json's {key} = {stated}")
    return present


def _mapped_state(weights: SafetensorsFolder, backbone: TransformerConfig, expected, placement: Placement) -> dict:
    """Our state dict, read one released tensor at a time straight to the device `placement` gives it
    (q / k rows permuted for the RoPE convention)."""
    H, Dh = backbone.n_heads, backbone.d_model // backbone.n_heads
    perm = rope_permutation(Dh)
    state = {}
    for key in expected:
        name = "backbone." + key.removeprefix(PREFIX)
        if name.endswith("vocab_embed.embedding"):
            name = "backbone.embed.weight"
        name = name.replace("attn_qkv", "attn.qkv").replace("attn_out", "attn.out")
        tensor = weights.tensor(key, placement.device_of(name), placement.dtype)
        if name.endswith("attn.qkv.weight"):
            q, k, v = tensor.view(3, H, Dh, -1).unbind(0)  # each (H, Dh, d)
            perm = perm.to(tensor.device)
            tensor = torch.cat([q[:, perm].flatten(0, 1), k[:, perm].flatten(0, 1), v.flatten(0, 1)])  # (3d, d)
        state[name] = tensor
    return state


def load_dit(path, device=None, dtype=None, device_map=None, max_memory=None):
    """Build an MDLM or BD3-LM release folder's model on `device` (default CUDA if any, else CPU) in `dtype`
    (default bf16 on CUDA, fp32 on CPU), after checking keys, shapes and memory from the safetensors headers;
    `device_map` / `max_memory` spread whole blocks over several devices (explorer.released.placement)."""
    path = Path(path)
    if path.is_file():
        refuse_pickle(path)
        path = path.parent
    file = path / "config.json"
    config = read_config(path)
    if not is_dit_release(config):
        raise ValueError(f"{file}: not an MDLM / BD3-LM release ({_identifying_fields(config)})")
    if path.is_dir() and not any(path.glob("*.safetensors")):  # weights only as pickles: refuse those
        for child in sorted(path.iterdir()):
            if child.is_file():
                refuse_pickle(child)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path / 'tokenizer.json'}: missing - the {dit_release_kind(config)} releases use "
                                "GPT-2's tokenizer without shipping it; copy GPT-2's tokenizer.json (the `gpt2` "
                                "folder on the Hub) next to config.json")
    tokenizer = load_tokenizer(path)
    family_config, spec = dit_configs(config, tokenizer, file)
    shape = family_config.backbone
    weights = SafetensorsFolder(path)
    expected = expected_shapes(shape, spec)
    check_layout(weights, expected, "DiT", optional=saved_buffers(config, shape))
    check_buffers(weights, config, shape)
    model_class = DiTBD3LMModel if isinstance(family_config, BD3LMConfig) else DiTMDLMModel
    with torch.device("meta"):  # no allocation, no random init: every parameter is assigned below
        model = model_class(family_config, spec, tokenizer)
    placement = plan_placement(model, device_map, max_memory, dtype, no_split=(DiTBlock.__name__,), device=device)
    check_placement_memory(placement, str(path))
    try:
        state = _mapped_state(weights, shape, expected, placement)
    finally:
        weights.close()
    model.load_state_dict(state, strict=True, assign=True)
    backbone = model.backbone  # non-persistent buffers, rebuilt off meta on the embedding's device
    rotary = Rotary(shape.d_model // shape.n_heads, shape.max_seq_len, shape.rope_theta)
    backbone.rotary = rotary.to(device=placement.main, dtype=placement.dtype)
    if backbone.sigma_map is not None:
        backbone.sigma_map.frequencies = sigma_frequencies(placement.device_of("backbone.sigma_map"))
    finish_placement(model, placement, root="backbone")  # the samplers call the backbone
    model.device_map = placement.as_dict()
    model.name = path.name
    model.checkpoint_info = config
    return model.eval().requires_grad_(False)


__all__ = ["DiTBD3LMModel", "DiTBackbone", "DiTMDLMModel", "DiTSpec", "dit_family", "dit_release_kind",
           "is_dit_release", "load_dit", "refuse_pickle"]
