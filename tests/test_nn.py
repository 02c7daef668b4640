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


# --- bfloat16 numerics as the released models have them ------------------------------------------------

def llada_bf16_forward(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """LLaDA's forward pass restated with its precision choices, on a bfloat16 copy of our weights: RMSNorm
    normalises in float32 and casts back before the gain; rotary runs in float32 with float32 tables (our
    interleaved pairing); everything else in bfloat16."""
    import torch.nn.functional as F

    c = model.config
    w = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    head_dim = c.d_model // c.n_heads

    def norm(x, weight):
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + c.norm_eps)).to(torch.bfloat16)

    inv_freq = 1.0 / c.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(ids.shape[1]).float(), inv_freq)
    cos, sin = angles.cos(), angles.sin()

    def rotate(x):
        x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2).type_as(x)

    B, L = ids.shape
    x = F.embedding(ids, w["embed.weight"])
    for i in range(c.n_layers):
        p = f"blocks.{i}."
        q, k, v = (norm(x, w[p + "attn_norm.weight"]) @ w[p + "attn.qkv.weight"].T).view(
            B, L, 3, c.n_heads, head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(rotate(q), rotate(k), v)
        x = x + y.transpose(1, 2).reshape(B, L, c.d_model) @ w[p + "attn.out.weight"].T
        gate, up = (norm(x, w[p + "mlp_norm.weight"]) @ w[p + "mlp.gate_up.weight"].T).chunk(2, -1)
        x = x + (F.silu(gate) * up) @ w[p + "mlp.down.weight"].T
    return norm(x, w["norm.weight"]) @ w["head.weight"].T


def test_bfloat16_model_agrees_with_float32_at_least_as_well_as_llada_does():
    """A long input (rotary angles up to 1,000 rad) through a bfloat16 copy: top-1 agreement with the float32 model
    is at least the restated LLaDA pass's (the former bfloat16 norms and tables gave 0.83 against 0.89 here)."""
    import copy

    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=512, d_model=64, n_layers=4, n_heads=4, d_ff=172, max_seq_len=1024,
                               rope_theta=500000.0, attention="bidirectional", tie_embeddings=False)
    model = Transformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)  # peakier logits than at initialisation, so the top-1 is meaningful
        ids = torch.randint(0, 512, (1, 1024))
        reference = model(ids).argmax(-1)
        bf16 = copy.deepcopy(model).to(torch.bfloat16)
        assert bf16.rotary.cos.dtype == torch.float32  # the tables survive the cast
        ours = (bf16(ids).argmax(-1) == reference).float().mean()
        llada = (llada_bf16_forward(model, ids).argmax(-1) == reference).float().mean()
    assert ours >= llada - 0.005 and ours > 0.85, (float(ours), float(llada))


def test_float32_numerics_are_unchanged_by_the_bfloat16_casts():
    """The casts are no-ops in float32: the norm and rotary give exactly the plain formulas."""
    from explorer.nn.transformer import RMSNorm, Rotary

    x = torch.randn(2, 5, 8)
    norm = RMSNorm(8, 1e-5)
    assert torch.equal(norm(x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight)
    rotary = Rotary(8, 16, 10000.0)
    cos, sin = rotary.angles(torch.arange(5))
    q = torch.randn(1, 1, 5, 8)
    plain = torch.stack((q[..., 0::2] * cos - q[..., 1::2] * sin, q[..., 0::2] * sin + q[..., 1::2] * cos), -1)
    assert torch.equal(Rotary.rotate(q, (cos, sin)), plain.flatten(-2))
