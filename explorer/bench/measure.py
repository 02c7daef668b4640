"""Measurement helpers shared by the benchmarks: median wall time and peak memory in a fresh process."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm


def timed(fn, repeats: int, sync=lambda: None) -> tuple[float, object]:
    """(median seconds over `repeats` calls, the last result)."""
    times, result = [], None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def alternating(runs: dict[str, Callable[[], object]], repeats: int, clock=time.perf_counter, sync=lambda: None,
                progress: str | None = None) -> dict[str, list[float]]:
    """Seconds of each run in each of `repeats` rounds; a round calls every run once, in turn, so that drifts of the
    machine hit all of them alike. `clock`: time.perf_counter (wall), or time.process_time / time.thread_time (CPU
    time, which other processes on a shared machine do not stretch). `progress`: a bar over the rounds, so named."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in tqdm(range(repeats), desc=progress, leave=False, disable=progress is None):
        for name, run in runs.items():
            sync()
            start = clock()
            run()
            sync()
            times[name].append(clock() - start)
    return times


def median_ratio(times: dict[str, list[float]], slow: str, fast: str) -> float:
    """Median over the rounds of `slow` / `fast` seconds: the two of a round share that round's noise."""
    return statistics.median(s / f for s, f in zip(times[slow], times[fast]))


def time_inside_calls(owner, name: str, fn) -> tuple[float, float]:
    """(seconds `fn()` took, seconds of it inside calls of `owner.name`): one run split into the network's time (the
    method that computes the logits, say) and the caller's own, so that run-to-run noise does not enter the ratio of
    the two. The method is wrapped on the instance for the run and the wrapper removed after, even on failure."""
    method, inside = getattr(owner, name), [0.0]

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            inside[0] += time.perf_counter() - start

    setattr(owner, name, timed)
    try:
        start = time.perf_counter()
        fn()
        total = time.perf_counter() - start
    finally:
        delattr(owner, name)  # the class's method shows through again
    return total, inside[0]


def _status_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_bytes(run) -> int:
    """Peak resident memory (bytes) that `run()` adds on top of what is resident when it starts.

    Uses VmHWM, not ru_maxrss: on Linux ru_maxrss of an exec'd child starts from the parent's
    resident size at fork, which would hide the call. The high-water mark is reset just before the
    call (/proc/self/clear_refs, mode 5) so that making the inputs does not count against it.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # older kernels: earlier high-water marks stay in (conservative)
        pass
    base = _status_kb("VmRSS")
    run()
    return max(0, _status_kb("VmHWM") - base) * 1024


def in_fresh_process(function: str, **kwargs) -> int:
    """Run `module:function(**kwargs)` (which returns an int) in a new single-threaded Python process."""
    module, name = function.split(":")
    code = (f"import json; import {module} as m; "
            f"print(m.{name}(**json.loads({json.dumps(json.dumps(kwargs))})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=os.environ | {"OMP_NUM_THREADS": "1"})
    if out.returncode:
        raise RuntimeError(f"{function} failed in a fresh process:\n{out.stderr[-2000:]}")
    return int(out.stdout.strip().splitlines()[-1])




def write_results(json_path: str | Path, results: dict, markdown: str) -> None:
    """Write a benchmark's JSON and its markdown table beside it (same name, .md), and print the table."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    json_path.with_suffix(".md").write_text(markdown)
    print(markdown)
