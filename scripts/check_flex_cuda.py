"""bd3lm's vectorized training pass on CUDA: FlexAttention (compiled) against the dense SDPA masks.

    python scripts/check_flex_cuda.py      # logits difference and the time of one training step per backend
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import explorer  # noqa: E402


def main() -> int:
    base = explorer.load("bd3lm-tiny-b16").cuda()
    batch = torch.randint(0, 2000, (16, 128), generator=torch.Generator().manual_seed(0)).cuda()
    models = {}
    for backend in ("flex", "sdpa"):
        model = type(base)(dataclasses.replace(base.config, attention_backend=backend), base.tokenizer).cuda().eval()
        model.load_state_dict(base.state_dict())
        models[backend] = model
    x_t, _ = base.mask_blocks(batch, base.block_rates(16, 8, generator=torch.Generator().manual_seed(1)).cuda(),
                              generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        flex = models["flex"].noisy_logits(x_t, batch)
        sdpa = models["sdpa"].noisy_logits(x_t, batch)
    finite = torch.isfinite(sdpa)  # the mask token's logit is -inf in both
    err = float((flex[finite] - sdpa[finite]).abs().max())
    print(f"flex vs sdpa logits: max abs err {err:.2e}")
    for backend, model in models.items():
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for i in range(23):
            if i == 3:
                torch.cuda.synchronize()
                started = time.perf_counter()
            loss = model.loss(batch, generator=torch.Generator().manual_seed(i))["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        print(f"{backend}: {(time.perf_counter() - started) / 20 * 1000:.1f} ms per training step (B=16, L=128)")
    return 0 if err < 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
