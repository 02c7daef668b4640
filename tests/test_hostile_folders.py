"""Hostile checkpoint folders (issue 17): every corrupt config.json, tokenizer.json, shard index, chat template or
weight file is refused with a ValueError (or FileNotFoundError) naming the file, before anything big is allocated."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

import explorer
from explorer.hub import CHECKPOINT_DIR
from explorer.models import weights
from explorer.models.calm import Autoencoder
from explorer.released import chat_prompt, llada
from explorer.released.synthetic import tiny_dit_config, write_tiny_dit, write_tiny_llada

FILES = ("config.json", "model.safetensors", "tokenizer.json")


@pytest.fixture
def folder(tmp_path) -> Path:
    """A copy of checkpoints/ar-tiny (our layout: config.json, model.safetensors, tokenizer.json)."""
    copy = tmp_path / "ar-copy"
    copy.mkdir()
    for name in FILES:
        shutil.copy(CHECKPOINT_DIR / "ar-tiny" / name, copy / name)
    return copy


def edit_config(folder: Path, edit) -> Path:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(edit(config)))
    return folder


def backbone(**changes):
    def edit(config):
        config["model"]["backbone"] |= changes
        return config
    return edit


def without(*keys):
    def edit(config):
        inner = config
        for key in keys[:-1]:
            inner = inner[key]
        del inner[keys[-1]]
        return config
    return edit


# --- 1. our layout: config.json, tokenizer.json, memory, weights against the config -------------------------------

BAD_CONFIGS = {
    "a list": (lambda c: [c], r"config.json: must hold a JSON object, got list"),
    "family a list": (lambda c: c | {"family": ["ar"]}, r"config.json: unknown family \['ar'\]"),
    "no model": (without("model"), r"config.json: missing field 'model'"),
    "model a list": (lambda c: c | {"model": [1]}, r"config.json: model must be a JSON object, got list"),
    "no backbone": (without("model", "backbone"), r"config.json: missing field model.backbone"),
    "unknown model field": (lambda c: c | {"model": c["model"] | {"bogus": 1}},
                            r"config.json: unknown fields \['bogus'\] in model; known: \['backbone', 'direction'\]"),
    "unknown backbone field": (backbone(bogus=1), r"unknown fields \['bogus'\] in model.backbone"),
    "n_heads 0": (backbone(n_heads=0), r"config.json: model.backbone.n_heads must be an integer in \[1, 16777216\], "
                                       r"got 0"),
    "d_model not divisible": (backbone(n_heads=3), r"config.json: model.backbone: d_model \(256\) must be divisible"),
    "odd head size": (backbone(n_heads=256), r"config.json: model.backbone: d_model / n_heads = 1 must be even"),
    "negative d_ff": (backbone(d_ff=-5), r"model.backbone.d_ff must be an integer in \[1, 16777216\], got -5"),
    "string d_model": (backbone(d_model="256"), r"model.backbone.d_model must be an integer .* got '256'"),
    "float d_model": (backbone(d_model=256.0), r"model.backbone.d_model must be an integer .* got 256.0"),
    "bool for int": (backbone(n_layers=True), r"model.backbone.n_layers must be an integer in \[1, 1024\], got True"),
    "int for bool": (backbone(tie_embeddings=1), r"model.backbone.tie_embeddings must be a bool, got 1"),
    "nan": (backbone(rope_theta=math.nan), r"model.backbone.rope_theta must be a finite number, got nan"),
    "dropout 5": (backbone(dropout=5.0), r"config.json: dropout probability has to be between 0 and 1"),
    "bad attention": (backbone(attention="sideways"), r"config.json: model.backbone: attention must be one of"),
    "bad direction": (lambda c: c | {"model": c["model"] | {"direction": "up"}}, r"direction must be one of"),
    "vocab vs tokenizer": (backbone(vocab_size=4096), r"config.json: vocab_size 4096 does not match the tokenizer"),
    "huge max_seq_len": (backbone(max_seq_len=10**12),
                         r"model.backbone.max_seq_len must be an integer in \[1, 1048576\], got 1000000000000"),
    "huge vocab_size": (backbone(vocab_size=10**11), r"backbone.vocab_size must be an integer in \[1, 16777216\]"),
    "huge n_layers": (backbone(n_layers=10**9), r"model.backbone.n_layers must be an integer in \[1, 1024\]"),
    # in range, but terabytes: the memory check refuses from the meta-device size, before anything is allocated
    "huge d_model": (backbone(d_model=2**20, d_ff=2**20), r"config.json: .*B parameters in float32 need about "
                                                          r"\d+\.\d GiB, .* available on cpu; its sizes are too large"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_a_corrupt_config_json_is_a_value_error_naming_the_file_and_field(folder, case):
    edit, message = BAD_CONFIGS[case]
    edit_config(folder, edit)
    with pytest.raises(ValueError, match=message) as err:
        explorer.load(folder)
    assert str(folder / "config.json") in str(err.value)


@pytest.mark.parametrize("content", [b"garbage", b"{}", b"[1]", b'{"model": 5}', b"\xff\xfe"])
def test_a_garbage_tokenizer_json_is_a_value_error_naming_it(folder, content):
    (folder / "tokenizer.json").write_bytes(content)
    with pytest.raises(ValueError, match=r"tokenizer.json: not a valid tokenizer file"):
        explorer.load(folder)


def test_a_tokenizer_without_our_special_tokens_is_refused(folder):
    from tokenizers import Tokenizer, models

    Tokenizer(models.BPE()).save(str(folder / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"tokenizer.json: lacks the special tokens \['<pad>', '<bos>', '<eos>', "
                                         r"'\[MASK\]'\]"):
        explorer.load(folder)


def test_memory_is_checked_before_the_model_is_built(folder, monkeypatch):
    """The shipped size fits anywhere; with 1 MiB available it is refused up front, and no Transformer is built
    off the meta device."""
    from explorer.nn import transformer

    built, init = [], transformer.Transformer.__init__

    def recording_init(self, config):
        built.append(torch.empty(0).device)  # the default device: meta while the model is only sized
        init(self, config)

    monkeypatch.setattr(transformer.Transformer, "__init__", recording_init)
    monkeypatch.setattr(weights, "available_bytes", lambda device: 2**20)
    with pytest.raises(ValueError, match=r"config.json: 0.00B parameters in float32 need about 0.3 GiB, 0.0 GiB "
                                         r"available on cpu; its sizes are too large for this machine"):
        explorer.load(folder)
    assert built == [torch.device("meta")]


def test_weights_are_checked_against_the_config_from_the_header_before_loading(folder, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("no tensor may be read before the keys and shapes are checked")

    monkeypatch.setattr(weights.SafetensorsFolder, "tensor", never)
    edit_config(folder, backbone(n_layers=2))  # the file holds 4 layers
    with pytest.raises(ValueError, match=r"model.safetensors: weights do not match the ar layout of config.json: "
                                         r"0 missing keys \[\], \d+ unexpected keys \['backbone.blocks.2"):
        explorer.load(folder)
    edit_config(folder, backbone(n_layers=4, d_ff=512))
    with pytest.raises(ValueError, match=r"model.safetensors: backbone.blocks.0.mlp.\S+ has shape \(\d+, \d+\), "
                                         r"config.json implies \(\d+, \d+\)"):
        explorer.load(folder)
    edit_config(folder, backbone(d_ff=688, tie_embeddings=False))  # the tied file has no head
    with pytest.raises(ValueError, match=r"1 missing keys \['backbone.head.weight'\]"):
        explorer.load(folder)


def test_an_intact_copy_still_loads_with_the_shipped_weights(folder):
    from safetensors.torch import load_file

    model = explorer.load(folder)
    stored = load_file(str(folder / "model.safetensors"))
    assert model.family == "ar" and model.backbone.head.weight is model.backbone.embed.weight
    assert all(torch.equal(model.state_dict()[key], tensor.float()) for key, tensor in stored.items())


def test_a_calm_folder_needs_its_autoencoder_config(tiny_calm_checkpoints, tmp_path):
    calm = shutil.copytree(tiny_calm_checkpoints / "calm-tiny-k2", tmp_path / "calm")
    edit_config(calm, lambda c: c | {"model": c["model"] | {"autoencoder": {"chunk": 0}}})
    with pytest.raises(ValueError, match=r"config.json: model.autoencoder.chunk must be an integer in \[1, "):
        explorer.load(calm)
    edit_config(calm, without("model", "autoencoder"))
    with pytest.raises(ValueError, match=r"config.json: missing field model.autoencoder"):
        explorer.load(calm)


def test_a_corrupt_autoencoder_folder_is_a_value_error(tmp_path):
    folder = shutil.copytree(CHECKPOINT_DIR / "autoencoders" / "calm-ae-k1", tmp_path / "ae")
    edit_config(folder, lambda c: c | {"autoencoder": c["autoencoder"] | {"d_model": 64}})
    with pytest.raises(ValueError, match=r"autoencoder.safetensors: \S+ has shape .* config.json implies"):
        Autoencoder.from_pretrained(folder)
    edit_config(folder, lambda c: c | {"autoencoder": [1]})
    with pytest.raises(ValueError, match=r"config.json: autoencoder must be a JSON object, got list"):
        Autoencoder.from_pretrained(folder)
    (folder / "config.json").write_text("[]")
    with pytest.raises(ValueError, match=r"config.json: must hold a JSON object"):
        Autoencoder.from_pretrained(folder)
    (folder / "autoencoder.safetensors").unlink()
    shutil.copy(CHECKPOINT_DIR / "autoencoders" / "calm-ae-k1" / "config.json", folder / "config.json")
    with pytest.raises(FileNotFoundError, match=r"autoencoder.safetensors: missing weights"):
        Autoencoder.from_pretrained(folder)


def test_the_cli_prints_the_error_and_exits_2(folder, capsys):
    from explorer.cli import main

    edit_config(folder, backbone(n_heads=0))
    assert main(["sample", "--checkpoint", str(folder), "--gen-length", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "config.json: model.backbone.n_heads must be an integer" in err


# --- released folders: config fields, shard index -----------------------------------------------------------------

@pytest.fixture
def llada_folder(tmp_path) -> Path:
    return write_tiny_llada(tmp_path / "LLaDA-tiny", shards=2)


def index_of(folder: Path) -> dict:
    return json.loads((folder / weights.INDEX).read_text())


def write_index(folder: Path, index: dict) -> None:
    (folder / weights.INDEX).write_text(json.dumps(index))


@pytest.mark.parametrize("weight_map", [["model-00001-of-00002.safetensors"], {"model.transformer.wte.weight": None},
                                        "model-00001-of-00002.safetensors"])
def test_a_weight_map_that_is_not_an_object_of_names_is_refused(llada_folder, weight_map):
    write_index(llada_folder, index_of(llada_folder) | {"weight_map": weight_map})
    with pytest.raises(ValueError, match=r"model.safetensors.index.json: 'weight_map' must be an object of tensor "
                                         r"name -> shard file name"):
        explorer.load(llada_folder, device="cpu")


@pytest.mark.parametrize("field, value, message", [
    ("n_layers", 10**9, r"n_layers must be an integer in \[1, 1024\]"),
    ("d_model", "32", r"d_model must be an integer .* got '32'"),
    ("n_heads", 0, r"n_heads must be an integer in \[1, "),
    ("max_sequence_length", 10**12, r"max_sequence_length must be an integer in \[1, 1048576\]"),
    ("mask_token_id", "x", r"mask_token_id must be an integer in \[0, 2111\]"),
    ("rope_theta", "big", r"rope_theta must be a finite number"),
])
def test_released_config_fields_are_checked_for_type_and_range(llada_folder, field, value, message):
    edit_config(llada_folder, lambda c: c | {field: value})
    with pytest.raises(ValueError, match=message) as err:
        explorer.load(llada_folder, device="cpu")
    assert str(llada_folder / "config.json") in str(err.value)


def test_dit_config_fields_are_checked_for_type_and_range(tmp_path):
    folder = write_tiny_dit(tmp_path / "mdlm", tiny_dit_config("mdlm"))
    edit_config(folder, lambda c: c | {"n_blocks": 10**9})
    with pytest.raises(ValueError, match=r"config.json: n_blocks must be an integer in \[1, 1024\]"):
        explorer.load(folder, device="cpu")
    edit_config(folder, lambda c: c | {"n_blocks": 2, "mask_token_id": [1]})
    with pytest.raises(ValueError, match=r"config.json: mask id must be an integer in \[0, 2049\], got \[1\]"):
        explorer.load(folder, device="cpu")


# --- 2. chat templates ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    return explorer.load(write_tiny_llada(tmp_path_factory.mktemp("chat") / "LLaDA-chat"), device="cpu")


HOSTILE_TEMPLATES = {
    "huge range": ("{% for i in range(10**9) %}x{% endfor %}", r"Range too big"),
    "huge string": ("{{ 'x' * 10**9 }}", r"MemoryError|stopped at its limits"),
    "huge output": ("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}", r"output exceeds 200,000 characters"),
    "endless loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                      r"stopped at its limits \(1 s of CPU"),
    "raise_exception": ("{{ raise_exception('no system role') }}", r"TemplateError: no system role"),
    "syntax error": ("{% for %}", r"TemplateSyntaxError"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", HOSTILE_TEMPLATES)
def test_a_hostile_chat_template_is_a_value_error_naming_tokenizer_config_json(chat_model, monkeypatch, case):
    template, message = HOSTILE_TEMPLATES[case]
    monkeypatch.setitem(llada.CHAT_LIMITS, "cpu_s", 1)
    monkeypatch.setattr(chat_model, "chat_template", template)
    with pytest.raises(ValueError, match=message) as err:
        chat_prompt(chat_model, "hi")
    assert f"{chat_model.checkpoint_path}/tokenizer_config.json: the chat template" in str(err.value)


@pytest.mark.timeout(120)
def test_the_page_and_the_cli_report_a_hostile_template(tmp_path, capsys):
    from explorer.cli import main
    from explorer.page.requests import model_prompt

    folder = write_tiny_llada(tmp_path / "LLaDA-chat", template="{% for i in range(10**9) %}x{% endfor %}")
    with pytest.raises(ValueError, match=r"chat template of LLaDA-chat could not be rendered .*tokenizer_config.json"):
        model_prompt(explorer.load(folder, device="cpu"), "hi", chat=True)
    assert main(["sample", "--checkpoint", str(folder), "--chat", "--gen-length", "4", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "tokenizer_config.json: the chat template could not be rendered" in err


@pytest.mark.parametrize("template", [5, ["{{ x }}"], {"default": "x"}, [{"name": "default", "template": 3}]])
def test_a_chat_template_of_the_wrong_type_is_refused_on_loading(tmp_path, template):
    folder = write_tiny_llada(tmp_path / "LLaDA-chat")
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    with pytest.raises(ValueError, match=r"tokenizer_config.json: chat_template must be a string"):
        explorer.load(folder, device="cpu")


def test_a_named_template_list_picks_the_default(tmp_path):
    folder = write_tiny_llada(tmp_path / "LLaDA-chat")
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "tool_use", "template": "tools"}, {"name": "default", "template": "<{{ messages[0]['content'] }}>"}]}))
    assert chat_prompt(explorer.load(folder, device="cpu"), "hi") == "<hi>"


# --- 3. weight files must stay inside the folder -------------------------------------------------------------------

SHARD = "model-00002-of-00002.safetensors"


@pytest.mark.parametrize("name", ["../outside/" + SHARD, "absolute"])
def test_shard_names_outside_the_folder_are_refused(llada_folder, tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(llada_folder / SHARD, outside / SHARD)  # where the hostile name points: loadable if followed
    name = str(outside / SHARD) if name == "absolute" else name
    index = index_of(llada_folder)
    write_index(llada_folder, index | {"weight_map": {k: name if v == SHARD else v
                                                      for k, v in index["weight_map"].items()}})
    with pytest.raises(ValueError, match=r"model.safetensors.index.json: shard name .* must be a file name inside "
                                         r"the folder \(no absolute path, no '..'\)"):
        explorer.load(llada_folder, device="cpu")


def move_out_and_link(file: Path, outside: Path) -> None:
    outside.mkdir(exist_ok=True)
    shutil.move(file, outside / file.name)
    os.symlink(outside / file.name, file)


def test_a_shard_symlinked_outside_the_folder_is_refused(llada_folder, tmp_path):
    move_out_and_link(llada_folder / SHARD, tmp_path / "outside")
    with pytest.raises(ValueError, match=rf"{SHARD}: resolves to .*outside.* outside the checkpoint folder"):
        explorer.load(llada_folder, device="cpu")


@pytest.mark.parametrize("layout", ["ours", "llada", "dit"])
def test_model_safetensors_symlinked_outside_the_folder_is_refused_by_every_loader(folder, tmp_path, layout):
    if layout == "llada":
        folder = write_tiny_llada(tmp_path / "llada")
    elif layout == "dit":
        folder = write_tiny_dit(tmp_path / "dit", tiny_dit_config("bd3lm"))
    move_out_and_link(folder / "model.safetensors", tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"model.safetensors: resolves to .*elsewhere.* outside the checkpoint folder"):
        explorer.load(folder, device="cpu")


def test_symlinks_inside_the_folder_and_the_hugging_face_cache_layout_load(folder, tmp_path):
    (folder / "weights").mkdir()
    shutil.move(folder / "model.safetensors", folder / "weights" / "model.safetensors")
    os.symlink(Path("weights") / "model.safetensors", folder / "model.safetensors")
    assert explorer.load(folder).family == "ar"
    # ~/.cache/huggingface/hub/models--org--name/snapshots/<revision>/FILE -> ../../blobs/<hash>
    repo = tmp_path / "models--org--ar"
    snapshot = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, name in enumerate(FILES):
        shutil.copy(folder / name, repo / "blobs" / f"blob{i}")
        os.symlink(Path("..") / ".." / "blobs" / f"blob{i}", snapshot / name)
    assert explorer.load(snapshot).family == "ar"
