"""CALM sampling: one latent vector (K tokens) per step, with temperature but no likelihoods.

Each step runs the causal backbone once (KV cache over chunk positions), draws latent samples from
the energy head (one head pass per sample) and decodes each with the autoencoder into K tokens.
At temperature 1 one sample is decoded. Below 1 the head gives no probabilities to sharpen, so the
temperature is applied to the distribution of *decoded chunks* by sampling alone (CALM, Alg. 1):

* `exact`: write 1/T = n + alpha. Draw n samples; restart unless all n decode to the same chunk x.
  If alpha > 0, run the Bernoulli factory: i = 1; loop { draw x'; if x' == x accept x; elif U < alpha / i
  restart; i += 1 }. The accepted chunk has probability P(x)^(1/T) / Z exactly; the expected number of
  draws grows quickly as T falls (`max_draws` caps it, then the chunk falls back to the batch rule).
* `batch`: draw N samples at once, count the duplicates, and pick among the chunks seen at least n = 1/T
  times with weight C(count, n). Cheap and biased toward T = 1 when N is small (N = 200 in the paper).

`exact_temperature_sample` and `batch_temperature_sample` work on any sampler of hashable outcomes,
which is how the tests check them against P^(1/T) on toy distributions.
"""

from __future__ import annotations

import math
import numbers
import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator

import torch

from explorer.sampling.common import MAX_GEN_LENGTH, Sampler, SamplerParams, check_int, knob, make_frame
from explorer.sampling.trace import Frame

ALGORITHMS = ("exact", "batch")
MAX_CANDIDATES = 500  # N: head samples per chunk of the batch algorithm (API, CLI and page)
MAX_DRAWS = 100_000  # head samples per chunk the exact algorithm may draw
EXACT_DRAW_BLOCK = 64  # head samples computed per pass while the exact algorithm runs


def temperature_parts(temperature: float) -> tuple[int, float]:
    """1/T = n + alpha with integer n >= 1 and alpha in [0, 1)."""
    inverse = 1.0 / temperature
    n = math.floor(inverse + 1e-9)
    alpha = inverse - n
    return n, (0.0 if alpha < 1e-9 else alpha)


def check_temperature(temperature: float, algorithm: str, n_candidates: int) -> None:
    """Which temperatures each algorithm represents: exact any T in [1/MAX_CANDIDATES, 1]; batch T = 1/n, n in 1..N."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not 0 < temperature <= 1:
        raise ValueError(f"temperature must be in (0, 1] for CALM's likelihood-free sampling (it can sharpen the "
                         f"model's distribution, not flatten it; 0, greedy decoding, needs likelihoods, which CALM "
                         f"does not have: the lowest is 1/{MAX_CANDIDATES}), got {temperature!r}")
    if 1 / temperature > MAX_CANDIDATES:  # exact draws 1/T samples per try and falls back to batch: 1/T <= N
        raise ValueError(f"temperature must be at least 1/{MAX_CANDIDATES} (1/T head samples must agree, at most "
                         f"N = {MAX_CANDIDATES}), got {temperature}")
    check_int("n_candidates (N)", n_candidates, 2, MAX_CANDIDATES)  # exact falls back to the batch rule
    if algorithm == "batch":
        n, alpha = temperature_parts(temperature)
        if alpha or n > n_candidates:
            raise ValueError(f"temperature {temperature} is not representable by the batch approximation with "
                             f"N={n_candidates}: it needs 1/T to be an integer n <= N, i.e. T in "
                             f"{{1, 1/2, 1/3, ..., 1/{n_candidates}}}; use algorithm='exact' for other values")


def exact_temperature_sample(draw: Callable[[int], list[Hashable]], temperature: float, rng: random.Random,
                             max_draws: int = MAX_DRAWS) -> tuple[Hashable | None, int]:
    """CALM's exact algorithm: (outcome ~ P^(1/T) normalised, draws used); outcome None if max_draws ran out.

    `draw(k)` returns k independent samples of the base sampler P.
    """
    n, alpha = temperature_parts(temperature)
    used = 0
    while used < max_draws:
        first = draw(n)
        used += n
        if any(x != first[0] for x in first):
            continue  # restart: the n draws disagree
        x = first[0]
        if alpha == 0:
            return x, used
        i = 1
        while used < max_draws:  # Bernoulli factory for the fractional power alpha
            again = draw(1)[0]
            used += 1
            if again == x:
                return x, used
            if rng.random() < alpha / i:
                break  # restart
            i += 1
    return None, used


def batch_temperature_sample(candidates: list[Hashable], temperature: float, rng: random.Random) -> Hashable:
    """CALM's batch approximation: among outcomes seen at least n = 1/T times in `candidates`, pick one with
    weight C(count, n); if none is seen n times, the most frequent outcome."""
    n, _ = temperature_parts(temperature)
    counts = Counter(candidates)
    eligible = [(x, math.comb(c, n)) for x, c in counts.items() if c >= n]
    if not eligible:
        return counts.most_common(1)[0][0]
    total = sum(w for _, w in eligible)
    r = rng.random() * total
    for x, w in eligible:
        r -= w
        if r < 0:
            return x
    return eligible[-1][0]


@dataclass(frozen=True)
class CALMParams(SamplerParams):
    gen_length: int = knob(64, "tokens to generate (a multiple of the model's chunk size K)")
    temperature: float = knob(1.0, "in (0, 1]: 1 decodes one head sample per chunk, lower sharpens (1/T head samples "
                                   "must agree); not 0: greedy decoding needs likelihoods, which CALM does not have")
    algorithm: str = knob("exact", 'temperature < 1: "exact" (Alg. 1) or "batch" (N candidates)')
    n_candidates: int = knob(200, "N for the batch approximation")
    max_draws: int = knob(2000, "exact algorithm: head samples per chunk before falling back to the batch rule")
    view_samples: int = knob(
        16, 'level "full": extra head samples per chunk kept for the scatter of the head\'s distribution')

    def validate(self, model) -> None:
        chunk = model.chunk
        check_int("gen_length", self.gen_length, 1, MAX_GEN_LENGTH)
        if self.gen_length % chunk:
            raise ValueError(f"gen_length ({self.gen_length}) must be a multiple of the chunk size K={chunk}")
        check_temperature(self.temperature, self.algorithm, self.n_candidates)
        check_int("max_draws", self.max_draws, 1, MAX_DRAWS)
        check_int("view_samples", self.view_samples, 0, MAX_CANDIDATES)


@torch.no_grad()
def calm_sampler(model, prompt_ids: list[int], params: CALMParams, generator: torch.Generator,
                 record: str = "tokens") -> Iterator[Frame]:
    """Yield the empty canvas, then one Frame per generated chunk (K tokens)."""
    K = model.chunk
    params.validate(model)
    G = params.gen_length
    pad = (-len(prompt_ids)) % K  # the prompt is left-padded with <bos> to whole chunks
    context = [model.bos_id] * pad + list(prompt_ids)
    if len(context) + G > model.max_seq_len:
        raise ValueError(f"prompt ({len(prompt_ids)} tokens, padded to {len(context)}) + gen_length ({G}) exceeds "
                         f"the model's context of {model.max_seq_len} tokens")
    rng = random.Random(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    view_generator = torch.Generator().manual_seed(rng.getrandbits(31))  # scatter draws never shift the tokens
    canvas = torch.full((G,), model.mask_id, dtype=torch.long)
    confidence = torch.full((G,), float("nan"))
    first = make_frame(record, False, 0, canvas, [], 0, proposal=canvas, confidence=confidence)
    if first is not None:
        yield first
    cache = model.new_cache()
    hidden = model.prefix_state(torch.tensor([context], dtype=torch.long), cache=cache)[0]  # (d,)
    nfe = 1
    notes: list[str] = []  # the chunk's frame takes them (at level "none", the final frame)
    for step in range(G // K):
        chunk, z, probs, _ = next_chunk(model, hidden, params, generator, rng, notes)
        lo = step * K
        canvas[lo : lo + K] = chunk
        confidence[lo : lo + K] = probs
        final = step == G // K - 1
        frame = make_frame(record, final, step + 1, canvas, range(lo, lo + K), nfe, block=step, proposal=canvas,
                           confidence=confidence, notes=notes)
        if frame is not None:
            if record == "full":
                frame.latent = [[round(v, 4) for v in z.tolist()]]
                if params.view_samples:
                    view = model.sample_latents(hidden, params.view_samples, view_generator)
                    frame.samples = [[round(v, 4) for v in row] for row in view.tolist()]
            yield frame
        if not final:
            hidden = model.hidden_states(chunk.view(1, 1, K).to(model.device), cache=cache)[0, -1]
            nfe += 1


def next_chunk(model, hidden: torch.Tensor, params: CALMParams, generator, rng, notes: list[str] | None = None
               ) -> tuple:
    """(tokens (K,), the chosen latent (l,), decoder confidence (K,), head samples the algorithm consumed) of
    the next chunk after the backbone state `hidden` (d,). A chunk for which the exact algorithm gave up says so in
    `notes`, when given."""
    decoded: dict[tuple, tuple] = {}
    drawn = 0
    pending: list[tuple] = []  # exact algorithm: samples computed in a block, not yet consumed

    def decode_samples(count: int) -> list[tuple]:
        z = model.sample_latents(hidden, count, generator)  # (count, l)
        probs = model.autoencoder.decode(z).softmax(-1)  # (count, K, V)
        conf, toks = probs.max(-1)
        keys = [tuple(row) for row in toks.tolist()]
        for key, zi, ci in zip(keys, z, conf):
            decoded.setdefault(key, (zi.cpu(), ci.cpu()))
        return keys

    def draw(count: int) -> list[tuple]:
        nonlocal drawn
        drawn += count
        return decode_samples(count)

    def draw_from_blocks(count: int) -> list[tuple]:
        """The exact algorithm consumes samples one or n at a time; i.i.d. samples computed EXACT_DRAW_BLOCK at a
        time give the same distribution for one head pass per block instead of one per sample."""
        nonlocal drawn
        while len(pending) < count:
            pending.extend(decode_samples(max(count, EXACT_DRAW_BLOCK)))
        drawn += count
        taken = pending[:count]
        del pending[:count]
        return taken

    if params.temperature == 1:
        key = draw(1)[0]
    elif params.algorithm == "exact":
        key, _ = exact_temperature_sample(draw_from_blocks, params.temperature, rng, params.max_draws)
        if key is None:
            if notes is not None:
                notes.append(f"exact temperature sampling needed more than max_draws={params.max_draws} head "
                             "samples for a chunk; that chunk used the batch rule (raise max_draws or temperature)")
            key = batch_temperature_sample(draw(params.n_candidates), params.temperature, rng)
    else:
        key = batch_temperature_sample(draw(params.n_candidates), params.temperature, rng)
    z, conf = decoded[key]
    return torch.tensor(key), z, conf, drawn


SAMPLERS = [Sampler("calm", algorithm, CALMParams, calm_sampler, "CALM", fixed={"algorithm": algorithm})
            for algorithm in ALGORITHMS]
