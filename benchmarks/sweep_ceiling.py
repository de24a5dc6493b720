"""How long the most work one sweep request may ask takes: ``Scope.sweep`` on the embedded model, timed.

    .venv/bin/python -m benchmarks.sweep_ceiling [--strategies all] [--budgets 48,32,16] [--n 100] [--threads N]
    .venv/bin/python -m benchmarks.sweep_ceiling --compare    # the largest comparison the app's /compare accepts

The default request is every strategy (``bench``'s "all": the registered ones but none and manual) at three budgets
on 100 held-out questions: 47 configurations x 100 questions x 4 new tokens = 18,800, the largest such request under
``pruning.compare.SWEEP_CEILING`` (20,000). Printed: the request's size against the ceiling, the wall time of the
sweep and the time per question run (one prefill and 4 decoded tokens), and the share of the CPU other processes
took meanwhile (the machine may be shared). docs/robustness.md quotes it.

``--compare`` times instead the largest comparison the app accepts: every strategy, the budget slider at half the
grid, ``max_new_tokens`` at the app's bound (64) and k-means at its most iterations (1000), with the app's
repeats (5, each paired with a run of none) and one warm-up.
"""

from __future__ import annotations

import argparse
import sys
import time

from pruning import bench
from pruning.compare import SWEEP_CEILING, SWEEP_NEW_TOKENS, Scope, check_sweep_size
from pruning.speed import OthersCPU


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep_ceiling", description=__doc__.split("\n")[0])
    parser.add_argument("--strategies", default="all")
    parser.add_argument("--budgets", default="48,32,16")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: Scope's, 1 for the toy)")
    parser.add_argument("--compare", action="store_true", help="time the largest comparison the app accepts")
    args = parser.parse_args(argv)
    if args.compare:
        return largest_compare(args.threads)
    budgets = [int(b) for b in args.budgets.split(",")]
    rows = bench.configs(args.strategies, budgets, position_variants=False)
    names = {p["name"] for _, p in rows} - {"none"}
    size = check_sweep_size(len(names), len(budgets), len(rows), args.n)
    print(f"request: {len(names)} strategies x {len(budgets)} budgets x {args.n} questions = {len(rows)} "
          f"configurations x {args.n} questions x {SWEEP_NEW_TOKENS} tokens = {size:,} (ceiling {SWEEP_CEILING:,})")
    scope = Scope(threads=args.threads)
    with OthersCPU() as others:
        start = time.perf_counter()
        out = scope.sweep(args.strategies.split(",") if args.strategies != "all" else "all", budgets, n=args.n,
                          progress=False)
        seconds = time.perf_counter() - start
    others_words = ("" if others.share is None else
                    f"; other processes took {others.share:.0%} of the machine's CPU meanwhile")
    print(f"sweep: {seconds:.1f} s ({seconds / 60:.1f} min), {seconds / (len(out) * args.n) * 1e3:.1f} ms per question "
          f"run{others_words}")
    return 0


def largest_compare(threads: int | None) -> int:
    """Every strategy at once, as ``/compare`` runs it with the most the app lets a visitor ask for."""
    from pathlib import Path

    from pruning.strategies import available

    scope = Scope(threads=threads)
    example = Path(__file__).resolve().parents[1] / "assets" / "examples" / "example-2-count.png"
    strategies = [s for s in available() if s != "none"]
    params = {"kmeans": {"iterations": 1000}}
    keep = scope.engine.geometry.n_patches // 2
    with OthersCPU() as others:
        start = time.perf_counter()
        results = scope.compare(str(example), "How many objects are there?", strategies, keep, params,
                                max_new_tokens=64)
        seconds = time.perf_counter() - start
    others_words = ("" if others.share is None else
                    f"; other processes took {others.share:.0%} of the machine's CPU meanwhile")
    print(f"compare: {len(results)} strategies (none first), keep {keep}, max_new_tokens 64, kmeans iterations 1000: "
          f"{seconds:.1f} s{others_words}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
