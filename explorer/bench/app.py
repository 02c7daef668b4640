"""`python -m explorer bench app`: how quickly the explorer page (app.py) answers on this machine.

1. Server start: `build_demo()`, then seconds from calling `launch` until the page answers HTTP 200.
2. First paint: in headless chromium, a fresh browser context per repeat, from `page.goto` until the precomputed
   example's coloured tokens are visible (no model runs for them).
3. Streaming: a masked-diffusion run (64 tokens, 64 steps, low_confidence) through gradio_client, from `submit`
   until the first output carrying a canvas arrives, and until the final output. The first run after start loads
   the model (its extra first-frame time is the model-load cost); the timed repeats follow it, then the same run
   with N = 4 samples in lockstep.
4. Replay: a `/replay` call on the stored run (a redraw, no model call).
5. Memory: the server process's resident memory (RSS) before `users` simulated users come, once each has run a
   generation (gradio_client sessions in another process, so their own memory is not counted), and after they
   leave (their process exits, which closes their sessions as a closed tab does). Goal: back within
   MEMORY_GOAL_MB of where it started.

The server runs in this process (as in the tests); the client and chromium share the machine's cores with it.
gradio_client polls its message queue every 50 ms, so its times carry up to 50 ms of client-side wait.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch
from tqdm.auto import tqdm

from explorer.bench.measure import write_results

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
COLOURED = "#tokens span.dlm-token[style*='background:rgb']"
FIRST_FRAME_TARGET_S = 1.0
FIRST_PAINT_TARGET_S = 2.0
TIMEOUT_S = 120.0
MEMORY_GOAL_MB = 200.0  # RSS after the users leave, above RSS before they came
USERS = 50


def spread(times: list[float]) -> dict:
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4), "runs": len(times)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def page_module():
    """The page's module (`explorer.page.layout`; `.common` holds its process-wide state, PAGE)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from explorer.page import layout

    return layout


def start_server():
    """(demo, url, timings): the page built and launched on a free 127.0.0.1 port, polled until it answers."""
    app = page_module()
    build_demo, launch_options = app.build_demo, app.launch_options
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    started = time.perf_counter()
    demo = build_demo()
    built = time.perf_counter()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    returned = time.perf_counter()
    while not answers(url):
        if time.perf_counter() - built > TIMEOUT_S:
            demo.close()
            raise RuntimeError(f"the page at {url} did not answer within {TIMEOUT_S:g} s of launch")
        time.sleep(0.005)
    answered = time.perf_counter()
    return demo, url, {"build_demo_s": round(built - started, 4), "launch_returned_s": round(returned - built, 4),
                       "launch_to_http_s": round(answered - built, 4)}


def timed_run(client, inputs: list) -> tuple[float, float, int]:
    """(seconds to the first streamed canvas, seconds to the final output, canvases streamed) of one /generate."""
    start = time.perf_counter()
    job = client.submit(*inputs, api_name="/generate")
    first, frames = None, 0
    for out in job:
        if isinstance(out[0], str) and "dlm-tokens" in out[0]:
            frames += 1
            if first is None:
                first = time.perf_counter() - start
    final = job.result(timeout=TIMEOUT_S)
    total = time.perf_counter() - start
    if first is None:
        raise RuntimeError(f"/generate streamed no canvas; its error output: {final[2]!r}")
    return first, total, frames


def streaming(client, inputs: list, runs: int, progress) -> dict:
    firsts, finals, frames = [], [], 0
    for _ in range(runs):
        first, final, frames = timed_run(client, inputs)
        firsts.append(first)
        finals.append(final)
        progress.update()
    return {"first_frame": spread(firsts), "final": spread(finals), "frames_streamed": frames}


def first_paint(url: str, repeats: int, progress) -> tuple[dict | None, str | None]:
    """(timings, None), or (None, why) when chromium or Playwright is missing."""
    if not Path(CHROMIUM).is_file():
        progress.update(repeats)
        return None, f"{CHROMIUM} is missing (run scripts/install_chromium.sh)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        progress.update(repeats)
        return None, f"playwright is not installed ({err})"
    times = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for _ in range(repeats):
                context = browser.new_context(viewport={"width": 1440, "height": 1000})
                page = context.new_page()
                start = time.perf_counter()
                page.goto(url, wait_until="commit", timeout=TIMEOUT_S * 1000)
                page.wait_for_selector(COLOURED, state="visible", timeout=TIMEOUT_S * 1000)
                times.append(time.perf_counter() - start)
                context.close()
                progress.update()
        finally:
            browser.close()
    return spread(times), None


def replay_latency(client, steps: int, repeats: int, progress) -> dict:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        view = client.predict(i * 7 % (steps + 1), "confidence", "pca", "this run", api_name="/replay")[0]
        times.append(time.perf_counter() - start)
        if "dlm-tokens" not in view:
            raise RuntimeError(f"/replay returned no canvas: {view[:200]!r}")
        progress.update()
    return spread(times)


def rss_mb() -> float | None:
    """This process's resident memory in MB (Linux /proc; None elsewhere), after a garbage collection."""
    gc.collect()
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)


USERS_SCRIPT = """
import json, os, sys
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
from gradio_client import Client
url, inputs, users = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
clients = []
for _ in range(users):  # each a session of its own, as a browser tab is
    clients.append(Client(url, verbose=False))
    clients[-1].predict(*inputs, api_name="/generate")
print("arrived", flush=True)
sys.stdin.readline()
os._exit(0)  # no goodbyes: every connection drops at once, as when the tabs close
"""


def memory_use(url: str, inputs: list, users: int, progress) -> dict:
    """RSS of this process (the server's) before, with and after `users` simulated users (see the module doc)."""
    memory = page_module().common.page().memory
    started = time.perf_counter()
    while memory.sessions and time.perf_counter() - started < TIMEOUT_S:  # the timing client's session closes
        time.sleep(0.1)
    before = rss_mb()
    child = subprocess.Popen([sys.executable, "-c", USERS_SCRIPT, url, json.dumps(inputs), str(users)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "arrived":  # their generations done (or the process failed)
            raise RuntimeError(f"the {users} simulated users stopped before all had run (exit code {child.wait()})")
        with_users, sessions, held = rss_mb(), len(memory.sessions), memory.total
        child.communicate("leave\n", timeout=TIMEOUT_S)
    finally:
        child.kill()
    started = time.perf_counter()
    while memory.sessions and time.perf_counter() - started < TIMEOUT_S:  # the page hears each tab close
        time.sleep(0.1)
    freed_s = time.perf_counter() - started
    after = rss_mb()
    progress.update()
    return {"users": users, "rss_before_mb": before, "rss_with_users_mb": with_users, "rss_after_mb": after,
            "after_minus_before_mb": None if before is None else round(after - before, 1),
            "sessions_counted": sessions, "runs_held_mb": round(held / 1e6, 1), "sessions_left": len(memory.sessions),
            "seconds_until_freed": round(freed_s, 2), "budget_mb": round(memory.budget / 1e6),
            "goal_mb": MEMORY_GOAL_MB}


def run_app_bench(repeats: int = 5, json_path: str | Path = "bench_results/app.json", checkpoint: str = "mdlm-tiny",
                  gen_length: int = 64, users: int = USERS) -> dict:
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1 for bench app, got {repeats}")
    from gradio_client import Client

    run = {"checkpoint": checkpoint, "prompt": "ROMEO:", "sampler": "low_confidence", "gen_length": gen_length,
           "steps": gen_length, "block_length": gen_length, "temperature": 0.0, "threshold": 0.9, "seed": 0,
           "color_by": "confidence", "cache": "none", "n": 1, "cfg_scale": 0.0, "constraints": ""}
    results = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "load_average_1m": round(os.getloadavg()[0], 2), "platform": platform.platform(),
                           "python": platform.python_version(), "torch": torch.__version__},
               "repeats": repeats, "run": run,
               "targets": {"first_frame_s": FIRST_FRAME_TARGET_S, "first_paint_s": FIRST_PAINT_TARGET_S}}
    previous = page_module().common.PAGE  # the page state of a page already served in this process (tests)
    with tqdm(total=1 + repeats + 1 + 3 * repeats + 1, desc="bench app") as progress:
        demo, url, results["server_start"] = start_server()
        progress.update()
        try:
            results["first_paint"], results["first_paint_skipped"] = first_paint(url, repeats, progress)
            client = Client(url, verbose=False)
            first, final, _ = timed_run(client, list(run.values()))  # loads the model
            progress.update()
            results["n1"] = streaming(client, list(run.values()), repeats, progress)
            results["cold_run"] = {"first_frame_s": round(first, 4), "final_s": round(final, 4),
                                   "model_load_s": round(first - results["n1"]["first_frame"]["median_s"], 4)}
            results["n4"] = streaming(client, list((run | {"n": 4}).values()), repeats, progress)
            results["replay"] = replay_latency(client, run["steps"], repeats, progress)
            client.close()
            results["memory"] = memory_use(url, list(run.values()), users, progress)
        finally:
            demo.close()
            page_module().common.PAGE = previous  # build_demo replaced the process-wide page state: give it back
    results["machine"]["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    write_results(json_path, results, app_table(results))
    return results


def verdict(seconds: float, target: float) -> str:
    return f"< {target:g} s: {'met' if seconds < target else 'missed'}"


def app_table(r: dict) -> str:
    m, run, start, cold = r["machine"], r["run"], r["server_start"], r["cold_run"]
    targets = r["targets"]

    def row(name: str, s: dict, target: str = "") -> str:
        return f"| {name} | **{s['median_s']:.3f}** | {s['min_s']:.3f} | {s['max_s']:.3f} | {target} |"

    what = f"`{run['checkpoint']}`, {run['gen_length']} tokens, {run['steps']} steps, {run['sampler']}"
    lines = [f"Explorer page responsiveness ({r['date']}; {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, "
             f"load average {m['load_average_1m']} at start, {m['load_average_1m_end']} at the end; server, "
             f"gradio_client and chromium on this machine; seconds, {r['repeats']} repeats; gradio_client checks "
             "for new messages every 50 ms, so its times include up to that much polling)", "",
             "| measurement | median | min | max | target |", "|---|---|---|---|---|",
             f"| server start: `build_demo()` | {start['build_demo_s']:.3f} | | | |",
             f"| server start: `launch` until the page answers HTTP 200 | **{start['launch_to_http_s']:.3f}** | | | |"]
    if r["first_paint"]:
        lines.append(row("first paint in chromium: `goto` until the example's coloured tokens are visible (fresh "
                         "context each)", r["first_paint"], verdict(r["first_paint"]["median_s"],
                                                                    targets["first_paint_s"])))
    else:
        lines.append(f"| first paint in chromium | not measured: {r['first_paint_skipped']} | | | "
                     f"< {targets['first_paint_s']:g} s |")
    lines += [f"| first run after start ({what}; loads the model): first streamed frame | "
              f"{cold['first_frame_s']:.3f} | | | |",
              f"| first run after start: final output | {cold['final_s']:.3f} | | | |",
              f"| model-load cost (first run's first frame minus the warm median) | **{cold['model_load_s']:.3f}** "
              f"| | | |"]
    for key, label in (("n1", "N = 1"), ("n4", "N = 4 runs at once")):
        s = r[key]
        lines += [row(f"first streamed frame, {what}, {label} (submit until the first canvas)", s["first_frame"],
                      verdict(s["first_frame"]["median_s"], targets["first_frame_s"])),
                  row(f"final output, {label} ({s['frames_streamed']} canvases streamed)", s["final"])]
    lines.append(row("`/replay` of a stored frame after a run (redraw, no model call)", r["replay"],
                     f"far below a run's {r['n1']['final']['median_s']:.3f} s"))
    mem = r["memory"]
    if mem["rss_before_mb"] is None:
        lines.append("\nServer memory: not measured (needs Linux's /proc).")
        return "\n".join(lines) + "\n"
    met = "met" if mem["after_minus_before_mb"] <= mem["goal_mb"] else "missed"
    lines += ["", f"Server memory (resident set of the server's process, MB; {mem['users']} simulated users, each a "
              f"gradio_client session in another process running the run above once, then all leaving at once; "
              f"memory budget for all sessions' runs {mem['budget_mb']} MB)", "",
              "| moment | RSS (MB) | note |", "|---|---|---|",
              f"| before the users | {mem['rss_before_mb']:.0f} | |",
              f"| all {mem['users']} users have run | {mem['rss_with_users_mb']:.0f} | {mem['sessions_counted']} "
              f"sessions hold {mem['runs_held_mb']:.1f} MB of runs |",
              f"| after they left | {mem['rss_after_mb']:.0f} | **{mem['after_minus_before_mb']:+.0f} MB** vs before "
              f"(goal: within {mem['goal_mb']:g} MB: {met}); sessions freed {mem['seconds_until_freed']:.1f} s after "
              f"the users' process exited, {mem['sessions_left']} left |"]
    return "\n".join(lines) + "\n"
