"""Released instruct models end their answer at EoT: the masked sampler skips the blocks after it (issue 8)."""

from __future__ import annotations

import json

import pytest

import explorer
from explorer.released.synthetic import EOS_ID, EOT_ID, MASK_ID, write_tiny_llada
from explorer.sampling import generate

KNOBS = dict(prompt="ROMEO:", gen_length=16, block_length=4, steps=16, temperature=0.0, seed=0,
             pinned={3: EOT_ID})  # an end of turn at the last position of block 0


@pytest.fixture(scope="module")
def llada(tmp_path_factory):
    """A tiny random LLaDA folder whose tokenizer has <|eot_id|>."""
    return explorer.load(write_tiny_llada(tmp_path_factory.mktemp("stop") / "LLaDA-tiny", eot=True), device="cpu")


def test_llada_names_its_stop_ids(llada):
    assert llada.eot_id == EOT_ID and llada.stop_ids == (EOS_ID, EOT_ID)


@pytest.mark.parametrize("sampler", ["low_confidence", "ancestral"])
def test_the_sampler_stops_after_the_block_with_eot(llada, sampler):
    stopped = generate(llada, sampler=sampler, record="full", **KNOBS)
    full = generate(llada, sampler=sampler, record="full", stop_at_eos=False, **KNOBS)
    last = stopped.frames[-1]
    assert last.stop == "eot" and last.block == 0 and {f.block for f in stopped.frames[1:]} == {0}
    assert last.tokens[:4] == full.final_tokens[:4] and last.tokens[3] == EOT_ID
    assert last.tokens[4:] == [EOS_ID] * 12  # the skipped blocks are padded, not left masked
    assert set(range(4, 16)) <= set(last.committed) and all(c is None for c in last.confidence[4:])
    never = [pos for pos, at in enumerate(stopped.commit_steps()) if at is None]
    assert never == [3] and MASK_ID not in last.tokens  # every position but the pinned one was committed
    assert stopped.stats["nfe"] < full.stats["nfe"] and stopped.stats["stop"] == "eot"
    assert {f.block for f in full.frames[1:]} == {0, 1, 2, 3} and full.frames[-1].stop is None
    answer = llada.tokenizer.decode(last.tokens[:3], skip_special_tokens=True)
    assert stopped.text == full.text == answer  # the text ends before the end of turn either way


def test_resuming_a_stopped_run_with_the_end_of_turn_edited_away_writes_on(llada):
    from explorer.sampling.edit import resume, spliced_trace

    stopped = generate(llada, record="full", **KNOBS)
    index = len(stopped.frames) - 1
    _, _, frames = resume(llada, stopped, index, {3: 100})  # replace the end of turn by an ordinary token
    frames = list(frames)
    edited = frames[0]
    assert edited.tokens[3] == 100 and edited.tokens[4:] == [MASK_ID] * 12 and edited.stop is None
    assert {f.block for f in frames[1:]} == {1, 2, 3}  # the padded blocks are sampled this time
    resumed = spliced_trace(llada, stopped, index, frames, 0.0)
    assert MASK_ID not in resumed.final_tokens and resumed.stats["nfe"] > stopped.stats["nfe"]
    assert resumed.final_tokens[:4] == stopped.final_tokens[:3] + [100]


def test_stop_at_eos_is_validated(llada):
    with pytest.raises(ValueError, match="stop_at_eos must be True or False, got 'yes'"):
        generate(llada, stop_at_eos="yes", **KNOBS)


def test_our_shipped_mdlm_runs_every_block():
    model = explorer.load("mdlm-tiny")
    eos = model.tokenizer.token_to_id("<eos>")
    knobs = KNOBS | {"pinned": {3: eos}}
    on, off = generate(model, **knobs), generate(model, stop_at_eos=False, **knobs)
    assert model.stop_ids == () and on.final_tokens == off.final_tokens  # our checkpoints name no stop ids
    assert on.stats["nfe"] == off.stats["nfe"] and on.frames[-1].stop is None and "stop" not in on.stats
    assert on.frames[-1].block == 3 and on.text == off.text


def test_dream_keeps_its_chat_template_and_stop_ids(tmp_path):
    from support import dream_config, reference_network, write_folder

    config = dream_config()
    folder = write_folder(tmp_path / "Dream-tiny", config, reference_network(config))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages[0]['content'] }}"}))
    model = explorer.load(folder, device="cpu")
    assert model.chat_template == "{{ messages[0]['content'] }}"
    assert model.stop_ids == (config["eos_token_id"],)  # the shipped tokenizer has no <|im_end|>
