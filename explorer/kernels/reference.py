"""PyTorch reference implementations of the sampling hot spots: memory-frugal, CPU-friendly.

Work is split into row chunks so that no intermediate is larger than `CHUNK_ELEMENTS` floats,
whatever the batch, length or vocabulary (LLaDA's vocabulary has 126,464 entries), and nothing is
promoted to float64. Noise is counter-based: the uniform for logit (row r, token v) is a hash of
(seed, offset + r * V + v), so samples do not depend on chunking or on which other rows are present;
`counter_gumbel` turns it into Gumbel noise that is finite for every counter.
"""

from __future__ import annotations

import numpy as np
import torch

CHUNK_ELEMENTS = 1 << 20  # about 4 MB of float32 per intermediate
# The fused head keeps one (rows, V) logits block: more rows per block means fewer passes over the
# (V, d) weight, which is what bounds a thin matmul's speed (32 MB of float32 here).
HEAD_CHUNK_ELEMENTS = 1 << 23
_MASK32 = 0xFFFFFFFF


def _as_int32(value: int) -> int:
    """The signed int32 with the same 32 bits as `value` (torch has no uint32 arithmetic on CPU)."""
    value &= _MASK32
    return value - (1 << 32) if value >= 1 << 31 else value


UNIFORM_MAX = 1.0 - 2.0**-24  # the largest float32 below 1
PRUNED_GUMBEL_ELEMENTS = 1 << 16  # below this many logits (32 rows of 2,048) transforming all the noise is as fast


def counter_bits(index: torch.Tensor, seed: int) -> torch.Tensor:
    """The lowbias32 hash of (counter * golden + seed mix), as int32 holding the uint32's 32 bits: bit-identical to
    the same hash on uint32 (the Triton kernels use it). CPU tensors are hashed in numpy's uint32 (about twice as
    fast here); other devices in int32 (`_torch_bits`)."""
    if index.device.type == "cpu":
        return torch.from_numpy(_numpy_bits(index, seed).view(np.int32))
    return _torch_bits(index, seed)


def _torch_bits(index: torch.Tensor, seed: int) -> torch.Tensor:
    """counter_bits on any device: int32 arithmetic wraps like uint32; `>>` on int32 is arithmetic, so each logical
    shift is followed by a mask."""
    x = index.to(torch.int32, copy=True).mul_(_as_int32(0x9E3779B1)).add_(_as_int32(seed * 0x85EBCA77 + 0x27D4EB2F))
    shifted = torch.empty_like(x)  # one scratch buffer for the three shift-and-mask steps (this is a hot loop)
    for shift, mask, multiplier in ((16, 0xFFFF, 0x7FEB352D), (15, 0x1FFFF, 0x846CA68B), (16, 0xFFFF, None)):
        x.bitwise_xor_(torch.bitwise_right_shift(x, shift, out=shifted).bitwise_and_(mask))
        if multiplier is not None:
            x.mul_(_as_int32(multiplier))
    return x


def _numpy_bits(index: torch.Tensor, seed: int) -> np.ndarray:
    """counter_bits of a CPU tensor as numpy uint32 (the counters' low 32 bits, as the int32 cast keeps)."""
    x = index.detach().numpy().astype(np.uint32)  # wraps modulo 2**32, as the int32 cast does
    with np.errstate(over="ignore"):
        x *= np.uint32(0x9E3779B1)
        x += np.uint32((seed * 0x85EBCA77 + 0x27D4EB2F) & _MASK32)
        shifted = np.empty_like(x)
        for shift, multiplier in ((16, 0x7FEB352D), (15, 0x846CA68B), (16, None)):
            x ^= np.right_shift(x, shift, out=shifted)
            if multiplier is not None:
                x *= np.uint32(multiplier)
    return x


def counter_uniform(index: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniform float32 in (0, 1), strictly, from integer counters: (all 32 hash bits + 0.5) / 2**32.

    The uint32 is rounded to float32 (24 significant bits at every scale, so values near 0 keep their
    precision: the smallest is 2**-33); the few that round up to 1.0 are clamped to UNIFORM_MAX.
    """
    if index.device.type == "cpu":  # numpy converts uint32 to float32 directly
        u = torch.from_numpy(_numpy_bits(index, seed).astype(np.float32))
    else:
        u = _torch_bits(index, seed).to(torch.int64).bitwise_and_(_MASK32).to(torch.float32)
    return u.add_(0.5).mul_(2.0**-32).clamp_(max=UNIFORM_MAX)


def counter_gumbel(index: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard Gumbel noise -log(-log(1 - u)) with u = counter_uniform(index, seed), finite everywhere.

    1 - u is uniform too; writing the noise this way puts the upper tail (large noise, which decides
    whether a rare token is sampled) where u is near 0 and float32 is finest, so the noise reaches
    -log(2**-33) = 22.9 smoothly (24-bit noise near 1 stopped at 17.3, in coarse steps). log1p(-u) is
    computed with plain logs (Kahan's trick: log(w) * -u / (w - 1) with w = 1 - u) so that the Triton
    kernel can do the same operations in the same order.
    """
    return gumbel_of_uniform(counter_uniform(index, seed))


def gumbel_of_uniform(u: torch.Tensor) -> torch.Tensor:
    """-log(-log(1 - u)) of uniforms u in (0, 1), as counter_gumbel computes it (u is overwritten)."""
    w = 1.0 - u
    exact_one = w == 1.0
    log1p_neg_u = w.log().mul_(u).neg_().div_(w.sub_(1.0))  # log(w) * -u / (w - 1), in place: the same values
    log1p_neg_u = torch.where(exact_one, u.neg_(), log1p_neg_u)  # log(1 - u), accurate for small u
    return log1p_neg_u.neg_().log_().neg_()


def gumbel_argmax(z: torch.Tensor, counters: torch.Tensor, seed: int) -> torch.Tensor:
    """(c,) row_argmax(z + counter_gumbel(counters, seed)) of z (c, V) (tempered, filtered logits; counters (c * V,)),
    the same indices; on the CPU the noise's two logs are taken only where a token could win.

    With g(u) = -log(-log(1 - u)) and -log(1 - u) <= u / (1 - u), a row's noisy value at its largest z is at least
    B = z_j + log((1 - u_j) / u_j). Token i can reach it only if g(u_i) >= B - z_i, which needs u_i <= exp(z_i - B).
    So only tokens passing that test (plus a slack of 1e-3 + 1e-5 |z_j|, far above the rounding of float32 sums and
    logs) get their noise, a few a row on a trained model; everyone else is -inf in the comparison, which changes no
    argmax. Small or non-float32 inputs, and other devices (where gathering the candidates costs a sync), transform
    everything.
    """
    u = counter_uniform(counters, seed).view_as(z)  # (c, V)
    if z.device.type == "cpu" and z.dtype == torch.float32 and z.numel() >= PRUNED_GUMBEL_ELEMENTS:
        top = row_argmax(z)[:, None]  # (c, 1)
        z_top, u_top = z.gather(-1, top).numpy(), u.gather(-1, top).numpy()  # (c, 1) each; numpy: tiny arrays
        if np.isfinite(z_top).all():  # else (a NaN, an all -inf or a +inf row) the plain sum below
            bound = z_top + np.log((1 - u_top) / u_top) - (1e-3 + 1e-5 * np.abs(z_top))  # slack included
            # the top token itself always passes: exp(z_j - bound) >= u_j / (1 - u_j)
            candidate = (u <= row_exp(z - torch.from_numpy(bound), in_place=True)).numpy()  # (c, V) bool
            flat = torch.from_numpy(np.flatnonzero(candidate))  # numpy finds the few True ones fast
            noisy = torch.full(z.shape, float("-inf"), dtype=z.dtype)  # contiguous, whatever z's strides
            noisy.view(-1)[flat] = z.reshape(-1)[flat] + gumbel_of_uniform(u.view(-1)[flat])
            return row_argmax(noisy)
    return row_argmax(z + gumbel_of_uniform(u))


def filter_top_k_top_p(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set logits outside the top-k and outside the nucleus of mass top_p to -inf (in that order). Both keep every
    logit at least their row's floor, so tokens tied with the last one kept are kept too."""
    floor = keep_floor(logits, top_k, top_p)
    return logits if floor is None else logits.masked_fill(logits < floor, float("-inf"))


def keep_floor(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor | None:
    """(..., 1) the smallest logit top-k then top-p keep in each row (None when neither filters): the k-th largest,
    then the floor of the nucleus among those. The Triton sample kernel masks below the same floors."""
    floor = None
    if top_k is not None and top_k < logits.shape[-1]:
        floor = logits.topk(top_k, dim=-1).values[..., -1:]
    if top_p is not None and top_p < 1.0:
        kept = logits if floor is None else logits.masked_fill(logits < floor, float("-inf"))
        floor = nucleus_floor(kept, top_p)
    return floor


def nucleus_floor(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """(..., 1) the smallest logit of each row's nucleus: in descending order, the tokens up to and including the
    one whose cumulative probability reaches top_p. Only the sorted values are needed, not the order (on the CPU
    numpy sorts values alone several times faster than torch sorts with indices)."""
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64):
        ascending = torch.from_numpy(np.sort(logits.detach().numpy(), axis=-1))
        descending = ascending.flip(-1)  # a contiguous copy, so the softmax sums in this order
    else:
        descending = logits.sort(dim=-1, descending=True).values
    probs = descending.softmax(-1)
    beyond = probs.cumsum(-1) - probs >= top_p  # mass before a token already reaches top_p: it is dropped
    first_dropped = torch.where(beyond.any(-1), beyond.int().argmax(-1), logits.shape[-1])
    return descending.gather(-1, (first_dropped - 1).clamp(min=0)[..., None])


def row_argmax(x: torch.Tensor) -> torch.Tensor:
    """(c,) int64 index of each row's largest value (the first among ties, NaN counting as largest): on the CPU
    numpy's, which vectorizes this reduction (ten times faster here than torch's)."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return torch.from_numpy(x.detach().numpy().argmax(-1).astype(np.int64))
    return x.argmax(-1)


def row_exp(x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """exp(x): on the CPU numpy's for float32 (twice as fast here as torch's, within 2 ulps of the exact value where
    torch's is within 1: a GPU's fast exp is no closer), torch's elsewhere."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad:
        with np.errstate(over="ignore", under="ignore"):
            if in_place:
                np.exp(x.numpy(), out=x.numpy())
                return x
            return torch.from_numpy(np.exp(x.numpy()))
    return x.exp_() if in_place else x.exp()


def sample_and_score(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    offset: int = 0,
    rows: torch.Tensor | None = None,
    margin: bool = True,
    entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Gumbel-max sample per position from logits (..., V), with scores of the model's distribution.

    Returns (tokens, prob, margin, entropy), each of shape logits.shape[:-1] (or (len(rows),)):
    tokens  - argmax(logits / T + Gumbel) after top-k / top-p filtering (T = 0: argmax)
    prob    - softmax(logits)[token], the untempered probability of the chosen token
    margin  - top-1 minus top-2 probability of softmax(logits)
    entropy - entropy (nats) of softmax(logits)
    `rows` (optional, int64) selects rows of the flattened (N, V) logits to process, without copying
    the others; the noise of a row depends only on its index, so a subset gets the same samples.
    `margin=False` / `entropy=False` skip that score (None in its place): the runner-up's two passes over the
    vocabulary, and the probabilities' normalisation and weighted sum.
    """
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    index = torch.arange(flat.shape[0], device=logits.device) if rows is None else rows.to(logits.device)
    n = index.shape[0]
    tokens = torch.empty(n, dtype=torch.long, device=logits.device)
    prob = torch.empty(n, dtype=torch.float32, device=logits.device)
    margins = torch.empty_like(prob) if margin else None
    entropies = torch.empty_like(prob) if entropy else None
    step = max(1, CHUNK_ELEMENTS // vocab)
    for start in range(0, n, step):
        chunk_rows = index[start : start + step]
        chunk = (flat.index_select(0, chunk_rows) if rows is not None else flat[start : start + step]).float()  # (c, V)
        top = row_argmax(chunk)[:, None]  # (c, 1) the most probable token: T = 0's choice, and margin's first
        if temperature == 0:
            choice = top
        else:
            noisy = filter_top_k_top_p(chunk, top_k, top_p) / temperature
            # the counters row * V + v + offset modulo 2**32 (all the hash reads), built in wrapping int32
            first = (chunk_rows * vocab + offset).to(torch.int32)  # (c,)
            counters = (first[:, None] + torch.arange(vocab, dtype=torch.int32, device=chunk.device)).view(-1)
            choice = gumbel_argmax(noisy, counters, seed)[:, None]
        shifted = chunk - chunk.gather(-1, top)  # (c, V), <= 0
        if entropy:
            shifted.clamp_(min=-1e4)  # -inf logits: exp 0 either way, but finite products p * shifted
        second = None
        if margin and vocab > 1:  # the runner-up: the largest logit once the top one is set aside (then put back)
            top_shifted = shifted.gather(-1, top)
            second = shifted.scatter_(-1, top, float("-inf")).amax(-1, keepdim=True)
            shifted.scatter_(-1, top, top_shifted)
        exp = row_exp(shifted, in_place=not entropy)  # entropy reads `shifted` again
        total = exp.sum(-1, keepdim=True)  # (c, 1)
        chosen_p = exp.gather(-1, choice).div_(total)  # softmax(logits) at the choice
        sl = slice(start, start + len(chunk_rows))
        tokens[sl] = choice[:, 0]
        prob[sl] = chosen_p[:, 0]
        if margin:
            first_p = chosen_p if choice is top else exp.gather(-1, top).div_(total)
            runner_up = row_exp(second, in_place=True).div_(total) if second is not None else 0.0
            margins[sl] = (first_p - runner_up)[:, 0]
        if entropy:  # -sum p log p with p = softmax(logits), no log per entry
            entropies[sl] = (total.log() - exp.div_(total).mul_(shifted).sum(-1, keepdim=True))[:, 0]
    shape = logits.shape[:-1] if rows is None else index.shape
    return tuple(None if out is None else out.view(shape) for out in (tokens, prob, margins, entropies))


# --- the other hot spots: fused head + sample, expected embedding, energy score -----------------

def head_sample_and_score(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    offset: int = 0,
    margin: bool = True,
    entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """`sample_and_score(hidden @ weight.T, ...)` without materialising the (..., V) logits.

    Positions are taken in chunks of `c` rows with c * V <= HEAD_CHUNK_ELEMENTS; the (c, V) float32
    logits of a chunk are filled vocabulary slice by vocabulary slice (so a half-precision weight is
    never converted to float32 whole), then scored by `sample_and_score` with the noise offset moved
    by start * V, so that every position draws the noise it would draw in the unchunked call.
    """
    d = hidden.shape[-1]
    vocab = weight.shape[0]
    flat = hidden.reshape(-1, d)
    n = flat.shape[0]
    wanted = (True, True, margin, entropy)
    out = [torch.empty(n, dtype=dt, device=hidden.device) if want else None
           for dt, want in zip((torch.long,) + (torch.float32,) * 3, wanted)]
    step = max(1, min(n, HEAD_CHUNK_ELEMENTS // vocab))
    vstep = vocab if weight.dtype == torch.float32 else max(1, CHUNK_ELEMENTS // max(d, 1))
    buf = torch.empty(step, vocab, dtype=torch.float32, device=hidden.device)
    for start in range(0, n, step):
        h = flat[start : start + step].float()
        logits = buf[: h.shape[0]]
        if vstep >= vocab:
            torch.matmul(h, weight.T, out=logits)
        else:
            for vs in range(0, vocab, vstep):
                logits[:, vs : vs + vstep] = h @ weight[vs : vs + vstep].float().T
        results = sample_and_score(logits, temperature, top_k, top_p, seed=seed, offset=offset + start * vocab,
                                   margin=margin, entropy=entropy)
        for o, r in zip(out, results):
            if o is not None:
                o[start : start + h.shape[0]] = r
    shape = hidden.shape[:-1]
    return tuple(None if o is None else o.view(shape) for o in out)


def _online_softmax_step(x, m, s, h):
    """Merge a tile x (c, v) of (tempered) logits into the running max m, sum s = sum exp(x - m), and
    h = sum exp(x - m) * (x - m) of each row; returns (m, s, h, e, alpha) with e = exp(x - new m)
    and alpha = exp(old m - new m), the factor by which earlier sums (and accumulators) shrink.
    -inf logits contribute nothing; a row that is all -inf so far keeps s = h = 0."""
    m_new = torch.maximum(m, x.max(-1).values)
    shift_new = torch.where(m_new == float("-inf"), 0.0, m_new)
    shift_old = torch.where(m == float("-inf"), shift_new, m)
    alpha = torch.exp(shift_old - shift_new)
    z = x - shift_new[:, None]
    e = torch.exp(z)
    h = alpha * (h + (shift_old - shift_new) * s) + torch.where(e > 0, e * z, 0.0).sum(-1)
    s = alpha * s + e.sum(-1)
    return m_new, s, h, e, alpha


def expected_embedding(
    logits: torch.Tensor, embedding: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`softmax(logits / T) @ embedding` (..., d) and the entropy (nats) of softmax(logits / T) (...).

    Streamed over the vocabulary like flash attention: per chunk of rows, a running max, sum of
    exponentials and a (rows, d) accumulator that is rescaled whenever the max grows. No
    intermediate exceeds about CHUNK_ELEMENTS floats besides the output. T = 0 gives the embedding
    of the argmax and entropy 0.
    """
    vocab = logits.shape[-1]
    d = embedding.shape[1]
    flat = logits.reshape(-1, vocab)
    n = flat.shape[0]
    shape = logits.shape[:-1]
    if temperature == 0:
        index = torch.cat([flat[s : s + 4096].argmax(-1) for s in range(0, n, 4096)]) if n else \
            torch.empty(0, dtype=torch.long, device=logits.device)
        return embedding[index].float().view(*shape, d), torch.zeros(shape, device=logits.device)
    mean = torch.empty(n, d, dtype=torch.float32, device=logits.device)
    entropy = torch.empty(n, dtype=torch.float32, device=logits.device)
    vstep = max(1, min(vocab, CHUNK_ELEMENTS // max(d, 1), 8192))
    step = max(1, min(n, CHUNK_ELEMENTS // max(vstep, d)))
    for start in range(0, n, step):
        rows = flat[start : start + step]
        c = rows.shape[0]
        m = torch.full((c,), float("-inf"), device=logits.device)
        s = torch.zeros(c, device=logits.device)
        h = torch.zeros(c, device=logits.device)
        acc = mean[start : start + c].zero_()
        for vs in range(0, vocab, vstep):
            x = rows[:, vs : vs + vstep].float() / temperature
            m, s, h, e, alpha = _online_softmax_step(x, m, s, h)
            acc.mul_(alpha[:, None]).addmm_(e, embedding[vs : vs + vstep].float())
        acc.div_(s[:, None])
        entropy[start : start + c] = s.log() - h / s
    return mean.view(*shape, d), entropy.view(shape)


def energy_score(samples: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row energy loss (B,): 2/(N M) sum_ij ||x_i - y_j|| - 1/(N (N-1)) sum_{i != j} ||x_i - x_j||.

    samples (B, N, l) from the model (N >= 2), targets (B, M, l). Differentiable (autograd through
    torch.cdist in its exact, non-matmul mode: zero self-distances get a zero gradient). Float16 /
    bfloat16 inputs are computed in float32; float64 stays float64.
    """
    x = samples if samples.dtype == torch.float64 else samples.float()
    y = targets if targets.dtype == torch.float64 else targets.float()
    n, m = x.shape[1], y.shape[1]
    exact = "donot_use_mm_for_euclid_dist"
    cross = torch.cdist(x, y, compute_mode=exact).sum((1, 2))
    within = torch.cdist(x, x, compute_mode=exact).sum((1, 2))
    return 2.0 * cross / (n * m) - within / (n * (n - 1))
