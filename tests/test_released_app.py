"""The explorer page on a released checkpoint folder (a tiny random LLaDA under an allowed root), driven in process."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

from explorer.page.folders import family_at, local_checkpoints, resolve_checkpoint, sampler_at
from explorer.released.synthetic import (
    MASK_ID,
    TEMPLATE,
    released_config,
    released_tensors,
    tiny_dit_config,
    write_folder,
    write_tiny_dit,
    write_tiny_llada,
)
from support import dream_config, reference_network
from support import write_folder as write_dream_folder

OUTPUTS = ("view", "stats", "error", "plot", "step", "session", "multiples", "latent_view", "latent_step", "latent",
           "edit_view")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("released-root") / "released"
    write_tiny_llada(root / "LLaDA-tiny")
    write_tiny_llada(root / "LLaDA-sharded", shards=2)
    write_tiny_llada(root / "LLaDA-base", template=None)  # a tokenizer without a chat template, like a Base release
    write_tiny_dit(root / "bd3lm-release", tiny_dit_config("bd3lm"))
    write_dream_folder(root / "Dream-tiny", dream_config(), reference_network(dream_config()))
    write_folder(root / "Mystery", released_tensors(), config={"architectures": ["MysteryLM"], "hidden_size": 32})
    (root / "no-weights").mkdir()
    (root / "no-weights" / "config.json").write_text(json.dumps(released_config()))
    return root


@pytest.fixture(scope="module")
def page(root):
    """build_demo(roots=[root]) makes `root` the page's only allowed root; the previous page is put back after."""
    from explorer.page import common, layout

    before = common.PAGE
    layout.build_demo(roots=[root])
    yield common.page()
    common.PAGE = before


def run(label: str, sampler: str, **changes) -> dict:
    """The last output of the page's /generate on `label`, by output name."""
    from explorer.page.denoise import generate

    knobs = {"prompt": "ROMEO:", "sampler": sampler, "gen_length": 8, "steps": 8, "block_length": 8,
             "temperature": 0.0, "threshold": 0.9, "seed": 0, "color_by": "confidence", "cache": "none", "n": 1,
             "cfg_scale": 0.0, "constraints": ""}
    *_, last = generate(label, *(knobs | changes).values())
    return dict(zip(OUTPUTS, last))


def test_released_folders_are_listed_and_resolved(root):
    found = local_checkpoints([root])
    assert set(found) == {"released/LLaDA-tiny", "released/LLaDA-sharded", "released/LLaDA-base",
                          "released/Mystery", "released/bd3lm-release", "released/Dream-tiny"}  # weights or index
    assert resolve_checkpoint("released/LLaDA-sharded", [root]) == (root / "LLaDA-sharded").resolve()
    with pytest.raises(ValueError, match="no config.json and model.safetensors"):
        resolve_checkpoint(str(root / "no-weights"), [root])


def test_family_of_a_released_folder_is_mdlm_and_unknown_layouts_are_named(root):
    assert family_at(root / "LLaDA-tiny") == family_at(root / "LLaDA-sharded") == "mdlm"
    assert family_at(root, {"family": "bd3lm"}) == "bd3lm"
    assert family_at(root / "bd3lm-release") == "bd3lm" and family_at(root, tiny_dit_config("mdlm")) == "mdlm"
    with pytest.raises(ValueError, match=r"unknown architecture \['MysteryLM'\]; known released layouts"):
        family_at(root / "Mystery")


def test_family_controls_show_the_masked_samplers(page):
    from explorer.page.denoise import family_controls

    label = "released/LLaDA-tiny"
    assert label in page.choices()
    sampler, cache, block, steps, *_rest, cfg, constraints = family_controls(label)
    assert sampler["choices"][0] == "low_confidence" and "threshold" in sampler["choices"]
    assert cache["value"] == "none" and block["visible"] and steps["visible"]
    assert block["value"] == 64  # the registry's None: one block of the whole gen length (its context, 64 tokens)
    assert cfg["visible"] and constraints["visible"]
    with pytest.warns(UserWarning, match=r"unknown architecture \['MysteryLM'\]"):
        assert all(out == {"__type__": "update"} for out in family_controls("released/Mystery"))


def test_a_dream_folder_gets_dreams_own_sampler_as_the_api_does(page, root):
    """The page's default for a Dream release is the sampler `explorer.generate` runs when none is named."""
    import explorer
    from explorer.page.compare import default_sampler
    from explorer.page.denoise import family_controls

    assert sampler_at(root / "Dream-tiny") == "dream" and sampler_at(root / "LLaDA-tiny") is None
    sampler, *_ = family_controls("released/Dream-tiny")
    assert sampler["value"] == "dream" and "low_confidence" in sampler["choices"]
    assert family_controls("released/LLaDA-tiny")[0]["value"] == "low_confidence"
    assert default_sampler("released/Dream-tiny") == "dream"
    trace = explorer.generate(explorer.load(root / "Dream-tiny"), [1, 2, 3], gen_length=4, steps=4, record="none")
    assert trace.sampler["name"] == "dream"


@pytest.mark.parametrize("sampler", ["low_confidence", "threshold"])
def test_generate_on_a_released_folder_records_a_trace(page, sampler):
    out = run("released/LLaDA-tiny", sampler)
    assert "Cannot do that" not in out["error"], out["error"]
    assert out["view"].count('class="dlm-token"') == 8 and "dlm-mask" not in out["view"]
    trace = out["session"].trace
    assert trace.model["family"] == "mdlm" and trace.model["name"] == "LLaDA-tiny"
    assert trace.sampler["name"] == sampler and trace.sampler["record"] == "full"
    assert len(trace.frames) >= 2 and len(trace.frames[-1].tokens) == 8 and MASK_ID not in trace.frames[-1].tokens
    assert trace.frames[-1].confidence is not None and "LLaDA-tiny (mdlm)" in out["stats"]


def test_a_bd3lm_release_gets_the_block_controls_and_generates(page):
    from explorer.page.denoise import family_controls

    sampler, cache, block, steps, *_rest = family_controls("released/bd3lm-release")
    assert sampler["choices"][0] == "first_hitting" and cache["value"] == "kv"
    assert block["value"] == steps["value"] == 4  # the release's block_size
    out = run("released/bd3lm-release", "first_hitting", block_length=4, steps=4, cache="kv")
    assert "Cannot do that" not in out["error"], out["error"]
    trace = out["session"].trace
    assert trace.model["family"] == "bd3lm" and trace.model["name"] == "bd3lm-release"
    assert len(trace.frames[-1].tokens) >= 4 and trace.frames[-1].hidden is not None


def test_generate_on_a_sharded_folder_and_an_unknown_layout(page):
    out = run("released/LLaDA-sharded", "low_confidence")
    assert "Cannot do that" not in out["error"] and out["view"].count('class="dlm-token"') == 8
    with pytest.warns(UserWarning):
        out = run("released/Mystery", "low_confidence")
    assert "Cannot do that" in out["error"] and "unknown architecture" in out["error"]


def test_the_chat_template_box_wraps_the_prompt_of_a_folder_that_has_one(page):
    from jinja2 import Template

    from explorer.page.denoise import chat_control

    assert chat_control("released/LLaDA-tiny") == {"__type__": "update", "visible": True, "value": True}
    for label in ("released/LLaDA-base", "mdlm-tiny"):
        assert chat_control(label) == {"__type__": "update", "visible": False, "value": False}
    wrapped = Template(TEMPLATE).render(messages=[{"role": "user", "content": "ROMEO:"}], add_generation_prompt=True)
    out = run("released/LLaDA-tiny", "low_confidence")
    assert "Cannot do that" not in out["error"], out["error"]
    assert out["session"].trace.prompt_text == wrapped and "<|start|>assistant" in wrapped
    assert "chat template applied" in out["stats"] and html.escape(wrapped) in out["stats"]
    assert out["view"].count('class="dlm-token"') == 8
    for label, chat in (("released/LLaDA-tiny", False), ("released/LLaDA-base", True)):
        out = run(label, "low_confidence", chat=chat)
        assert out["session"].trace.prompt_text == "ROMEO:" and "chat template" not in out["stats"], label


def test_a_template_that_fails_to_render_is_named(root):
    import explorer
    from explorer.page.requests import model_prompt

    model = explorer.load(root / "LLaDA-tiny", device="cpu")
    model.chat_template = "{{ raise_exception('no system role') }}"
    assert model_prompt(model, "hi", chat=False) == "hi"
    with pytest.raises(ValueError, match="chat template of LLaDA-tiny could not be rendered.*untick 'chat template'"):
        model_prompt(model, "hi", chat=True)


def test_the_page_loads_released_folders_with_its_device_options(root):
    import torch

    import explorer
    from explorer.page.folders import ModelCache

    cache = ModelCache(released_options={"device": "cpu", "dtype": "bfloat16"})
    model = cache.get(root / "bd3lm-release")
    assert str(model.device) == "cpu" and next(model.parameters()).dtype == torch.bfloat16
    assert cache.get(explorer.hub.resolve("mdlm-tiny")).family == "mdlm"  # our own checkpoints ignore the options
    mapped = ModelCache(released_options={"device_map": {"": "cpu"}}).get(root / "LLaDA-tiny")
    assert mapped.device_map == {"": "cpu"}
    with pytest.raises(ValueError, match="device_map"):
        ModelCache(released_options={"device_map": "everywhere"}).get(root / "LLaDA-tiny")


@pytest.mark.parametrize("chat", [True, False])
def test_compare_wraps_the_prompt_only_for_checkpoints_with_a_chat_template(page, chat):
    from explorer.page.compare import compare

    slots = [True, "released/LLaDA-tiny", "low_confidence", True, "mdlm-tiny", "low_confidence"]
    slots += [False, None, None] * 2
    *_, last = compare("ROMEO:", 8, 8, 0.0, 0, "confidence", *slots, chat, None)
    llada, ours = last[-1].compared
    assert llada.prompt_text.startswith("<|start|>user\nROMEO:") == chat
    assert ours.prompt_text == "ROMEO:"  # mdlm-tiny has no chat template
