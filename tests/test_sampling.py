import pytest
import torch

import explorer
from explorer.sampling import generate
from explorer.sampling.mdlm import schedule_counts, select_commits
from explorer.sampling.trace import Trace
from support import MockDenoiser

PROMPT = "ROMEO:"


def test_schedule_counts_spread_the_remainder_over_the_first_steps():
    assert schedule_counts(10, 4) == [3, 3, 2, 2]
    assert schedule_counts(3, 5) == [1, 1, 1, 0, 0]
    assert sum(schedule_counts(127, 16)) == 127


@pytest.mark.parametrize("rule", ["low_confidence", "random", "margin", "entropy"])
def test_fixed_schedule_commits_the_planned_count_per_step_and_never_changes_commits(tiny_mdlm, rule):
    trace = generate(tiny_mdlm, PROMPT, rule, gen_length=32, steps=8, block_length=16, temperature=1.0, seed=3)
    per_block = schedule_counts(16, 4)
    assert [len(f.committed) for f in trace.frames[1:]] == per_block * 2
    mask = tiny_mdlm.mask_id
    for before, after in zip(trace.frames, trace.frames[1:]):
        for pos, (a, b) in enumerate(zip(before.tokens, after.tokens)):
            if a != mask:
                assert a == b, "a committed token changed"
            elif b != mask:
                assert pos in after.committed
        # semi-autoregressive: block 1 stays masked while block 0 is unfinished
        if mask in after.tokens[:16]:
            assert all(t == mask for t in after.tokens[16:])
    assert mask not in trace.final_tokens
    assert trace.stats["nfe"] == 8


def test_prompt_and_pinned_tokens_never_change(tiny_mdlm):
    upon = tiny_mdlm.tokenizer.encode(" upon").ids
    trace = generate(tiny_mdlm, PROMPT, "low_confidence", gen_length=16, steps=16, temperature=1.0,
                     pinned={5: " upon"}, seed=1)
    assert trace.prompt_ids == tiny_mdlm.tokenizer.encode(PROMPT).ids
    for frame in trace.frames:
        assert frame.tokens[5 : 5 + len(upon)] == upon
    assert sum(len(f.committed) for f in trace.frames) == 16 - len(upon)


def test_same_seed_same_trace_and_other_seed_differs(tiny_mdlm):
    kwargs = dict(gen_length=24, steps=12, block_length=12, temperature=1.0, record="full")
    a = generate(tiny_mdlm, PROMPT, "low_confidence", seed=7, **kwargs)
    b = generate(tiny_mdlm, PROMPT, "low_confidence", seed=7, **kwargs)
    c = generate(tiny_mdlm, PROMPT, "low_confidence", seed=8, **kwargs)
    strip = lambda t: [f.__dict__ for f in t.frames]  # noqa: E731
    assert strip(a) == strip(b)
    assert a.final_tokens != c.final_tokens


def test_recording_levels(tiny_mdlm):
    kwargs = dict(gen_length=16, steps=8, temperature=1.0, seed=0)
    none = generate(tiny_mdlm, PROMPT, record="none", **kwargs)
    tokens = generate(tiny_mdlm, PROMPT, record="tokens", **kwargs)
    full = generate(tiny_mdlm, PROMPT, record="full", **kwargs)
    assert len(none.frames) == 1 and none.final_tokens == tokens.final_tokens == full.final_tokens
    assert len(tokens.frames) == 9 and tokens.frames[3].proposal is None
    assert all(f.proposal is not None and f.confidence is not None for f in full.frames)
    step3 = full.frames[3]
    masked = [p for p, t in enumerate(step3.tokens) if t == tiny_mdlm.mask_id]
    assert all(step3.proposal[p] != tiny_mdlm.mask_id and 0 <= step3.confidence[p] <= 1 for p in masked)


def test_temperature_zero_is_deterministic_across_seeds(tiny_mdlm):
    a = generate(tiny_mdlm, PROMPT, gen_length=16, steps=16, temperature=0.0, seed=0)
    b = generate(tiny_mdlm, PROMPT, gen_length=16, steps=16, temperature=0.0, seed=99)
    assert a.final_tokens == b.final_tokens


def test_threshold_commits_everything_confident_in_one_step(tokenizer):
    sure = MockDenoiser(tokenizer, peak=20.0)
    trace = generate(sure, PROMPT, "threshold", gen_length=32, steps=32, block_length=16)
    assert trace.stats["nfe"] == 2  # one step per block
    start = len(trace.prompt_ids)
    assert trace.final_tokens == [p % 50 + 10 for p in range(start, start + 32)]
    unsure = MockDenoiser(tokenizer)  # uniform logits: confidence 1/2047 < threshold
    trace = generate(unsure, PROMPT, "threshold", gen_length=8, steps=8)
    assert trace.stats["nfe"] == 8 and all(len(f.committed) == 1 for f in trace.frames[1:])


def test_factor_rule_prefix():
    scores = torch.tensor([0.9, 0.95, 0.2, 0.7])
    eligible = torch.ones(4, dtype=torch.bool)
    # sorted: 0.95, 0.9, 0.7, 0.2; thresholds 1 - 1/(n+1): 0.5, 0.667, 0.75, 0.8
    assert select_commits(scores, eligible, 1, None, 1.0).tolist() == [1, 0]
    assert select_commits(scores, eligible, 3, None, None).tolist() == [1, 0, 3]
    assert select_commits(scores, eligible, 1, 0.8, None).tolist() == [1, 0]


def test_ancestral_cached_step_skips_the_network_when_nothing_changed(tokenizer):
    model = MockDenoiser(tokenizer)
    trace = generate(model, "", "ancestral", gen_length=8, steps=64, temperature=1.0, seed=0)
    assert len(trace.frames) <= 65  # stops early once every position is unmasked
    assert trace.stats["nfe"] == model.calls < 64
    changed = sum(1 for f in trace.frames[1:] if f.committed)
    assert model.calls <= changed + 1
    assert model.mask_id not in trace.final_tokens


def test_cfg_runs_an_unconditional_pass_with_the_prompt_masked(tokenizer):
    seen = []

    class Spy(MockDenoiser):
        def denoiser_logits(self, x, **kw):
            seen.append(x.clone())
            return super().denoiser_logits(x, **kw)

    model = Spy(tokenizer)
    trace = generate(model, PROMPT, gen_length=4, steps=4, cfg_scale=1.5)
    prompt_len = len(trace.prompt_ids)
    assert trace.stats["nfe"] == 8
    assert all(int((x[0, :prompt_len] == model.mask_id).sum()) in (0, prompt_len) for x in seen)
    assert sum(bool((x[0, :prompt_len] == model.mask_id).all()) for x in seen) == 4


def test_ar_sampler_matches_greedy_recomputation_without_cache(tiny_ar):
    trace = generate(tiny_ar, PROMPT, gen_length=12, temperature=0.0)
    ids = [tiny_ar.bos_id] + trace.prompt_ids
    for _ in range(12):
        ids.append(int(tiny_ar(torch.tensor([ids]))[0, -1].argmax()))
    assert trace.final_tokens == ids[-12:]
    assert [f.committed for f in trace.frames[1:]] == [[i] for i in range(12)]


@pytest.mark.parametrize("direction", ["l2r", "r2l"])
def test_ar_generates_past_its_context_with_a_sliding_window(tokenizer, direction):
    """Past a 16-token context each step reads <bos> + the last 15 tokens (model order), as a plain loop would."""
    from explorer.models import ARConfig, ARModel
    from support import tiny_backbone

    torch.manual_seed(0)
    model = ARModel(ARConfig(backbone=tiny_backbone("causal").with_(max_seq_len=16), direction=direction),
                    tokenizer).eval()
    trace = generate(model, "to be or not to be", gen_length=40, temperature=0.0, record="full")
    ids = trace.prompt_ids[::-1] if direction == "r2l" else list(trace.prompt_ids)  # model order
    with torch.no_grad():
        for _ in range(40):
            ids.append(int(model(torch.tensor([[model.bos_id] + ids[-15:]]))[0, -1].argmax()))
    generated = ids[-40:]
    assert trace.final_tokens == (generated[::-1] if direction == "r2l" else generated)
    assert all(row is not None for row in trace.frames[-1].hidden)  # every step recorded its state


def test_right_to_left_model_fills_the_canvas_backwards(tiny_ar_r2l):
    trace = generate(tiny_ar_r2l, "the end.", gen_length=6, temperature=1.0, seed=0)
    assert [f.committed for f in trace.frames[1:]] == [[5], [4], [3], [2], [1], [0]]


def test_ar_top_k_one_equals_greedy(tiny_ar):
    a = generate(tiny_ar, PROMPT, gen_length=8, temperature=1.0, top_k=1, seed=5)
    b = generate(tiny_ar, PROMPT, gen_length=8, temperature=0.0)
    assert a.final_tokens == b.final_tokens


@pytest.mark.parametrize("knobs, message", [
    (dict(gen_length=30, block_length=7), "gen_length .* multiple of block_length"),
    (dict(gen_length=32, block_length=8, steps=6), "steps .* divisible by the number of blocks"),
    (dict(temperature=-0.1), r"temperature must be in \[0, inf\)"),
    (dict(sampler="threshold", threshold=1.5), r"threshold must be in \(0, 1\]"),
    (dict(sampler="threshold", threshold=0.0), r"threshold must be in \(0, 1\]"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.2), r"top_p must be in \(0, 1\]"),
    (dict(sampler="sideways"), "sampler must be one of"),
    (dict(pinned={99: 5}, gen_length=16), "pinned position"),
    (dict(gen_length=200), "exceeds the model's context of 128"),
    (dict(record="everything"), "record must be one of"),
])
def test_bad_knobs_name_the_knob_and_range(tiny_mdlm, knobs, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_mdlm, PROMPT, **knobs)


@pytest.mark.parametrize("model, sampler, knobs", [
    ("tiny_mdlm", "random", dict(threshold=0.5)),  # before: committed every position whose uniform draw was >= 0.5
    ("tiny_mdlm", "random", dict(factor=1.0)),
    ("tiny_mdlm", "entropy", dict(threshold=0.5)),  # -entropy is never >= 0.5: one token per step, silently
    ("tiny_bd3lm", "first_hitting", dict(threshold=0.5)),
    ("tiny_bd3lm", "entropy", dict(threshold=0.5)),
])
def test_confidence_rules_are_refused_by_samplers_without_confidences(request, model, sampler, knobs):
    (name,) = knobs
    with pytest.raises(ValueError, match=rf"^{name} do not apply to .*sampler='{sampler}'.* is a knob of mdlm"):
        generate(request.getfixturevalue(model), PROMPT, sampler, gen_length=8, steps=8, **knobs)


def test_confidence_rules_still_apply_to_confidence_scores(tiny_mdlm):
    for sampler in ("low_confidence", "margin"):
        trace = generate(tiny_mdlm, PROMPT, sampler, gen_length=8, steps=8, threshold=0.01)
        assert trace.sampler["threshold"] == 0.01 and tiny_mdlm.mask_id not in trace.final_tokens


def test_prompt_longer_than_the_context_names_the_limit(tiny_mdlm, tiny_ar):
    long_prompt = "to be or not to be " * 40
    with pytest.raises(ValueError, match="context of 128 tokens"):
        generate(tiny_mdlm, long_prompt, gen_length=8, steps=8)
    # ar slides its window: it reads <bos> and the prompt's last 127 tokens
    trace = generate(tiny_ar, long_prompt, gen_length=8, temperature=0.0)
    ids = [tiny_ar.bos_id] + trace.prompt_ids[-127:]
    with torch.no_grad():
        for _ in range(8):
            ids = [tiny_ar.bos_id] + (ids[1:] + [int(tiny_ar(torch.tensor([ids]))[0, -1].argmax())])[-127:]
    assert len(trace.prompt_ids) > 127 and trace.final_tokens == ids[-8:]


def test_empty_prompt_is_unconditional_generation(tiny_mdlm, tiny_ar):
    for model, knobs in ((tiny_mdlm, {"steps": 8}), (tiny_ar, {})):  # ar has no steps knob
        trace = generate(model, "", gen_length=8, temperature=1.0, **knobs)
        assert trace.prompt_ids == [] and model.mask_id not in trace.final_tokens


def test_trace_json_round_trip_and_schema_check(tiny_mdlm, tmp_path):
    trace = generate(tiny_mdlm, PROMPT, gen_length=16, steps=8, temperature=1.0, record="full")
    path = trace.save(tmp_path / "t.json")
    loaded = explorer.Trace.load(path)
    assert loaded.to_dict() == trace.to_dict()
    assert loaded.commit_steps() == trace.commit_steps()
    assert loaded.token_strings[trace.final_tokens[0]] == trace.token_strings[trace.final_tokens[0]]
    data = trace.to_dict() | {"schema": 99}
    with pytest.raises(ValueError, match="schema 99"):
        Trace.from_dict(data)


def test_text_decodes_from_the_whole_sequence(tiny_mdlm):
    trace = generate(tiny_mdlm, PROMPT, gen_length=16, steps=16, temperature=1.0)
    tok = tiny_mdlm.tokenizer
    assert trace.text == tok.decode(trace.final_tokens, skip_special_tokens=True)
    assert all(isinstance(trace.token_strings[t], str) for t in trace.final_tokens)


# --- hidden states (level "full") -------------------------------------------------------------

DISCRETE_RUNS = {  # id: (model fixture, knobs); every discrete sampler and cache path
    "ar": ("tiny_ar", dict(gen_length=10)),
    "ar_r2l": ("tiny_ar_r2l", dict(gen_length=6)),
    "llada": ("tiny_mdlm", dict(sampler="low_confidence", gen_length=16, steps=8, block_length=8, temperature=1.0)),
    "threshold": ("tiny_mdlm", dict(sampler="threshold", threshold=0.01, gen_length=12, steps=12)),
    "cfg": ("tiny_mdlm", dict(gen_length=8, steps=4, cfg_scale=1.0, temperature=1.0)),
    "ancestral": ("tiny_mdlm", dict(sampler="ancestral", gen_length=12, steps=24)),
    "prefix": ("tiny_mdlm", dict(gen_length=16, steps=8, block_length=8, cache="prefix", temperature=1.0)),
    "dual": ("tiny_mdlm", dict(gen_length=16, steps=8, block_length=8, cache="dual", temperature=1.0)),
    "bd3lm": ("tiny_bd3lm", dict(gen_length=40, min_entropy=0.0, stop_at_eos=False)),  # slides past the context
    "bd3lm_fresh": ("tiny_bd3lm", dict(gen_length=20, kv_cache=False, min_entropy=0.0, stop_at_eos=False)),
    "draft_refine": ("tiny_mdlm", dict(sampler="draft_refine", gen_length=12, rounds=2)),
}


@pytest.fixture(scope="module")
def drafter_folder(tiny_ar, tmp_path_factory):
    return tiny_ar  # draft_refine's drafter is a loaded model


def discrete_run(request, run: str):
    fixture, knobs = DISCRETE_RUNS[run]
    if run == "draft_refine":
        knobs = knobs | {"drafter": request.getfixturevalue("drafter_folder")}
    return request.getfixturevalue(fixture), knobs


@pytest.mark.parametrize("run", DISCRETE_RUNS)
def test_hidden_states_are_recorded_at_level_full_only_and_never_change_the_tokens(request, run):
    model, knobs = discrete_run(request, run)
    full = generate(model, PROMPT, record="full", seed=2, **knobs)
    tokens = generate(model, PROMPT, record="tokens", seed=2, **knobs)
    none = generate(model, PROMPT, record="none", seed=2, **knobs)
    assert [f.tokens for f in full.frames] == [f.tokens for f in tokens.frames]
    assert full.final_tokens == none.final_tokens
    assert all(f.hidden is None for f in tokens.frames + none.frames)
    d = model.config.backbone.d_model
    for frame in full.frames:
        assert len(frame.hidden) == len(frame.tokens)  # (gen_length, d_model), None rows where never computed
        assert all(row is None or len(row) == d for row in frame.hidden)
    assert all(row is not None for row in full.frames[-1].hidden)


def test_ar_hidden_state_is_the_one_that_predicted_the_token(tiny_ar):
    trace = generate(tiny_ar, PROMPT, gen_length=6, temperature=0.0, record="full")
    ids = [tiny_ar.bos_id] + trace.prompt_ids + trace.final_tokens
    with torch.no_grad():
        _, hidden = tiny_ar(torch.tensor([ids]), return_hidden=True)  # (1, L, d)
    start = len(trace.prompt_ids)  # index of the last prompt token (after <bos>), whose state predicts token 0
    assert torch.allclose(torch.tensor(trace.frames[-1].hidden), hidden[0, start : start + 6], atol=1e-5)
    assert [sum(row is not None for row in f.hidden) for f in trace.frames] == list(range(7))


def test_mdlm_hidden_states_come_from_the_pass_of_their_step(tiny_mdlm):
    trace = generate(tiny_mdlm, PROMPT, gen_length=12, steps=6, temperature=1.0, record="full", seed=0)
    P = len(trace.prompt_ids)
    before = torch.tensor(trace.prompt_ids + trace.frames[2].tokens)  # the canvas step 3's pass saw
    with torch.no_grad():
        _, hidden = tiny_mdlm.denoiser_logits(before[None], return_hidden=True)
    assert torch.allclose(torch.tensor(trace.frames[3].hidden), hidden[0, P:], atol=1e-5)


def test_dual_cache_keeps_the_refresh_state_outside_the_block(tiny_mdlm):
    trace = generate(tiny_mdlm, PROMPT, gen_length=16, steps=8, block_length=8, cache="dual", temperature=1.0,
                     record="full")
    refresh, step = trace.frames[1], trace.frames[2]  # block 0: refresh, then the block alone
    assert (refresh.cache, step.cache) == ("refresh", "dual")
    assert step.hidden[8:] == refresh.hidden[8:] and step.hidden[:8] != refresh.hidden[:8]


def test_bd3lm_hidden_states_agree_with_and_without_the_kv_cache(tiny_bd3lm):
    knobs = dict(gen_length=40, seed=1, min_entropy=0.0, stop_at_eos=False, record="full")
    cached = generate(tiny_bd3lm, PROMPT, kv_cache=True, **knobs)
    fresh = generate(tiny_bd3lm, PROMPT, kv_cache=False, **knobs)
    zeros = [0.0] * tiny_bd3lm.config.backbone.d_model
    for a, b in zip(cached.frames, fresh.frames):
        assert [row is None for row in a.hidden] == [row is None for row in b.hidden]
        a_rows, b_rows = ([zeros if row is None else row for row in f.hidden] for f in (a, b))
        assert torch.allclose(torch.tensor(a_rows), torch.tensor(b_rows), atol=1e-4)
    P = len(cached.prompt_ids)
    first_block_end = (P // 8 + 1) * 8 - P  # generated positions of the first block
    assert all(row is None for row in cached.frames[1].hidden[first_block_end:])  # future blocks: never computed


def test_draft_frames_have_no_refiner_states(tiny_mdlm, drafter_folder):
    trace = generate(tiny_mdlm, PROMPT, sampler="draft_refine", drafter=drafter_folder, gen_length=8, rounds=1,
                     record="full")
    draft = [f for f in trace.frames if f.block is None]
    assert all(row is None for f in draft for row in f.hidden)
    remasked = next(f for f in trace.frames if f.remasked)
    assert all(row is None for row in remasked.hidden)  # the round's first canvas, before any refiner pass
    assert all(row is not None for row in trace.frames[-1].hidden)


def test_trace_with_hidden_states_round_trips_rounded_and_old_traces_load(tiny_mdlm, tmp_path):
    trace = generate(tiny_mdlm, PROMPT, gen_length=8, steps=4, temperature=1.0, record="full")
    loaded = explorer.Trace.load(trace.save(tmp_path / "t.json"))
    assert loaded.to_dict() == trace.to_dict()
    row = trace.frames[-1].hidden[0]
    assert loaded.frames[-1].hidden[0] == [round(v, 4) for v in row] and loaded.frames[0].hidden == [None] * 8
    old = trace.to_dict()
    for frame in old["frames"]:
        del frame["hidden"]  # a trace written before hidden states were recorded
    assert all(f.hidden is None for f in Trace.from_dict(old).frames)
