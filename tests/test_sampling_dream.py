"""Dream's sampler against a restatement of Dream 7B's published `diffusion_generate` loop, and its defaults."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import explorer
from explorer.kernels import counter_uniform
from explorer.sampling import generate
from explorer.sampling.common import step_seed
from explorer.sampling.dream import DreamParams
from support import dream_config, reference_network, write_folder


def dream_published_loop(model, prompt_ids, gen_length, steps, alg, temperature=0.0, top_p=None, top_k=None,
                         eps=1e-3, uniform=None, seed=0, whole=False):
    """Dream's `_sample` restated from its description (Dream-v0 generation_utils): T = 0 here, so `sample_tokens`
    is the max of the filtered softmax; `uniform(rows, step_seed)` stands in for `torch.rand` in "origin". The
    prompt may hold masks (filled like the rest); `whole` returns the whole canvas instead of the generated part."""
    mask_id = model.mask_id
    x = torch.tensor([prompt_ids + [mask_id] * gen_length])
    order = []  # generated positions committed at each step that commits any
    timesteps = torch.linspace(1, eps, steps + 1)
    generator = torch.Generator().manual_seed(seed)
    for i in range(steps):
        mask_index = x == mask_id
        if not mask_index.any():
            break
        random_seed = step_seed(generator)
        logits = model(x)  # already shifted for a Dream model; SUBS logits for ours
        mask_logits = logits[mask_index]
        t, s = timesteps[i], timesteps[i + 1]
        if temperature > 0:
            mask_logits = mask_logits / temperature
        if top_p is not None and top_p < 1:
            sorted_logits, ranking = mask_logits.sort(-1, descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            remove = cumulative > top_p
            remove[..., 1:] = remove[..., :-1].clone()
            remove[..., 0] = False
            mask_logits = mask_logits.masked_fill(remove.scatter(-1, ranking, remove), float("-inf"))
        if top_k is not None:
            kth = mask_logits.topk(top_k, -1).values[..., -1:]
            mask_logits = mask_logits.masked_fill(mask_logits < kth, float("-inf"))
        probs = mask_logits.softmax(-1)
        confidence, x0 = probs.max(-1)
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            rows = mask_index[0].nonzero().squeeze(-1)
            transfer = uniform(rows, random_seed) < p_transfer
            new = torch.full_like(x0, mask_id)
            new[transfer] = x0[transfer]
            x[mask_index] = new
            if transfer.any():
                order.append(sorted(int(r) - len(prompt_ids) for r in rows[transfer]))
            continue
        if alg == "topk_margin":
            top = probs.sort(-1, descending=True).values
            confidence = top[:, 0] - top[:, 1]
        elif alg == "entropy":
            confidence = (probs * torch.log(probs + 1e-10)).sum(-1)
        num_mask_token = mask_index.sum() / mask_index.shape[0]
        count = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
        full_confidence = torch.full(x.shape, -torch.inf)
        full_confidence[mask_index] = confidence
        if count > 0:
            transfer_index = full_confidence.topk(count).indices
            candidate = torch.full_like(x, mask_id)
            candidate[mask_index] = x0
            x[0, transfer_index[0]] = candidate[0, transfer_index[0]]
            order.append(sorted(int(r) - len(prompt_ids) for r in transfer_index[0]))
    return (x[0] if whole else x[0, len(prompt_ids):]).tolist(), order


PROMPT = "ROMEO:"


@pytest.mark.parametrize("alg, filters", [("maskgit_plus", {}), ("topk_margin", {"top_p": 0.9}), ("entropy", {}),
                                           ("entropy", {"top_k": 5}), ("origin", {}), ("origin", {"top_p": 0.9})])
def test_dream_sampler_reproduces_the_published_loop(mdlm_tiny, alg, filters):
    """Tokens and the positions committed at every step, on the shipped model (whose choices depend on the order)."""
    prompt_ids = mdlm_tiny.tokenizer.encode(PROMPT).ids
    with torch.no_grad():
        expected, order = dream_published_loop(mdlm_tiny, prompt_ids, 24, 10, alg, uniform=counter_uniform_origin,
                                               seed=3, **filters)
    trace = generate(mdlm_tiny, PROMPT, "dream", seed=3, gen_length=24, steps=10, alg=alg, temperature=0.0,
                     top_p=filters.get("top_p", 1.0), top_k=filters.get("top_k"))
    assert trace.frames[-1].tokens == expected
    assert [f.committed for f in trace.frames[1:]] == order
    assert model_masks_left(trace) == 0


@pytest.fixture(scope="module")
def mdlm_tiny():
    return explorer.load("mdlm-tiny")


def counter_uniform_origin(rows, seed):
    return counter_uniform(rows, seed ^ 0x68E31DA4)  # the same random source the sampler reads


def model_masks_left(trace) -> int:
    return sum(tok == trace.mask_id for tok in trace.frames[-1].tokens)


def test_each_step_commits_dreams_count(tiny_mdlm):
    """int(n_masked * (1 - s/t)) per step on linspace(1, eps, steps + 1), all the rest at the last step."""
    trace = generate(tiny_mdlm, PROMPT, "dream", gen_length=40, steps=8, alg="maskgit_plus", temperature=0.0)
    times = torch.linspace(1, 1e-3, 9)
    masked = 40
    counts = []
    for i in range(8):
        count = masked if i == 7 else int(torch.tensor(float(masked)) * (1 - times[i + 1] / times[i]))
        counts.append(count)
        masked -= count
    steps_run = [f for f in trace.frames[1:]]
    assert [len(f.committed) for f in steps_run] == [c for c in counts if c]  # a step that commits nothing is skipped
    assert trace.stats["nfe"] == sum(1 for c in counts if c) and sum(counts) == 40


def test_alg_temp_draws_positions_without_replacement_like_softmax():
    """Gumbel-top-k: the first pick follows softmax(confidence / alg_temp) (what Dream's multinomial draws)."""
    from explorer.sampling.dream import pick_positions

    confidence = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.3])
    firsts = torch.tensor([int(pick_positions(confidence, 2, 0.25, seed)[0]) for seed in range(6000)])
    freq = torch.bincount(firsts, minlength=5).float() / len(firsts)
    assert torch.allclose(freq, F.softmax(confidence / 0.25, -1), atol=0.02)
    assert all(len(set(pick_positions(confidence, 3, 0.25, seed).tolist())) == 3 for seed in range(50))


def test_temperature_samples_and_the_dream_defaults(tiny_mdlm):
    a = generate(tiny_mdlm, PROMPT, "dream", seed=1, gen_length=16, steps=16)
    b = generate(tiny_mdlm, PROMPT, "dream", seed=2, gen_length=16, steps=16)
    assert a.sampler["alg"] == "entropy" and a.sampler["temperature"] == 0.2 and a.sampler["top_p"] == 0.95
    assert a.frames[-1].tokens != b.frames[-1].tokens  # temperature 0.2 over a near-uniform random model
    again = generate(tiny_mdlm, PROMPT, "dream", seed=1, gen_length=16, steps=16)
    assert a.frames[-1].tokens == again.frames[-1].tokens


def test_a_released_dream_model_runs_dreams_sampler_by_default(tmp_path):
    config = dream_config()
    folder = write_folder(tmp_path / "Dream-tiny", config, reference_network(config))
    model = explorer.load(folder, device="cpu")
    trace = generate(model, "ROMEO:", gen_length=8, steps=8)
    assert trace.sampler["name"] == "dream" and trace.sampler["alg"] == "entropy"
    llada_rule = generate(model, "ROMEO:", "low_confidence", gen_length=8, steps=8)  # LLaDA's rules stay selectable
    assert llada_rule.sampler["name"] == "low_confidence"


@pytest.mark.parametrize("knobs, message", [
    ({"alg": "greedy"}, "alg must be one of"),
    ({"alg_temp": -1.0}, "alg_temp"),
    ({"block_length": 8}, "block_length"),
    ({"threshold": 0.9}, "threshold"),
])
def test_bad_dream_knobs_name_themselves(tiny_mdlm, knobs, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_mdlm, PROMPT, "dream", gen_length=8, steps=8, **knobs)


def test_dream_knobs_are_refused_by_other_samplers(tiny_mdlm):
    with pytest.raises(ValueError, match="sampler='dream'"):
        generate(tiny_mdlm, PROMPT, "low_confidence", gen_length=8, steps=8, alg="entropy")
    assert DreamParams().steps == 64


def test_the_cli_runs_dreams_sampler_with_its_knobs(tmp_path, capsys):
    import json

    from explorer.cli import main

    trace_path = tmp_path / "t.json"
    assert main(["sample", "--checkpoint", "mdlm-tiny", "--sampler", "dream", "--alg", "origin", "--alg-temp", "0",
                 "--gen-length", "8", "--steps", "4", "--trace", str(trace_path), "--no-animation"]) == 0
    sampler = json.loads(trace_path.read_text())["sampler"]
    assert sampler["name"] == "dream" and sampler["alg"] == "origin"
    assert main(["sample", "--checkpoint", "mdlm-tiny", "--alg", "entropy", "--gen-length", "8"]) == 2
    assert "alg='entropy' is a knob of mdlm (sampler='dream')" in capsys.readouterr().err
