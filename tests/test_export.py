import json
import re
from itertools import pairwise
from pathlib import Path

import pytest
from PIL import Image

from explorer.cli import main
from explorer.sampling import generate
from explorer.sampling.trace import Trace
from explorer.viz.export import sample_frame_indices, trace_animation_html, trace_gif

CHROMIUM = "/usr/bin/chromium"


def embedded(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="trace-data">(.*?)</script>', page, re.DOTALL)
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def mdlm_trace(tiny_mdlm):
    return generate(tiny_mdlm, "ROMEO:", "low_confidence", 0, record="full", gen_length=16, steps=8)


def test_html_embeds_every_frame_and_loads_nothing(mdlm_trace):
    page = trace_animation_html(mdlm_trace)
    data = embedded(page)
    assert '<meta charset="utf-8">' in page
    assert "http://" not in page and "https://" not in page and "<link" not in page and " src=" not in page
    assert len(data["frames"]) == len(mdlm_trace.frames) == 9
    for frame, shown in zip(mdlm_trace.frames, data["frames"]):
        assert shown["step"] == frame.step and shown["nfe"] == frame.nfe
        tokens = [None if i < 0 else data["strings"][i] for i in shown["tokens"]]
        assert tokens == [None if t == mdlm_trace.mask_id else mdlm_trace.token_strings[t] for t in frame.tokens]
        assert set(shown["colors"]) == {"confidence", "commit_step"}
    assert all(c == -1 for c in data["frames"][0]["colors"]["confidence"])  # all masked at step 0
    assert all(0 <= c <= 255 for c in data["frames"][-1]["colors"]["commit_step"])
    assert data["model"] == mdlm_trace.model["name"] and data["last_step"] == 8


def test_html_escapes_token_strings_and_names(mdlm_trace):
    trace = Trace.from_dict(mdlm_trace.to_dict())
    evil = '<script>alert("x")</script> & \'q\'\n'
    trace.token_strings[trace.final_tokens[0]] = evil
    trace.model["name"] = "<b>model</b>"
    page = trace_animation_html(trace, color_by="commit_step")
    assert "<script>alert" not in page and "<b>model" not in page
    assert page.count("<script") == 2 and page.count("</script>") == 2  # the data and the player, nothing injected
    data = embedded(page)
    assert evil in data["strings"] and data["model"] == "<b>model</b>" and data["color_by"] == "commit_step"


@pytest.mark.parametrize("fixture", ["tiny_ar", "tiny_bd3lm", "tiny_cdcd"])
def test_every_family_exports(fixture, request, tmp_path):
    model = request.getfixturevalue(fixture)
    knobs = {"steps": 4} if fixture == "tiny_cdcd" else {}
    trace = generate(model, "", None, 0, record="tokens", gen_length=8, **knobs)  # no confidences: neutral colour
    data = embedded(trace_animation_html(trace))
    assert len(data["frames"]) == len(trace.frames)
    assert all(c == -1 for frame in data["frames"] for c in frame["colors"]["confidence"])
    out = trace_gif(trace, tmp_path / "t.gif", max_frames=3)
    assert Image.open(out).n_frames == min(3, len(trace.frames))


def test_sample_frame_indices_keep_first_and_last():
    assert sample_frame_indices(10, 120) == list(range(10))
    assert sample_frame_indices(65, 5) == [0, 16, 32, 48, 64]
    picked = sample_frame_indices(1001, 120)
    assert len(picked) == 120 and picked[0] == 0 and picked[-1] == 1000
    assert all(b - a in (8, 9) for a, b in pairwise(picked))  # even: gaps differ by at most one


def test_gif_frames_durations_and_size(mdlm_trace, tmp_path):
    out = trace_gif(mdlm_trace, tmp_path / "all.gif", fps=5, width=600)
    with Image.open(out) as gif:
        assert gif.n_frames == 9 and gif.size[0] == 600 and gif.info["loop"] == 0
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
    assert durations[:-1] == [200] * 8 and durations[-1] >= 2000  # the final frame is held
    assert not list(tmp_path.glob("*.tmp"))
    with Image.open(trace_gif(mdlm_trace, tmp_path / "few.gif", max_frames=4)) as gif:
        assert gif.n_frames == 4


@pytest.mark.parametrize("knobs, message", [
    ({"fps": 0}, "fps must be > 0"), ({"fps": -2}, "fps must be > 0"), ({"width": 299}, "width must be >= 300"),
    ({"max_frames": 1}, "max_frames must be >= 2"), ({"color_by": "rainbow"}, "color_by must be one of"),
])
def test_bad_knobs_raise(mdlm_trace, tmp_path, knobs, message):
    with pytest.raises(ValueError, match=message):
        trace_gif(mdlm_trace, tmp_path / "x.gif", **knobs)
    if set(knobs) <= {"fps", "color_by"}:
        with pytest.raises(ValueError, match=message):
            trace_animation_html(mdlm_trace, **knobs)
    assert not list(tmp_path.iterdir())


def test_cli_sample_then_export(tmp_path, capsys):
    trace_path, page, gif = tmp_path / "t.json", tmp_path / "t.html", tmp_path / "t.gif"
    assert main(["sample", "--checkpoint", "mdlm-tiny", "--gen-length", "16", "--steps", "8", "--record", "full",
                 "--trace", str(trace_path)]) == 0
    assert main(["export", str(trace_path), "--html", str(page), "--gif", str(gif), "--color-by", "commit_step",
                 "--fps", "2", "--max-frames", "5"]) == 0
    assert len(embedded(page.read_text(encoding="utf-8"))["frames"]) == 9
    assert Image.open(gif).n_frames == 5
    capsys.readouterr()
    assert main(["export", str(tmp_path / "missing.json"), "--html", str(page)]) == 2
    assert "missing.json does not exist" in capsys.readouterr().err
    (tmp_path / "other.json").write_text('{"schema": 1, "rows": []}')
    assert main(["export", str(tmp_path / "other.json"), "--gif", str(gif)]) == 2
    assert "is not a trace JSON file" in capsys.readouterr().err
    assert main(["export", str(trace_path)]) == 2
    assert "--html" in capsys.readouterr().err


@pytest.mark.browser
def test_play_button_and_keys_step_through_the_replay(mdlm_trace, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `scripts/install_chromium.sh` (installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    page_path = tmp_path / "replay.html"
    page_path.write_text(trace_animation_html(mdlm_trace, fps=20), encoding="utf-8")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless", "--disable-gpu"])
        try:
            page = browser.new_page()
            requests, errors = [], []
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.as_uri())
            caption = page.locator("#caption")
            assert "step 0 of 8" in caption.text_content()
            page.click("#play")
            page.wait_for_function("document.getElementById('caption').textContent.includes('step 8 of 8')",
                                   timeout=10_000)
            assert page.locator("#play").text_content().endswith("play")  # stopped at the end
            page.keyboard.press("ArrowLeft")
            assert "step 7 of 8" in caption.text_content()
            page.click("input[value=commit_step]")
            assert page.locator("#high").text_content() == "step 8"
            assert page.locator("#canvas span.token").count() + page.locator("#canvas span.mask").count() == 16
            assert errors == [] and requests == [page_path.as_uri()]
        finally:
            browser.close()
