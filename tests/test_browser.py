"""The explorer page in a real browser: Debian chromium driven by Playwright, one test per tab.

Screenshots of each view are saved as test artefacts in runs/screenshots/ (the pictures in docs/ are copies).
Needs /usr/bin/chromium: run `scripts/install_chromium.sh` (Debian package, no Playwright browser download).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support import ROOT

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "runs" / "screenshots"
COLOURED = "#tokens span.dlm-token[style*='background:rgb']"
# the stats' text alone (#stats' own text also holds Gradio's "processing | 0.3s" while an event waits)
STATS = "document.querySelector('#stats [data-testid=markdown]')?.innerText"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `scripts/install_chromium.sh` (installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


SIZES = {"laptop": (1280, 800), "projector": (1920, 1080)}  # the window sizes a newcomer and a demo audience meet
# Gradio shows a status tracker over each output of a running event (class "hide" when idle). The page's load events
# (the checkpoint's family sets the knobs) end seconds after the first paint and reset what was typed before: a test
# starts once they are over (some seen, none running for 300 ms)
WATCH_EVENTS = """
window.__dlmEvents = {seen: 0, busy: new Set(), last: 0};
new MutationObserver(changes => {
  for (const change of changes) {
    const tracker = change.target;
    if (!tracker.dataset || tracker.dataset.testid !== 'status-tracker') continue;
    const events = window.__dlmEvents;
    if (tracker.classList.contains('hide')) events.busy.delete(tracker);
    else { events.busy.add(tracker); events.seen += 1; }
    events.last = performance.now();
  }
}).observe(document, {attributes: true, attributeFilter: ['class'], subtree: true});
"""
SETTLED = ("(() => { const e = window.__dlmEvents;"
           " return e.seen > 0 && e.busy.size === 0 && performance.now() - e.last > 300; })()")


def open_page(browser, app_url: str, width: int, height: int):
    """A fresh page (a new user session) of the given size, opened on the explorer once its load events are over."""
    page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
    page.set_default_timeout(60_000)
    page.add_init_script(WATCH_EVENTS)
    page.goto(app_url)
    page.wait_for_selector("#generate")
    page.wait_for_function(f"{STATS}?.includes('tokens/s')")  # the first paint's stats are drawn
    page.wait_for_function(SETTLED)
    # the load event has set the checkpoint's controls (mdlm-tiny's 128-token context), so typing is not undone
    page.wait_for_function("document.querySelector('#gen_length input[type=number]')?.max === '128'")
    return page


@pytest.fixture
def page(browser, app_url):
    """A fresh page at projector-like size."""
    page = open_page(browser, app_url, 1440, 1000)
    try:
        yield page
    finally:
        page.close()


@pytest.fixture(params=list(SIZES))
def sized_page(request, browser, app_url):
    """A fresh page at a laptop's and at a projector's window size."""
    page = open_page(browser, app_url, *SIZES[request.param])
    try:
        yield page
    finally:
        page.close()


def screenshot(page, name: str, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.wait_for_timeout(400)  # let plotly finish drawing
    page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 20_000
    return path


def set_number(page, elem_id: str, value) -> None:
    """Type into the number box of a Gradio slider or number and commit it."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def masks(page, where: str = "#tokens") -> int:
    return page.locator(f"{where} span.dlm-mask").count()


def generate(page) -> None:
    """Press Generate and wait for the finished run's stats (the first paint already shows the example's)."""
    before = page.evaluate(STATS)
    page.click("#generate")
    page.wait_for_function(f"([before]) => {{ const s = {STATS} || '';"
                           " return s !== before && s.includes('tokens/s') && !s.includes('so far'); }", arg=[before])


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def in_view(page, selector: str) -> bool:
    """Whether the element's whole box is inside the window, as the page is scrolled now."""
    box, window = page.locator(selector).bounding_box(), page.viewport_size
    return (box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= window["width"]
            and box["y"] + box["height"] <= window["height"])


# the token boxes (prompt, tokens, masks) that reach outside their panel's box, as [panel, text, side]
OUTSIDE = """(selector) => {
  const out = [];
  document.querySelectorAll(selector).forEach((panel, k) => {
    const box = panel.getBoundingClientRect();
    panel.querySelectorAll('.dlm-prompt, .dlm-token, .dlm-mask').forEach(token => {
      for (const r of token.getClientRects()) {
        if (r.left < box.left - 1) out.push([k, token.textContent, 'left']);
        if (r.right > box.right + 1) out.push([k, token.textContent, 'right']);
        if (r.top < box.top - 1 || r.bottom > box.bottom + 1) out.push([k, token.textContent, 'top/bottom']);
      }
    });
  });
  return out;
}"""
# the pairs of panels whose boxes overlap
OVERLAPS = """(selector) => {
  const boxes = Array.from(document.querySelectorAll(selector), el => el.getBoundingClientRect());
  const apart = (a, b) => a.right <= b.left + 1 || b.right <= a.left + 1 ||
                          a.bottom <= b.top + 1 || b.bottom <= a.top + 1;
  return boxes.flatMap((a, i) => boxes.slice(i + 1).flatMap((b, j) => apart(a, b) ? [] : [[i, i + 1 + j]]));
}"""


def assert_tokens_inside(page, panels: str, count: int) -> None:
    """`count` panels (`panels` selects them), no token reaching outside its panel, no two panels overlapping."""
    assert page.locator(panels).count() == count
    assert page.evaluate(OUTSIDE, panels) == [], page.evaluate(OUTSIDE, panels)[:5]
    assert page.evaluate(OVERLAPS, panels) == []


def font_px(page, selector: str) -> float:
    return page.evaluate(f"parseFloat(getComputedStyle(document.querySelector('{selector}')).fontSize)")


def test_first_paint_shows_the_example_before_any_model_runs(page):
    page.wait_for_selector(COLOURED)
    assert page.locator(COLOURED).count() == 64 and masks(page) == 0
    assert "mdlm-tiny" in page.locator("#stats").inner_text()
    page.wait_for_selector("#heatmap .js-plotly-plot")


def test_denoise_streams_colours_scrubs_plays_and_steps_by_keyboard(page):
    for elem_id, value in (("gen_length", 16), ("steps", 16), ("block_length", 16)):
        set_number(page, elem_id, value)
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#tokens span.dlm-mask').length > 0")  # a streamed canvas
    page.wait_for_function("document.querySelector('#stats').innerText.includes('16 frames') || "
                           "document.querySelector('#stats').innerText.includes('17 frames')")
    page.wait_for_function(f"document.querySelectorAll(\"{COLOURED}\").length === 16")
    assert masks(page) == 0
    set_number(page, "step", 4)  # replay frame 4: four tokens committed, twelve still masked
    page.wait_for_function("document.querySelectorAll('#tokens span.dlm-mask').length === 12")
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("ArrowRight")
    page.wait_for_function("document.querySelectorAll('#tokens span.dlm-mask').length === 11")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("document.querySelectorAll('#tokens span.dlm-mask').length === 12")
    page.click("#play")  # replays to the end without the model
    page.wait_for_function("document.querySelectorAll('#tokens span.dlm-mask').length === 0")
    page.get_by_label("commit_step").check()
    page.wait_for_function("document.querySelector('#tokens span.dlm-token').title.includes('commit_step')")
    screenshot(page, "denoise")


def test_n_runs_show_small_multiples(page):
    for elem_id, value in (("gen_length", 16), ("steps", 16), ("block_length", 16), ("n_runs", 3)):
        set_number(page, elem_id, value)
    set_number(page, "temperature", 1)
    generate(page)
    page.wait_for_selector("#multiples .dlm-multiple")
    assert page.locator("#multiples .dlm-multiple").count() == 3
    assert "distinct outputs" in page.locator("#multiples").inner_text()


def test_bad_input_shows_its_message_and_the_page_stays_usable(page):
    set_number(page, "gen_length", 30)
    set_number(page, "block_length", 7)
    page.click("#generate")
    page.wait_for_selector("#error .dlm-error")
    assert "block_length" in page.locator("#error").inner_text()
    screenshot(page, "error")
    set_number(page, "block_length", 30)
    generate(page)
    page.wait_for_function("!document.querySelector('#error .dlm-error')")  # the run's outputs clear the box
    page.wait_for_function(f"document.querySelectorAll(\"{COLOURED}\").length === 30")


def test_compare_tab_runs_side_by_side_and_the_progress_slider_moves_all(page):
    open_tab(page, "Compare")
    page.wait_for_selector("#side_by_side .dlm-panel")  # the precomputed example comparison
    page.wait_for_function("document.querySelectorAll('#c_table tbody tr').length === 4")  # the example: 4 runs
    set_number(page, "c_length", 16)
    set_number(page, "c_steps", 16)
    page.click("#c_run")
    page.wait_for_function("document.querySelectorAll('#c_table tbody tr').length === 3")  # finished: 3 runs
    page.wait_for_function("document.querySelectorAll('#side_by_side .dlm-panel').length === 3")
    set_number(page, "progress", 0.5)
    page.wait_for_function("document.querySelectorAll('#side_by_side span.dlm-mask').length > 0")
    page.wait_for_selector("#progress_plot .js-plotly-plot")
    screenshot(page, "compare")


def test_latent_tab_renders_and_a_click_jumps_the_scrubber(page):
    for elem_id, value in (("gen_length", 16), ("steps", 16), ("block_length", 16)):
        set_number(page, elem_id, value)
    generate(page)
    open_tab(page, "Latent space")
    page.wait_for_selector("#latent .js-plotly-plot .scatterlayer .point")
    assert page.locator("#latent_step input[type=number]").input_value() == "16"
    x, y = page.evaluate("""() => {  // an early frame's marker with no other frame's marker within 15 px
        const div = document.querySelector('#latent .js-plotly-plot');
        const points = [];
        div.querySelectorAll('.scatterlayer .trace').forEach((layer, t) => {
            const custom = div._fullData[t].customdata || [];
            layer.querySelectorAll('.point').forEach((node, i) => {
                const box = node.getBoundingClientRect();
                if (custom[i]) points.push([box.x + box.width / 2, box.y + box.height / 2, custom[i][0]]);
            });
        });
        const alone = p => points.every(q => q[2] === p[2] || Math.hypot(p[0] - q[0], p[1] - q[1]) > 15);
        const pick = points.find(p => p[2] > 0 && p[2] < 10 && alone(p));
        return [pick[0], pick[1]];
    }""")
    page.mouse.move(x, y)
    page.wait_for_selector("#latent .hoverlayer .hovertext")  # the step's text previews on hover
    page.mouse.click(x, y)
    page.wait_for_function("document.querySelector('#latent_step input[type=number]').value !== '16'")
    assert masks(page, "#latent_tokens") > 0  # the canvas of an earlier step
    screenshot(page, "latent")


def test_edit_tab_picks_a_candidate_and_continues(page):
    for elem_id, value in (("gen_length", 16), ("steps", 16), ("block_length", 16)):
        set_number(page, elem_id, value)
    generate(page)
    set_number(page, "step", 6)
    page.wait_for_function("document.querySelectorAll('#tokens span.dlm-mask').length === 10")
    open_tab(page, "Edit and infill")
    set_number(page, "position", 12)
    page.click("#show_candidates")
    page.wait_for_selector("#candidates input[type=radio]")
    page.locator("#candidates input[type=radio]").nth(2).check()
    page.click("#resume")
    page.wait_for_function("document.querySelector('#edit_tokens') && "
                           "document.querySelectorAll('#edit_tokens span.dlm-mask').length === 0 && "
                           "document.querySelectorAll('#edit_tokens span.dlm-token').length === 16")
    # one numbering, the scrubber's: the edited canvas counts as a step of its own, no separate "frame" count
    page.wait_for_function("document.querySelector('#step input[type=number]').value !== '6'")
    last = page.locator("#step input[type=number]").input_value()
    assert page.locator("#edit_tokens .dlm-step").inner_text() == f"step {last} of {last}"
    assert "frame" not in page.locator("#edit_tokens").inner_text()
    screenshot(page, "edit")
    page.click("#rewind")
    page.wait_for_timeout(300)
    assert page.locator("#edit_error .dlm-error").count() == 0


def test_export_tab_downloads_a_trace_and_loads_it_back(page, tmp_path):
    for elem_id, value in (("gen_length", 8), ("steps", 8), ("block_length", 8)):
        set_number(page, elem_id, value)
    generate(page)
    open_tab(page, "Export")
    page.click("#export_json")
    link = page.locator("#download a").first
    link.wait_for()
    with page.expect_download() as info:
        link.click()
    target = tmp_path / "trace.json"
    info.value.save_as(target)
    assert '"schema": 1' in target.read_text()
    page.set_input_files("#upload input[type=file]", str(target))
    page.wait_for_function("document.querySelector('#stats').innerText.includes('9 frames')")
    screenshot(page, "export")



def test_picking_a_sampler_shows_the_knobs_it_takes(page):
    """The knobs come from the sampler registry: Dream's own appear, LLaDA's blocks and cache go."""
    page.get_by_text("more knobs").click()
    page.wait_for_selector("#cache", state="visible")
    assert page.locator("#knob_top_p").is_visible() and not page.locator("#knob_alg").is_visible()
    page.locator("#sampler").get_by_label("dream", exact=True).check()
    page.wait_for_selector("#knob_alg", state="visible")
    assert not page.locator("#block_length").is_visible() and not page.locator("#cache").is_visible()
    assert page.locator("#knob_top_p input, #knob_top_p textarea").get_attribute("placeholder") == "default: 0.95"


def test_a_released_folder_gets_the_chat_template_box_and_shows_the_wrapped_prompt(page):
    box = page.locator("#chat_template")
    assert not box.is_visible()  # mdlm-tiny has no chat template
    page.locator("#checkpoint input").click()
    page.locator("#checkpoint input").fill("LLaDA-chat")
    page.get_by_role("option", name="released/LLaDA-chat").click()  # pick it from the filtered list
    page.wait_for_selector("#chat_template input:checked")
    for elem_id, value in (("gen_length", 8), ("steps", 8), ("block_length", 8)):
        set_number(page, elem_id, value)
    page.locator("#prompt textarea").fill("hi")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#stats').innerText.includes('LLaDA-chat (mdlm)')")
    page.locator("#stats summary").click()  # the collapsed note: the prompt the model got
    page.wait_for_function("document.querySelector('#stats details pre').innerText.includes('<|start|>user')")
    screenshot(page, "released-chat")


def hostile_traces(folder: Path) -> tuple[Path, Path]:
    """(a trace that passes every check but carries a script in each of its strings, one whose step is a script)."""
    import json

    from explorer.page.examples import EXAMPLES_DIR

    payload = '<img src=x onerror="window.__pwned=1">'
    data = json.loads((EXAMPLES_DIR / "mdlm-tiny.json").read_text())
    data["model"]["name"] = data["model"]["checkpoint"] = data["sampler"]["name"] = payload
    data["prompt_text"] = data["text"] = data["stats"]["stop"] = payload
    data["token_strings"] = {k: payload for k in data["token_strings"]}
    for frame in data["frames"]:
        frame["cache"] = payload
    valid = folder / "hostile.json"
    valid.write_text(json.dumps(data))
    data["frames"][3]["step"] = payload
    invalid = folder / "hostile-step.json"
    invalid.write_text(json.dumps(data))
    return valid, invalid


def test_a_hostile_trace_runs_no_script_and_the_page_stays_usable(page, tmp_path):
    valid, invalid = hostile_traces(tmp_path)
    open_tab(page, "Export")
    page.set_input_files("#upload input[type=file]", str(invalid))  # refused, its field named
    page.wait_for_selector("#export_error .dlm-error")
    assert "frames[3].step must be an int, got a string" in page.locator("#export_error").inner_text()
    page.click("#upload button[aria-label=Clear]")
    page.set_input_files("#upload input[type=file]", str(valid))  # loaded: every payload shown as text
    page.wait_for_function("document.querySelector('#stats').innerText.includes('onerror=\"window.__pwned=1\"')")
    assert page.locator("#export_error .dlm-error").count() == 0
    open_tab(page, "Edit and infill")
    page.wait_for_selector("#edit_tokens .dlm-paused")
    open_tab(page, "Denoise")
    set_number(page, "step", 5)  # replay the loaded frames
    page.wait_for_function("document.querySelectorAll('#tokens span.dlm-mask').length === 59")
    assert page.locator("#tokens").inner_text().count('onerror="window.__pwned=1"') == 6  # the prompt, 5 tokens
    page.wait_for_timeout(500)
    assert page.evaluate("window.__pwned") is None and page.locator("img[src=x]").count() == 0
    for elem_id, value in (("gen_length", 8), ("steps", 8), ("block_length", 8)):
        set_number(page, elem_id, value)
    generate(page)  # the page still runs models
    page.wait_for_function(f"document.querySelectorAll(\"{COLOURED}\").length === 8")
    assert page.evaluate("window.__pwned") is None


def test_generate_stop_and_the_canvas_are_in_view_together_without_scrolling(sized_page):
    """Generate / Stop sit above the knobs and the canvas's height is capped: on a laptop and a projector both are
    on screen as the page opens and after a default run; scrolled down to the knobs, Generate stays (sticky)."""
    page = sized_page
    assert page.evaluate("window.scrollY") == 0
    for selector in ("#generate", "#stop", "#tokens"):
        assert in_view(page, selector), (selector, page.locator(selector).bounding_box())
    assert page.locator("#tokens").bounding_box()["height"] >= 120
    generate(page)  # the default knobs: 64 tokens
    assert in_view(page, "#generate") and in_view(page, "#tokens")
    page.locator("#temperature").scroll_into_view_if_needed()
    page.mouse.wheel(0, 600)
    page.wait_for_function("window.scrollY > 0")
    assert in_view(page, "#generate"), page.locator("#generate").bounding_box()


def test_token_rows_wrap_inside_their_panels_and_panels_do_not_overlap(sized_page):
    """Canvas, N = 4 small multiples and the Compare panels: every token box inside its panel, masked rows too."""
    page = sized_page
    for elem_id, value in (("gen_length", 48), ("steps", 8), ("block_length", 48), ("n_runs", 4)):
        set_number(page, elem_id, value)
    generate(page)
    page.wait_for_function("document.querySelectorAll('#multiples .dlm-multiple').length === 4")
    for step in (8, 1):  # the finished run; rows of masked tokens
        set_number(page, "step", step)
        page.wait_for_function(f"document.querySelectorAll('#tokens span.dlm-mask').length === {48 - 6 * step}")
        assert_tokens_inside(page, "#tokens", 1)
        assert_tokens_inside(page, "#multiples .dlm-multiple", 4)
    open_tab(page, "Compare")
    page.wait_for_selector("#side_by_side .dlm-panel")
    assert_tokens_inside(page, "#side_by_side .dlm-panel", 4)  # the precomputed comparison, four runs


def test_the_notebook_widgets_canvas_wraps_inside_a_narrow_output(browser):
    """The scrubber widget's canvas in a box as narrow as a notebook output's flex row of ipywidgets' default
    width (300 px): every token inside it, the legend above the tokens."""
    from explorer.page.examples import load_examples
    from explorer.viz.widgets import scrubber

    trace = load_examples()["mdlm-tiny"]
    box = scrubber(trace)
    box.children[0].children[0].value = 3  # the scrubber: rows of masked tokens
    page = browser.new_page(viewport={"width": 800, "height": 600})
    try:
        page.set_content('<div style="display:flex;width:300px"><div id="output" style="flex:1 1 auto">'
                         f"{box.children[1].value}</div></div>")
        assert page.locator("#output .dlm-mask").count() > 40
        assert_tokens_inside(page, "#output", 1)
        legend, tokens = (page.locator(f"#output {part}").bounding_box() for part in (".dlm-legend", ".dlm-tokens"))
        assert legend["y"] + legend["height"] <= tokens["y"] + 1
    finally:
        page.close()


def test_the_canvas_legend_follows_colour_by(page):
    legend = page.locator("#tokens .dlm-legend")
    assert legend.get_attribute("data-color-by") == "confidence" and "masked" in legend.inner_text()
    assert in_view(page, "#tokens .dlm-legend")
    page.get_by_label("commit_step").check()
    page.wait_for_selector("#tokens .dlm-legend[data-color-by=commit_step]")
    assert "commit step" in legend.inner_text() and "masked" in legend.inner_text()


def test_presentation_mode_enlarges_the_canvas_and_hides_the_rarely_used_knobs(browser, app_url):
    """At 1920 x 1080 the presentation box enlarges the tokens, hides the rarely used controls and the explanations,
    and keeps Generate and the (larger) canvas on screen; its screenshot is docs/page.md's."""
    page = open_page(browser, app_url, *SIZES["projector"])
    try:
        rare = ("#n_runs", "#fps", "#intro", ".dlm-learn")
        normal, width = font_px(page, "#tokens .dlm-tokens"), page.locator("#tokens").bounding_box()["width"]
        assert all(page.locator(s).first.is_visible() for s in rare) and page.get_by_text("more knobs").is_visible()
        page.locator("#presentation input").check()
        page.wait_for_function("document.body.classList.contains('dlm-present')")
        assert font_px(page, "#tokens .dlm-tokens") >= 1.5 * normal
        assert page.locator("#tokens").bounding_box()["width"] > width
        assert not any(page.locator(s).first.is_visible() for s in rare)
        assert not page.get_by_text("more knobs").is_visible()
        assert page.locator("#prompt").is_visible() and page.locator("#steps").is_visible()
        assert in_view(page, "#generate") and in_view(page, "#tokens")
        screenshot(page, "presentation", full_page=False)
        page.locator("#presentation input").uncheck()
        page.wait_for_function("!document.body.classList.contains('dlm-present')")
        assert font_px(page, "#tokens .dlm-tokens") == normal and page.locator("#n_runs").is_visible()
    finally:
        page.close()


# --- issue 20 (points 7, 8): upload errors where the upload happened; knob ranges that follow the model --------------



def pick_checkpoint(page, name: str) -> None:
    page.locator("#checkpoint input").click()
    page.locator("#checkpoint input").fill(name)
    page.get_by_role("option", name=name, exact=True).click()


def slider_is(page, elem_id: str, attribute: str, value: str) -> None:
    """Wait until the number box of a slider has `attribute` (max, min, step, value) equal to `value`."""
    page.wait_for_function("([id, name, value]) => { const box = document.querySelector(`#${id} input[type=number]`);"
                           " return box && String(box[name]) === value; }", arg=[elem_id, attribute, value])


def test_the_gen_length_slider_stops_at_the_checkpoints_context(sized_page):
    page = sized_page
    slider_is(page, "gen_length", "max", "128")  # mdlm-tiny: a 128-token context (the slider used to go to 256)
    assert page.locator("#gen_length input[type=range]").get_attribute("max") == "128"
    set_number(page, "gen_length", 100000)
    slider_is(page, "gen_length", "value", "128")  # the box keeps to the checkpoint's range
    page.wait_for_timeout(1500)  # the slider's release event has answered: no raw "greater than maximum" toast
    assert not any("greater than maximum" in toast for toast in page.locator(".toast-body").all_inner_texts())
    pick_checkpoint(page, "bd3lm-tiny-b16")  # block diffusion slides its window past its context
    slider_is(page, "gen_length", "max", "256")
    slider_is(page, "block_length", "value", "16")  # the block size it was trained with
    pick_checkpoint(page, "calm-tiny-k4")  # whole chunks of K = 4 tokens; temperature in [0, 1]
    slider_is(page, "gen_length", "step", "4")
    slider_is(page, "gen_length", "max", "128")
    slider_is(page, "temperature", "max", "1")
    assert page.locator("#temperature input[type=number]").get_attribute("min") == "0"
    page.wait_for_function("document.querySelector('#temperature').innerText.includes('not 0: greedy decoding "
                           "needs likelihoods')")  # its help says what 0 would mean
    pick_checkpoint(page, "cdcd-tiny")
    slider_is(page, "steps", "value", "400")
    pick_checkpoint(page, "ar-tiny")  # cdcd's settings do not carry over
    slider_is(page, "temperature", "value", "0.7")  # ar starts at its SHOWCASE temperature (cdcd: 0.6)
    page.wait_for_selector("#steps", state="hidden")  # ar: one step per token
    screenshot(page, f"ranges-{page.viewport_size['width']}")


def test_a_bad_upload_is_named_on_the_export_tab_and_a_good_one_fills_the_prompt(sized_page, tmp_path):
    import explorer

    page = sized_page
    bad = tmp_path / "broken.json"
    bad.write_text('{"schema": 1, "frames": [')
    open_tab(page, "Export")
    page.set_input_files("#upload input[type=file]", str(bad))
    page.wait_for_selector("#export_error .dlm-error")
    said = page.locator("#export_error").inner_text()
    assert "could not load the trace: broken.json is not a trace JSON file" in said, said
    assert "/" not in said.split("broken.json")[0], said  # the base name alone: no upload folder
    open_tab(page, "Denoise")
    page.wait_for_selector("#tokens span.dlm-token")
    assert page.locator("#error .dlm-error").count() == 0  # the Denoise tab keeps the run it shows
    good = tmp_path / "juliet.json"
    explorer.generate(explorer.load("mdlm-tiny"), "JULIET:", gen_length=8, steps=8, record="full").save(good)
    open_tab(page, "Export")
    page.click("#upload button[aria-label=Clear]")
    page.set_input_files("#upload input[type=file]", str(good))
    page.wait_for_function("document.querySelector('#prompt textarea').value === 'JULIET:'")
    assert page.locator("#export_error .dlm-error").count() == 0


def test_a_click_on_a_token_of_the_edit_canvas_picks_its_position(page):
    """Issue 20.11: a click picks the position (typing still works) and outlines it; the canvas names its step as
    the scrubber numbers it."""
    set_number(page, "step", 20)  # the Edit tab's canvas is the scrubber's frame of the first-paint example
    open_tab(page, "Edit and infill")
    page.wait_for_selector("#edit_tokens span.dlm-token[data-pos]")
    assert page.locator("#edit_tokens .dlm-step").inner_text().startswith("step 20 of ")
    token = page.locator("#edit_tokens span.dlm-token[data-pos]").nth(3)
    pos = token.get_attribute("data-pos")
    token.click()
    page.wait_for_function(f"document.querySelector('#position input[type=number]').value === '{pos}'")
    page.wait_for_selector(f"#edit_tokens span[data-pos='{pos}'][data-selected]")
    assert f"position {pos} picked" in page.locator("#edit_tokens .dlm-paused").inner_text()
    set_number(page, "position", 0)  # typing still picks
    page.wait_for_selector("#edit_tokens span[data-pos='0'][data-selected]")


# --- issue 20 (points 1, 6, 8, 10, 12) at both window sizes ---------------------------------------------------------

def no_error_shown(page) -> None:
    """No Gradio error badge over an output and no error toast (a run's own warnings may toast): what a person would
    see go wrong."""
    toasts = [toast for toast in page.locator(".toast-body").all_inner_texts() if "warning" not in toast.lower()[:20]]
    badges = page.locator("[data-testid=status-tracker]").filter(has_text="Error").all_inner_texts()
    assert not toasts and not badges, (toasts, badges)


def test_the_first_view_plays_steps_recolours_and_picks_examples_like_a_run_of_ones_own(sized_page):
    """Point 1: the example a visitor meets first plays, pauses, steps by button and key and switches colouring with
    no error badge or toast; point 12: the picker offers examples with other prompts, and one fills the prompt."""
    page = sized_page
    last = int(page.locator("#step input[type=number]").input_value())
    assert last > 1 and page.locator("#step input[type=range]").get_attribute("max") == str(last)
    set_number(page, "step", 2)
    page.click("#play")
    page.wait_for_function("Number(document.querySelector('#step input[type=number]').value) > 4")
    page.click("#pause")
    page.click("#back")
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("ArrowRight")
    page.get_by_label("commit_step").check()
    page.wait_for_function("document.querySelector('#tokens span.dlm-token').title.includes('commit_step')")
    no_error_shown(page)
    page.locator("#example input").click()
    options = page.get_by_role("option").all_inner_texts()
    assert len({option.split(" · ")[0] for option in options}) >= 3, options  # varied prompts
    page.get_by_role("option", name="ROSALIND. · mdlm-tiny · low_confidence").click()
    page.wait_for_function("document.querySelector('#prompt textarea').value.startsWith('ROSALIND.')")
    page.wait_for_function(f"{STATS}?.includes('mdlm-tiny')")
    assert masks(page) == 0
    no_error_shown(page)


@pytest.mark.parametrize("size", list(SIZES))
def test_a_runs_notes_reach_only_its_own_users_page(browser, app_url, size):
    """Point 6: user A's run notes (bd3lm at a block size it was not trained with) show on A's page and never on
    the page of user B, who recolours and runs at the same time."""
    first, second = (open_page(browser, app_url, *SIZES[size]) for _ in range(2))
    try:
        pick_checkpoint(first, "bd3lm-tiny-b16")
        slider_is(first, "block_length", "value", "16")
        for elem_id, value in (("gen_length", 16), ("steps", 8), ("block_length", 8)):
            set_number(first, elem_id, value)
        first.click("#generate")
        second.get_by_label("commit_step").check()
        generate(second)
        first.wait_for_function("document.querySelector('#error')?.innerText.includes('block_length 8 differs')")
        assert "differs" not in second.locator("#error").inner_text()
        assert not any("differs" in toast for toast in second.locator(".toast-body").all_inner_texts())
        assert second.locator("#error .dlm-warning").count() == 0
        no_error_shown(first)
        no_error_shown(second)
    finally:
        first.close()
        second.close()


def test_the_latent_tab_explains_itself_then_follows_chosen_positions(sized_page):
    """Point 10: before a run of one's own the Latent tab says in plain words what will appear; after a default
    run its paths are drawn and a few positions can be followed, the rest faded."""
    page = sized_page
    open_tab(page, "Latent space")
    page.wait_for_function("document.querySelector('#latent')?.innerText.includes('saved without its hidden "
                           "states')")
    open_tab(page, "Denoise")
    generate(page)  # the default knobs: 64 tokens, 64 steps
    open_tab(page, "Latent space")
    page.wait_for_selector("#latent .js-plotly-plot .scatterlayer .point")
    page.locator("#follow textarea, #follow input").first.fill("3, 10-12")
    page.locator("#follow textarea, #follow input").first.press("Enter")
    page.wait_for_function("document.querySelector('#latent')?.innerText.includes('other positions')")
    page.locator("#follow textarea, #follow input").first.fill("3-")
    page.locator("#follow textarea, #follow input").first.press("Enter")
    page.wait_for_function("document.querySelector('#latent_error')?.innerText.includes('follow positions must')")
    no_error_shown(page)
    screenshot(page, f"latent-follow-{page.viewport_size['width']}")
