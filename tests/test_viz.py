import copy
import re

import pytest

from explorer.sampling import generate
from explorer.viz import (
    confidence_heatmap,
    confidence_matrix,
    entropy_heatmap,
    frame_values,
    tokens_html,
    trace_animation_html,
)
from explorer.viz.compare import side_by_side_html
from explorer.viz.panels import canvas_html, legend_html
from explorer.viz.plots import integer_ticks
from explorer.viz.tokens import MASK_COLOR, TOKEN_BOX


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


def test_tokens_are_boxes_that_wrap_and_a_run_of_newlines_breaks_the_row_once(trace):
    """Bare inline spans side by side give the browser no place to break a row of tokens: each token and mask is a
    box (`TOKEN_BOX`, the exported page's rule too). Newlines show as ↵; "\n", "\n" between speeches cost one row."""
    shown = copy.deepcopy(trace)
    newline, word, inner = 9_000_001, 9_000_002, 9_000_003  # ids of no real token, with strings set here
    shown.token_strings.update({newline: "\n", word: "w", inner: "x\ny"})
    shown.frames[-1].tokens = [word, newline, newline, inner] + [word] * (len(shown.frames[-1].tokens) - 4)
    html = tokens_html(shown, -1)
    boxes = re.findall(r'<span class="dlm-(?:token|mask)"[^>]*style="([^"]*)"', html + tokens_html(trace, 3))
    assert boxes and all(style.startswith(TOKEN_BOX) for style in boxes)
    assert "display:inline-block" in TOKEN_BOX and "max-width:100%" in TOKEN_BOX
    assert html.count("<br>") == 2  # one after the run of two newlines, one inside "x\ny"
    assert re.search(r">↵</span><span[^>]*>↵</span><br><span[^>]*>x↵<br>y</span><span", html)


def test_the_canvas_legend_names_its_scale_and_the_masked_colour_and_follows_colour_by(trace):
    by_confidence, by_step = canvas_html(trace, 3, "confidence"), canvas_html(trace, 3, "commit_step")
    for shown, mode in ((by_confidence, "confidence"), (by_step, "commit_step")):
        assert f'class="dlm-legend" data-color-by="{mode}"' in shown and "linear-gradient" in shown
        assert MASK_COLOR in shown and "masked" in shown and "prompt" in shown
        assert tokens_html(trace, 3, mode) in shown
    assert "confidence" in legend_html(trace, "confidence") and "0</span>" in by_confidence
    assert "commit step" in by_step and f"step {trace.frames[-1].step}</span>" in by_step
    assert legend_html(trace, "confidence") != legend_html(trace, "commit_step")
    assert 'class="dlm-token"' not in legend_html(trace) and 'class="dlm-mask"' not in legend_html(trace)
    with pytest.raises(ValueError, match="color_by"):
        legend_html(trace, "rainbow")


def test_heatmap_ticks_are_integer_steps_and_positions_mid_run(trace, tiny_cdcd):
    """Plotly's own ticks put steps at -0.5, 0.5 while a run has one or two frames: the axes get integer ticks."""
    continuous = generate(tiny_cdcd, "ROMEO:", gen_length=6, steps=3, record="full")
    figures = [confidence_heatmap(trace, upto) for upto in (0, 1, 2, -1)]
    figures += [entropy_heatmap(continuous, upto) for upto in (1, -1)]
    for fig in figures:
        steps = list(fig.data[0].y)
        for axis, low, high in ((fig.layout.yaxis, min(steps), max(steps)), (fig.layout.xaxis, 0, 15)):
            assert axis.tickmode == "array" and axis.tickvals, axis
            assert all(isinstance(v, int) and low <= v <= high for v in axis.tickvals), axis.tickvals
    assert list(confidence_heatmap(trace, 1).layout.yaxis.tickvals) == [0, 1]
    assert integer_ticks(0, 64)["tickvals"] == [0, 10, 20, 30, 40, 50, 60]
    assert integer_ticks(3, 9)["tickvals"] == [3, 4, 5, 6, 7, 8, 9]
    assert integer_ticks(0, 200)["tickvals"] == list(range(0, 201, 20))


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
    hostile.stats["nfe"] = payload  # the running line shows it
    hostile.frames[-1].step = payload
    hostile.token_strings = {k: payload for k in hostile.token_strings}  # the picked token is named
    shown = [error_html(payload), notice_html([payload, "ok"]), stats_line(hostile), stats_line(hostile, True),
             paused_html(hostile, -1, 0), compare_table([hostile]), prompt_note("hi", payload)]
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


def test_the_notebook_scrubber_is_output_wide_and_shows_the_legend_of_its_colouring(trace):
    """The widget's canvas takes the output's width (ipywidgets' HTML is a fixed-width flex row otherwise) so its
    token boxes wrap, under the legend of the chosen colouring."""
    from explorer.viz.widgets import scrubber

    box = scrubber(trace)
    view, mode = box.children[1], box.children[0].children[1]
    assert view.layout.width == "100%" and TOKEN_BOX in view.value
    assert 'data-color-by="confidence"' in view.value
    mode.value = "commit_step"
    assert 'data-color-by="commit_step"' in view.value and view.value == canvas_html(trace, -1, "commit_step")


def test_widgets_drive_continuous_diffusion(tiny_cdcd):
    from explorer.viz.widgets import sampler_controls

    controls = sampler_controls(tiny_cdcd, "ROMEO:", gen_length=6, steps=3)
    steps_slider, temperature_slider = controls.children[0].children
    assert steps_slider.max == 400 and temperature_slider.value == 1.0
    steps_slider.value = 5  # re-runs the sampler: 5 Euler steps -> 6 frames
    scrubber_box = controls.children[1].children[0]
    assert scrubber_box.children[0].children[0].max == 5


def test_every_canvas_numbers_its_step_as_the_scrubber_does_an_edit_counting_as_one(trace):
    """After an edit the trace holds the paused frame and the edited canvas at the same sampler step: the label is the
    frame's index out of the last index (the scrubber's number), never 'step 8 of 8 (frame 9)'."""
    from explorer.viz.panels import paused_html, step_label

    last = len(trace.frames) - 1
    assert step_label(trace, 3) == "step 3 of 8" == f"step 3 of {last}"
    assert '<div class="dlm-step"' in canvas_html(trace, -1) and "step 8 of 8" in canvas_html(trace, -1)
    edited = copy.deepcopy(trace)  # as spliced_trace leaves it: frames[:4], the edited canvas (step 3 again), the rest
    edited.frames.insert(4, copy.deepcopy(edited.frames[3]))
    edited.sampler["edits"] = [{"frame": 3, "at_step": 3, "tokens": {"5": 7}, "seed": None}]
    assert [f.step for f in edited.frames[3:6]] == [3, 3, 4]
    assert step_label(edited, 4) == "step 4 of 9 (your edit)" and step_label(edited, -1) == "step 9 of 9"
    shown = canvas_html(edited, -1)
    assert "step 9 of 9" in shown and "frame" not in re.sub(r"<[^>]+>", "", shown).split("confidence")[0]
    assert "step" not in paused_html(edited, 4) and "frame" not in paused_html(edited, 4)
    # the heatmap, the commit colours, the exports and the compare panel number steps the same way
    pos = edited.frames[4].committed[0]  # committed again on the edited canvas
    heat = confidence_heatmap(edited)
    assert list(heat.data[0].y) == list(range(10))  # one row per frame: the edit's row does not overlap step 3's
    assert edited.commit_steps()[pos] == 4 and heat.data[1].y[list(heat.data[1].x).index(pos)] == 4
    assert frame_values(edited, 4, "commit_step")[pos] == pytest.approx(4 / 9)
    animation = trace_animation_html(edited, color_by="commit_step")
    assert "step 9 of 9 · nfe" in animation and '"last_step": 9' in animation
    assert "step 9 of 9" in side_by_side_html([edited], 1.0)


def test_a_click_on_a_token_picks_its_position_and_the_canvas_outlines_it(trace):
    """The Edit tab's hidden #pick box receives 'POSITION|time' from a click; anything else changes nothing."""
    from html import unescape

    import gradio as gr

    from explorer.page.edit import pick
    from explorer.viz.panels import paused_html

    assert pick("12|1733400000000") == 12 and pick("0|5") == 0
    for bad in ("", None, "-1|5", "x|5", "1e3|5", "<img>|5", f"{2**40}|5"):
        assert isinstance(pick(bad), type(gr.skip())), bad
    shown = canvas_html(trace, 3, selected=5)
    assert shown.count('data-selected="true"') == 1 and 'data-pos="5" data-selected="true"' in shown
    assert 'data-selected' not in canvas_html(trace, 3)
    said = paused_html(trace, -1, 5)
    assert "position 5 picked: " in said and repr(trace.token_strings[trace.frames[-1].tokens[5]]) in unescape(said)
    assert "picked" not in paused_html(trace, -1, 99)  # out of range: nothing picked
