"""Released-checkpoint loaders (issue 8): a tiny synthetic LLaDA folder with the released field and key names."""

from __future__ import annotations

import json
import math

import pytest
import torch

import explorer
from explorer.models import weights
from explorer.released import (
    LAYOUTS,
    NotEnoughMemory,
    chat_prompt,
    detect_layout,
)
from explorer.released.synthetic import (
    EOS_ID,
    EPS,
    FF,
    HEADS,
    LAYERS,
    MASK_ID,
    THETA,
    VOCAB,
    D,
    released_config,
    released_tensors,
    write_folder,
    write_tiny_llada,
)


@pytest.fixture(scope="module")
def tensors():
    return released_tensors()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_llada(tmp_path_factory.mktemp("released") / "LLaDA-tiny")


def reference_logits(t: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """LLaDA's forward written out from the raw tensors: rotate-half RoPE, RMSNorm, full attention, SwiGLU."""
    p = "model.transformer."
    Dh = D // HEADS
    L = ids.shape[1]

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w

    inv_freq = 1.0 / THETA ** (torch.arange(0, Dh, 2).float() / Dh)
    freqs = torch.outer(torch.arange(L).float(), inv_freq)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()  # (L, Dh)

    def rope(x):  # (B, H, L, Dh)
        x1, x2 = x[..., : Dh // 2], x[..., Dh // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    x = t[p + "wte.weight"][ids]  # (B, L, D)
    for i in range(LAYERS):
        b = f"{p}blocks.{i}."
        h = rms(x, t[b + "attn_norm.weight"])
        q, k, v = (h @ t[b + f"{n}_proj.weight"].T for n in "qkv")
        q, k, v = (z.view(*z.shape[:2], HEADS, Dh).transpose(1, 2) for z in (q, k, v))  # (B, H, L, Dh)
        q, k = rope(q), rope(k)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(Dh), dim=-1)  # no mask: bidirectional
        y = (att @ v).transpose(1, 2).reshape(*x.shape)
        x = x + y @ t[b + "attn_out.weight"].T
        h = rms(x, t[b + "ff_norm.weight"])
        gate, up = h @ t[b + "ff_proj.weight"].T, h @ t[b + "up_proj.weight"].T  # (B, L, FF)
        x = x + (torch.nn.functional.silu(gate) * up) @ t[b + "ff_out.weight"].T
    return rms(x, t[p + "ln_f.weight"]) @ t[p + "ff_out.weight"].T  # (B, L, EMBED)


def test_layout_is_registered_and_detected():
    assert "llada" in LAYOUTS
    assert detect_layout(released_config()) == "llada"
    assert detect_layout({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 8}) is None
    assert detect_layout({"architectures": ["LLaDAMoEModelLM"], "model_type": "llada", "hidden_size": 8}) is None


def test_logits_match_a_direct_reimplementation(folder, tensors):
    model = explorer.load(folder, device="cpu")
    assert model.family == "mdlm" and model.mask_id == MASK_ID and model.eos_id == EOS_ID
    assert model.backbone.embed.weight.dtype == torch.float32 and model.max_seq_len == 64
    assert model.num_parameters() == sum(v.numel() for v in tensors.values())
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))
    ids[:, 3:7] = MASK_ID
    expected = reference_logits(tensors, ids)
    with torch.no_grad():
        raw = model.backbone(ids)  # (B, L, EMBED)
        denoised = model.denoiser_logits(ids)
    torch.testing.assert_close(raw, expected, atol=1e-5, rtol=1e-5)
    assert torch.isinf(denoised[..., MASK_ID]).all()
    torch.testing.assert_close(denoised[..., 4:], expected[..., 4:], atol=1e-5, rtol=1e-5)


def test_sharded_folder_gives_the_same_model(tmp_path, folder, tensors):
    sharded = write_folder(tmp_path / "sharded", tensors, shards=2)
    a, b = explorer.load(folder, device="cpu"), explorer.load(sharded, device="cpu")
    ids = torch.arange(5, 25)[None]
    with torch.no_grad():
        torch.testing.assert_close(a.backbone(ids), b.backbone(ids), atol=0, rtol=0)


def test_masked_sampler_runs_and_records_a_trace(folder):
    model = explorer.load(folder, device="cpu")
    trace = explorer.generate(model, prompt="ROMEO:", sampler="low_confidence", gen_length=8, steps=4, seed=0)
    assert trace.model["family"] == "mdlm" and trace.model["name"] == "LLaDA-tiny"
    assert len(trace.frames) == 5 and len(trace.frames[-1].tokens) == 8
    assert MASK_ID not in trace.frames[-1].tokens
    again = explorer.generate(model, prompt="ROMEO:", sampler="low_confidence", gen_length=8, steps=4, seed=0)
    assert again.frames[-1].tokens == trace.frames[-1].tokens


def test_chat_prompt_applies_the_folder_template(folder):
    model = explorer.load(folder, device="cpu")
    assert chat_prompt(model, "hi") == "<|start|>user\nhi<|eot|><|start|>assistant\n"
    model.chat_template = None
    assert chat_prompt(model, "hi") == "hi"


def test_missing_shard_names_the_file(tmp_path, tensors):
    sharded = write_folder(tmp_path / "m", tensors, shards=2)
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors: missing shard"):
        explorer.load(sharded, device="cpu")


def test_shard_missing_keys_names_the_file(tmp_path, tensors):
    sharded = write_folder(tmp_path / "m", tensors, shards=2)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.transformer.wte.weight"] = "model-00002-of-00002.safetensors"  # it lives in shard 1
    index["weight_map"]["model.transformer.ln_f.weight"] = "model-00002-of-00002.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    wrong_shard = "model-00002-of-00002.safetensors: shard is missing"
    with pytest.raises(ValueError, match=wrong_shard) as err:
        explorer.load(sharded, device="cpu")
    assert "wte.weight" in str(err.value) or "ln_f.weight" in str(err.value)


def test_missing_and_unexpected_keys_are_listed(tmp_path, tensors):
    broken = dict(tensors)
    broken.pop("model.transformer.blocks.1.up_proj.weight")
    broken["model.transformer.blocks.0.q_proj.bias"] = torch.zeros(D)
    folder = write_folder(tmp_path / "m", broken)
    with pytest.raises(ValueError, match=r"missing keys \['model.transformer.blocks.1.up_proj.weight'\]") as err:
        explorer.load(folder, device="cpu")
    assert "model.transformer.blocks.0.q_proj.bias" in str(err.value)


def test_mismatched_shape_names_key_and_file(tmp_path, tensors):
    folder = write_folder(tmp_path / "m", tensors, config=released_config(mlp_hidden_size=FF + 8))
    with pytest.raises(ValueError, match=r"model.safetensors: model.transformer.blocks.0.ff_proj.weight has shape "
                                         r"\(48, 32\), config.json implies \(56, 32\)"):
        explorer.load(folder, device="cpu")


def test_unknown_architecture_in_config(tmp_path, tensors):
    folder = write_folder(tmp_path / "m", tensors, config={"architectures": ["MysteryLM"], "hidden_size": D})
    with pytest.raises(ValueError, match=r"config.json: unknown architecture \['MysteryLM'\]; known released layouts"):
        explorer.load(folder, device="cpu")


def test_unsupported_llada_option_is_refused(tmp_path, tensors):
    folder = write_folder(tmp_path / "m", tensors, config=released_config(n_kv_heads=2))
    with pytest.raises(ValueError, match="n_kv_heads=2 differs from n_heads=4"):
        explorer.load(folder, device="cpu")


def test_pickle_only_folder_is_refused_without_unpickling(pickle_only_folder):
    with pytest.raises(ValueError, match=r"pytorch_model.bin: pickle weight files .* are never loaded"):
        explorer.load(pickle_only_folder(released_config()), device="cpu")


def test_memory_estimate_refuses_before_reading_weights(folder, monkeypatch):
    monkeypatch.setattr(weights, "available_bytes", lambda device: 1024)
    read = []
    monkeypatch.setattr(weights.SafetensorsFolder, "tensor", lambda self, *a, **k: read.append(a) or None)
    with pytest.raises(NotEnoughMemory, match=r"need about 0\.3 GiB, 0\.0 GiB available on cpu; pass device="):
        explorer.load(folder, device="cpu")
    assert not read


def test_memory_helpers():
    assert weights.pick_dtype(torch.device("cpu")) == torch.float32
    assert weights.pick_dtype(torch.device("cpu"), "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype"):
        weights.pick_dtype(torch.device("cpu"), "int8")
    n = 8_000_000_000
    assert weights.estimate_bytes(n, torch.bfloat16) > 2 * n
    assert weights.available_bytes(torch.device("cpu")) > 0


def test_bfloat16_load_is_close(folder, tensors):
    model = explorer.load(folder, device="cpu", dtype="bfloat16")
    assert model.backbone.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    ids = torch.arange(10, 30)[None]
    with torch.no_grad():
        got = model.backbone(ids).float()
    expected = reference_logits(tensors, ids)
    assert (got - expected).abs().max() < 0.1 * expected.abs().max()


def test_native_checkpoints_still_load(tmp_path):
    with pytest.raises(ValueError, match="dtype=.* applies to released checkpoints only"):
        explorer.load("mdlm-tiny", dtype="bfloat16")
    assert explorer.load("mdlm-tiny").family == "mdlm"


def test_tied_head_layout(tmp_path, tensors):
    tied = {k: v for k, v in tensors.items() if k != "model.transformer.ff_out.weight"}
    folder = write_folder(tmp_path / "tied", tied, config=released_config(weight_tying=True))
    model = explorer.load(folder, device="cpu")
    assert model.backbone.head.weight is model.backbone.embed.weight
    ids = torch.arange(4, 12)[None]
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(ids), reference_logits(
            tied | {"model.transformer.ff_out.weight": tied["model.transformer.wte.weight"]}, ids),
            atol=1e-5, rtol=1e-5)


def test_default_device_and_dtype_follow_what_is_available(monkeypatch):
    """CUDA when there is one, with bf16 there; fp32 on the CPU (the CUDA load itself is checked on a GPU machine)."""
    from explorer.models.weights import pick_dtype, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_device(None) == torch.device("cuda")
    assert pick_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu") and pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype"):
        pick_dtype(torch.device("cpu"), "int8")
