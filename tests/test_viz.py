import re

import pytest

from explorer.sampling import generate
from explorer.viz import (
    confidence_heatmap,
    confidence_matrix,
    frame_values,
    tokens_html,
)
from explorer.viz.tokens import MASK_COLOR


@pytest.fixture(scope="module")
def trace(tiny_mdlm):
    return generate(tiny_mdlm, "ROMEO:", "low_confidence", gen_length=16, steps=8, temperature=1.0, seed=0,
                    record="full")


def test_tokens_html_colours_committed_tokens_and_greys_masked_ones(trace):
    mid = tokens_html(trace, 3)
    assert mid.count('class="dlm-mask"') == 16 - 6 and MASK_COLOR in mid
    assert mid.count('class="dlm-token"') == 6
    assert "ROMEO:" in mid  # the prompt
    final = tokens_html(trace, -1)
    assert final.count('class="dlm-token"') == 16 and "dlm-mask" not in final
    values = [float(v) for v in re.findall(r'data-value="([0-9.]+)"', final)]
    assert values == pytest.approx([c for c in trace.frames[-1].confidence], abs=1e-4)


def test_colour_by_commit_step_orders_tokens_by_when_they_were_committed(trace):
    values = frame_values(trace, -1, "commit_step")
    steps = trace.commit_steps()
    last = trace.frames[-1].step
    assert values == pytest.approx([s / last for s in steps])
    with pytest.raises(ValueError, match="color_by"):
        frame_values(trace, -1, "rainbow")


def test_text_is_escaped(tiny_mdlm, trace):
    lt = tiny_mdlm.tokenizer.token_to_id("<")
    assert lt is not None
    trace.token_strings[lt] = "<"
    trace.frames[-1].tokens[0] = lt
    assert "&lt;" in tokens_html(trace, -1)


def test_the_pages_panels_escape_hostile_text(trace):
    """The page's message boxes, stats line and tables take values from anyone's trace file: escaped everywhere."""
    import copy

    from explorer.viz.panels import compare_table, error_html, notice_html, paused_html, prompt_note, stats_line

    payload = '<img src=x onerror="window.__pwned=1">'
    hostile = copy.deepcopy(trace)
    hostile.model["name"] = hostile.sampler["name"] = hostile.text = hostile.stats["stop"] = payload
    hostile.stats["steps"] = payload  # the running line shows it
    hostile.frames[-1].step = payload
    shown = [error_html(payload), notice_html([payload, "ok"]), stats_line(hostile), stats_line(hostile, True),
             paused_html(hostile, -1), compare_table([hostile]), prompt_note("hi", payload)]
    for html in shown:
        assert "<img" not in html and "&lt;img" in html, html
    assert notice_html([]) == "" and prompt_note("hi", "hi") == ""


def test_confidence_heatmap_has_one_row_per_step_and_commit_markers(trace):
    fig = confidence_heatmap(trace)
    heat, marks = fig.data
    assert len(heat.z) == len(trace.frames) and len(heat.z[0]) == 16
    assert sorted(marks.x) == list(range(16))
    assert list(marks.y) == [trace.commit_steps()[p] for p in marks.x]
    partial = confidence_heatmap(trace, 2)
    assert len(partial.data[0].z) == 3 and len(partial.data[1].x) == 4
    matrix = confidence_matrix(trace)
    assert matrix[0] == [None] * 16  # the initial canvas has no proposals yet
    assert all(v is not None for v in matrix[1])  # level "full": every masked position is scored each step


def test_widgets_build(trace, tiny_mdlm):
    from explorer.viz.widgets import sampler_controls, scrubber

    box = scrubber(trace)
    slider = box.children[0].children[0]
    view = box.children[1]
    slider.value = 0
    assert "dlm-mask" in view.value
    controls = sampler_controls(tiny_mdlm, "ROMEO:", gen_length=8)
    steps_slider = controls.children[0].children[0]
    steps_slider.value = 4  # re-runs the sampler
    assert "dlm-token" in controls.children[1].children[0].children[1].value


def test_widgets_drive_continuous_diffusion(tiny_cdcd):
    from explorer.viz.widgets import sampler_controls

    controls = sampler_controls(tiny_cdcd, "ROMEO:", gen_length=6, steps=3)
    steps_slider, temperature_slider = controls.children[0].children
    assert steps_slider.max == 400 and temperature_slider.value == 1.0
    steps_slider.value = 5  # re-runs the sampler: 5 Euler steps -> 6 frames
    scrubber_box = controls.children[1].children[0]
    assert scrubber_box.children[0].children[0].max == 5
