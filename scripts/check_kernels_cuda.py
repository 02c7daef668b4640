"""Compiled Triton kernels on a CUDA device against the PyTorch references on the same tensors.

    python scripts/check_kernels_cuda.py        # prints one line per case and exits 1 on any mismatch

The test suite runs the kernels under TRITON_INTERPRET=1 on the CPU; this script is the check of the
compiled path, for a machine with a GPU (it needs no pytest). It ends by timing the two matmul kernels
with the vocabulary split across programs (the dispatcher's choice) and as one pass per row block
(splits=1), against naive PyTorch, at V = 126,464, d = 512 for a few and for many rows, with the achieved
bandwidth (bytes the kernel must read / its time) as a fraction of a device-to-device copy's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from explorer import kernels  # noqa: E402
from explorer.bench.kernels import naive_expected_embedding, naive_head_sample_and_score  # noqa: E402
from explorer.bench.measure import timed  # noqa: E402
from explorer.kernels import reference  # noqa: E402


def close(name: str, ours, ref, atol: float) -> bool:
    ours, ref = ours.float(), ref.float()
    finite = torch.isfinite(ref)
    err = float((ours[finite] - ref[finite]).abs().max()) if finite.any() else 0.0
    ok = err <= atol and bool((torch.isfinite(ours) == finite).all())
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max abs err {err:.2e} (tol {atol:.0e})")
    return ok


def split_timings(g: torch.Generator, V: int = 126464, d: int = 512) -> bool:
    """Split vocabulary vs one pass vs naive, for few and many rows; the split must give the one pass's results."""
    from explorer.kernels import triton_embedding, triton_sample

    sync = torch.cuda.synchronize
    probe = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    copy_bw = 2 * probe.numel() / timed(probe.clone, 10, sync)[0]  # read + write
    del probe
    print(f"device-to-device copy: {copy_bw / 1e9:.0f} GB/s")
    weight = (torch.randn(V, d, generator=g) / d**0.5).cuda()
    good = True
    for length in (16, 1024):
        hidden = torch.randn(1, length, d, generator=g).cuda()
        logits = (torch.randn(1, length, V, generator=g) * 3).cuda()
        cases = {"head_sample_and_score": (lambda s: triton_sample.head_sample_and_score(hidden, weight, 0.7, seed=3,
                                                                                         splits=s),
                                           lambda: naive_head_sample_and_score(hidden, weight, 0.7), hidden, weight),
                 "expected_embedding": (lambda s: triton_embedding.expected_embedding(logits, weight, 0.7, splits=s),
                                        lambda: naive_expected_embedding(logits, weight, 0.7), logits, weight)}
        for name, (ours, naive, *inputs) in cases.items():
            split, single = ours(None), ours(1)  # also compiles both
            naive()
            if name == "head_sample_and_score":
                same = float((split[0] == single[0]).float().mean())
                print(f"{'ok  ' if same >= 0.999 else 'FAIL'} {name} L={length} split vs one pass: "
                      f"tokens equal {same:.4f}")
                good &= same >= 0.999
                split, single = split[1:], single[1:]
            names = ("prob", "margin", "entropy") if name == "head_sample_and_score" else ("mean", "entropy")
            for what, a, b in zip(names, split, single):
                good &= close(f"{name} L={length} split vs one pass {what}", a, b, 1e-4)
            read = sum(t.numel() * t.element_size() for t in inputs)
            times = {"split": timed(lambda: ours(None), 20, sync)[0], "one pass": timed(lambda: ours(1), 20, sync)[0],
                     "naive": timed(naive, 20, sync)[0]}
            print(f"     {name} L={length} V={V} d={d}: " + ", ".join(
                f"{k} {s * 1e3:.3f} ms ({read / s / 1e9:.0f} GB/s, {read / s / copy_bw:.0%} of copy)"
                for k, s in times.items()) + f"; split / naive = {times['split'] / times['naive']:.2f}")
    return good


def main() -> int:
    dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"  # "cpu" only smoke-tests this script (dispatch = reference)
    if dev == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    g = torch.Generator().manual_seed(0)
    good = True
    for V, dtype in ((2048, torch.float32), (50257, torch.float32), (126464, torch.bfloat16), (1000, torch.float16)):
        logits = (torch.randn(2, 37, V, generator=g) * 3).to(dev, dtype)
        logits[0, 0, :10] = float("-inf")
        for temperature, top_k in ((0.0, None), (0.7, None), (1.0, 50)):
            ours = kernels.sample_and_score(logits, temperature, top_k, None, seed=5, offset=3)
            ref = reference.sample_and_score(logits, temperature, top_k, None, seed=5, offset=3)
            tag = f"sample_and_score V={V} {dtype} T={temperature} top_k={top_k}"
            same = float((ours[0] == ref[0]).float().mean())
            print(f"{'ok  ' if same >= 0.99 else 'FAIL'} {tag}: tokens equal {same:.4f}")
            good &= same >= 0.99
            for name, a, b in zip(("prob", "margin", "entropy"), ours[1:], ref[1:]):
                good &= close(f"{tag} {name}", a, b, 2e-3 if dtype == torch.float32 else 2e-2)
        rows = torch.tensor([0, 5, 40], device=dev)
        ours = kernels.sample_and_score(logits, 1.0, seed=1, rows=rows)
        ref = reference.sample_and_score(logits, 1.0, seed=1, rows=rows)
        good &= bool((ours[0] == ref[0]).all())
        print(f"{'ok  ' if (ours[0] == ref[0]).all() else 'FAIL'} sample_and_score rows subset V={V}")
    for V, d in ((2048, 256), (126464, 512)):
        hidden = torch.randn(1, 64, d, generator=g).to(dev)
        weight = (torch.randn(V, d, generator=g) / d**0.5).to(dev)
        for temperature in (0.0, 1.0):
            ours = kernels.head_sample_and_score(hidden, weight, temperature, seed=2)
            ref = reference.head_sample_and_score(hidden, weight, temperature, seed=2)
            same = float((ours[0] == ref[0]).float().mean())
            print(f"{'ok  ' if same >= 0.98 else 'FAIL'} head_sample_and_score V={V} d={d} T={temperature}: "
                  f"tokens equal {same:.4f}")
            good &= same >= 0.98
            good &= close(f"head_sample_and_score V={V} entropy", ours[3], ref[3], 5e-3)
    for V, d in ((2048, 64), (126464, 512)):
        logits = (torch.randn(3, 50, V, generator=g) * 2).to(dev)
        emb = torch.randn(V, d, generator=g).to(dev)
        for temperature in (0.0, 0.5, 1.0):
            mean, ent = kernels.expected_embedding(logits, emb, temperature)
            rmean, rent = reference.expected_embedding(logits, emb, temperature)
            good &= close(f"expected_embedding V={V} d={d} T={temperature} mean", mean, rmean, 5e-3)
            good &= close(f"expected_embedding V={V} d={d} T={temperature} entropy", ent, rent, 5e-3)
    samples, targets = torch.randn(64, 8, 128, generator=g).to(dev), torch.randn(64, 100, 128, generator=g).to(dev)
    good &= close("energy_score N=8 M=100 l=128", kernels.energy_score(samples, targets),
                  reference.energy_score(samples, targets), 1e-3)
    if dev == "cuda":
        good &= split_timings(g)
    print("ALL OK" if good else "MISMATCHES FOUND")
    return 0 if good else 1


if __name__ == "__main__":
    raise SystemExit(main())
