"""Shared fixtures: tiny random-initialised models on the shipped tokenizer (fast unit tests)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch

from explorer.data import load_tokenizer
from explorer.models import (ARConfig, ARModel, BD3LMConfig, BD3LMModel, CALMConfig, CALMModel, CDCDConfig,
                              CDCDModel, MDLMConfig, MDLMModel)
from explorer.models.calm import AutoencoderConfig
from explorer.nn import TransformerConfig
from explorer.train import SHIPPED_TOKENIZER

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # app.py lives at the top level, outside the installed package


def tiny_backbone(attention: str) -> TransformerConfig:
    return TransformerConfig(vocab_size=2048, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=128,
                             attention=attention)


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(SHIPPED_TOKENIZER)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small text file (3,000 short lines) for training tests with `--corpus`."""
    folder = tmp_path_factory.mktemp("corpus")
    lines = [f"{'Ay' if i % 3 else 'Nay'}, my lord, the {i % 7}th watch is {'cold' if i % 2 else 'late'}.\n"
             for i in range(3000)]
    (folder / "play.txt").write_text("".join(lines))
    return folder / "play.txt"


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


@pytest.fixture(scope="session")
def tiny_bd3lm(tokenizer):
    """Block size 8 on a 32-token context, so sliding-window generation is cheap to test."""
    torch.manual_seed(0)
    backbone = tiny_backbone("block_causal").with_(max_seq_len=32)
    return BD3LMModel(BD3LMConfig(backbone=backbone, block_size=8), tokenizer).eval()


@pytest.fixture(scope="session")
def tiny_cdcd(tokenizer):
    torch.manual_seed(0)
    backbone = tiny_backbone("bidirectional").with_(time_conditioning=True, max_seq_len=48)
    return CDCDModel(CDCDConfig(backbone=backbone, embed_dim=16, warp_bins=20), tokenizer).eval()


@pytest.fixture(scope="session")
def tiny_calm_checkpoints(tokenizer, tmp_path_factory):
    """A checkpoint folder with random CALM models `calm-tiny-k2` and `calm-tiny-k4` (K tokens per latent vector)."""
    folder = tmp_path_factory.mktemp("calm-checkpoints")
    for chunk in (2, 4):
        torch.manual_seed(0)
        config = CALMConfig(backbone=tiny_backbone("causal").with_(max_seq_len=16),
                            autoencoder=AutoencoderConfig(chunk=chunk, d_model=32, d_ff=64, latent_dim=8),
                            head_layers=2, head_noise_dim=8, n_samples=4, n_targets=10)
        model = CALMModel(config, tokenizer)
        torch.nn.init.normal_(model.head.out.weight, std=1.0)  # spread the head's samples (it starts at a point)
        model.save_pretrained(folder / f"calm-tiny-k{chunk}", dtype=torch.float32)
    return folder


class MockDenoiser:
    """A stand-in model with the sampler-facing interface: fixed logits per call, counts its calls.

    `peak` > 0 puts that much extra logit on token (position % 50 + 10), so confidences are high.
    """

    family = "mdlm"
    name = "mock"
    max_seq_len = 128
    device = torch.device("cpu")

    def __init__(self, tokenizer, peak: float = 0.0, family: str = "mdlm"):
        self.tokenizer = tokenizer
        self.peak = peak
        self.family = family
        self.calls = 0
        self.mask_id = tokenizer.token_to_id("[MASK]")
        self.bos_id = tokenizer.token_to_id("<bos>")

    def __call__(self, x: torch.Tensor, **_):
        self.calls += 1
        B, L = x.shape
        logits = torch.zeros(B, L, self.tokenizer.get_vocab_size())
        if self.peak:
            pos = torch.arange(L)
            logits[:, pos, pos % 50 + 10] = self.peak
        return logits

    def num_parameters(self) -> int:
        return 0


@pytest.fixture
def pickle_only_folder(tmp_path, monkeypatch):
    """make(config) -> a folder with config.json, the shipped tokenizer and only pytorch_model.bin as weights;
    torch.load fails the test if anything tries to unpickle it."""
    import json
    import shutil

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", forbidden)

    def make(config: dict) -> Path:
        folder = tmp_path / "bin-only"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        shutil.copy(SHIPPED_TOKENIZER, folder / "tokenizer.json")
        (folder / "pytorch_model.bin").write_bytes(b"not to be unpickled")
        return folder

    return make


@pytest.fixture
def mock_model(tokenizer):
    return MockDenoiser(tokenizer)


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    """The explorer page served in this process on a free 127.0.0.1 port, shut down after the session. Besides
    the shipped checkpoints it may open a "released" root: a tiny LLaDA-layout folder with a chat template."""
    from app import build_demo, launch_options
    from explorer.released.synthetic import write_tiny_llada
    from explorer.webapp import default_roots

    released = tmp_path_factory.mktemp("page-root") / "released"
    write_tiny_llada(released / "LLaDA-chat", eot=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = build_demo(default_roots() + [released])
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options())
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
