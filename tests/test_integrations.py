"""Other libraries' runs as our Trace: DiffusionGemma's generate (transformers) and LLaDA2Pipeline (diffusers), on tiny
random models built with the libraries' own config classes, checked against what the libraries return."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import threading
from pathlib import Path

import diffusers  # the `integrations` extra (in `dev`)
import pytest
import torch
import transformers

import explorer
from explorer.integrations.diffusers import from_animate_json, record_pipeline, to_animate_json
from explorer.integrations.transformers import record_generate
from explorer.released.synthetic import DG_CANVAS, tiny_diffusion_gemma, write_tiny_diffusion_gemma
from explorer.sampling.diffusion_gemma import QUEUED_FRAMES
from explorer.sampling.trace import Trace

EXAMPLE = Path(explorer.__file__).parent / "examples" / "mdlm-tiny.json"


@pytest.fixture(scope="module")
def dg_network():
    return tiny_diffusion_gemma(seed=0)


@pytest.fixture(scope="module")
def dg_folder(tmp_path_factory):
    return write_tiny_diffusion_gemma(tmp_path_factory.mktemp("dg") / "tiny-diffusion-gemma")


def decoder_calls(network) -> list[int]:
    """A counter of the decoder's forward passes (the model calls generate makes per denoising step)."""
    calls = [0]
    network.model.decoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# --- the trace's source block -------------------------------------------------------------------------------------

def test_a_trace_written_by_main_still_loads_with_no_source():
    trace = Trace.load(EXAMPLE)
    assert trace.source is None and trace.schema == 1


def test_source_round_trips_and_hostile_sources_are_refused(tmp_path):
    data = json.loads(EXAMPLE.read_text())
    data["source"] = {"library": "transformers", "version": "5.25.0", "settings": {"t_min": 0.4, "steps": 4}}
    Trace.from_dict(data).save(tmp_path / "t.json")
    assert Trace.load(tmp_path / "t.json").source == data["source"]
    for bad, message in [({"a": [1]}, "source.a must be a string"), ({"a": {"b": {"c": 1}}}, "source.a.b must be"),
                         ({"a": "x" * 1001}, "at most 1000 characters"), ("text", "source must be an object"),
                         ({str(k): k for k in range(65)}, "at most 64 entries")]:
        with pytest.raises(ValueError, match=message):
            Trace.from_dict(data | {"source": bad})


# --- transformers: DiffusionGemma's generate ----------------------------------------------------------------------

def test_record_generate_matches_what_generate_returns(dg_network):
    calls = decoder_calls(dg_network)
    prompt = torch.tensor([[1, 40, 41, 42]])
    output, trace = record_generate(dg_network, prompt, record="full", seed=3, max_new_tokens=2 * DG_CANVAS,
                                    max_denoising_steps=4, stability_threshold=0)
    generated = output.sequences[0, prompt.shape[1]:].tolist()
    assert trace.final_tokens == generated  # final tokens equal
    assert len(trace.frames) - 1 == calls[0] == trace.stats["nfe"]  # one frame per decoder pass, after the first
    steps = trace.commit_steps()
    assert all(s is not None for s in steps)  # every position committed once, at the last pass of its canvas
    for block in range(2):
        last = max(i for i, f in enumerate(trace.frames) if f.block == block)
        assert trace.frames[last].committed == list(range(block * DG_CANVAS, (block + 1) * DG_CANVAS))
        assert trace.frames[last].tokens[: (block + 1) * DG_CANVAS] == generated[: (block + 1) * DG_CANVAS]
    assert all(len(f.confidence) == 2 * DG_CANVAS for f in trace.frames)
    # hidden states: the decoder's last state of each pass, over the canvas it denoised; the LM head reads the draft
    assert trace.frames[0].hidden == [None] * 2 * DG_CANVAS
    assert all(len(f.hidden) == 2 * DG_CANVAS for f in trace.frames)
    for frame in trace.frames[1:]:
        lo = frame.block * DG_CANVAS
        assert all(row is None for row in frame.hidden[lo + DG_CANVAS:])  # canvases not drawn yet
        state = torch.tensor(frame.hidden[lo : lo + DG_CANVAS])  # (canvas_length, d)
        assert state.shape == (DG_CANVAS, dg_network.config.text_config.hidden_size)
        if not frame.committed:  # the last pass of a canvas shows the canvas generate keeps
            assert dg_network.lm_head(state).argmax(-1).tolist() == frame.tokens[lo : lo + DG_CANVAS]
    assert trace.source["library"] == "transformers" and trace.source["settings"]["max_denoising_steps"] == 4
    again = Trace.from_dict(json.loads(json.dumps(trace.to_dict())))
    assert again.source == trace.source and again.final_tokens == generated
    # the same seed, the same run; the caller's random state untouched
    state = torch.get_rng_state()
    _, twice = record_generate(dg_network, prompt, seed=3, max_new_tokens=2 * DG_CANVAS, max_denoising_steps=4,
                               stability_threshold=0)
    assert twice.final_tokens == generated and torch.equal(torch.get_rng_state(), state)


def test_the_recorder_refuses_max_length_and_batches(dg_network):
    with pytest.raises(ValueError, match="max_new_tokens instead of max_length"):
        record_generate(dg_network, torch.tensor([[1, 5]]), max_length=20)
    with pytest.raises(ValueError, match="batch size 1"):
        record_generate(dg_network, torch.tensor([[1, 5], [1, 6]]), max_new_tokens=DG_CANVAS, max_denoising_steps=1)


def test_a_diffusion_gemma_folder_loads_and_generates_like_any_family(dg_folder):
    from explorer.page.folders import family_at, sampler_at

    assert (family_at(dg_folder), sampler_at(dg_folder)) == ("diffusion_gemma", "entropy_bound")
    model = explorer.load(dg_folder, device="cpu")
    calls = decoder_calls(model.network)
    trace = explorer.generate(model, prompt="ROMEO:", gen_length=12, steps=3, seed=1, record="full")
    assert len(trace.final_tokens) == 2 * DG_CANVAS  # whole canvases
    assert len(trace.frames) - 1 == calls[0] and trace.model["family"] == "diffusion_gemma"
    assert trace.sampler["name"] == "entropy_bound" and trace.sampler["entropy_bound"] == 0.1
    assert trace.source == {"library": "transformers", "version": transformers.__version__,
                            "model_class": "DiffusionGemmaForBlockDiffusion"}  # whose loop made the run
    assert Trace.from_dict(trace.to_dict()).source == trace.source
    assert explorer.generate(explorer.load("mdlm-tiny"), "ROMEO:", gen_length=4, steps=2).source is None  # ours
    assert explorer.generate(model, prompt="ROMEO:", gen_length=12, steps=3, seed=1).final_tokens == \
        trace.final_tokens  # seeded
    with pytest.raises(ValueError, match=r"t_max must be greater than t_min"):
        explorer.generate(model, prompt="ROMEO:", t_min=0.9, t_max=0.5)
    with pytest.raises(ValueError, match=r"entropy_bound must be in \(0, inf\)"):
        explorer.generate(model, prompt="ROMEO:", entropy_bound=0)
    with pytest.raises(ValueError, match="prompt must hold at least one token"):
        explorer.generate(model, prompt="")


def test_diffusion_gemma_frames_stream_while_generate_runs(dg_folder):
    model = explorer.load(dg_folder, device="cpu")
    returned, library_generate = threading.Event(), model.network.generate

    def watched(*args, **kwargs):
        output = library_generate(*args, **kwargs)
        returned.set()
        return output

    model.network.generate = watched
    _, _, frames = explorer.stream(model, "ROMEO:", gen_length=2 * DG_CANVAS, steps=4, seed=1, record="full")
    first = next(frames)
    assert not returned.is_set()  # the first frame came while generate was still running
    streamed = [first, *frames]
    assert returned.is_set() and len(streamed) == 2 * 4 + 1 > QUEUED_FRAMES + 1
    ran = explorer.generate(model, "ROMEO:", gen_length=2 * DG_CANVAS, steps=4, seed=1, record="full")
    assert [f.tokens for f in streamed] == [f.tokens for f in ran.frames]
    assert [f.committed for f in streamed] == [f.committed for f in ran.frames]
    # a reader that stops ends generate at its next pass: no worker is left running
    _, _, frames = explorer.stream(model, "ROMEO:", gen_length=2 * DG_CANVAS, steps=4, seed=1)
    next(frames)
    frames.close()
    assert not any(t.name == "diffusion-gemma-generate" for t in threading.enumerate())


def test_importing_explorer_imports_neither_library():
    code = "import sys, explorer, explorer.integrations; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --- diffusers: LLaDA2Pipeline and animate_sampling JSON ------------------------------------------------------------

@pytest.fixture(scope="module")
def llada2_pipe():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    network = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1,
                                           max_position_embeddings=128)).eval()
    pipe = diffusers.LLaDA2Pipeline(model=network, scheduler=diffusers.BlockRefinementScheduler(block_length=8))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_record_pipeline_matches_what_llada2_returns(llada2_pipe):
    calls = [0]
    hook = llada2_pipe.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        output, trace = record_pipeline(llada2_pipe, torch.tensor([[5, 6, 7]]), gen_length=20, block_length=8,
                                        num_inference_steps=4, mask_token_id=99, eos_token_id=None, record="full",
                                        threshold=0.95, editing_threshold=None,
                                        generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert trace.final_tokens == output.sequences[0].tolist() and 99 not in trace.final_tokens
    assert len(trace.frames) - 1 == calls[0]  # one frame per model call
    committed = [p for f in trace.frames for p in f.committed]
    assert sorted(committed) == list(range(20))  # each position unmasked once
    for i, frame in enumerate(trace.frames[1:], 1):  # a position is a mask exactly until its commit
        assert [t != 99 for t in frame.tokens] == [s is not None for s in trace.commit_steps(i)]
    assert trace.source["pipeline"] == "LLaDA2Pipeline" and trace.source["version"] == diffusers.__version__


class ChatPrompt:
    """A stand-in for DiffusionGemma's processor: its chat template gives fixed prompt ids."""

    ids = [1, 40, 41, 42]

    def apply_chat_template(self, messages, **_):
        return {"input_ids": torch.tensor([self.ids])}


@pytest.fixture
def dg_pipe(dg_network, monkeypatch):
    """DiffusionGemmaPipeline over the tiny network. diffusers 0.42.1 passes the decoder's mask builder
    `past_key_values`, which transformers 5.25 renamed `cache`: the keyword is renamed for the call, nothing else."""
    decoder = dg_network.model.decoder
    build = decoder.create_diffusion_decoder_attention_mask
    if "past_key_values" not in inspect.signature(build).parameters:
        monkeypatch.setattr(decoder, "create_diffusion_decoder_attention_mask",
                            lambda *a, past_key_values=None, **k: build(*a, cache=past_key_values, **k))

    def make(scheduler):
        pipe = diffusers.DiffusionGemmaPipeline(model=dg_network, scheduler=scheduler, processor=ChatPrompt())
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


@pytest.mark.parametrize("scheduler", [diffusers.BlockRefinementScheduler, lambda: diffusers.DiscreteDDIMScheduler(
    corrector_steps=1)], ids=["block_refinement", "ddim_corrector"])
def test_record_pipeline_matches_what_diffusion_gemma_pipeline_returns(dg_pipe, dg_network, scheduler):
    pipe = dg_pipe(scheduler())
    calls = [0]
    hook = dg_network.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        output, trace = record_pipeline(pipe, prompt="hi", gen_length=2 * DG_CANVAS, num_inference_steps=4,
                                        record="full", generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert trace.final_tokens == output.sequences[0].tolist()  # final tokens equal
    assert trace.prompt_ids == ChatPrompt.ids and trace.model["family"] == "diffusion_gemma"
    assert len(trace.frames) - 1 == calls[0] == 8  # one frame per model call, corrector sweeps included
    committed = [p for f in trace.frames for p in f.committed]
    assert sorted(committed) == list(range(2 * DG_CANVAS))  # each position committed once
    steps = trace.commit_steps()
    for s, frame in enumerate(trace.frames):  # a committed token stays unless the step says it revised it
        for p in range(2 * DG_CANVAS):
            if steps[p] is not None and steps[p] < s and frame.tokens[p] != trace.frames[s - 1].tokens[p]:
                assert p in (frame.revised or [])
    for block in range(2):  # each canvas ends as the pipeline appended it, at its last model call
        last = max(i for i, f in enumerate(trace.frames) if f.block == block)
        lo, hi = block * DG_CANVAS, (block + 1) * DG_CANVAS
        assert trace.frames[last].tokens[lo:hi] == output.sequences[0, lo:hi].tolist()
        assert all(steps[p] <= last for p in range(lo, hi))
    assert [len(f.confidence) for f in trace.frames] == [2 * DG_CANVAS] * 9
    assert trace.source["pipeline"] == "DiffusionGemmaPipeline" and "step" not in vars(pipe.scheduler)  # unwrapped
    _, again = record_pipeline(pipe, prompt="hi", gen_length=2 * DG_CANVAS, num_inference_steps=4,
                               generator=torch.Generator().manual_seed(0))
    assert again.final_tokens == trace.final_tokens  # recording changes nothing the scheduler draws
    with pytest.raises(ValueError, match="not input_ids"):
        record_pipeline(pipe, torch.tensor([[1, 2]]), gen_length=DG_CANVAS)


def test_animate_sampling_json_round_trips_and_refuses_hostile_input(llada2_pipe):
    _, trace = record_pipeline(llada2_pipe, torch.tensor([[5, 6, 7]]), gen_length=12, block_length=8,
                               num_inference_steps=4, mask_token_id=99, eos_token_id=None)
    data = json.loads(json.dumps(to_animate_json(trace)))
    assert data["frames"][3] == {"step": 3, "ids": trace.frames[3].tokens}
    back = from_animate_json(data)
    assert [f.tokens for f in back.frames] == [f.tokens for f in trace.frames]
    assert back.commit_steps() == trace.commit_steps() and back.source["format"] == "animate_sampling"
    for bad, message in [({"frames": []}, "1 to"), ({"frames": [{"ids": [1, 2]}, {"ids": [1]}]}, "frames\\[0\\] has 2"),
                         ({"frames": [{"ids": [1, -2]}]}, "token ids"), ({"frames": [{"ids": ["1"]}]}, "token ids"),
                         ({"frames": [{"ids": [1]}], "vocab": {"x": "a"}}, "decimal token ids"),
                         ({"frames": [{"ids": [1]}], "mask_token_id": "7"}, "mask_id must be an int")]:
        with pytest.raises(ValueError, match=message):
            from_animate_json(bad)
    for key in ("label", "subtitle", "prompt", "mask_token_id", "block_length"):  # what animate_sampling's player reads
        assert key in data, key
    assert data["block_length"] == 8 and isinstance(data["prompt"], str) and back.sampler["block_length"] == 8


def test_animate_sampling_files_of_diffusion_gemma_with_pending_canvases_load():
    """A trajectory as animate_sampling.py's DiffusionGemma capture writes it: no mask token, -1 where the next
    canvas is not drawn yet, frames from the callback (no initial canvas), the prompt as text."""
    data = {"method": "diffusion_gemma", "label": "DiffusionGemma · EntropyBoundScheduler", "subtitle": "s",
            "model_id": "google/diffusiongemma-26B-A4B-it", "prompt": "Why is the sky <b>blue</b>?",
            "gen_length": 4, "block_length": 2, "mask_token_id": None,
            "frames": [{"step": 0, "ids": [7, 3, -1, -1]}, {"step": 1, "ids": [5, 3, -1, -1]},
                       {"step": 2, "ids": [5, 3, 8, 9]}, {"step": 3, "ids": [5, 3, 6, 9]}],
            "vocab": {"3": " sky", "5": "The", "6": " is", "7": "zz", "8": "q", "9": " blue"}}
    trace = from_animate_json(json.loads(json.dumps(data)))
    placeholder = trace.mask_id
    assert placeholder == 10 and trace.token_strings[placeholder] == "·"
    assert trace.frames[0].tokens == [7, 3, placeholder, placeholder] and trace.text == "The sky is blue"
    assert trace.model["name"] == "google/diffusiongemma-26B-A4B-it" and trace.prompt_text == data["prompt"]
    assert trace.commit_steps() == [1, 0, 3, 2] and trace.source["label"] == data["label"]
    llada = {**data, "mask_token_id": 99, "frames": [{"step": 0, "ids": [99, -1]}, {"step": 1, "ids": [5, 3]}]}
    assert from_animate_json(llada).frames[0].tokens == [99, 99]  # not opened yet: still masked
    for bad, message in [({**data, "prompt": 3}, "prompt must be a string"),
                         ({**data, "label": "x" * 10_001}, "label must be a string of at most"),
                         ({**data, "block_length": 0}, "block_length must be an int"),
                         ({**data, "frames": [{"ids": [1, -3]}]}, "or -1")]:
        with pytest.raises(ValueError, match=message):
            from_animate_json(bad)
