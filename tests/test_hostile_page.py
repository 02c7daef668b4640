"""The page's defences without Gradio (explorer/page's rules, explorer/viz): the memory budget over sessions, runs kept
packed, file names from traces, every file a checkpoint folder would read checked inside the roots, no server path in
a message, and trace values escaped in the compare views."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer.page.folders import SHARD_INDEX, checkpoint_label, public, resolve_checkpoint, safe_filename
from explorer.page.memory import LiveRuns, SessionMemory, pack_frame, trace_bytes, unpacked
from explorer.sampling import Trace, generate
from explorer.viz.compare import side_by_side_html, small_multiples_html

PROMPT = "ROMEO:"
PAYLOAD = '<img src=x onerror="window.__pwned=1">'


# --- A. memory: one budget over all sessions, least recently used dropped first --------------------------------

class Holder:
    """Stands in for a page session: counts how often it was dropped."""

    def __init__(self):
        self.drops = 0

    def drop(self):
        self.drops += 1


def test_the_budget_drops_the_least_recently_used_sessions_first():
    memory = SessionMemory(budget_mb=1.0)
    a, b, c = Holder(), Holder(), Holder()
    assert memory.keep("a", a, 400_000) == [] and memory.keep("b", b, 400_000) == []
    memory.touch("a")  # a was used after b: b is now the least recently used
    assert memory.keep("c", c, 400_000) == [b]
    assert (a.drops, b.drops, c.drops) == (0, 1, 0) and list(memory.sessions) == ["a", "c"]
    assert memory.total == 800_000
    assert memory.keep("a", a, 900_000) == [c]  # a's runs grew: the others make room, never a itself
    assert list(memory.sessions) == ["a"] and c.drops == 1


def test_a_session_alone_over_the_budget_keeps_its_run():
    memory = SessionMemory(budget_mb=0.001)
    me = Holder()
    assert memory.keep("me", me, 5_000_000) == [] and me.drops == 0 and memory.total == 5_000_000


def test_a_closed_session_is_forgotten_and_dropped_at_once():
    memory = SessionMemory(budget_mb=10)
    gone, stays = Holder(), Holder()
    memory.keep("gone", gone, 1_000)
    memory.keep("stays", stays, 2_000)
    memory.forget("gone")
    memory.forget("never-seen")  # a tab that never ran anything
    assert gone.drops == 1 and stays.drops == 0 and list(memory.sessions) == ["stays"] and memory.total == 2_000


def test_packed_frames_hold_a_fraction_of_the_bytes_and_unpack_to_the_same_rows(tiny_mdlm):
    trace = generate(tiny_mdlm, PROMPT, "low_confidence", 0, gen_length=8, steps=4, temperature=1.0, record="full")
    lists = trace_bytes(trace)
    original = trace.to_dict()
    for frame in trace.frames:
        pack_frame(frame)
    assert trace.frames[0].hidden == [None] * 8  # no state computed yet: nothing to pack
    assert trace.frames[-1].hidden.dtype == np.float16 and trace.frames[-1].hidden.shape == (8, 32)
    hidden = sum(len(row) * 32 for f in original["frames"] for row in f["hidden"] if row is not None)
    assert lists - trace_bytes(trace) > 0.8 * hidden  # 2 bytes instead of 32 per number
    back = unpacked(trace).to_dict()
    for old, new in zip(original["frames"], back["frames"]):
        assert {k: v for k, v in old.items() if k != "hidden"} == {k: v for k, v in new.items() if k != "hidden"}
        for row, again in zip(old["hidden"], new["hidden"]):
            assert (row is None) == (again is None)
            assert row is None or np.allclose(row, again, atol=2e-3, rtol=2e-3)
    assert isinstance(trace.frames[-1].hidden, np.ndarray)  # unpacking copies: the kept trace stays packed


def test_live_runs_keep_their_frames_packed(tiny_mdlm, tiny_calm_checkpoints):
    import explorer

    live = LiveRuns(tiny_mdlm, PROMPT, "low_confidence", 0, 2, {"gen_length": 8, "steps": 4, "block_length": 8,
                                                                 "temperature": 1.0})
    list(live)
    assert all(isinstance(t.frames[-1].hidden, np.ndarray) for t in live.traces)
    calm = explorer.load(tiny_calm_checkpoints / "calm-tiny-k2")
    live = LiveRuns(calm, PROMPT, "batch", 0, 1, {"gen_length": 4, "temperature": 1.0, "n_candidates": 5})
    list(live)
    last = live.traces[0].frames[-1]
    assert last.samples.dtype == np.float32 and last.latent.shape == (1, 8)


# --- B. trace values are escaped in the compare views ----------------------------------------------------------

def hostile(trace: Trace) -> Trace:
    """`trace` with a script payload wherever a value could reach the HTML (bypassing Trace.load's checks)."""
    trace.frames[-1].step, trace.frames[-1].nfe = PAYLOAD, PAYLOAD
    trace.stats["nfe"], trace.sampler["seed"] = PAYLOAD, PAYLOAD
    trace.model["name"] = trace.sampler["name"] = PAYLOAD
    return trace


def test_compare_views_escape_every_trace_value(tiny_mdlm):
    runs = [hostile(generate(tiny_mdlm, PROMPT, "low_confidence", seed, gen_length=8, steps=4, temperature=1.0))
            for seed in (0, 1)]
    for page in (side_by_side_html(runs, 1.0), small_multiples_html(runs)):
        assert "<img" not in page and "&lt;img src=x onerror=" in page


# --- C. file names from a trace ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("mdlm-tiny-low_confidence", "mdlm-tiny-low_confidence"),
    ("../../etc/passwd", "etc_passwd"),
    ("/tmp/x y.json", "tmp_x_y.json"),
    ("..", "trace"),
    ("", "trace"),
    (PAYLOAD, "img_src_x_onerror_window.__pwned_1"),
    ("a" * 200, "a" * 80),
])
def test_file_names_from_a_trace_are_sanitised(name, expected):
    assert safe_filename(name) == expected


# --- E. every file a checkpoint folder would read lies inside the roots --------------------------------------------

@pytest.fixture
def root(tmp_path, tiny_mdlm) -> Path:
    """An allowed root `models` holding a checkpoint `good`; a folder `secret` outside it."""
    root = tmp_path / "models"
    tiny_mdlm.save_pretrained(root / "good", dtype=torch.float32)
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "weights.safetensors").write_bytes((root / "good" / "model.safetensors").read_bytes())
    (tmp_path / "secret" / "tokenizer.json").write_text("{}")
    return root


def copy_folder(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    for file in (root / "good").iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    return folder


def refused(choice: str, root: Path, what: str) -> None:
    """resolve_checkpoint refuses `choice` with a message starting with `what`, which names files relative to the
    root's parent only."""
    with pytest.raises(ValueError, match="lies outside the allowed roots") as info:
        resolve_checkpoint(choice, [root])
    message = str(info.value)
    assert message.startswith(f"{what} lies outside the allowed roots (models)"), message
    assert str(root.parent) not in message, message


def test_a_weights_file_linked_out_of_the_root_is_refused(root, tmp_path):
    folder = copy_folder(root, "linked")
    (folder / "model.safetensors").unlink()
    os.symlink(tmp_path / "secret" / "weights.safetensors", folder / "model.safetensors")
    refused("models/linked", root, "checkpoint file models/linked/model.safetensors")
    refused(str(folder), root, "checkpoint file models/linked/model.safetensors")


def test_a_tokenizer_linked_out_of_the_root_is_refused(root, tmp_path):
    folder = copy_folder(root, "tok")
    (folder / "tokenizer.json").unlink()
    os.symlink(tmp_path / "secret" / "tokenizer.json", folder / "tokenizer.json")
    refused("models/tok", root, "checkpoint file models/tok/tokenizer.json")


@pytest.mark.parametrize("shard", ["ABSOLUTE", "../../secret/weights.safetensors",
                                   "sub/../../../secret/weights.safetensors"])
def test_a_shard_index_naming_a_file_out_of_the_root_is_refused(root, tmp_path, shard):
    folder = copy_folder(root, "sharded")
    (folder / "model.safetensors").unlink()
    absolute = shard == "ABSOLUTE"
    shard = str(tmp_path / "secret" / "weights.safetensors") if absolute else shard
    (folder / SHARD_INDEX).write_text(json.dumps({"weight_map": {"backbone.embed.weight": shard}}))
    shown = "'weights.safetensors' (by an absolute path)" if absolute else repr(shard)
    refused("models/sharded", root, f"models/sharded/{SHARD_INDEX} names shard {shown}, which")


def test_a_shard_index_inside_the_root_is_fine_and_a_broken_one_is_named(root):
    folder = copy_folder(root, "sharded")
    (folder / "model.safetensors").rename(folder / "part-1.safetensors")
    (folder / SHARD_INDEX).write_text(json.dumps({"weight_map": {"backbone.embed.weight": "part-1.safetensors"}}))
    assert resolve_checkpoint("models/sharded", [root]) == folder.resolve()
    (folder / SHARD_INDEX).write_text(json.dumps({"weights": {}}))
    with pytest.raises(ValueError, match=f"models/sharded/{SHARD_INDEX} is not a shard index"):
        resolve_checkpoint("models/sharded", [root])


def test_a_checkpoint_inside_the_root_resolves(root):
    assert resolve_checkpoint("models/good", [root]) == (root / "good").resolve()


# --- F. no server path in what users see ---------------------------------------------------------------------------

def test_messages_name_roots_and_files_without_the_servers_paths(root, tmp_path):
    with pytest.raises(ValueError, match=r"outside the allowed roots \(models\)") as info:
        resolve_checkpoint(str(tmp_path / "secret"), [root])
    assert str(root) not in str(info.value).replace(str(tmp_path / "secret"), "")  # the choice as typed is echoed
    inside = f"could not read {root.resolve()}/good/config.json: bad"
    assert public(inside, [root]) == "could not read models/good/config.json: bad"
    upload = f"{os.environ.get('TMPDIR', '/tmp')}/gradio/3f2a9c/evil.json is not a trace JSON file"
    assert public(upload, [root]) == "evil.json is not a trace JSON file"
    assert checkpoint_label(root / "good", [root]) == "models/good"
    assert checkpoint_label(tmp_path / "secret", [root]) == "secret"  # outside every root: its name alone


def test_a_pickle_only_folder_is_said_to_have_no_safetensors_weights(pickle_only_folder, tmp_path):
    from explorer.released.synthetic import released_config

    folder = pickle_only_folder(released_config())
    for choice in (f"{tmp_path.name}/bin-only", str(folder)):
        with pytest.raises(ValueError, match="it has pytorch_model.bin, pickled weights, and the page loads "
                                             "safetensors weights only") as info:
            resolve_checkpoint(choice, [tmp_path])
        assert "outside the allowed roots" not in str(info.value)
