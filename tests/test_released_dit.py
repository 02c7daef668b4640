"""MDLM / BD3-LM (kuleshov-group DiT) releases: detected from config.json, loaded into the mdlm / bd3lm families
and checked against an independent restatement of the release's forward pass."""

import json
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import explorer
from explorer.released.dit import DiTBD3LMModel, DiTMDLMModel, is_dit_release, load_dit
from explorer.released.synthetic import (
    DIT_D,
    DIT_LENGTH,
    tiny_dit_config,
    write_tiny_dit,
)
from explorer.sampling import generate

MDLM_CONFIG = {  # field names of kuleshov-group/mdlm-owt's config.json (configuration_mdlm.MDLMConfig)
    "architectures": ["MDLM"], "model_type": "mdlm",
    "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig", "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
    "vocab_size": 50258, "model_length": 1024, "hidden_dim": 768, "cond_dim": 128, "n_blocks": 12, "n_heads": 12,
    "dropout": 0.1, "time_conditioning": False,
}
BD3LM_CONFIG = {  # field names of kuleshov-group/bd3lm-owt-block_size*'s config.json (BD3LMConfig)
    "architectures": ["BD3LM"], "model_type": "bd3lm",
    "auto_map": {"AutoConfig": "configuration_bd3lm.BD3LMConfig", "AutoModelForMaskedLM": "modeling_bd3lm.BD3LM"},
    "block_size": 4, "vocab_size": 50258, "model_length": 1024, "cross_attn": True, "adaln": True,
    "attn_backend": "flex", "causal": False, "hidden_dim": 768, "cond_dim": 128, "n_blocks": 12, "n_heads": 12,
    "dropout": 0.1, "time_conditioning": False, "var_min": True, "sampling_eps_min": 1e-3, "sampling_eps_max": 0.999,
}
LLADA_LIKE = {"architectures": ["LLaDAModelLM"], "model_type": "llada", "d_model": 4096, "n_layers": 32,
              "n_heads": 32, "vocab_size": 126464}
DREAM_LIKE = {"architectures": ["DreamModel"], "model_type": "Dream", "hidden_size": 3584, "vocab_size": 152064}


def folder(tmp_path, config, name="release"):
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("config", [MDLM_CONFIG, BD3LM_CONFIG])
def test_released_configs_are_detected(config):
    assert is_dit_release(config)


def test_detected_by_remote_files_or_shape_fields_alone():
    assert is_dit_release({"auto_map": {"AutoConfig": "configuration_bd3lm.BD3LMConfig"}})
    shape = {k: MDLM_CONFIG[k] for k in ("hidden_dim", "cond_dim", "n_blocks", "n_heads", "model_length")}
    assert is_dit_release(shape)


@pytest.mark.parametrize("config", [LLADA_LIKE, DREAM_LIKE, {}, {"model_type": "gpt2"},
                                    {**MDLM_CONFIG, "family": "mdlm"}, "not a dict"])
def test_other_configs_are_not_detected(config):
    assert not is_dit_release(config)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt"])
def test_pickles_are_refused_without_unpickling(tmp_path, monkeypatch, suffix):
    path = folder(tmp_path, MDLM_CONFIG)
    pickled = path / f"model{suffix}"
    pickled.write_bytes(pickle.dumps({"weights": 1}))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    for target in (pickled, path):  # the file itself, or a folder holding only the pickle
        with pytest.raises(ValueError, match="pickled checkpoint") as err:
            load_dit(target)
        assert str(pickled) in str(err.value)


def test_non_dit_folder_is_not_claimed(tmp_path):
    with pytest.raises(ValueError, match="not an MDLM / BD3-LM release"):
        load_dit(folder(tmp_path, LLADA_LIKE))


def test_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_dit(tmp_path)


# --- loading: tiny synthetic releases ----------------------------------------------------------------

D, LENGTH = DIT_D, DIT_LENGTH


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    return {kind: write_tiny_dit(root / kind, tiny_dit_config(kind)) for kind in ("mdlm", "bd3lm")}


def reference_logits(tensors: dict, config: dict, ids: torch.Tensor, allowed: torch.Tensor | None = None):
    """The release's forward pass restated from its description (rotate-half RoPE, bias-free LayerNorm,
    adaLN gates multiplying the branch, tanh GELU, biased head), on the raw released tensors."""
    w = {k.removeprefix("backbone."): v.double() for k, v in tensors.items()}
    B, L = ids.shape
    H, Dh = config["n_heads"], config["hidden_dim"] // config["n_heads"]
    sigma = torch.zeros(B, dtype=torch.float64)
    if config.get("time_conditioning"):
        t = (ids == config["vocab_size"] - 1).double().mean(-1)
        sigma = -torch.log(1 - (1 - 1e-3) * t)
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float64) / 128)
    features = torch.cat([(sigma[:, None] * freqs).cos(), (sigma[:, None] * freqs).sin()], -1)
    hidden_c = F.silu(features @ w["sigma_map.mlp.0.weight"].T + w["sigma_map.mlp.0.bias"])
    c = F.silu(hidden_c @ w["sigma_map.mlp.2.weight"].T + w["sigma_map.mlp.2.bias"])
    inv = 1.0 / 10000 ** (torch.arange(0, Dh, 2, dtype=torch.float64) / Dh)
    angles = torch.outer(torch.arange(L, dtype=torch.float64), inv)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rotate_half(x):
        return torch.cat([-x[..., Dh // 2:], x[..., : Dh // 2]], -1)

    def norm(x, gain):
        return F.layer_norm(x, x.shape[-1:]) * gain

    x = w["vocab_embed.embedding"][ids]
    for i in range(config["n_blocks"]):
        b = f"blocks.{i}."
        mods = (c @ w[b + "adaLN_modulation.weight"].T + w[b + "adaLN_modulation.bias"])[:, None].chunk(6, -1)
        h = norm(x, w[b + "norm1.weight"]) * (1 + mods[1]) + mods[0]
        q, k, v = (h @ w[b + "attn_qkv.weight"].T).view(B, L, 3, H, Dh).permute(2, 0, 3, 1, 4)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        scores = q @ k.transpose(-1, -2) / math.sqrt(Dh)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, H * Dh)
        x = x + mods[2] * (attn @ w[b + "attn_out.weight"].T)
        h = norm(x, w[b + "norm2.weight"]) * (1 + mods[4]) + mods[3]
        h = F.gelu(h @ w[b + "mlp.0.weight"].T + w[b + "mlp.0.bias"], approximate="tanh")
        x = x + mods[5] * (h @ w[b + "mlp.2.weight"].T + w[b + "mlp.2.bias"])
    shift, scale = (c @ w["output_layer.adaLN_modulation.weight"].T + w["output_layer.adaLN_modulation.bias"])[
        :, None].chunk(2, -1)
    h = norm(x, w["output_layer.norm_final.weight"]) * (1 + scale) + shift
    return h @ w["output_layer.linear.weight"].T + w["output_layer.linear.bias"]


def random_canvas(model, seed=0, masked=0.5):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 2049, (2, LENGTH), generator=g)
    return torch.where(torch.rand(ids.shape, generator=g) < masked, model.mask_id, ids)


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_mdlm_release_matches_the_reference_forward(tmp_path, time_conditioning):
    path = write_tiny_dit(tmp_path / "m", tiny_dit_config("mdlm", time_conditioning=time_conditioning))
    model = explorer.load(path)
    assert isinstance(model, DiTMDLMModel) and model.family == "mdlm" and model.mask_id == 2049
    assert model.eos_id == 2048 and model.max_seq_len == LENGTH
    ids = random_canvas(model)
    expected = reference_logits(load_file(str(path / "model.safetensors")), tiny_dit_config(
        "mdlm", time_conditioning=time_conditioning), ids)
    with torch.no_grad():
        ours = model.backbone(ids)
        subs = model(ids)
    # measured: max |diff| 1.8e-6 (2.8e-6 time-conditioned) on logits up to 5.6 (fp32 against float64)
    assert torch.allclose(ours.double(), expected, atol=2e-5), float((ours.double() - expected).abs().max())
    unmasked = ids != model.mask_id  # SUBS: input tokens carried over, the mask never proposed
    assert torch.equal(subs[unmasked].argmax(-1), ids[unmasked])
    assert torch.isinf(subs[..., model.mask_id]).all()


def test_a_time_conditioned_release_gets_the_samplers_t_where_the_sampler_has_one(tmp_path, monkeypatch):
    """MDLM's ancestral sampler and Dream's pass their t; LLaDA's rules have none (the masked fraction is used)."""
    from explorer.released.dit import DiTBackbone

    model = explorer.load(write_tiny_dit(tmp_path / "m", tiny_dit_config("mdlm", time_conditioning=True)))
    seen = []
    real_sigma = DiTBackbone.sigma

    def spy(self, input_ids, time=None):
        seen.append(time)
        return real_sigma(self, input_ids, time)

    monkeypatch.setattr(DiTBackbone, "sigma", spy)
    generate(model, "", "ancestral", gen_length=8, steps=4, temperature=1.0, seed=0)
    assert seen and seen[0] == 1.0 and all(t is not None for t in seen)  # time runs 1, 0.75, ... (4 steps)
    assert set(seen) <= {1.0, 0.75, 0.5, 0.25} and len(seen) == 4  # time-conditioned: no reuse of a step's logits
    seen.clear()
    generate(model, "", "dream", gen_length=8, steps=4, seed=0)
    assert seen and seen[0] == 1.0 and all(0 < t <= 1 for t in seen)
    seen.clear()
    generate(model, "", "low_confidence", gen_length=8, steps=4)
    assert seen and all(t is None for t in seen)


def test_bd3lm_release_cache_window_matches_the_block_causal_reference(releases):
    path = releases["bd3lm"]
    model = explorer.load(path)
    assert isinstance(model, DiTBD3LMModel) and model.family == "bd3lm" and model.block_size == 4
    ids = random_canvas(model, seed=1)
    positions = torch.arange(LENGTH)
    allowed = positions[:, None] // 4 >= positions[None, :] // 4  # a query sees its block and earlier ones
    expected = reference_logits(load_file(str(path / "model.safetensors")), tiny_dit_config("bd3lm"), ids, allowed)
    cache = model.new_cache()
    with torch.no_grad():
        model.window_logits(ids[:, :8], 0, cache, store=8)  # two clean blocks into the exact cache
        last = model.window_logits(ids[:, 8:12], 8, cache, store=0)  # the third block against them
    expected = expected[:, 8:12].clone()
    expected[..., model.mask_id] = float("-inf")
    assert torch.allclose(last.double(), expected, atol=2e-5)


def test_samplers_traces_and_losses_run_on_the_releases(releases):
    mdlm, bd3 = explorer.load(releases["mdlm"]), explorer.load(releases["bd3lm"])
    trace = generate(mdlm, "ab", gen_length=12, steps=6, block_length=6, record="full")
    assert mdlm.mask_id not in trace.frames[-1].tokens and trace.stats["nfe"] == 6
    assert trace.frames[-1].hidden is not None and len(trace.frames[-1].hidden[0]) == D
    cached = generate(mdlm, "ab", gen_length=12, steps=6, block_length=6, cache="dual", sampler="low_confidence")
    assert mdlm.mask_id not in cached.frames[-1].tokens
    with_cache = generate(bd3, "ab", gen_length=12, temperature=0.0, stop_at_eos=False)
    without = generate(bd3, "ab", gen_length=12, temperature=0.0, stop_at_eos=False, kv_cache=False)
    assert with_cache.frames[-1].tokens == without.frames[-1].tokens  # the cache is exact
    batch = torch.randint(0, 2049, (2, LENGTH), generator=torch.Generator().manual_seed(0))
    for model in (mdlm, bd3):
        loss = model.loss(batch, generator=torch.Generator().manual_seed(0))["loss"]
        assert torch.isfinite(loss) and float(loss) > 0


def test_adaln_off_and_sharded_release(tmp_path):
    config = tiny_dit_config("bd3lm", adaln=False)
    path = write_tiny_dit(tmp_path / "plain", config, shards=3)
    model = explorer.load(path)
    assert model.backbone.sigma_map is None and model.backbone.blocks[0].adaLN_modulation is None
    assert generate(model, "", gen_length=8, stop_at_eos=False).frames[-1].tokens


def test_folder_problems_name_the_file(tmp_path):
    path = write_tiny_dit(tmp_path / "m", tiny_dit_config("mdlm"))
    (path / "tokenizer.json").rename(path / "elsewhere.json")
    with pytest.raises(FileNotFoundError, match="tokenizer.json.*GPT-2"):
        explorer.load(path)
    (path / "elsewhere.json").rename(path / "tokenizer.json")
    (path / "config.json").write_text(json.dumps(tiny_dit_config("mdlm", hidden_dim=48, n_heads=4)))
    with pytest.raises(ValueError, match=r"model.safetensors: backbone.vocab_embed.embedding has shape \(2050, 32\)"):
        explorer.load(path)
    (path / "config.json").write_text(json.dumps(tiny_dit_config("mdlm", n_blocks=3)))
    with pytest.raises(ValueError, match=r"do not match the DiT layout.*missing keys \['backbone.blocks.2"):
        explorer.load(path)
    (path / "config.json").write_text(json.dumps(tiny_dit_config("mdlm", vocab_size=2049)))
    with pytest.raises(ValueError, match="leaves no row for the mask"):
        explorer.load(path)
    (path / "config.json").write_text(json.dumps(tiny_dit_config("bd3lm", causal=True)))
    with pytest.raises(ValueError, match="causal=true"):
        explorer.load(path)
    (path / "config.json").write_text(json.dumps(tiny_dit_config("bd3lm", block_size=5)))
    with pytest.raises(ValueError, match="block_size=5 must divide model_length=32"):
        explorer.load(path)


@pytest.mark.parametrize("kind", ["mdlm", "bd3lm"])
def test_folders_hold_what_the_upstream_save_writes_and_only_that(tmp_path, kind):
    """The upstream `save_pretrained` adds buffers to the parameters: the rotary frequencies, and BD3-LM's noise
    window scalars when var_min. They load (checked by value); anything else is refused with its file named."""
    from safetensors.torch import save_file

    from explorer.released.synthetic import dit_tensors

    config = tiny_dit_config(kind)
    tensors = dit_tensors(config)
    assert "backbone.rotary_emb.inv_freq" in tensors
    assert ("sampling_eps_min" in tensors) == (kind == "bd3lm")
    assert explorer.load(write_tiny_dit(tmp_path / "as-saved", config)).family == kind

    def load_with(name, **changes):
        path = tmp_path / name
        path.mkdir()
        (path / "config.json").write_text(json.dumps(config))
        (path / "tokenizer.json").write_bytes((tmp_path / "as-saved" / "tokenizer.json").read_bytes())
        save_file({k: v.contiguous() for k, v in (tensors | changes).items()}, str(path / "model.safetensors"))
        return explorer.load(path)

    with pytest.raises(ValueError, match=r"model.safetensors.*unexpected keys \['backbone.mystery'\]"):
        load_with("extra", **{"backbone.mystery": torch.zeros(3)})
    with pytest.raises(ValueError, match="rotary_emb.inv_freq is not the rotary frequencies of base 10000"):
        load_with("base", **{"backbone.rotary_emb.inv_freq": tensors["backbone.rotary_emb.inv_freq"] * 2})
    if kind == "bd3lm":
        with pytest.raises(ValueError, match=r"sampling_eps_max = 1.5 must be a noise level in \[0, 1\]"):
            load_with("range", sampling_eps_max=torch.tensor(1.5))
        with pytest.raises(ValueError, match="sampling_eps_min = 0.5 disagrees with config.json's"):
            load_with("disagree", sampling_eps_min=torch.tensor(0.5))


def test_release_sizes_match_their_closed_forms():
    from explorer.released.sizes import release_parameters, sizes_table

    counts = release_parameters()
    V, d, L, ff = 126464, 4096, 32, 12288
    assert counts["LLaDA-8B (Base / Instruct)"] == 2 * V * d + L * (4 * d * d + 3 * d * ff + 2 * d) + d
    V, d, L, c = 50258, 768, 12, 128
    block = 4 * d * d + 8 * d * d + 4 * d + d + 2 * d + c * 6 * d + 6 * d  # attn, mlp (+biases), norms, adaLN
    sigma = 256 * c + c + c * c + c
    assert counts["MDLM-owt / BD3-LM-owt"] == V * d + sigma + L * block + d + V * d + V + c * 2 * d + 2 * d
    assert "| LLaDA-8B (Base / Instruct) | 8,015,581,184 | 16.7 GiB | 33.1 GiB |" in sizes_table()
