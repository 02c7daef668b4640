"""Several traces at once (explorer/viz/compare.py): a shared progress timeline, side-by-side canvases, N runs as
small multiples and their diversity."""

from __future__ import annotations

import math
import re

import pytest

from explorer.sampling import generate
from explorer.sampling.trace import Frame, Trace
from explorer.viz.compare import (
    commit_points,
    diversity,
    frame_at_progress,
    progress_plot,
    run_label,
    side_by_side_html,
    small_multiples_html,
)
from explorer.viz.tokens import tokens_html

PROMPT = "ROMEO:"
MASK = 5


def hand_trace(finals: list[list[int]] | list[int], n_frames: int | None = None, seed: int = 0) -> Trace:
    """A trace built by hand: `n_frames` frames of all-mask canvases ending in `finals`."""
    final = list(finals)
    count = n_frames or 2
    frames = [Frame(step=i, tokens=[MASK] * len(final)) for i in range(count - 1)] + [Frame(step=count - 1,
                                                                                              tokens=final)]
    return Trace(model={"name": "hand"}, sampler={"name": "none", "seed": seed}, prompt_ids=[], frames=frames,
                 text="", token_strings={}, mask_id=MASK)


@pytest.fixture(scope="module")
def mdlm_runs(tiny_mdlm):
    """Two mdlm runs of different lengths (5 and 9 frames) at temperature 1, one token committed per step."""
    short = generate(tiny_mdlm, PROMPT, "low_confidence", 0, record="full", gen_length=8, steps=4, block_length=8,
                     temperature=1.0)
    long = generate(tiny_mdlm, PROMPT, "low_confidence", 1, record="full", gen_length=8, steps=8, block_length=8,
                    temperature=1.0)
    assert (len(short.frames), len(long.frames)) == (5, 9)
    return short, long


# --- frame_at_progress ------------------------------------------------------------------------------------------

def test_frame_at_progress_bounds_and_rounding():
    trace = hand_trace([1, 2], n_frames=11)
    assert frame_at_progress(trace, 0.0) == 0
    assert frame_at_progress(trace, 1.0) == 10
    assert frame_at_progress(trace, 0.5) == 5
    assert frame_at_progress(trace, 0.24) == 2 and frame_at_progress(trace, 0.26) == 3
    assert frame_at_progress(trace, 0.3) == 3  # 0.3 x 10 is 3.0000000000000004
    two = hand_trace([1], n_frames=2)
    assert [frame_at_progress(two, p) for p in (0.0, 0.49, 0.51, 1.0)] == [0, 0, 1, 1]
    one = hand_trace([1], n_frames=1)
    assert frame_at_progress(one, 0.0) == frame_at_progress(one, 1.0) == 0


@pytest.mark.parametrize("progress", [-0.01, 1.01, 2.0, math.nan])
def test_frame_at_progress_refuses_progress_outside_0_1(progress):
    with pytest.raises(ValueError, match=r"progress must be in \[0, 1\]"):
        frame_at_progress(hand_trace([1, 2], n_frames=3), progress)


# --- the commit-order plot ---------------------------------------------------------------------------------------

def test_commit_points_place_every_commit_on_the_progress_axis(tiny_mdlm, tiny_ar, tiny_cdcd):
    mdlm = generate(tiny_mdlm, PROMPT, "low_confidence", 0, gen_length=8, steps=8, block_length=8)
    points = commit_points(mdlm)
    assert sorted(p[1] for p in points) == list(range(8))  # each position once
    assert sorted(p[0] for p in points) == [k / 8 for k in range(1, 9)]  # one commit per step
    ar = generate(tiny_ar, PROMPT, "ar", 0, gen_length=6)
    assert [p[1] for p in commit_points(ar)] == list(range(6))  # left to right
    cdcd = generate(tiny_cdcd, PROMPT, "euler", 0, gen_length=6, steps=4)
    assert {p[0] for p in commit_points(cdcd)} == {1.0}  # rounded to tokens at the end only


def test_commit_points_forget_a_remasked_commit():
    trace = hand_trace([1, 2], n_frames=3)
    trace.frames[1].committed, trace.frames[2].committed, trace.frames[2].remasked = [0, 1], [1], [0]
    assert commit_points(trace) == [(1.0, 1, 2)]


def test_progress_plot_has_one_series_per_run_and_marks_the_progress(mdlm_runs):
    short, long = mdlm_runs
    fig = progress_plot([short, long], labels=["a", "b"])
    assert [d.name for d in fig.data] == ["a", "b"] and not fig.layout.shapes
    for series, trace in zip(fig.data, (short, long), strict=True):
        assert list(series.x) == [p[0] for p in commit_points(trace)]
        assert [c[0] for c in series.customdata] == [p[2] for p in commit_points(trace)]  # frame indices
    assert fig.data[0].marker.color != fig.data[1].marker.color
    fig = progress_plot(list(mdlm_runs), progress=0.4)
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].x0 == fig.layout.shapes[0].x1 == 0.4
    assert [d.name for d in fig.data] == [run_label(t) for t in mdlm_runs]


# --- side by side -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("progress", [0.0, 0.4, 0.6, 1.0])
def test_side_by_side_has_one_panel_per_trace_at_the_same_progress(mdlm_runs, progress):
    short, long = mdlm_runs
    traces = [short, long, short]
    page = side_by_side_html(traces, progress)
    panels = re.findall(r'class="dlm-panel" data-run="(\d+)" data-frame="(\d+)"', page)
    assert panels == [(str(k), str(frame_at_progress(t, progress))) for k, t in enumerate(traces)]
    index = frame_at_progress(long, progress)
    assert f"step {long.frames[index].step} of {long.frames[-1].step}" in page
    assert tokens_html(long, index, "confidence") in page


def test_side_by_side_escapes_labels(mdlm_runs):
    page = side_by_side_html(list(mdlm_runs), 1.0, labels=["<b>bold</b> & co", "plain"])
    assert "<b>bold" not in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page and "plain" in page


def test_side_by_side_refuses_bad_progress(mdlm_runs):
    with pytest.raises(ValueError, match="progress must be in"):
        side_by_side_html(list(mdlm_runs), 1.5)


# --- diversity and small multiples --------------------------------------------------------------------------------

def test_diversity_by_hand():
    stats = diversity([hand_trace([1, 2, 3]), hand_trace([1, 2, 4]), hand_trace([1, 2, 3, 5])])
    # bigrams (1,2) (2,3) | (1,2) (2,4) | (1,2) (2,3) (3,5): 4 distinct of 7; a position only one run reached
    # differs: pairs differ at 1/3, 1/4 and 2/4 of their positions
    assert stats == {"runs": 3, "distinct_outputs": 3, "distinct_2": round(4 / 7, 4),
                     "pairwise_differing": round((1 / 3 + 1 / 4 + 2 / 4) / 3, 4)}
    one = diversity([hand_trace([7, 8])])
    assert one["pairwise_differing"] == 0.0 and one["distinct_outputs"] == 1


def test_diversity_of_identical_versus_different_seeds(tiny_mdlm):
    runs = [generate(tiny_mdlm, PROMPT, "low_confidence", seed, gen_length=12, steps=4, block_length=12,
                     temperature=1.0) for seed in range(3)]
    same = diversity([runs[0]] * 3)
    assert same["runs"] == 3 and same["distinct_outputs"] == 1 and same["pairwise_differing"] == 0.0
    assert same["distinct_2"] <= round(1 / 3, 4)  # every bigram appears three times
    different = diversity(runs)
    assert different["distinct_outputs"] == 3
    assert different["pairwise_differing"] > 0.5  # a random model at temperature 1 rarely agrees
    assert different["distinct_2"] > same["distinct_2"]


def test_small_multiples_has_one_cell_per_run_and_clips_the_index(mdlm_runs):
    short, long = mdlm_runs
    assert tokens_html(short, 4) != tokens_html(short, 3)  # the frames differ, so the clip is visible
    page = small_multiples_html([short, long], index=7)
    assert len(re.findall(r'class="dlm-multiple" data-run="\d+"', page)) == 2
    assert tokens_html(short, 4, "confidence", show_prompt=False, font_size=11) in page  # clipped to its last
    assert tokens_html(long, 7, "confidence", show_prompt=False, font_size=11) in page
    assert tokens_html(long, 8, "confidence", show_prompt=False, font_size=11) not in page
    assert "seed 0" in page and "seed 1" in page
    stats = diversity([short, long])
    assert f"<b>2 runs</b>: {stats['distinct_outputs']} distinct outputs" in page


def test_small_multiples_default_index_is_each_runs_last_frame(mdlm_runs):
    short, long = mdlm_runs
    page = small_multiples_html([short, long, short], color_by="commit_step")
    assert len(re.findall(r'class="dlm-multiple"', page)) == 3
    for trace in (short, long):
        last = len(trace.frames) - 1
        assert tokens_html(trace, last, "commit_step", show_prompt=False, font_size=11) in page
    assert tokens_html(long, 4, "commit_step", show_prompt=False, font_size=11) not in page
