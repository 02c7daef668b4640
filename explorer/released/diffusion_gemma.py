"""DiffusionGemma folders (transformers' DiffusionGemmaForBlockDiffusion) as a model of their own family.

The network is transformers' own class, read from the folder's config.json and safetensors weights (never remote
code, never pickles); generation is transformers' own `generate`, recorded step by step by the "diffusion_gemma"
family's sampler (explorer.sampling.diffusion_gemma). The tokenizer is the folder's tokenizer.json. DiffusionGemma
has no mask token: its canvases start as random tokens; the pad id stands for positions not drawn yet (`mask_id`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from explorer.data.tokenizer import load_tokenizer
from explorer.models.base import config_int, read_config
from explorer.models.weights import SafetensorsFolder
from explorer.nn.transformer import Probe
from explorer.released.base import ReleasedModel

MAX_CONTEXT = 131_072  # DiffusionGemma's max_position_embeddings


def is_diffusion_gemma(config: dict) -> bool:
    """True for a DiffusionGemma config.json (model_type "diffusion_gemma")."""
    return isinstance(config, dict) and config.get("model_type") == "diffusion_gemma"


class DiffusionGemmaModel(ReleasedModel, nn.Module):
    """A DiffusionGemma network with what the samplers, the trace and the page read (tokenizer, special ids,
    context); its only sampler runs the network's own `generate`."""

    family = "diffusion_gemma"
    default_sampler = "entropy_bound"

    def __init__(self, network: nn.Module, tokenizer, special: dict[str, int | None], max_seq_len: int):
        super().__init__()
        self.network = network  # transformers DiffusionGemmaForBlockDiffusion
        self.tokenizer = tokenizer
        self.special = special
        self.layout = self.name = "diffusion_gemma"
        self._max_seq_len = max_seq_len

    @property
    def canvas_length(self) -> int:
        return self.network.config.canvas_length

    @property
    def max_seq_len(self) -> int:
        return self._max_seq_len

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    @torch.no_grad()
    def canvas_pass(self, context_ids: list[int], canvas_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder pass outside `generate`, for the diagnostics: the encoder reads `context_ids` (the prompt and
        the finished canvases), the decoder denoises `canvas_ids` (canvas_length ids, at the positions after the
        context) without self-conditioning. (logits (C, V) float32, last hidden state (C, d) after the final norm:
        the state the trace records at level "full")."""
        if len(canvas_ids) != self.canvas_length:
            raise ValueError(f"canvas_ids must hold canvas_length = {self.canvas_length} ids, got {len(canvas_ids)}")
        if not context_ids or len(context_ids) + len(canvas_ids) > self.max_seq_len:
            raise ValueError(f"context_ids must hold 1 to {self.max_seq_len - len(canvas_ids)} ids (the prompt "
                             f"first), got {len(context_ids)}")
        kept = []
        hook = self.network.model.decoder.norm.register_forward_hook(lambda module, args, out: kept.append(out))
        try:
            logits = self.network(input_ids=torch.tensor([context_ids], device=self.device),
                                  decoder_input_ids=torch.tensor([canvas_ids], device=self.device)).logits
        finally:
            hook.remove()
        return logits[0].float(), kept[-1][0].float()

    @contextlib.contextmanager
    def probe(self, layers: list[int] | None = None, attention: bool = False):
        """Inside the block, each decoder pass records what the self-attention of the decoder's `layers` (None = all)
        read, into the yielded Probe (our Transformer's record; the last pass only), through forward hooks on those
        layers' `self_attn`; outside it nothing is hooked and the passes are unchanged.

        DiffusionGemma's decoder has one attention per layer: the canvas's queries over the encoder's cached keys of
        the context (prompt and finished canvases; transformers' docstrings call this part cross-attention) and the
        canvas's own keys, in one softmax. keys[layer] and values[layer] (1, H_kv, Lk, Dh) are the tensors that
        attention reads, as the library computes them: the cached context's (from the encoder) followed by the
        canvas's (its projection, norm and, for keys, rotary; a full-attention layer's values are its keys' projection
        under the value norm). H_kv is the model's key/value heads (ours has as many as query heads); a sliding layer's
        cache keeps only the context's last sliding_window - 1 positions, so the Lk keys are always the last Lk
        positions of the pass. With `attention`, probs[layer] (1, H, C, Lk): the library's own attention weights of
        the C canvas queries, under the eager attention implementation for the block (switched back after)."""
        from transformers.models.diffusion_gemma.modeling_diffusion_gemma import apply_rotary_pos_emb

        n = self.network.config.text_config.num_hidden_layers
        layers = list(range(n)) if layers is None else layers
        for layer in layers:
            if type(layer) is not int or not 0 <= layer < n:
                raise ValueError(f"layer must be an int in [0, {n - 1}] (the model's layers), got {layer!r}")
        probe = Probe(frozenset(layers), attention)

        @torch.no_grad()
        def record(attn, args, kwargs, output):
            x, (cos, sin), cache = kwargs["hidden_states"], kwargs["position_embeddings"], kwargs["cache"]
            if cache.is_compileable:  # a static cache is zero-padded past its length: not what attention read
                raise ValueError("the probe reads a dynamic cache (the default); this pass ran with a static one")
            shape = (*x.shape[:-1], -1, attn.head_dim)  # (1, C, H_kv, Dh)
            k = attn.k_proj(x).view(shape)
            v = attn.v_proj(x).view(shape) if attn.v_proj is not None else k
            k = apply_rotary_pos_emb(attn.k_norm(k), cos, sin, unsqueeze_dim=2).transpose(1, 2)  # (1, H_kv, C, Dh)
            v = attn.v_norm(v).transpose(1, 2)
            cached = cache.layers[attn.layer_idx]
            probe.keys[attn.layer_idx] = torch.cat([cached.keys, k], dim=-2)  # (1, H_kv, Lk, Dh)
            probe.values[attn.layer_idx] = torch.cat([cached.values, v], dim=-2)
            if attention:
                probe.probs[attn.layer_idx] = output[1].float()  # (1, H, C, Lk)

        text = self.network.config.text_config  # the decoder's attention reads its implementation from here per call
        before = text._attn_implementation
        hooks = [self.network.model.decoder.layers[layer].self_attn.register_forward_hook(record, with_kwargs=True)
                 for layer in sorted(probe.layers)]
        try:
            if attention:  # sdpa and flash attention return no weights
                text._attn_implementation = "eager"
            yield probe
        finally:
            text._attn_implementation = before
            for hook in hooks:
                hook.remove()

    @property
    def source(self) -> dict:
        """The trace's source block: whose loop made the run (the sampler's settings are the trace's sampler)."""
        import transformers

        return {"library": "transformers", "version": transformers.__version__,
                "model_class": type(self.network).__name__}


def load_diffusion_gemma(path: str | Path, device=None, dtype: torch.dtype | None = None) -> DiffusionGemmaModel:
    """Load a DiffusionGemma folder (config.json, safetensors weights, tokenizer.json) as an eval-mode model.
    dtype None: bfloat16 on CUDA, float32 elsewhere."""
    try:
        from transformers import DiffusionGemmaForBlockDiffusion
    except ImportError:
        raise ImportError("DiffusionGemma folders need transformers>=5.25 (transformers.models.diffusion_gemma): "
                          "pip install -c constraints.txt -e '.[integrations]'") from None

    path = Path(path)
    file = path / "config.json"
    config = read_config(path)
    if not is_diffusion_gemma(config):
        raise ValueError(f"{file}: not a DiffusionGemma config (model_type {config.get('model_type')!r})")
    text = config.get("text_config")
    if not isinstance(text, dict):
        raise ValueError(f"{file}: text_config must be an object, got {type(text).__name__}")
    vocab = config_int(text.get("vocab_size"), file, "text_config.vocab_size")
    config_int(config.get("canvas_length", 256), file, "canvas_length")
    special = {name: None if text.get(f"{name}_token_id") is None else
               config_int(text[f"{name}_token_id"], file, f"text_config.{name}_token_id", lo=0, hi=vocab - 1)
               for name in ("pad", "bos", "eos")}
    if special["pad"] is None:
        raise ValueError(f"{file}: text_config.pad_token_id is needed (it marks the canvases not drawn yet)")
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"{tokenizer_file}: missing tokenizer.json")
    tokenizer = load_tokenizer(tokenizer_file)
    if tokenizer.get_vocab_size() > vocab:
        raise ValueError(f"{tokenizer_file}: {tokenizer.get_vocab_size()} tokens exceed the model's vocab_size {vocab}")
    SafetensorsFolder(path)  # refuses pickles and names a missing shard before transformers reads anything
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    network = DiffusionGemmaForBlockDiffusion.from_pretrained(
        path, local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=dtype).to(device)
    network.requires_grad_(False)
    max_seq_len = min(config_int(text.get("max_position_embeddings", MAX_CONTEXT), file,
                                 "text_config.max_position_embeddings"), MAX_CONTEXT)
    model = DiffusionGemmaModel(network.eval(), tokenizer, special | {"mask": special["pad"]}, max_seq_len)
    model.name = path.name
    model.checkpoint_path = str(path)
    model.checkpoint_info = {"family": "diffusion_gemma", "released": "diffusion_gemma", "config": config}
    return model.eval()
