"""Device maps for released checkpoints (explorer.released.placement), on a CPU-only machine: the planner over
fake GPUs, explicit maps through accelerate's hooks, refusals of bad maps, and the per-device memory check."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")

import explorer
from explorer.models.weights import GiB, NotEnoughMemory, SafetensorsFolder
from explorer.released import LAYOUTS, load_released
from explorer.released.llada import LLaDAConfig, LLaDAModel, backbone_config
from explorer.released.placement import check_placement_memory, plan_placement
from explorer.released.synthetic import (
    released_config,
    released_tensors,
    write_folder,
    write_tiny_llada,
)
from explorer.sampling import generate
from support import dream_config, reference_network
from support import write_folder as write_dream_folder

BLOCK = ("Block",)
GROUPS = {"backbone.embed": "cpu", "backbone.blocks.0": "cpu", "backbone.blocks.1": "cpu", "backbone.norm": "cpu",
          "backbone.head": "cpu"}  # the tiny LLaDA (2 blocks) in five groups, all on the CPU


def meta_llada(n_layers: int = 8) -> LLaDAModel:
    """A LLaDA-layout model on the meta device whose blocks, not the embeddings, hold most parameters."""
    config = released_config(n_layers=n_layers, d_model=64, n_heads=4, mlp_hidden_size=176, vocab_size=512,
                             embedding_size=512)
    with torch.device("meta"):
        return LLaDAModel(LLaDAConfig(backbone=backbone_config(config, Path("config.json")), mask_id=3), None)


def fp32_bytes(model) -> int:
    return sum(p.numel() for p in model.parameters()) * 4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_llada(tmp_path_factory.mktemp("placement") / "LLaDA-tiny")


@pytest.fixture(scope="module")
def plain(folder):
    return explorer.load(folder, device="cpu")


@pytest.mark.parametrize("strategy", ["auto", "balanced", "sequential"])
def test_planner_splits_blocks_over_two_gpus_in_order(strategy):
    model = meta_llada()
    total = fp32_bytes(model)
    plan = plan_placement(model, strategy, max_memory={0: total, 1: total, "cpu": 0}, no_split=BLOCK)
    cuda0, cuda1 = torch.device("cuda", 0), torch.device("cuda", 1)
    assert plan.device_of("backbone.embed.weight") == cuda0 == plan.main
    assert plan.device_of("backbone.head.weight") == cuda1
    blocks = [plan.device_of(f"backbone.blocks.{i}.attn.qkv.weight").index for i in range(8)]
    assert blocks == sorted(blocks) and set(blocks) == {0, 1}  # in order, over both GPUs
    assert plan.dtype == torch.float32 and plan.hooks  # no GPU here: fp32
    assert sum(plan.elements.values()) == sum(p.numel() for p in model.parameters())
    assert all(name.startswith("backbone.") for name in plan.modules)  # the rotary tables are not mapped
    if strategy != "sequential":  # balanced: both GPUs get a similar share
        assert abs(plan.elements[cuda0] - plan.elements[cuda1]) < sum(plan.elements.values()) / 4


def test_planner_spills_to_cpu_or_refuses():
    model = meta_llada()
    third = fp32_bytes(model) // 3
    plan = plan_placement(model, "auto", max_memory={0: third, 1: third, "cpu": "1GiB"}, no_split=BLOCK)
    assert plan.device_of("backbone.embed.weight").type == "cuda"
    assert plan.device_of("backbone.head.weight") == torch.device("cpu")  # what fits on no GPU goes to the CPU
    with pytest.raises(NotEnoughMemory, match=r"device_map='auto'.*fit on no device within max_memory"):
        plan_placement(model, "auto", max_memory={0: third, 1: third}, no_split=BLOCK)


def test_bad_max_memory():
    model = meta_llada()
    with pytest.raises(ValueError, match=r"max_memory\[0\] = 'lots' is not a size"):
        plan_placement(model, "auto", max_memory={0: "lots"}, no_split=BLOCK)
    with pytest.raises(ValueError, match="max_memory key 'disk'"):
        plan_placement(model, "auto", max_memory={"disk": "1GiB"}, no_split=BLOCK)
    with pytest.raises(ValueError, match="max_memory needs device_map='auto'"):
        plan_placement(model, None, max_memory={0: "1GiB"})


def test_explicit_cpu_map_matches_plain_load(folder, plain):
    mapped = explorer.load(folder, device_map=GROUPS)
    assert mapped.device == torch.device("cpu") and mapped.device_map == GROUPS
    assert hasattr(mapped.backbone, "_hf_hook") and hasattr(mapped.backbone.blocks[1], "_hf_hook")  # dispatched
    ids = torch.randint(0, 2048, (2, 12))
    with torch.no_grad():
        assert torch.equal(mapped(ids), plain(ids))
        assert torch.equal(mapped.denoiser_logits(ids), plain.denoiser_logits(ids))
    a = generate(plain, "hi", gen_length=8, steps=4)
    b = generate(mapped, "hi", gen_length=8, steps=4)
    assert [f.tokens for f in a.frames] == [f.tokens for f in b.frames]


def test_auto_on_a_cpu_machine(folder, plain):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only plan")
    model = load_released(folder, device_map="auto")
    assert model.device_map == {"backbone": "cpu"} and model.device == torch.device("cpu")
    ids = torch.randint(0, 2048, (1, 9))
    with torch.no_grad():
        assert torch.equal(model(ids), plain(ids))


def test_sharded_tied_map_keeps_the_tie(tmp_path):
    tensors = released_tensors(seed=1)
    tensors.pop("model.transformer.ff_out.weight")
    path = write_folder(tmp_path / "tied", tensors, released_config(weight_tying=True), shards=3)
    plain, mapped = explorer.load(path, device="cpu"), explorer.load(path, device_map=GROUPS)
    assert mapped.backbone.head.weight is mapped.backbone.embed.weight
    ids = torch.randint(0, 2048, (1, 9))
    with torch.no_grad():
        assert torch.equal(mapped(ids), plain(ids))


def test_dream_explicit_map(tmp_path):
    path = write_dream_folder(tmp_path / "Dream-tiny", dream_config(), reference_network(dream_config()))
    plain = explorer.load(path, device="cpu")
    groups = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu", "model.norm": "cpu",
              "lm_head": "cpu"}
    mapped = explorer.load(path, device_map=groups)
    assert hasattr(mapped.network.model.layers[0], "_hf_hook") and mapped.device == torch.device("cpu")
    ids = torch.randint(4, 2048, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(mapped(ids), plain(ids), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"device_map: 'model.layers.0.mlp' splits 'model.layers.0'"):
        explorer.load(path, device_map=groups | {"model.layers.0.mlp": "cpu"})


def missing_gpu() -> str:
    return f"cuda:{max(3, torch.cuda.device_count())}"


@pytest.mark.parametrize("device_map, message", [
    (GROUPS | {"backbone.encoder": "cpu"}, r"device_map: unknown module name 'backbone.encoder'; .*backbone.embed"),
    ({k: v for k, v in GROUPS.items() if k != "backbone.head"},
     r"device_map leaves 1 parameters without a device \(\['backbone.head.weight'\]\)"),
    (GROUPS | {"backbone.head": missing_gpu()}, r"device_map\['backbone.head'\]: cuda:\d+ is not on this machine"),
    (GROUPS | {"backbone.head": "disk"}, r"device_map\['backbone.head'\] = 'disk' is not a device; allowed: 'cpu'"),
    (GROUPS | {"backbone.head": True}, r"device_map\['backbone.head'\] = True is not a device"),
    (GROUPS | {"backbone.blocks.0.attn": "cpu"}, r"'backbone.blocks.0.attn' splits 'backbone.blocks.0'"),
    (GROUPS | {"backbone": "cpu"}, r"device_map: 'backbone.embed' lies inside 'backbone'"),
    (GROUPS | {"backbone.rotary": "cpu"}, r"device_map: 'backbone.rotary' holds no parameters"),
    ("fast", r"device_map='fast' is unknown; allowed: None, 'auto', 'balanced', 'sequential', or a dict"),
    (3, r"device_map must be None, 'auto', 'balanced', 'sequential', or a dict \{module name: device\}, got 3"),
    (["cpu"], r"device_map must be None, .* got \['cpu'\]"),
])
def test_bad_maps_are_refused(folder, device_map, message):
    with pytest.raises(ValueError, match=message):
        explorer.load(folder, device_map=device_map)


def test_conflicting_knobs(folder):
    with pytest.raises(ValueError, match="pass device='cpu' or device_map, not both"):
        explorer.load(folder, device="cpu", device_map=GROUPS)
    with pytest.raises(ValueError, match="max_memory applies to device_map='auto'"):
        explorer.load(folder, device_map=GROUPS, max_memory={"cpu": "1GiB"})
    with pytest.raises(ValueError, match="device_map / max_memory apply to released checkpoints only"):
        explorer.load("mdlm-tiny", device_map="auto")


def test_layout_without_device_maps_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(LAYOUTS, "plain", (lambda c: c.get("model_type") == "plain", lambda path, device, dtype: None))
    (tmp_path / "config.json").write_text('{"model_type": "plain"}')
    with pytest.raises(ValueError,
                       match=r"device_map is not supported for the 'plain' layout.*'dream', 'kuleshov-dit', 'llada'"):
        load_released(tmp_path, device_map="auto")


def fake_gpus(monkeypatch, free: dict[int, float]) -> None:
    """Pretend this machine has GPUs 0..n-1 with `free` GiB each (the probes device_count and mem_get_info)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free))
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda device: (int(free[torch.device(device).index] * GiB), int(80 * GiB)))


def test_per_device_memory_refusal(folder, monkeypatch):
    fake_gpus(monkeypatch, {0: 20.0, 1: 0.1})

    def unread(*args, **kwargs):
        raise AssertionError("a weight was read before the memory check")

    monkeypatch.setattr(SafetensorsFolder, "tensor", unread)
    split = {"backbone.embed": 0, "backbone.blocks.0": 0, "backbone.blocks.1": "cuda:1", "backbone.norm": 1,
             "backbone.head": 1}
    with pytest.raises(NotEnoughMemory) as err:
        explorer.load(folder, device_map=split, dtype=torch.float32)
    message = str(err.value)
    assert "cuda:1" in message and "cuda:0" not in message and str(folder) in message
    assert re.search(r"about 0\.25 GiB, but cuda:1 has 0\.10 GiB available", message), message
    assert "device_map" in message


def test_per_device_check_of_a_plan(monkeypatch):
    model = meta_llada()
    total = fp32_bytes(model)
    plan = plan_placement(model, "auto", max_memory={0: total, 1: total, "cpu": 0}, no_split=BLOCK)
    fake_gpus(monkeypatch, {0: 20.0, 1: 20.0})
    needed = check_placement_memory(plan, "meta LLaDA")
    assert set(needed) == {torch.device("cuda", 0), torch.device("cuda", 1)}
    fake_gpus(monkeypatch, {0: 20.0, 1: 0.2})
    with pytest.raises(NotEnoughMemory, match=r"meta LLaDA: device_map='auto' gives cuda:1 .* cuda:1 has 0\.20 GiB"):
        check_placement_memory(plan, "meta LLaDA")
    fake_gpus(monkeypatch, {0: 20.0})  # the plan names a GPU this machine lacks
    with pytest.raises(ValueError, match=r"device_map='auto': cuda:1 is not on this machine \(1 CUDA devices\)"):
        check_placement_memory(plan, "meta LLaDA")


def test_missing_accelerate_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # import accelerate now raises ImportError
    with pytest.raises(ImportError, match="device_map needs the accelerate package: pip install accelerate"):
        plan_placement(meta_llada(), "auto")
    assert plan_placement(meta_llada(), None, device="cpu").modules == {"": torch.device("cpu")}  # no need for it
