"""Shared fixtures: tiny random-initialised models on the shipped tokenizer (fast unit tests)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

# Triton in interpreter mode for this whole process, before anything imports it: diffusers imports triton as it is
# imported (tests/test_integrations.py), and a second import of triton's C library to switch modes aborts the process.
# The compile check runs the real compiler in a subprocess without this variable (tests/test_kernels_compile.py).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch

from explorer.data import load_tokenizer
from explorer.data.tokenizer import SHIPPED_TOKENIZER
from explorer.models import (
    ARConfig,
    ARModel,
    BD3LMConfig,
    BD3LMModel,
    CALMConfig,
    CALMModel,
    CDCDConfig,
    CDCDModel,
    MDLMConfig,
    MDLMModel,
)
from explorer.models.calm import AutoencoderConfig
from support import tiny_backbone

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


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


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    """The explorer page served in this process on a free 127.0.0.1 port, shut down after the session. Besides
    the shipped checkpoints it may open a "released" root: a tiny LLaDA-layout folder with a chat template and a tiny
    DiffusionGemma folder (a library's own model class)."""
    from explorer.page.folders import default_roots
    from explorer.page.layout import build_demo, launch_options
    from explorer.released.synthetic import write_tiny_diffusion_gemma, write_tiny_llada

    released = tmp_path_factory.mktemp("page-root") / "released"
    write_tiny_llada(released / "LLaDA-chat", eot=True)
    write_tiny_diffusion_gemma(released / "DiffusionGemma-tiny")
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
