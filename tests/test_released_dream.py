"""Dream-7B loader on a tiny random Qwen2-shaped Dream folder: logits match transformers, bidirectional, samples."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from explorer.released.dream import DreamModel, is_dream, load_dream
from explorer.sampling import generate
from support import MASK, VOCAB, dream_config, reference_network, write_folder


def reference_logits(network, ids: torch.Tensor) -> torch.Tensor:
    """transformers' own logits with a 4-D all-zeros float mask (full attention), shifted right by one."""
    B, L = ids.shape
    zeros = torch.zeros(B, 1, L, L)
    with torch.no_grad():
        logits = network(input_ids=ids, attention_mask={"full_attention": zeros}).logits
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


@pytest.fixture(scope="module")
def dream_folder(tmp_path_factory):
    config = dream_config()
    network = reference_network(config)
    return write_folder(tmp_path_factory.mktemp("dream") / "Dream-tiny", config, network), network


@pytest.fixture(scope="module")
def dream(dream_folder):
    return load_dream(dream_folder[0])


def test_is_dream():
    assert is_dream(dream_config())
    assert is_dream({"architectures": ["DreamModel"]})
    assert not is_dream({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]})
    assert not is_dream({"family": "mdlm", "model": {}})


def test_interface(dream):
    assert isinstance(dream, DreamModel) and dream.family == "mdlm"
    assert dream.mask_id == MASK and dream.bos_id == 1 and dream.eos_id == 2
    assert dream.max_seq_len == 2048 and dream.config.backbone.d_model == 32
    assert dream.name == "Dream-tiny" and str(dream.device) == "cpu"
    assert dream.num_parameters() == sum(p.numel() for p in dream.network.parameters())
    assert not dream.training


def test_logits_match_transformers(dream, dream_folder):
    _, network = dream_folder
    ids = torch.randint(4, 2048, (2, 12))
    ids[:, 5:9] = MASK
    expected = reference_logits(network, ids)  # (B, L, V)
    with torch.no_grad():
        raw = dream.raw_logits(ids)
        denoiser, hidden = dream.denoiser_logits(ids, return_hidden=True)
        subs = dream(ids)
    assert raw.shape == (2, 12, VOCAB) and hidden.shape == (2, 12, 32)
    torch.testing.assert_close(raw, expected, atol=1e-5, rtol=1e-5)
    # the mask token and the padded rows past the tokenizer are excluded; the rest is unchanged
    assert torch.isneginf(denoiser[..., MASK]).all() and torch.isneginf(denoiser[..., 2048:]).all()
    keep = torch.ones(VOCAB, dtype=torch.bool)
    keep[MASK] = False
    keep[2048:] = False
    torch.testing.assert_close(denoiser[..., keep], expected[..., keep], atol=1e-5, rtol=1e-5)
    # SUBS: masked positions carry the denoiser's logits, unmasked ones their own token with logit 0
    torch.testing.assert_close(subs[:, 5:9], denoiser[:, 5:9])
    assert (subs[:, :5].argmax(-1) == ids[:, :5]).all() and (subs.gather(-1, ids[..., None]) [:, :5] == 0).all()
    # the transformers default (causal) differs: the test can tell the two apart
    with torch.no_grad():
        causal = network(input_ids=ids).logits
    causal = torch.cat([causal[:, :1], causal[:, :-1]], dim=1)
    assert not torch.allclose(causal[:, :6], expected[:, :6], atol=1e-3)


def test_bidirectional(dream):
    ids = torch.randint(4, 2048, (1, 10))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1 - 4) % 2044 + 4  # a different ordinary token at the last position
    with torch.no_grad():
        a, ha = dream.raw_logits(ids, return_hidden=True)
        b, hb = dream.raw_logits(changed, return_hidden=True)
    assert not torch.allclose(ha[0, 0], hb[0, 0], atol=1e-6)  # the first position sees the last token
    assert not torch.allclose(a[0, 1], b[0, 1], atol=1e-6)  # logits at 1 come from position 0
    torch.testing.assert_close(a[0, 0], a[0, 1])  # shift: position 0 repeats its own (position 0's) logits


def test_sampler_runs(dream):
    trace = generate(dream, "ROMEO:", "low_confidence", 0, record="full", gen_length=8, steps=8)
    final = trace.frames[-1].tokens
    assert len(final) == 8 and MASK not in final and max(final) < 2048
    assert trace.model["family"] == "mdlm" and trace.stats["nfe"] == 8


def test_fast_dllm_cache_refused(dream):
    with pytest.raises(NotImplementedError, match="Dream"):
        generate(dream, "ROMEO:", "low_confidence", 0, gen_length=8, steps=8, cache="prefix")


def test_sharded_and_tied(tmp_path, dream_folder):
    config = dream_config(tie_word_embeddings=True)
    network = reference_network(config, seed=1)
    assert network.lm_head.weight.data_ptr() == network.model.embed_tokens.weight.data_ptr()
    folder = write_folder(tmp_path / "sharded", config, network, shards=3)
    model = load_dream(folder)
    ids = torch.randint(4, 2048, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(model.raw_logits(ids), reference_logits(network, ids), atol=1e-5, rtol=1e-5)
    assert model.network.lm_head.weight is model.network.model.embed_tokens.weight


def test_bfloat16(dream_folder):
    model = load_dream(dream_folder[0], dtype=torch.bfloat16)
    assert model.network.model.embed_tokens.weight.dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(torch.randint(4, 2048, (1, 6)))
    assert logits.dtype == torch.float32


def test_missing_shard_named(tmp_path):
    config = dream_config()
    folder = write_folder(tmp_path / "sharded", config, reference_network(config), shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load_dream(folder)


def test_pickle_refused_without_unpickling(pickle_only_folder):
    with pytest.raises(ValueError, match="pytorch_model.bin.*refused"):
        load_dream(pickle_only_folder(dream_config()))


def test_clear_errors(tmp_path, dream_folder):
    folder = tmp_path / "bad"
    shutil.copytree(dream_folder[0], folder)
    (folder / "config.json").write_text(json.dumps(dream_config(model_type="qwen2", architectures=["Qwen2"])))
    with pytest.raises(ValueError, match="config.json: not a Dream config"):
        load_dream(folder)
    (folder / "config.json").write_text(json.dumps(dream_config(num_hidden_layers=3)))
    with pytest.raises(ValueError, match="model.safetensors: missing keys"):
        load_dream(folder)
    (folder / "config.json").write_text(json.dumps(dream_config(mask_token_id=5000)))
    with pytest.raises(ValueError, match="mask_token_id 5000"):
        load_dream(folder)
    (folder / "config.json").write_text(json.dumps(dream_config(intermediate_size=48)))
    with pytest.raises(ValueError, match="mlp.*has shape"):
        load_dream(folder)
    (folder / "model.safetensors").write_bytes(b"truncated")
    (folder / "config.json").write_text(json.dumps(dream_config()))
    with pytest.raises(ValueError, match="model.safetensors: corrupt"):
        load_dream(folder)
