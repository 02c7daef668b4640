"""Helpers the test modules share (imported as `support`: pytest puts tests/ on sys.path, never the repository
root, so the library is always imported from its installed location)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from explorer.data.tokenizer import SHIPPED_TOKENIZER
from explorer.nn import TransformerConfig
from explorer.released.dream import qwen2_config
from explorer.released.synthetic import save_weights

ROOT = Path(__file__).resolve().parents[1]  # the source checkout: README, notebooks, pyproject.toml


def tiny_backbone(attention: str) -> TransformerConfig:
    return TransformerConfig(vocab_size=2048, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=128,
                             attention=attention)


class MockDenoiser:
    """A stand-in model with the sampler-facing interface: fixed logits per call, counts its calls.

    `peak` > 0 puts that much extra logit on token (position % 50 + 10), so confidences are high.
    """

    family = "mdlm"
    name = "mock"
    max_seq_len = 128
    device = torch.device("cpu")
    default_sampler = None  # the rest of explorer.models.base.SamplerModel
    time_conditioned = False
    logit_shift = 0
    stop_ids = ()
    checkpoint_path = None
    chat_template = None

    def __init__(self, tokenizer, peak: float = 0.0, family: str = "mdlm"):
        self.tokenizer = tokenizer
        self.peak = peak
        self.family = family
        self.calls = 0
        self.mask_id = tokenizer.token_to_id("[MASK]")
        self.bos_id = tokenizer.token_to_id("<bos>")

    def denoiser_logits(self, x: torch.Tensor, return_hidden: bool = False, **_):
        """Logits (B, L, V) with the mask token's at -inf, as every masked model's; hidden states (B, L, 8) of zeros."""
        self.calls += 1
        B, L = x.shape
        logits = torch.zeros(B, L, self.tokenizer.get_vocab_size())
        if self.peak:
            pos = torch.arange(L)
            logits[:, pos, pos % 50 + 10] = self.peak
        logits[..., self.mask_id] = float("-inf")
        return (logits, torch.zeros(B, L, 8)) if return_hidden else logits

    def num_parameters(self) -> int:
        return 0

VOCAB = 2056  # the shipped tokenizer's 2048 tokens plus padded head rows, as Dream pads 151667 -> 152064
MASK = 3  # "[MASK]" in the shipped tokenizer


def dream_config(**overrides) -> dict:
    """config.json with Dream's field names (Dream-v0-Base-7B's layout, tiny sizes)."""
    config = {
        "architectures": ["DreamModel"],
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "model_type": "Dream",
        "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "mask_token_id": MASK,
        "hidden_act": "silu", "hidden_size": 32, "intermediate_size": 64, "initializer_range": 0.02,
        "max_position_embeddings": 4096, "max_window_layers": 2, "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": False,
        "use_sliding_window": False, "vocab_size": VOCAB,
    }
    return config | overrides


def reference_network(config: dict, seed: int = 0):
    """A randomly initialised transformers Qwen2ForCausalLM (biases and norms randomised too)."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    network = Qwen2ForCausalLM(qwen2_config(config)).eval()
    with torch.no_grad():
        for name, p in network.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return network


def write_folder(path, config: dict, network, shards: int = 1):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(SHIPPED_TOKENIZER, path / "tokenizer.json")
    state = {k: v.detach().contiguous().clone() for k, v in network.state_dict().items()}
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight")
    save_weights(state, path, shards)
    return path
