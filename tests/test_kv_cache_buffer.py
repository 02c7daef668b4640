"""The KV cache as a preallocated buffer written in place: same attention inputs as the concatenating cache it
replaced, no reallocation per step, growth by doubling, autograd through it, bad sizes refused."""

import pytest
import torch

from explorer.nn import KVCache, Transformer, TransformerConfig
from explorer.nn.masks import block_causal_mask


def small(attention):
    return TransformerConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64,
                             attention=attention)


class ConcatCache:
    """The cache before it was a buffer, restated: every window concatenates [cached before | window | cached
    after], and a stored prefix keeps the concatenation."""

    def __init__(self, n_layers):
        self.keys, self.values, self.length = [None] * n_layers, [None] * n_layers, 0

    def attend(self, layer, k, v, start, store):
        end = start + k.shape[2]
        if self.keys[layer] is None:
            full_k, full_v = k, v
        else:
            past_k, past_v = self.keys[layer], self.values[layer]
            full_k = torch.cat([past_k[:, :, :start], k, past_k[:, :, end:]], dim=2)
            full_v = torch.cat([past_v[:, :, :start], v, past_v[:, :, end:]], dim=2)
        if store:
            keep = max(self.length, start + store)
            self.keys[layer], self.values[layer] = full_k[:, :, :keep], full_v[:, :, :keep]
        return full_k, full_v


def run_windows(model, cache, ids, windows, block=None):
    """Logits of each (start, end, store) window over ids (B, L), block-causal masks when `block` is given."""
    out = []
    for start, end, store in windows:
        mask = None
        if block is not None:
            mask = block_causal_mask(torch.arange(start, end), torch.arange(end), block)
        out.append(model(ids[:, start:end], cache=cache, start=start, store=store, mask=mask))
    return out


# the access patterns of the samplers: AR decoding (store all), BD3-LM (store the finished block, the noisy one
# rides along unstored, past the cached positions), Fast-dLLM (one full pass, then windows that store nothing)
PATTERNS = {
    "ar": ("causal", None, [(0, 7, 7), (7, 8, 1), (8, 9, 1), (9, 20, 11)]),
    "bd3lm": ("block_causal", 4, [(0, 4, 0), (0, 4, 0), (0, 8, 4), (4, 8, 0), (4, 12, 4), (8, 12, 0), (8, 16, 4)]),
    "dual": ("bidirectional", None, [(0, 24, 24), (8, 16, 0), (8, 16, 0), (16, 24, 0)]),
    "prefix": ("bidirectional", None, [(0, 24, 24), (8, 24, 0), (8, 24, 0)]),
}


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("capacity", [None, 3, 64])
def test_buffer_gives_the_logits_of_the_concatenating_cache(pattern, capacity):
    attention, block, windows = PATTERNS[pattern]
    torch.manual_seed(0)
    model = Transformer(small(attention)).eval()
    ids = torch.randint(0, 100, (2, 24))
    with torch.no_grad():
        ours = run_windows(model, KVCache(2, capacity), ids, windows, block)
        theirs = run_windows(model, ConcatCache(2), ids, windows, block)  # forward advances its length
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_writes_go_into_one_buffer_in_place():
    torch.manual_seed(0)
    model = Transformer(small("causal")).eval()
    cache = KVCache(2, capacity=32)
    ids = torch.randint(0, 100, (1, 10))
    with torch.no_grad():
        model(ids[:, :4], cache=cache)
        buffers = [k.data_ptr() for k in cache.keys] + [v.data_ptr() for v in cache.values]
        for i in range(4, 10):
            model(ids[:, i : i + 1], cache=cache)
    assert [k.data_ptr() for k in cache.keys] + [v.data_ptr() for v in cache.values] == buffers
    assert cache.keys[0].shape == (1, 4, 32, 8) and cache.length == 10


def test_a_full_buffer_doubles_and_keeps_what_it_held():
    torch.manual_seed(0)
    model = Transformer(small("causal")).eval()
    cache = KVCache(2, capacity=3)
    ids = torch.randint(0, 100, (1, 13))
    with torch.no_grad():
        pieces = [model(ids[:, a:b], cache=cache) for a, b in ((0, 2), (2, 4), (4, 5), (5, 13))]
        full = model(ids)
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-5)
    assert cache.keys[0].shape[2] == cache.capacity == 24  # 3 -> 6 -> 24 (doubled until the window fits)
    assert cache.length == 13
    unsized = KVCache(2)
    with torch.no_grad():
        model(ids[:, :5], cache=unsized)
    assert unsized.capacity == unsized.keys[1].shape[2] == 5  # sized by the first write


def test_crop_keeps_the_buffer_and_later_windows_overwrite():
    torch.manual_seed(0)
    model = Transformer(small("causal")).eval()
    cache = KVCache(2, capacity=16)
    ids = torch.randint(0, 100, (1, 12))
    other = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        model(ids, cache=cache)
        buffer = cache.keys[0].data_ptr()
        cache.crop(5)
        tail = model(other[:, 5:], cache=cache)
        expected = model(torch.cat([ids[:, :5], other[:, 5:]], 1))[:, 5:]
    assert cache.length == 12 and cache.keys[0].data_ptr() == buffer
    assert torch.allclose(tail, expected, atol=1e-5)


def test_gradients_flow_through_the_cache_as_through_the_concatenation():
    torch.manual_seed(0)
    model = Transformer(small("causal"))
    ids = torch.randint(0, 100, (2, 12))

    def grads(cache):
        model.zero_grad()
        first = model(ids[:, :8], cache=cache)
        second = model(ids[:, 8:], cache=cache, start=8, store=0)  # written past the cached keys, not stored
        (first.square().mean() + second.square().mean()).backward()
        return [p.grad.clone() for p in model.parameters()]

    for ours, theirs in zip(grads(KVCache(2, capacity=4)), grads(ConcatCache(2))):
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_repeat_interleave_copies_each_row():
    torch.manual_seed(0)
    model = Transformer(small("causal")).eval()
    ids = torch.randint(0, 100, (2, 6))
    cache = KVCache(2, capacity=8)
    with torch.no_grad():
        model(ids[:, :5], cache=cache)
        cache.repeat_interleave(3)
        last = model(ids[:, 5:].repeat_interleave(3, 0), cache=cache)[:, -1]
        expected = model(ids)[:, -1].repeat_interleave(3, 0)
    assert torch.allclose(last, expected, atol=1e-5)


@pytest.mark.parametrize("capacity", [0, -4, 2.5, True, "16"])
def test_bad_capacities_are_refused(capacity):
    with pytest.raises(ValueError, match=r"KVCache capacity must be a positive int"):
        KVCache(2, capacity)


def test_a_window_past_the_cached_positions_is_refused():
    model = Transformer(small("causal")).eval()
    cache = KVCache(2)
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match=r"start within the cached positions \[0, 4\], got start 6"):
            model(torch.zeros(1, 2, dtype=torch.long), cache=cache, start=6)


def test_block_bench_reports_the_flop_bound_of_the_exact_cache(tiny_bd3lm):
    from explorer.bench.block import kv_cache_speed

    kv = kv_cache_speed(tiny_bd3lm, repeats=1, gen_length=48)  # past the 32-token context: the window slides
    assert kv["identical_tokens"] and kv["nfe"] == 48
    assert kv["flop_bound"] > 1.1  # blocks of 8 against a prefix of up to 32 tokens (the 2k-row head dominates)
