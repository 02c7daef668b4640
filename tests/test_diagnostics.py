"""The four diagnostics of explorer.viz.diagnostics checked against hand computations, and the Transformer's and
DiffusionGemma's probes."""

from __future__ import annotations

import math

import pytest
import torch

import explorer
from explorer.eval import cache_quality
from explorer.models import BD3LMConfig, BD3LMModel, MDLMConfig, MDLMModel
from explorer.released.synthetic import write_tiny_diffusion_gemma
from explorer.sampling.trace import Frame, Trace
from explorer.viz import attention_over_steps, parallel_dependencies, reliability_diagram, state_drift
from explorer.viz.diagnostics import dependency_pairs, hidden_drift, kv_drift
from support import tiny_backbone

M = 99  # the mask id of the hand-built traces
C = 4  # the tiny DiffusionGemma's canvas_length


# two layers: the first layer's keys and values depend on the token alone, so drift shows from the second on
@pytest.fixture(scope="module")
def mdlm2(tokenizer):
    torch.manual_seed(0)
    return MDLMModel(MDLMConfig(backbone=tiny_backbone("bidirectional").with_(n_layers=2)), tokenizer).eval()


@pytest.fixture(scope="module")
def bd3lm2(tokenizer):
    torch.manual_seed(0)
    backbone = tiny_backbone("block_causal").with_(n_layers=2, max_seq_len=32)
    return BD3LMModel(BD3LMConfig(backbone=backbone, block_size=8), tokenizer).eval()


def hand_trace(hidden=None) -> Trace:
    """4 positions: step 1 commits 0, 1 and 2 (2 is remasked at step 2 and committed again with another token)."""
    frames = [
        Frame(0, [M, M, M, M], confidence=[None] * 4),
        Frame(1, [5, 6, 7, M], committed=[0, 1, 2], confidence=[0.9, 0.8, 0.95, None]),
        Frame(2, [5, 6, M, M], remasked=[2], confidence=[0.9, 0.8, None, None]),
        Frame(3, [5, 6, 8, 9], committed=[2, 3], confidence=[0.9, 0.8, 0.3, 0.35]),
    ]
    for frame, rows in zip(frames, hidden or []):
        frame.hidden = rows
    return Trace({"name": "toy", "family": "mdlm"}, {"name": "hand"}, [1, 2], frames, "", {}, mask_id=M)


def test_ece_of_a_hand_built_trace():
    # (confidence, survives): (0.9, T), (0.8, T), (0.95, F: remasked, 8 in the end), (0.3, T), (0.35, T)
    # bins of 0.5: [0, 0.5) conf 0.325 acc 1; [0.5, 1] conf 0.88333 acc 0.66667 -> 2/5 * 0.675 + 3/5 * 0.21667
    fig = reliability_diagram(hand_trace(), bins=2)
    assert fig.layout.meta["tokens"] == 5
    assert fig.layout.meta["ece"] == pytest.approx(2 / 5 * 0.675 + 3 / 5 * abs((0.9 + 0.8 + 0.95) / 3 - 2 / 3))
    assert [b["count"] for b in fig.layout.meta["bins"]] == [2, 3]
    assert "ECE 0.400" in fig.layout.title.text


def test_reliability_against_a_judge_uses_its_top1(tiny_mdlm, tiny_ar):
    trace = explorer.generate(tiny_mdlm, [5, 6, 7], gen_length=8, steps=4, record="full")
    ids = torch.tensor([[tiny_ar.bos_id, 5, 6, 7] + trace.final_tokens[:-1]])
    top1 = tiny_ar(ids)[0, 3:].argmax(-1).tolist()  # the judge's guess at each generated position
    expected = [trace.final_tokens[p] == top1[p] for p in range(8)]
    fig = reliability_diagram(trace, judge=tiny_ar)
    accuracy = sum(b["accuracy"] * b["count"] for b in fig.layout.meta["bins"] if b["count"]) / 8
    assert accuracy == pytest.approx(sum(expected) / 8)
    with pytest.raises(ValueError, match="bins must be"):
        reliability_diagram(trace, bins=1)


def test_hidden_drift_is_zero_for_an_unchanged_state_and_the_relative_change_otherwise():
    a, b = [3.0, 4.0], [3.0, 0.0]
    hidden = [[None] * 4, [a, a, a, None], [a, b, a, None], [a, b, a, a]]
    rows = hidden_drift(hand_trace(hidden))
    assert rows[0] == [None] * 4 and rows[1] == [None] * 4  # nothing known before step 1
    assert rows[2] == [0.0, pytest.approx(4 / 5), 0.0, None]
    assert rows[3] == [0.0, 0.0, 0.0, None]
    fig = state_drift(hand_trace(hidden))
    assert fig.layout.meta["mean_hidden_drift"] == pytest.approx(0.8 / 6)


def test_kv_drift_finished_blocks_keep_their_keys_and_the_mdlm_prompt_does_not(mdlm2, bd3lm2):
    block = explorer.generate(bd3lm2, list(range(5, 13)), gen_length=16, steps=4, record="full",
                              sampler="low_confidence")  # prompt = block 0 exactly, then two blocks of 8
    per_position, prompt = kv_drift(bd3lm2, block)
    assert all(v == 0.0 for row in prompt[2:] for v in row)  # the prompt's block never sees the later ones
    later = [s for s, f in enumerate(block.frames) if f.block == 1][1:]
    assert all(per_position[s][p] == 0.0 for s in later for p in range(16))  # prompt + block 0: finished
    masked = explorer.generate(mdlm2, [5, 6, 7], gen_length=8, steps=4, record="full")
    _, prompt = kv_drift(mdlm2, masked, layers=[1])
    assert all(row[0] > 0 for row in prompt[2:])  # bidirectional: the prompt's keys move as the canvas fills
    assert prompt[1] == [None]
    with pytest.raises(ValueError, match="max_passes"):
        kv_drift(mdlm2, masked, max_passes=2)


def test_state_drift_shows_the_cache_runs_quality_change(tiny_mdlm, tiny_ar):
    trace = explorer.generate(tiny_mdlm, [5, 6, 7], gen_length=8, steps=4, block_length=4, record="full")
    quality = cache_quality(tiny_mdlm, trace, tiny_ar)
    fig = state_drift(trace, tiny_mdlm, caches=quality)
    assert fig.layout.meta["caches"] == quality and quality["none"]["agreement"] == 1.0
    dual = explorer.generate(tiny_mdlm, [5, 6, 7], gen_length=8, steps=4, block_length=4, cache="dual")
    same = sum(a == b for a, b in zip(dual.final_tokens, trace.final_tokens)) / 8
    assert quality["dual"]["agreement"] == pytest.approx(same)
    assert f"cache=dual: {same:.0%} of tokens as without, gen-PPL" in fig.layout.title.text
    assert cache_quality(tiny_mdlm, trace)["prefix"].keys() == {"agreement", "nfe"}


def test_joint_against_product_equals_a_brute_force_computation(tiny_mdlm):
    trace = explorer.generate(tiny_mdlm, [5, 6, 7], gen_length=6, steps=2, record="full")  # 3 tokens per step
    pairs = dependency_pairs(tiny_mdlm, trace)
    assert len(pairs) == 2 * 3

    def logp(canvas, pos, token):
        logits = tiny_mdlm(torch.tensor([[5, 6, 7] + canvas])).detach()[0, 3 + pos]
        logits[tiny_mdlm.mask_id] = float("-inf")
        return float(logits.log_softmax(-1)[token])

    for pair in pairs:
        before, tokens = trace.frames[pair["step"] - 1].tokens, trace.frames[pair["step"]].tokens
        i, j = pair["i"], pair["j"]
        with_i, with_j = list(before), list(before)
        with_i[i], with_j[j] = tokens[i], tokens[j]
        li, lj = logp(before, i, tokens[i]), logp(before, j, tokens[j])
        assert pair["log_product"] == pytest.approx(li + lj, abs=1e-4)
        joint = (li + logp(with_i, j, tokens[j]) + lj + logp(with_j, i, tokens[i])) / 2
        assert pair["log_joint"] == pytest.approx(joint, abs=1e-4)
    fig = parallel_dependencies(tiny_mdlm, trace, worse=0.0)
    expected = [(p["step"], p["i"], p["j"]) for p in pairs if p["log_joint"] < p["log_product"]]
    assert [tuple(m) for m in fig.layout.meta["marked"]] == expected
    one_at_a_time = explorer.generate(tiny_mdlm, [5, 6, 7], gen_length=4, steps=4, record="full")
    assert parallel_dependencies(tiny_mdlm, one_at_a_time).layout.annotations[0].text.startswith("Every step")


def test_attention_rows_sum_to_one_and_the_hook_off_changes_nothing(tiny_mdlm, tiny_bd3lm, tiny_ar):
    trace = explorer.generate(tiny_mdlm, [5, 6, 7], gen_length=8, steps=4, record="full")
    fig = attention_over_steps(tiny_mdlm, trace, position=2, layer=0, head=1)
    rows = fig.data[0].z
    assert rows[0] == [None] * 11 and all(sum(row) == pytest.approx(1.0, abs=1e-5) for row in rows[1:])
    block = explorer.generate(tiny_bd3lm, [5, 6, 7], gen_length=16, steps=4, record="full", sampler="low_confidence")
    rows = attention_over_steps(tiny_bd3lm, block, position=10).data[0].z  # in the second block (positions 8-15)
    first_block = [s for s, f in enumerate(block.frames) if f.block == 0][1:]
    assert all(rows[s] == [None] * 19 for s in first_block)  # not computed before its block
    assert all(v == 0.0 for v in rows[-1][3 + 16:])  # block-causal: no key after its block
    with pytest.raises(ValueError, match=r"head must be an int in \[0, 1\]"):
        attention_over_steps(tiny_mdlm, trace, position=2, head=2)
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, 0\]"):
        attention_over_steps(tiny_mdlm, trace, position=2, layer=5)
    with pytest.raises(ValueError, match="masked .mdlm. or block"):
        attention_over_steps(tiny_ar, trace, position=0)
    # recording everything while sampling leaves the tokens as they were, and nothing is recorded after the block
    with tiny_mdlm.backbone.probe(attention=True) as probe:
        recorded = explorer.generate(tiny_mdlm, [5, 6, 7], gen_length=8, steps=4, record="full")
    assert recorded.final_tokens == trace.final_tokens and probe.probs
    assert all(block.attn.probe is None for block in tiny_mdlm.backbone.blocks)


def test_causal_attention_recorded_with_a_cache_never_looks_ahead(tiny_ar):
    cache = tiny_ar.new_cache()
    with torch.no_grad(), tiny_ar.backbone.probe([0], attention=True) as probe:
        tiny_ar(torch.tensor([[1, 2, 3]]), cache=cache)
        full = probe.probs[0][0]  # (H, 3, 3)
        tiny_ar(torch.tensor([[4, 5]]), cache=cache)
        window = probe.probs[0][0]  # (H, 2, 5): queries at positions 3 and 4
    assert torch.equal(full.triu(1), torch.zeros_like(full))
    assert window[:, 0, 4].abs().max() == 0 and window.sum(-1).allclose(torch.ones(2, 2))
    assert math.isclose(float(probe.keys[0].shape[2]), 5)


# --- a library's model: DiffusionGemma (transformers), tiny and random ---------------------------------------------

@pytest.fixture(scope="module")
def dg(tmp_path_factory):
    folder = write_tiny_diffusion_gemma(tmp_path_factory.mktemp("dg") / "dg", canvas_length=C)
    model = explorer.load(folder, device="cpu")
    trace = explorer.generate(model, "ROMEO:", gen_length=2 * C, steps=2, seed=0, record="full")
    return model, trace


def test_parallel_dependencies_of_a_diffusion_gemma_run_equal_its_decoder_passes(dg):
    model, trace = dg
    pairs = dependency_pairs(model, trace)  # each canvas is committed at its last pass: C tokens together
    assert len(pairs) == 2 * (C * (C - 1) // 2)

    def logp(step, canvas, pos, token):  # the decoder over the step's canvas after the prompt and earlier canvases
        lo = trace.frames[step].block * C
        logits, _ = model.canvas_pass(trace.prompt_ids + canvas[:lo], canvas[lo : lo + C])
        return float(logits[pos - lo].log_softmax(-1)[token])

    for pair in pairs[:: C * (C - 1) // 2]:  # the first pair of each canvas
        step, i, j = pair["step"], pair["i"], pair["j"]
        before, tokens = trace.frames[step - 1].tokens, trace.frames[step].tokens
        with_i, with_j = list(before), list(before)
        with_i[i], with_j[j] = tokens[i], tokens[j]
        li, lj = logp(step, before, i, tokens[i]), logp(step, before, j, tokens[j])
        assert pair["log_product"] == pytest.approx(li + lj, abs=1e-4)
        joint = (li + logp(step, with_i, j, tokens[j]) + lj + logp(step, with_j, i, tokens[i])) / 2
        assert pair["log_joint"] == pytest.approx(joint, abs=1e-4)
    assert parallel_dependencies(model, trace).layout.meta["pairs"] == len(pairs)


def test_state_drift_of_a_diffusion_gemma_run_recorded_or_re_run_with_its_keys_and_values(dg):
    model, trace = dg
    recorded = state_drift(trace, model)  # the hidden states generate's passes recorded; keys/values re-run
    assert recorded.layout.meta["hidden"] == "recorded" and recorded.layout.meta["mean_hidden_drift"] > 0
    assert [a.text for a in recorded.layout.annotations] == [
        "hidden state (last layer)", "keys and values (all layers, mean; the context's from the encoder's cache)"]
    assert recorded.layout.meta["mean_prompt_kv_drift"] == pytest.approx(0, abs=1e-5)  # a causal encoder's prompt
    bare = Trace.from_dict(trace.to_dict())
    for frame in bare.frames:
        frame.hidden = None
    assert state_drift(bare).layout.annotations[0].text.startswith("This run has no hidden states")
    rerun = state_drift(bare, model)  # re-run through the model's decoder
    assert rerun.layout.meta["hidden"] == "re-run"
    rows = rerun.data[0].z
    first = [s for s, f in enumerate(trace.frames) if f.block == 1][0]
    assert all(rows[first][p] is None or rows[first][p] == 0.0 for p in range(C))  # canvas 0: finished
    with pytest.raises(ValueError, match="canvas_ids must hold canvas_length = 4 ids, got 2"):
        model.canvas_pass(trace.prompt_ids, [5, 6])


def hand_recorded(model, context, canvas):
    """What each decoder layer's attention function was handed in one canvas_pass under eager attention: layer ->
    (keys, values, weights), by wrapping transformers' eager_attention_forward."""
    from transformers.models.diffusion_gemma import modeling_diffusion_gemma as library

    seen, eager = {}, library.eager_attention_forward

    def spy(module, query, key, value, mask, **kwargs):
        out = eager(module, query, key, value, mask, **kwargs)
        if isinstance(module, library.DiffusionGemmaDecoderTextAttention):
            seen[module.layer_idx] = (key, value, out[1])
        return out

    text = model.network.config.text_config
    before, text._attn_implementation, library.eager_attention_forward = text._attn_implementation, "eager", spy
    try:
        model.canvas_pass(context, canvas)
    finally:
        text._attn_implementation, library.eager_attention_forward = before, eager
    return seen


def test_diffusion_gemma_probe_records_what_its_decoder_attention_reads(dg):
    model, trace = dg
    context, canvas = list(range(40, 60)), [7, 8, 9, 10]  # 20 context tokens: past the sliding window of 16
    hand = hand_recorded(model, context, canvas)
    with model.probe(attention=True) as probe:
        model.canvas_pass(context, canvas)
    for layer, (keys, values, weights) in hand.items():
        assert torch.equal(probe.keys[layer], keys) and torch.equal(probe.values[layer], values)
        assert torch.equal(probe.probs[layer], weights.float())
        assert probe.probs[layer].sum(-1).allclose(torch.ones(1, 2, C))  # (1, H, C, Lk): rows sum to 1
    assert probe.keys[0].shape == (1, 1, 15 + C, 16) and probe.keys[1].shape == (1, 1, 20 + C, 16)  # sliding, full
    # off: no hook left, the implementation switched back; on: the library's tokens unchanged
    network = model.network
    assert network.config.text_config._attn_implementation == "sdpa"
    assert not any(layer.self_attn._forward_hooks for layer in network.model.decoder.layers)
    with model.probe([1], attention=True) as probe:
        again = explorer.generate(model, "ROMEO:", gen_length=2 * C, steps=2, seed=0, record="full")
    assert again.final_tokens == trace.final_tokens and list(probe.probs) == [1]
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, 1\]"):
        with model.probe([2]):
            pass
    from transformers import StaticCache

    static = StaticCache(config=network.config.text_config, max_cache_len=32)  # zero-padded: not what attention read
    with pytest.raises(ValueError, match="the probe reads a dynamic cache"), model.probe():
        network(input_ids=torch.tensor([context]), decoder_input_ids=torch.tensor([canvas]), cache=static)


def test_kv_drift_and_attention_of_a_diffusion_gemma_run_cover_the_canvas_each_pass_read(dg, monkeypatch):
    model, trace = dg
    P = len(trace.prompt_ids)
    canvas = {b: [s for s, f in enumerate(trace.frames) if f.block == b and s] for b in (0, 1)}
    per_position, prompt = kv_drift(model, trace)
    for s in canvas[0]:  # canvas 1 is not read yet
        assert per_position[s][P + C:] == [None] * C
    first, *later = canvas[1]
    assert per_position[first][P + C:] == [None] * C  # canvas 1's first pass: nothing to compare with
    assert all(v > 0 for v in per_position[first][P : P + C])  # canvas 0: the decoder's keys, then the encoder's
    assert later and all(per_position[s][p] == pytest.approx(0, abs=1e-5) for s in later for p in range(P + C))
    assert all(v == pytest.approx(0, abs=1e-5) for row in prompt[2:] for v in row)
    long = explorer.generate(model, list(range(40, 60)), gen_length=2 * C, steps=2, seed=0, record="full")
    rows, _ = kv_drift(model, long, layers=[0])  # the sliding layer reads the context's last 15 positions only
    assert rows[-1][: 20 + C - 15] == [None] * (20 + C - 15) and None not in rows[-1][20 + C - 15 : 20 + C]

    fig = attention_over_steps(model, trace, position=C + 1, layer=1, head=1)
    rows = fig.data[0].z
    assert all(rows[s] == [None] * (P + 2 * C) for s in [0, *canvas[0]])  # another canvas's passes
    assert all(sum(rows[s]) == pytest.approx(1.0, abs=1e-5) for s in canvas[1])
    assert "decoder attention over the cached context (cross) and the canvas (self)" in fig.layout.title.text
    with pytest.raises(ValueError, match=r"head must be an int in \[0, 1\]"):
        attention_over_steps(model, trace, position=0, head=2)
    monkeypatch.setattr(type(model), "probe", None)  # what remains refused: a model without a probe
    with pytest.raises(ValueError, match="reads each layer's keys and values, which a model records with a probe.*"
                                         r"diffusion_gemma model \(DiffusionGemmaForBlockDiffusion\) has none"):
        kv_drift(model, trace)
    with pytest.raises(ValueError, match="reads each layer's attention probabilities"):
        attention_over_steps(model, trace, position=0)
    assert "keys/values not shown: a diffusion_gemma model has no probe" in state_drift(trace, model).layout.title.text


def test_the_page_compares_caches_once_per_run(tiny_mdlm, monkeypatch):
    from explorer.page import diagnostics

    calls = []
    monkeypatch.setattr(diagnostics, "cache_quality", lambda *a: calls.append(a) or {"none": {"agreement": 1.0}})
    comparisons = diagnostics.Comparisons(limit=2)
    runs = [explorer.generate(tiny_mdlm, [5, 6, 7], gen_length=8, steps=4, seed=s, record="full") for s in (0, 1, 2)]
    for run in runs[:2] + runs[:2]:
        comparisons.get(tiny_mdlm, run, None, None)
    assert len(calls) == 2  # a Draw of the same run reads its comparison back
    comparisons.get(tiny_mdlm, runs[0], None, "ar-tiny")  # another judge: another comparison
    comparisons.get(tiny_mdlm, runs[2], None, None)
    comparisons.get(tiny_mdlm, runs[1], None, None)  # pushed out: at most `limit` kept
    assert len(calls) == 5 and len(comparisons.results) == 2
