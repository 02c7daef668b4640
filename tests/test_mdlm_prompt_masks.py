"""[MASK] tokens in the prompt are positions to fill (as LLaDA's and Dream's loops do), counted in the schedule."""

from __future__ import annotations

import pytest
import torch

import explorer
from explorer.sampling import generate
from explorer.sampling.mdlm import schedule_counts


@pytest.fixture(scope="module")
def mdlm_tiny():
    return explorer.load("mdlm-tiny")


def test_prompt_masks_are_filled_shown_and_counted_in_the_schedule(mdlm_tiny):
    mask = mdlm_tiny.mask_id
    prompt = "ROMEO: [MASK] [MASK] is fair, and"  # the literal mask text: the tokenizer gives the mask id
    ids = mdlm_tiny.tokenizer.encode(prompt).ids
    first = ids.index(mask)
    tail = ids[first:]
    trace = generate(mdlm_tiny, prompt, "low_confidence", gen_length=8, steps=10, record="full")
    assert trace.prompt_ids == ids[:first]  # the prompt up to its first mask stays the prompt
    region = trace.frames[0].tokens
    assert region == tail + [mask] * 8  # the region shown: the rest of the prompt, then the generated masks
    final = trace.frames[-1].tokens
    assert mask not in final and all(final[i] == t for i, t in enumerate(tail) if t != mask)
    masks = tail.count(mask) + 8
    assert [len(f.committed) for f in trace.frames[1:]] == [c for c in schedule_counts(masks, 10) if c]
    prompt_masks = [i for i, t in enumerate(tail) if t == mask]
    assert set(prompt_masks) <= {p for f in trace.frames[1:] for p in f.committed}
    assert trace.sampler["infill"] == len(tail) and trace.text.startswith(mdlm_tiny.tokenizer.decode(tail[:1]))


@pytest.mark.parametrize("sampler, knobs", [("ancestral", {}), ("threshold", {}), ("dream", {}),
                                            ("low_confidence", {"block_length": 4, "steps": 8}),
                                            ("low_confidence", {"cache": "dual", "block_length": 4, "steps": 8})])
def test_every_masked_sampler_fills_the_prompts_masks(mdlm_tiny, sampler, knobs):
    prompt = "[MASK] and [MASK], my lord"
    trace = generate(mdlm_tiny, prompt, sampler, gen_length=8, seed=1, **knobs)
    tail = len(mdlm_tiny.tokenizer.encode(prompt).ids)  # the prompt starts with a mask: all of it is the tail
    assert mdlm_tiny.mask_id not in trace.frames[-1].tokens and len(trace.frames[-1].tokens) == tail + 8


def test_word_constraints_count_from_the_generated_part(mdlm_tiny):
    """Pinned positions are generated positions as before; with prompt masks they land after the prompt's tail."""
    ids = mdlm_tiny.tokenizer.encode("ROMEO: [MASK] is").ids
    tail = len(ids) - ids.index(mdlm_tiny.mask_id)
    once = mdlm_tiny.tokenizer.encode(" Once").ids[0]
    trace = generate(mdlm_tiny, "ROMEO: [MASK] is", "low_confidence", gen_length=8, steps=8, pinned={2: " Once"})
    assert trace.frames[-1].tokens[tail + 2] == once


def test_dream_fills_prompt_masks_like_its_published_loop(mdlm_tiny):
    """Dream's loop scores every mask of the canvas, the prompt's too: the same canvas as the restated loop."""
    from test_sampling_dream import counter_uniform_origin, dream_published_loop

    ids = mdlm_tiny.tokenizer.encode("ROMEO: [MASK] [MASK] is").ids
    with torch.no_grad():
        expected, _ = dream_published_loop(mdlm_tiny, ids, 8, 6, "entropy", uniform=counter_uniform_origin, seed=2,
                                           whole=True)
    trace = generate(mdlm_tiny, ids, "dream", seed=2, gen_length=8, steps=6, alg="entropy", temperature=0.0,
                     top_p=1.0)
    assert trace.prompt_ids + trace.frames[-1].tokens == expected and mdlm_tiny.mask_id not in expected


@pytest.mark.parametrize("checkpoint", ["ar-tiny", "bd3lm-tiny-b4"])
def test_families_that_cannot_fill_prompt_masks_say_so(checkpoint):
    model = explorer.load(checkpoint)
    with pytest.raises(ValueError, match=r"the prompt holds \[MASK\] tokens"):
        generate(model, "ROMEO: [MASK] is", gen_length=8)
