"""How much memory the released models need: `python -m explorer.released.sizes` prints a markdown table.

Each architecture is built on the meta device from its published shape (REFERENCES section 6 and the
releases' config.json), so the count is exact and nothing is downloaded or allocated; the memory is
`estimate_bytes` (parameters x bytes per value + 10% + 0.25 GiB), the figure the loaders check up front.
"""

from __future__ import annotations

import torch

from explorer.models.weights import GiB, estimate_bytes
from explorer.nn import Transformer, TransformerConfig

LLADA_8B = TransformerConfig(vocab_size=126464, d_model=4096, n_layers=32, n_heads=32, d_ff=12288,
                             max_seq_len=4096, attention="bidirectional", rope_theta=500000.0, tie_embeddings=False)
DREAM_7B = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
            "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False}  # Qwen2.5-7B's shape
DIT_OWT = TransformerConfig(vocab_size=50258, d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_seq_len=1024,
                            attention="bidirectional", tie_embeddings=False)  # mdlm-owt and bd3lm-owt-block_size*


def release_parameters() -> dict[str, int]:
    """Parameters of each released architecture, counted on the meta device."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from explorer.released.dit import DiTBackbone, DiTSpec

    with torch.device("meta"):
        models = {"LLaDA-8B (Base / Instruct)": Transformer(LLADA_8B),
                  "Dream-7B (Base / Instruct)": Qwen2ForCausalLM(Qwen2Config(**DREAM_7B)),
                  "MDLM-owt / BD3-LM-owt": DiTBackbone(DIT_OWT, DiTSpec(cond_dim=128))}
    return {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}


def sizes_table() -> str:
    rows = ["| release | parameters | bf16 (GPU default) | fp32 (CPU default) |", "|---|---:|---:|---:|"]
    for name, count in release_parameters().items():
        bf16, fp32 = (estimate_bytes(count, dtype) / GiB for dtype in (torch.bfloat16, torch.float32))
        rows.append(f"| {name} | {count:,} | {bf16:.1f} GiB | {fp32:.1f} GiB |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(sizes_table())
