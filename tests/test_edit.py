import copy
from dataclasses import asdict

import pytest

from explorer.data.tokenizer import display_string
from explorer.sampling import generate
from explorer.sampling.edit import resume, spliced_trace, top_candidates
from explorer.sampling.trace import Trace

PROMPT = "ROMEO:"


def frames_of(trace):
    return [asdict(f) for f in trace.frames]


def test_top_candidates_are_real_tokens_likeliest_first(tiny_mdlm):
    trace = generate(tiny_mdlm, PROMPT, "low_confidence", gen_length=16, steps=8, temperature=1.0, seed=1)
    for position in (trace.frames[3].tokens.index(tiny_mdlm.mask_id), trace.frames[3].committed[0]):
        candidates = top_candidates(tiny_mdlm, trace, 3, position, k=7)
        probs = [c["prob"] for c in candidates]
        assert len(candidates) == 7 and probs == sorted(probs, reverse=True)
        assert all(0 < p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6
        assert len({c["id"] for c in candidates}) == 7 and tiny_mdlm.mask_id not in {c["id"] for c in candidates}
        assert all(c["text"] == display_string(tiny_mdlm.tokenizer, c["id"]) for c in candidates)


def test_a_committed_position_gets_the_candidates_it_had_while_masked(tiny_mdlm):
    # one argmax commit per step: frame j differs from frame j - 1 only at the position it commits
    trace = generate(tiny_mdlm, PROMPT, "low_confidence", gen_length=12, steps=12, temperature=0.0, seed=0)
    for j in (1, 5, 12):
        (position,) = trace.frames[j].committed
        after = top_candidates(tiny_mdlm, trace, j, position, k=3)
        assert after == top_candidates(tiny_mdlm, trace, j - 1, position, k=3)
        assert after[0]["id"] == trace.frames[j].tokens[position]


@pytest.mark.parametrize("sampler, knobs", [
    ("low_confidence", dict(steps=12)),
    ("random", dict(steps=24, block_length=8)),  # several blocks, one commit per step
    ("threshold", dict(steps=24, threshold=0.01)),
    ("ancestral", dict(steps=12)),
])
def test_resuming_without_edits_replays_the_run(tiny_mdlm, sampler, knobs):
    trace = generate(tiny_mdlm, PROMPT, sampler, gen_length=24, temperature=1.0, seed=3, record="full", **knobs)
    for index in (0, 5, len(trace.frames) - 1):
        description, prompt_ids, frames = resume(tiny_mdlm, trace, index, {})
        frames = [asdict(f) for f in frames]
        assert prompt_ids == trace.prompt_ids
        assert frames[0] == {**frames_of(trace)[index], "committed": [], "cache": None}
        assert frames[1:] == frames_of(trace)[index + 1 :]
        assert description["edits"] == [{"frame": index, "at_step": trace.frames[index].step, "tokens": {},
                                         "seed": None}]


@pytest.mark.parametrize("block_length", [None, 8])
def test_edits_and_committed_tokens_stay_and_numbering_continues(tiny_mdlm, block_length):
    trace = generate(tiny_mdlm, PROMPT, "low_confidence", gen_length=24, steps=12, block_length=block_length,
                     temperature=1.0, seed=2, record="full")
    index, mask = 2, tiny_mdlm.mask_id
    paused = trace.frames[index]
    masked = paused.tokens.index(mask)
    committed = paused.committed[0]
    new_token = next(t for t in range(100, 200) if t != paused.tokens[committed])
    edits = {masked: 123, committed: new_token}
    _, _, frames = resume(tiny_mdlm, trace, index, edits, seed=5)
    frames = list(frames)
    edited = frames[0]
    assert edited.committed == sorted(edits) and (edited.step, edited.nfe) == (paused.step, paused.nfe)
    assert edited.tokens == [edits.get(p, t) for p, t in enumerate(paused.tokens)]
    kept = {p: t for p, t in enumerate(paused.tokens) if t != mask and p not in edits}
    for frame in frames:
        assert all(frame.tokens[p] == t for p, t in {**kept, **edits}.items())
        assert all(frame.confidence[p] == paused.confidence[p] for p in kept)
    assert [f.step for f in frames] == list(range(paused.step, paused.step + len(frames)))
    assert all(a.nfe < b.nfe for a, b in zip(frames, frames[1:]))
    assert mask not in frames[-1].tokens
    assert sum(len(f.committed) for f in frames[1:]) == paused.tokens.count(mask) - 1
    if block_length is None:  # one block: the steps left, no more
        assert frames[-1].step == trace.frames[-1].step


def test_spliced_trace_logs_edits_and_round_trips(tiny_mdlm, tmp_path):
    trace = generate(tiny_mdlm, PROMPT, "low_confidence", gen_length=16, steps=16, temperature=1.0, seed=4)
    before = trace.to_dict()
    position = trace.frames[6].tokens.index(tiny_mdlm.mask_id)
    description, _, frames = resume(tiny_mdlm, trace, 6, {position: 77}, seed=9)
    frames = list(frames)
    spliced = spliced_trace(tiny_mdlm, trace, 6, frames, wall_s=0.5, seed=9)
    assert trace.to_dict() == before  # the input trace is untouched
    assert frames_of(spliced) == frames_of(trace)[:7] + [asdict(f) for f in frames]
    assert spliced.frames[0] is not trace.frames[0] and spliced.frames[7] is not frames[0]
    assert spliced.final_tokens[position] == 77 and spliced.sampler == description
    first = {"frame": 6, "at_step": 6, "tokens": {str(position): 77}, "seed": 9}
    assert spliced.sampler["edits"] == [first]
    loaded = Trace.load(spliced.save(tmp_path / "spliced.json"))
    assert loaded.sampler["edits"] == [first] and loaded.text == spliced.text
    assert loaded.stats["wall_s"] == pytest.approx(trace.stats["wall_s"] + 0.5, abs=1e-3)

    # edit again later: appended; the noise stream of the first resume (seed 9) goes on with seed=None
    _, _, again = resume(tiny_mdlm, loaded, 10, {})
    assert [asdict(f) for f in list(again)[1:]] == frames_of(loaded)[11:]
    later = spliced_trace(tiny_mdlm, loaded, 10, list(resume(tiny_mdlm, loaded, 10, {3: 5})[2]), wall_s=0.1)
    assert later.sampler["edits"] == [first, {"frame": 10, "at_step": 9, "tokens": {"3": 5}, "seed": None}]
    # rewound to before the first edit: that edit is gone
    rewound = spliced_trace(tiny_mdlm, loaded, 4, list(resume(tiny_mdlm, loaded, 4, {2: 8})[2]), wall_s=0.1)
    assert [e["frame"] for e in rewound.sampler["edits"]] == [4]


def test_bad_arguments_name_the_knob(tiny_mdlm, tiny_ar):
    trace = generate(tiny_mdlm, PROMPT, "low_confidence", gen_length=8, steps=4, seed=0)
    last, vocab = len(trace.frames) - 1, tiny_mdlm.tokenizer.get_vocab_size()
    with pytest.raises(ValueError, match=rf"index must be in \[0, {last}\], got {last + 1}"):
        top_candidates(tiny_mdlm, trace, last + 1, 0)
    with pytest.raises(ValueError, match=r"index must be in \[0, .*got -1"):
        resume(tiny_mdlm, trace, -1, {})
    with pytest.raises(ValueError, match=r"position must be in \[0, 7\], got 8"):
        top_candidates(tiny_mdlm, trace, 1, 8)
    with pytest.raises(ValueError, match=r"k must be in \[1, .*got 0"):
        top_candidates(tiny_mdlm, trace, 1, 0, k=0)
    with pytest.raises(ValueError, match=rf"k must be in \[1, {vocab - 1}\]"):
        top_candidates(tiny_mdlm, trace, 1, 0, k=vocab)
    with pytest.raises(ValueError, match=r"edit position must be in \[0, 7\], got 9"):
        resume(tiny_mdlm, trace, 1, {9: 5})
    with pytest.raises(ValueError, match=r"edit token id must be in \[0, "):
        resume(tiny_mdlm, trace, 1, {0: vocab})
    with pytest.raises(ValueError, match="mask token"):
        resume(tiny_mdlm, trace, 1, {0: tiny_mdlm.mask_id})
    ar_trace = generate(tiny_ar, PROMPT, gen_length=4, seed=0)
    with pytest.raises(ValueError, match="editing needs a masked-diffusion"):
        top_candidates(tiny_ar, ar_trace, 1, 0)
    with pytest.raises(ValueError, match="editing needs a masked-diffusion"):
        resume(tiny_ar, ar_trace, 1, {0: 5})
    other = copy.deepcopy(trace)
    other.model["name"] = "someone-else"
    with pytest.raises(ValueError, match="generated by 'someone-else'"):
        top_candidates(tiny_mdlm, other, 1, 0)
    other = copy.deepcopy(trace)
    other.sampler["name"] = "draft_refine"
    with pytest.raises(ValueError, match="'draft_refine' does not"):
        resume(tiny_mdlm, other, 1, {0: 5})
    with pytest.raises(ValueError, match="new_frames must be what resume"):
        spliced_trace(tiny_mdlm, trace, 1, trace.frames[3:], wall_s=0.0)
