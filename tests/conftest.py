"""Shared fixtures: tiny random-initialised models on the shipped tokenizer (fast unit tests)."""

from __future__ import annotations

import pytest
import torch

from explorer.data import load_tokenizer
from explorer.models import ARConfig, ARModel, MDLMConfig, MDLMModel
from explorer.nn import TransformerConfig
from explorer.train import SHIPPED_TOKENIZER

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def tiny_backbone(attention: str) -> TransformerConfig:
    return TransformerConfig(vocab_size=2048, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=128,
                             attention=attention)


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(SHIPPED_TOKENIZER)


@pytest.fixture(scope="session")
def tiny_mdlm(tokenizer):
    torch.manual_seed(0)
    return MDLMModel(MDLMConfig(backbone=tiny_backbone("bidirectional")), tokenizer).eval()


@pytest.fixture(scope="session")
def tiny_ar(tokenizer):
    torch.manual_seed(0)
    return ARModel(ARConfig(backbone=tiny_backbone("causal")), tokenizer).eval()


@pytest.fixture(scope="session")
def tiny_ar_r2l(tokenizer):
    torch.manual_seed(0)
    return ARModel(ARConfig(backbone=tiny_backbone("causal"), direction="r2l"), tokenizer).eval()
