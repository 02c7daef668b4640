import pytest
import torch

from explorer.nn import PRESETS, KVCache, Transformer, TransformerConfig, preset


def small(attention):
    return TransformerConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32,
                             attention=attention)


def test_presets_sizes():
    tiny = Transformer(preset("tiny")).num_parameters()
    small_preset = sum(p.numel() for p in Transformer(PRESETS["small"]).parameters())
    assert 3e6 < tiny < 5e6
    assert 90e6 < small_preset < 110e6


def test_causal_positions_ignore_the_future_and_bidirectional_do_not():
    torch.manual_seed(0)
    x = torch.randint(0, 100, (1, 12))
    y = x.clone()
    y[0, 8] = (y[0, 8] + 1) % 100
    causal = Transformer(small("causal")).eval()
    assert torch.allclose(causal(x)[0, :8], causal(y)[0, :8], atol=1e-6)
    assert not torch.allclose(causal(x)[0, 8:], causal(y)[0, 8:])
    bidir = Transformer(small("bidirectional")).eval()
    assert not torch.allclose(bidir(x)[0, :8], bidir(y)[0, :8])


def test_kv_cache_matches_full_forward_in_chunks():
    torch.manual_seed(0)
    model = Transformer(small("causal")).eval()
    x = torch.randint(0, 100, (2, 20))
    cache = KVCache(model.config.n_layers)
    pieces = [model(x[:, a:b], cache=cache) for a, b in ((0, 7), (7, 12), (12, 13), (13, 20))]
    assert torch.allclose(torch.cat(pieces, 1), model(x), atol=1e-5)
    assert cache.length == 20


def test_rotary_refuses_sequences_longer_than_the_context():
    model = Transformer(small("bidirectional"))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_tied_and_untied_heads():
    tied = Transformer(small("causal"))
    assert tied.head.weight is tied.embed.weight
    untied = Transformer(small("causal").with_(tie_embeddings=False))
    assert untied.head.weight is not untied.embed.weight


def test_bad_config_knobs():
    with pytest.raises(ValueError, match="attention"):
        TransformerConfig(attention="sideways")
    with pytest.raises(ValueError, match="n_heads"):
        TransformerConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="preset"):
        preset("huge")
