"""`python -m explorer bench kernels`: the sampling hot spots of `explorer.kernels` against naive PyTorch.

On the CPU: each chunked reference against the naive whole-tensor path at LLaDA scale
(B = 1, L = 1,024, V = 126,464 by default): wall time (median of interleaved repeats in this
process) and peak extra memory of one call (in a fresh subprocess: the resident high-water mark, reset just
before the call, minus the resident size then; see `explorer.bench.measure.peak_extra_bytes`). Targets from the
kernels issue: at least 8x less memory, no slower.

On a CUDA device, when present: the dispatched functions (Triton kernels) against the naive path,
and the achieved memory bandwidth (bytes the kernel must read / its time) as a fraction of the
device's copy bandwidth measured here (a device-to-device clone, a practical stand-in for peak).

Results go to JSON and a markdown table beside it.
"""

from __future__ import annotations

import platform
import statistics
from functools import partial
from pathlib import Path

import torch

from explorer import kernels
from explorer.bench.measure import alternating, in_fresh_process, peak_extra_bytes, timed, write_results

LLADA_VOCAB = 126_464
CASES = ("sample_and_score", "head_sample_and_score", "expected_embedding", "energy_score")
TEMPERATURE = 0.7


# --- naive whole-tensor implementations (what a sampler writes without kernels) --------------------

def naive_sample_and_score(logits: torch.Tensor, temperature: float, seed: int = 0):
    x = logits.float()
    p = x.softmax(-1)
    u = torch.rand(x.shape, generator=torch.Generator(x.device).manual_seed(seed), device=x.device)
    tokens = (x / temperature - torch.log(-torch.log(u))).argmax(-1)
    top2 = p.topk(2, dim=-1).values
    return tokens, p.gather(-1, tokens[..., None])[..., 0], top2[..., 0] - top2[..., 1], torch.special.entr(p).sum(-1)


def naive_head_sample_and_score(hidden, weight, temperature: float, seed: int = 0):
    return naive_sample_and_score(hidden.float() @ weight.float().T, temperature, seed)


def naive_expected_embedding(logits, embedding, temperature: float):
    p = (logits.float() / temperature).softmax(-1)
    return p @ embedding.float(), torch.special.entr(p).sum(-1)


def naive_energy_score(samples, targets):
    n, m = samples.shape[1], targets.shape[1]
    cross = (samples[:, :, None] - targets[:, None]).norm(dim=-1).sum((1, 2))
    within = (samples[:, :, None] - samples[:, None]).norm(dim=-1).sum((1, 2))
    return 2 * cross / (n * m) - within / (n * (n - 1))


# --- inputs and one call -----------------------------------------------------------------------------

def make_inputs(case: str, sizes: dict, device: str = "cpu") -> tuple:
    """Deterministic inputs of one case (float32)."""
    g = torch.Generator().manual_seed(0)
    b, length, vocab, d = sizes["batch"], sizes["length"], sizes["vocab"], sizes["d"]
    if case == "sample_and_score":
        return (torch.randn(b, length, vocab, generator=g).mul_(3).to(device),)
    if case == "head_sample_and_score":
        return (torch.randn(b, length, d, generator=g).to(device),
                torch.randn(vocab, d, generator=g).div_(d ** 0.5).to(device))
    if case == "expected_embedding":
        return (torch.randn(b, length, vocab, generator=g).mul_(3).to(device),
                torch.randn(vocab, d, generator=g).to(device))
    if case == "energy_score":
        return (torch.randn(b * length, sizes["n"], sizes["latent"], generator=g).to(device),
                torch.randn(b * length, sizes["m"], sizes["latent"], generator=g).to(device))
    raise ValueError(f"unknown case {case!r}; expected one of {CASES}")


def call(case: str, impl: str, inputs: tuple):
    """One call of `case`: impl 'kernels' (the dispatch: reference on CPU, Triton on CUDA) or 'naive'."""
    if impl == "naive":
        fn = {"sample_and_score": naive_sample_and_score, "head_sample_and_score": naive_head_sample_and_score,
              "expected_embedding": naive_expected_embedding, "energy_score": naive_energy_score}[case]
    else:
        fn = getattr(kernels, case)
    extra = () if case == "energy_score" else (TEMPERATURE,)
    with torch.no_grad():
        return fn(*inputs, *extra)


def _tiny(case: str, inputs: tuple) -> tuple:
    """A small slice of the inputs, to warm up code paths before measuring."""
    if case == "energy_score":
        return tuple(t[:2] for t in inputs)
    return (inputs[0][:, :2],) + inputs[1:]


def measure_call(case: str, impl: str, sizes: dict) -> int:
    """In a fresh process: peak extra resident memory (bytes) of one call on freshly made inputs."""
    inputs = make_inputs(case, sizes)
    call(case, impl, _tiny(case, inputs))  # warm up code paths and allocator pools
    return peak_extra_bytes(lambda: call(case, impl, inputs))


def _bytes_read(case: str, inputs: tuple) -> int:
    return sum(t.numel() * t.element_size() for t in inputs)


# --- the bench ---------------------------------------------------------------------------------------

def run_kernels_bench(json_path: str | Path = "bench_results/kernels.json", repeats: int = 3, batch: int = 1,
                      length: int = 1024, vocab: int = LLADA_VOCAB, d: int = 512, n: int = 8, m: int = 100,
                      latent: int = 128, cases=CASES, memory: bool = True, cpu: bool = True) -> dict:
    """`cpu=False` skips the CPU rows (on a GPU machine, to time only the Triton kernels)."""
    sizes = {"batch": batch, "length": length, "vocab": vocab, "d": d, "n": n, "m": m, "latent": latent}
    results: dict = {"sizes": sizes, "repeats": repeats, "temperature": TEMPERATURE, "torch": torch.__version__,
                     "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                     "cpu_rows": [], "cuda_rows": []}
    for case in cases if cpu else ():
        inputs = make_inputs(case, sizes)
        for impl in ("kernels", "naive"):
            call(case, impl, _tiny(case, inputs))  # warm-up
        times = alternating({impl: partial(call, case, impl, inputs) for impl in ("kernels", "naive")}, repeats)
        row = {"case": case, "device": "cpu", "ours": "chunked reference",
               "ours_s": round(statistics.median(times["kernels"]), 6),
               "naive_s": round(statistics.median(times["naive"]), 6)}
        row["time_ratio"] = round(row["ours_s"] / max(row["naive_s"], 1e-9), 3)  # < 1: ours faster
        if memory:
            ours_b = in_fresh_process("explorer.bench.kernels:measure_call", case=case, impl="kernels", sizes=sizes)
            naive_b = in_fresh_process("explorer.bench.kernels:measure_call", case=case, impl="naive", sizes=sizes)
            row |= {"ours_mb": round(ours_b / 2**20, 1), "naive_mb": round(naive_b / 2**20, 1),
                    "memory_ratio": round(naive_b / max(ours_b, 1), 2)}  # > 1: ours smaller
        results["cpu_rows"].append(row)
        del inputs
    if torch.cuda.is_available() and kernels.triton_available():
        results["cuda_device"] = torch.cuda.get_device_name()
        results["cuda_rows"] = _cuda_rows(sizes, repeats, cases)
    write_results(json_path, results, kernels_table(results))
    return results


def _cuda_rows(sizes: dict, repeats: int, cases) -> list[dict]:
    sync = torch.cuda.synchronize
    probe = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    probe.clone()
    copy_s = timed(probe.clone, max(repeats, 5), sync)[0]
    copy_bw = 2 * probe.numel() / copy_s  # read + write
    del probe
    rows = []
    for case in cases:
        inputs = make_inputs(case, sizes, "cuda")
        for impl in ("kernels", "naive"):
            call(case, impl, inputs)  # compile / warm up
        ours_s = timed(partial(call, case, "kernels", inputs), max(repeats, 5), sync)[0]
        naive_s = timed(partial(call, case, "naive", inputs), max(repeats, 5), sync)[0]
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        call(case, "kernels", inputs)
        ours_mem = torch.cuda.max_memory_allocated() - base
        torch.cuda.reset_peak_memory_stats()
        call(case, "naive", inputs)
        naive_mem = torch.cuda.max_memory_allocated() - base
        bw = _bytes_read(case, inputs) / ours_s
        rows.append({"case": case, "device": torch.cuda.get_device_name(), "ours": "triton",
                     "ours_s": round(ours_s, 6), "naive_s": round(naive_s, 6),
                     "time_ratio": round(ours_s / naive_s, 3),
                     "ours_mb": round(ours_mem / 2**20, 1), "naive_mb": round(naive_mem / 2**20, 1),
                     "memory_ratio": round(naive_mem / max(ours_mem, 1), 2),
                     "bandwidth_gbs": round(bw / 1e9, 1), "copy_bandwidth_gbs": round(copy_bw / 1e9, 1),
                     "bandwidth_fraction": round(bw / copy_bw, 3)})
        del inputs
    return rows


def kernels_table(results: dict) -> str:
    s = results["sizes"]
    lines = ["# `python -m explorer bench kernels`",
             "",
             f"B={s['batch']}, L={s['length']}, V={s['vocab']}, d={s['d']}; energy: {s['batch'] * s['length']} rows, "
             f"N={s['n']}, M={s['m']}, l={s['latent']}; T={results['temperature']}; torch {results['torch']}, "
             f"{results['torch_threads']} threads.",
             "",
             "| kernel | device | ours | ours s | naive s | time ratio (ours/naive) | ours MB | naive MB "
             "| memory ratio (naive/ours) | bandwidth |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["cpu_rows"] + results["cuda_rows"]:
        bw = f"{row['bandwidth_gbs']} GB/s ({row['bandwidth_fraction']:.0%} of copy)" if "bandwidth_gbs" in row else ""
        lines.append(f"| {row['case']} | {row['device']} | {row['ours']} | {row['ours_s']} | {row['naive_s']} | "
                     f"{row['time_ratio']} | {row.get('ours_mb', '')} | {row.get('naive_mb', '')} | "
                     f"{row.get('memory_ratio', '')} | {bw} |")
    return "\n".join(lines) + "\n"
