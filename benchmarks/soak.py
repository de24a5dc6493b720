"""Does the app's memory stay flat? A soak of sequential ``/compare`` requests, with the process's resident memory.

    .venv/bin/python -m benchmarks.soak [--requests 100] [--strategies vtc-cls,fastv,vtw] [--keep 36] [--stream]

Starts the app in-process (``app.make_demo`` + ``app.launch``, embedded model, on a free loopback port) and sends
``--requests`` sequential ``/compare`` requests through gradio_client, each on a different held-out scene with its
own question (``pruning.shapes.world.heldout_questions``), so no request is answered from the app's caches of
identical requests (``--stream``: ``/compare_stream``, what the Compare button calls, with the overlays, plots
and per-image analyses). Prints the process's RSS (app and client share the process) after request 1, every tenth
request, and the growth from request 10 (warm: first-call allocations done) to the last: the goal is under 5%.

What could grow, and what bounds it: the app's per-model LRUs of attention traces of identical requests and of
per-image analyses (``Scope(cache_size=...)``, 128 entries each: once full the oldest go) and of the last 8 images'
vision passes; a visitor's Gradio session (the copies Gradio makes of outputs a streamed yield skips are dropped
before each run: ``app.ui.forget_skipped_outputs``); Gradio's copies of the uploaded images, which are files in its
temp directory (disk, not memory). docs/robustness.md has the figures.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.serving import free_port, load_app_main

ROOT = Path(__file__).resolve().parents[1]
GOAL_GROWTH = 0.05


def rss_bytes() -> int:
    """This process's resident set size (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    import psutil  # not Linux: psutil comes with gradio

    return psutil.Process().memory_info().rss


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="sequential /compare requests (100; at least 10)")
    parser.add_argument("--strategies", default="vtc-cls,fastv,vtw", help="compared with none (vtc-cls,fastv,vtw)")
    parser.add_argument("--keep", type=int, default=36, help="visual tokens kept (36 of 144)")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take (120)")
    parser.add_argument("--stream", action="store_true", help="/compare_stream (the Compare button: cards, plots, "
                        "analyses) instead of /compare")
    args = parser.parse_args(argv)
    if args.requests < 10:
        sys.exit("error: --requests: at least 10 (the first measurement is at request 10)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]

    from gradio_client import Client, handle_file

    from pruning.shapes.world import HELD_OUT_SEED, heldout_questions

    app_main = load_app_main()
    t0 = time.perf_counter()
    demo = app_main.make_demo()
    port = free_port()
    app_main.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    startup = time.perf_counter() - t0
    marks: list[tuple[int, int, float]] = []  # (request, rss, seconds since the first request)
    with tempfile.TemporaryDirectory(prefix="prunescope-soak-") as tmp:
        pairs = heldout_questions(args.requests, seed0=HELD_OUT_SEED + 800_000)
        work = []
        for i, (scene, question) in enumerate(pairs):
            path = Path(tmp) / f"scene-{i:03d}.png"
            scene.image.save(path)
            work.append((str(path), question.text))
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/compare_stream"]
            unset = {p["parameter_name"]: None for p in api["parameters"] if not p["parameter_has_default"]}
            t_start = time.perf_counter()
            for i, (image, question) in enumerate(work, start=1):
                if args.stream:
                    job = client.submit(image_path=handle_file(image), question_text=question, chosen=strategies,
                                        keep_value=args.keep, max_new_tokens=args.max_new_tokens,
                                        api_name="/compare_stream", **unset)
                    status = job.result(timeout=args.timeout)[0]
                    if not str(status).startswith("Done:"):
                        sys.exit(f"error: request {i} ended with {status!r}")
                else:
                    job = client.submit(image=handle_file(image), question=question, strategies=strategies,
                                        keep=args.keep, max_new_tokens=args.max_new_tokens, params={},
                                        api_name="/compare")
                    results = job.result(timeout=args.timeout)
                    if [r["strategy"] for r in results] != ["none", *strategies]:
                        sys.exit(f"error: request {i} returned {[r['strategy'] for r in results]}")
                if i == 1 or i % 10 == 0 or i == len(work):
                    gc.collect()
                    marks.append((i, rss_bytes(), time.perf_counter() - t_start))
                    print(f"request {i:>4}: RSS {mib(marks[-1][1])}  ({marks[-1][2]:.1f} s)", flush=True)
        finally:
            demo.close()

    at = dict((i, rss) for i, rss, _ in marks)
    first, last = at[10], marks[-1][1]
    growth = (last - first) / first
    elapsed = marks[-1][2]
    print()
    print(f"PruneScope soak: {args.requests} sequential /{'compare_stream' if args.stream else 'compare'} requests (none + {', '.join(strategies)}, keep "
          f"{args.keep}, {args.max_new_tokens} new tokens), each a different held-out scene and question; app "
          f"start-up {startup:.1f} s, requests {elapsed:.1f} s ({1000 * elapsed / args.requests:.0f} ms each)")
    print(f"RSS at request 10: {mib(first)}; at request {marks[-1][0]}: {mib(last)}; growth {growth:+.2%} "
          f"(goal < {GOAL_GROWTH:.0%}: {'met' if growth < GOAL_GROWTH else 'NOT met'})")
    return 0 if growth < GOAL_GROWTH else 1


if __name__ == "__main__":
    sys.exit(main())
