"""The page's sampler controls come from the sampler registry: every registry knob has a control on the Denoise tab,
each sampler shows exactly the knobs it takes, and what the page sends a sampler is what it shows."""

from __future__ import annotations

import pytest

import explorer
from explorer.page.requests import (
    EXTRA_KNOBS,
    MODEL_KNOBS,
    Request,
    control_of,
    read_knobs,
    request_work,
    sampler_knobs,
    shown_knobs,
)
from explorer.sampling.registry import SAMPLERS, build_sampler, every_knob, sampler_for, user_knobs

CHECKPOINTS = {"ar": "ar-tiny", "mdlm": "mdlm-tiny", "bd3lm": "bd3lm-tiny-b4", "cdcd": "cdcd-tiny",
               "calm": "calm-tiny-k4",  # a shipped checkpoint of each family
               "diffusion_gemma": "released/DiffusionGemma-tiny"}  # a library's family: a folder under a page root


@pytest.fixture(scope="module")
def released_root(tmp_path_factory):
    """A page root holding a tiny DiffusionGemma folder, as a user's downloads would."""
    from explorer.released.synthetic import write_tiny_diffusion_gemma

    root = tmp_path_factory.mktemp("page-roots") / "released"
    write_tiny_diffusion_gemma(root / "DiffusionGemma-tiny")
    return root


@pytest.fixture(scope="module")
def denoise_ids():
    """The elem_ids of the built page's components (the page state is put back after)."""
    from explorer.page import common, layout

    before = common.PAGE
    try:
        demo = layout.build_demo()
    finally:
        common.PAGE = before
    return {getattr(block, "elem_id", None) for block in demo.blocks.values()} - {None}


def every_control_set(family: str) -> Request:
    """A request with every control of the Denoise tab given a value (the EXTRA_KNOBS boxes too); word constraints and
    guidance only where a sampler of the family takes them (elsewhere the page refuses them)."""
    takes = {k for name in SAMPLERS[family] for k in user_knobs(sampler_for(family, name))}
    boxes = {}
    for name, definition in EXTRA_KNOBS.items():
        if definition.metadata["choices"]:
            boxes[name] = definition.metadata["choices"][0]
        elif str(definition.type) == "bool":
            boxes[name] = False
        else:
            boxes[name] = "ar-tiny" if name in MODEL_KNOBS else "1"
    return Request(None, 16, 8, 16, 0.5, cache=None, n=2, cfg_scale=1.0 if "cfg_scale" in takes else 0.0,
                   constraints="0:Once" if "pinned" in takes else "", knobs=read_knobs(boxes))


def test_the_page_has_one_control_for_every_registry_knob_and_none_the_registry_lacks(denoise_ids):
    assert {control_of(k) for k in every_knob()} <= denoise_ids
    boxes = {i.removeprefix("knob_") for i in denoise_ids if i.startswith("knob_")}
    assert boxes == set(EXTRA_KNOBS) and boxes <= set(every_knob())


@pytest.mark.parametrize("family", sorted(SAMPLERS))
def test_each_sampler_shows_and_gets_exactly_its_registry_knobs(family, released_root, monkeypatch):
    """Per sampler: the controls the page shows (its `sampler_controls` handler) and the knobs it sends
    (`sampler_knobs`) are its registry knobs; per family, together, exactly the registry's user knobs."""
    from explorer.page import common
    from explorer.page.denoise import SAMPLER_CONTROLS, sampler_controls
    from explorer.page.folders import default_roots

    monkeypatch.setattr(common, "PAGE", common.Page(default_roots() + [released_root]))
    controls = list(SAMPLER_CONTROLS) + [control_of(k) for k in EXTRA_KNOBS]  # what sampler_controls updates
    sent_by_family, registry = set(), set()
    for name in SAMPLERS[family]:
        spec = sampler_for(family, name)
        updates = sampler_controls(CHECKPOINTS[family], name)
        visible = {control for control, update in zip(controls, updates, strict=True) if update["visible"]}
        assert visible == {control_of(k) for k in shown_knobs(spec)} & set(controls), name
        request = every_control_set(family)
        request.sampler = name
        sent = sampler_knobs(family, request)
        assert set(sent) == set(shown_knobs(spec)), name
        build_sampler(family, name, **sent)  # every knob sent is one the sampler takes
        assert set(user_knobs(spec)) - set(sent) <= {"threshold"}, name  # LLaDA's rules: the threshold sampler's
        sent_by_family |= set(sent)
        registry |= set(user_knobs(spec))
    assert sent_by_family == registry


def test_a_sampler_without_a_knob_the_family_has_does_not_get_it():
    """mdlm's ancestral, Dream and draft-and-refine samplers used to be sent the cache and guidance of LLaDA's loop,
    which they refuse; each now gets only its own knobs."""
    request = Request("ancestral", 16, 8, 16, 0.0, cache="dual", cfg_scale=0.0, constraints="1:upon")
    assert sampler_knobs("mdlm", request) == {"gen_length": 16, "steps": 8, "block_length": 16, "temperature": 0.0,
                                              "pinned": {1: " upon"}}
    request.sampler = "dream"
    assert "block_length" not in sampler_knobs("mdlm", request) and "cache" not in sampler_knobs("mdlm", request)


def test_extra_knob_boxes_are_read_as_their_knobs_type():
    assert read_knobs({"top_k": " 5 ", "top_p": "0.9", "eps": "1e-3", "drafter": "ar-tiny", "alg": "origin",
                       "stop_at_eos": False}) == {"top_k": 5, "top_p": 0.9, "eps": 0.001, "drafter": "ar-tiny",
                                                  "alg": "origin", "stop_at_eos": False}
    assert read_knobs({"top_k": "", "top_p": "  ", "drafter": ""}) == {"top_k": None, "top_p": None, "drafter": None}
    with pytest.raises(ValueError, match=r"top_k must be an integer \(empty: the sampler's default\), got '0.5'"):
        read_knobs({"top_k": "0.5"})
    with pytest.raises(ValueError, match="churn must be a number .*, got 'lots'"):
        read_knobs({"churn": "lots"})


def test_refinement_rounds_count_in_the_request_cost():
    base = Request("draft_refine", 16, 8, 16, 0.0)
    assert request_work("mdlm", base) == 16 * 8 * sampler_for("mdlm", "draft_refine").default("rounds")
    base.knobs = {"rounds": 50}
    assert request_work("mdlm", base) == 16 * 8 * 50


@pytest.mark.parametrize("sampler, boxes", [
    ("dream", {"alg": "maskgit_plus", "top_p": "0.95"}),
    ("draft_refine", {"drafter": "ar-tiny", "rounds": "1", "fraction": "0.5"}),
    ("ancestral", {}),
])
def test_the_page_runs_the_samplers_it_could_not_run_before(sampler, boxes):
    """generate (in process) with the registry's extra knobs: Dream's `alg`, draft-and-refine's drafter (a checkpoint
    the page opens) and MDLM's ancestral sampler."""
    from explorer.page.denoise import generate
    from explorer.page.views import Outputs

    if "mdlm-tiny" not in explorer.shipped():
        pytest.skip("shipped checkpoints are not present")
    typed = [f.default if f.metadata["choices"] or str(f.type) == "bool" else "" for f in EXTRA_KNOBS.values()]
    values = [boxes.get(name, value) for name, value in zip(EXTRA_KNOBS, typed)]  # the boxes, as the page starts
    *_, last = generate("mdlm-tiny", "ROMEO:", sampler, 8, 8, 8, 0.0, 0.9, 0, "confidence", "none", 1, 0.0, "", True,
                        None, *values)
    out = dict(zip(Outputs.names, last))
    assert "dlm-error" not in out["error"], out["error"]  # notes may show (draft-and-refine's refine steps reduced)
    trace = out["session"].trace
    assert trace.sampler["name"] == sampler and len(trace.final_tokens) == 8
    assert {name: trace.sampler[name] for name in boxes} == read_knobs(boxes)  # the drafter by its name
