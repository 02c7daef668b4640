"""Trace files are hostile until checked: every malformed one raises a ValueError naming the field, and the traces
this project writes (the page's examples, the CLI's `sample --trace`) still load."""

from __future__ import annotations

import copy
import json

import pytest

from explorer.page.examples import EXAMPLES_DIR
from explorer.sampling.trace import MAX_DEPTH, Trace, check_trace_data


@pytest.fixture(scope="module")
def good() -> dict:
    """A real trace's JSON form (the mdlm example: 65 frames of 64 positions)."""
    return json.loads((EXAMPLES_DIR / "mdlm-tiny.json").read_text())


def changed(data: dict, change) -> dict:
    data = copy.deepcopy(data)
    change(data)
    return data


def put(path: str, value):
    """A change setting `path` ("frames.3.tokens.5") of a trace's JSON form to `value`."""
    *parents, last = path.split(".")

    def change(data):
        for key in parents:
            data = data[int(key)] if isinstance(data, list) else data[key]
        data[int(last) if isinstance(data, list) else last] = value
    return change


@pytest.mark.parametrize("path, value, message", [
    ("frames.3.tokens.5", "7", r"frames\[3\]\.tokens\[5\] must be an int, got a string"),
    ("frames.3.tokens.5", None, r"frames\[3\]\.tokens\[5\] must be an int, got null"),
    ("frames.3.tokens.5", True, r"frames\[3\]\.tokens\[5\] must be an int, got a bool"),
    ("frames.3.tokens.5", 7.0, r"frames\[3\]\.tokens\[5\] must be an int, got a float"),
    ("frames.3.tokens.5", -1, r"frames\[3\]\.tokens\[5\] must be in \[0, 2147483647\], got -1"),
    ("frames.3.tokens", [3] * 63, r"frames\[3\]\.tokens must have 64 entries \(the canvas length\), got 63"),
    ("frames.3.tokens", None, r"frames\[3\]\.tokens must be a list, got null"),
    ("frames.3.step", "<img src=x onerror=alert(1)>", r"frames\[3\]\.step must be an int, got a string"),
    ("frames.3.nfe", 1.5, r"frames\[3\]\.nfe must be an int, got a float"),
    ("frames.3.committed", [64], r"frames\[3\]\.committed\[0\] must be in \[0, 63\], got 64"),
    ("frames.3.confidence", [0.5] * 3, r"frames\[3\]\.confidence must have 64 entries"),
    ("frames.3.confidence.2", "high", r"frames\[3\]\.confidence\[2\] must be a number or null, got a string"),
    ("frames.3.hidden", [[0.1, 0.2]] * 63 + [[0.1]], r"frames\[3\]\.hidden\[63\] must have 2 numbers"),
    ("frames.3.hidden", [None] * 2, r"frames\[3\]\.hidden must have 64 rows, got 2"),
    ("frames.3", [], r"frames\[3\] must be an object, got a list"),
    ("frames", [], r"frames must start with a frame object, got none"),
    ("frames", {}, r"frames must be a list, got an object"),
    ("stats", {}, r"stats\.nfe must be an int, got nothing \(the field is missing\)"),
    ("stats.wall_s", "fast", r"stats\.wall_s must be a number, got a string"),
    ("model", "mdlm-tiny", r"model must be an object, got a string"),
    ("model.name", 7, r"model\.name must be a string, got an int"),
    ("sampler.seed", "<b>0</b>", r"sampler\.seed must be an int, got a string"),
    ("sampler.steps", [64], r"sampler\.steps must be an int, got a list"),
    ("sampler.edits", [{"frame": 2, "at_step": 2, "tokens": {"x": 5}, "seed": None}],
     r"sampler\.edits\[0\]\.tokens key 'x' must be a token id"),
    ("prompt_ids.0", "ROMEO", r"prompt_ids\[0\] must be an int, got a string"),
    ("token_strings.7", 7, r"token_strings\[7\] must be a string, got an int"),
    ("text", None, r"text must be a string, got null"),
    ("schema", True, r"trace schema a bool is not supported"),
])
def test_a_malformed_field_is_named(good, path, value, message):
    with pytest.raises(ValueError, match=message):
        Trace.from_dict(changed(good, put(path, value)))


@pytest.mark.parametrize("data, message", [
    ([], "a trace must be a JSON object, got a list"),
    ("trace", "a trace must be a JSON object, got a string"),
    (None, "a trace must be a JSON object, got null"),
])
def test_a_trace_must_be_an_object(data, message):
    with pytest.raises(ValueError, match=message):
        Trace.from_dict(data)


def test_free_form_entries_nest_at_most_max_depth(good):
    deep = {}
    for _ in range(MAX_DEPTH + 1):
        deep = {"k": deep}
    with pytest.raises(ValueError, match=f"sampler nests deeper than {MAX_DEPTH} levels"):
        check_trace_data(changed(good, put("sampler.pinned", deep)))
    check_trace_data(changed(good, put("sampler.pinned", deep["k"]["k"])))  # shallower: fine


def test_load_checks_the_size_first_and_names_a_file_that_is_no_json(good, tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps(good))
    with pytest.raises(ValueError, match=r"big\.json has 0\.1 MB; a trace may have at most 0\.01 MB here"):
        Trace.load(path, max_bytes=10_000)
    assert len(Trace.load(path).frames) == 65
    for name, text, message in (("deep.json", "[" * 100_000 + "]" * 100_000, "it nests too deeply"),
                                ("broken.json", '{"schema": 1,', "is not a trace JSON file"),
                                ("latin.json", b"\xff\xfe{}", "is not a trace JSON file"),
                                ("list.json", "[1, 2]", r"list\.json is not a trace JSON file: a trace must be a JSON "
                                                        "object, got a list")):
        bad = tmp_path / name
        bad.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(ValueError, match=message):
            Trace.load(bad)


def test_token_ids_are_checked_against_the_vocabulary_when_it_is_known(good):
    assert Trace.from_dict(good, vocab_size=2048).final_tokens == good["frames"][-1]["tokens"]
    first = good["prompt_ids"][0]
    assert first > 999  # the example prompt's first token lies past a 1,000-token vocabulary
    with pytest.raises(ValueError, match=rf"prompt_ids\[0\] must be a token id in \[0, 999\] \(the vocabulary\), "
                                         rf"got {first}"):
        Trace.from_dict(good, vocab_size=1000)
    trace = Trace.from_dict(changed(good, put("frames.5.proposal.9", 5000)))
    with pytest.raises(ValueError, match=r"frames\[5\]\.proposal\[9\] must be a token id in \[0, 2047\]"):
        trace.check_token_ids(2048)


def test_every_shipped_example_loads():
    for path in sorted(EXAMPLES_DIR.glob("*.json")):
        trace = Trace.load(path)
        assert Trace.from_dict(trace.to_dict()).to_dict() == trace.to_dict(), path.name


@pytest.mark.parametrize("checkpoint, sampler, knobs", [
    ("mdlm-tiny", "low_confidence", ["--gen-length", "8", "--steps", "4"]),
    ("ar-tiny", "ar", ["--gen-length", "6"]),
    ("bd3lm-tiny-b4", "first_hitting", ["--gen-length", "8", "--steps", "4", "--block-length", "4"]),
    ("calm-tiny-k4", "batch", ["--gen-length", "8", "--temperature", "1.0"]),
])
def test_traces_written_by_the_cli_load(tmp_path, checkpoint, sampler, knobs):
    from explorer.cli import main

    path = tmp_path / f"{checkpoint}.json"
    assert main(["sample", "--checkpoint", checkpoint, "--sampler", sampler, "--prompt", "ROMEO:", *knobs,
                 "--record", "full", "--trace", str(path), "--no-animation"]) == 0
    trace = Trace.load(path, vocab_size=2048)
    assert trace.model["name"] == checkpoint and trace.to_dict() == json.loads(path.read_text())


def test_a_continuous_diffusion_trace_with_latents_loads(tmp_path):
    """cdcd's frames carry latents and entropies (written through the library: `sample` fails on cdcd today)."""
    import torch

    import explorer

    with torch.no_grad():
        trace = explorer.generate(explorer.load("cdcd-tiny"), "ROMEO:", "euler", gen_length=6, steps=4, record="full")
    loaded = Trace.load(trace.save(tmp_path / "cdcd.json"), vocab_size=2048)
    assert loaded.to_dict() == trace.to_dict() and len(loaded.frames[-1].latent) == 6
