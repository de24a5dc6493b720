"""Where the time of one ``speed`` run goes: torch.profiler over vision, prefill and decode, and the GEMM rate by
row count (what pruning changes: the rows of every matrix product in the LLM).

    .venv/bin/python -m benchmarks.speed_profile [--geometry llava-1.5-7b] [--llm-layers 2] [--vit-layers 4]
        [--configs none,random:64,fastv:64] [--new-tokens 8] [--threads 2] [--json out.json]

For each configuration (``name`` or ``name:keep``; fastv and vtw at the layer ``speed`` uses): one warm-up run,
then one run under ``torch.profiler`` with the three stages marked (the engine's own ``vision_pass``, ``prefill``
and ``decode``, the calls ``Engine.timed_run`` makes), and the profiler's self CPU time grouped as

- ``gemm``: aten::mm / addmm / bmm / matmul / linear (the projections, the MLP, the LM head);
- ``attention``: scaled_dot_product_attention and the softmax / einsum of the [CLS] and last-query rows;
- ``copies``: index / index_select / cat / copy_ / contiguous / clone / to (rows dropped, caches grown);
- ``elementwise``: everything else (norms, activations, rotary, adds);

plus the wall time the operators do not cover (Python between them: hooks, the layer loop). Then the GEMM rate
on this machine for the LLM's three matrix shapes at the prefill row counts seen (median of 5).
"""

from __future__ import annotations

import json
import os
import statistics
import time

from benchmarks import timing_parser

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GROUPS = {
    "gemm": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"),
    "attention": ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_softmax", "aten::softmax", "aten::einsum", "aten::_scaled_dot_product_attention_math"),
    "copies": ("aten::index", "aten::index_select", "aten::cat", "aten::copy_", "aten::contiguous", "aten::clone",
               "aten::to", "aten::_to_copy", "aten::nonzero", "aten::masked_select", "aten::gather"),
}


def group_of(name: str) -> str:
    for group, names in GROUPS.items():
        if name in names:
            return group
    return "elementwise"


def parse_configs(spec: str, n_layers: int) -> list[dict]:
    from pruning.speed import FASTV_LAYER
    from pruning.strategies import get_strategy

    out = []
    for part in spec.split(","):
        name, _, keep = part.strip().partition(":")
        params = {"name": name}
        if keep:
            params["keep"] = int(keep)
        if name == "fastv":
            params["layer"] = min(FASTV_LAYER, n_layers - 1)
        if name == "vtw":
            params["layer"] = get_strategy("vtw").llm_layer(n_layers)
        out.append({"label": part.strip(), "params": params})
    return out


def profile_one(engine, prepared, strategy, new_tokens: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    sampling = dict(temperature=0.0, top_p=1.0, seed=0)
    engine.timed_run(prepared, strategy, new_tokens, sampling)  # warm-up
    stages = {}
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        with record_function("stage::vision"):
            vision = engine.vision_pass(prepared, seed=strategy.seed, strategy=strategy)
        t1 = time.perf_counter()
        with record_function("stage::prefill"):
            state = engine.prefill(prepared, vision, strategy)
        t2 = time.perf_counter()
        with record_function("stage::decode"):
            tokens = engine.decode(state, new_tokens, **sampling)
        t3 = time.perf_counter()
    stages = {"vision_ms": (t1 - t0) * 1e3, "prefill_ms": (t2 - t1) * 1e3, "decode_ms": (t3 - t2) * 1e3}
    # self CPU time per operator, attributed to the stage whose interval contains it
    bounds = {}
    for e in prof.events():
        if e.name.startswith("stage::"):
            bounds[e.name[7:]] = (e.time_range.start, e.time_range.end)
    per_stage = {s: {"gemm": 0.0, "attention": 0.0, "copies": 0.0, "elementwise": 0.0} for s in bounds}
    gemms = {}
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        stage = next((s for s, (a, b) in bounds.items() if a <= e.time_range.start <= b), None)
        if stage is None:
            continue
        per_stage[stage][group_of(e.name)] += e.self_cpu_time_total / 1e3
        if e.name in ("aten::mm", "aten::addmm") and e.input_shapes:
            shapes = [s for s in e.input_shapes if len(s) == 2]
            if len(shapes) >= 2:
                a, b = shapes[-2], shapes[-1]
                m, k, n = a[0], a[1], b[1]
                key = (stage, m, k, n)
                g = gemms.setdefault(key, {"ms": 0.0, "calls": 0})
                g["ms"] += e.cpu_time_total / 1e3
                g["calls"] += 1
    out = {"stages_ms": stages, "tokens_per_layer": state.tokens_per_layer, "decoded": len(tokens), "by_group_ms": {}}
    for stage, groups in per_stage.items():
        wall = stages[f"{stage}_ms"]
        groups = {k: round(v, 1) for k, v in groups.items()}
        groups["outside_operators"] = round(wall - sum(groups.values()), 1)
        out["by_group_ms"][stage] = groups
    out["gemms"] = [{"stage": s, "m": m, "k": k, "n": n, "calls": g["calls"], "ms": round(g["ms"], 2),
                     "gflops_per_s": round(2 * m * k * n * g["calls"] / (g["ms"] / 1e3) / 1e9, 1)}
                    for (s, m, k, n), g in sorted(gemms.items(), key=lambda kv: -kv[1]["ms"])[:12]]
    return out


def gemm_rate(rows: list[int], shapes: list[tuple[int, int]], repeats: int = 5) -> list[dict]:
    """GFLOP/s of ``x @ W^T`` for x (m, k) and W (n, k), fp32, median of ``repeats`` after one warm-up."""
    import torch

    out = []
    for k, n in shapes:
        w = torch.randn(n, k)
        for m in rows:
            x = torch.randn(m, k)
            torch.nn.functional.linear(x, w)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                torch.nn.functional.linear(x, w)
                times.append(time.perf_counter() - t)
            ms = statistics.median(times) * 1e3
            out.append({"m": m, "k": k, "n": n, "ms": round(ms, 2), "gflops_per_s": round(2 * m * k * n / ms / 1e6, 1)})
    return out


def main(argv=None) -> int:
    import torch

    from pruning.engine import Engine
    from pruning.model import load_model
    from pruning.speed import geometry_model, load_average, random_image
    from pruning.strategies import get_strategy

    ap = timing_parser("python -m benchmarks.speed_profile", __doc__.split("\n")[0], new_tokens=8)
    ap.add_argument("--configs", default="none,random:64,fastv:64")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = geometry_model(args.geometry, args.llm_layers, args.vit_layers)
    engine = Engine(load_model(str(path), device="cpu"))
    prepared = engine.prepare(random_image(engine.geometry.image_size), "What is shown in this image?")
    report = {"load_average_before": load_average(), "threads": torch.get_num_threads(), "configs": {}}
    seen_rows = set()
    for config in parse_configs(args.configs, engine.geometry.llm_layers):
        strategy = get_strategy(**config["params"])
        r = profile_one(engine, prepared, strategy, args.new_tokens)
        report["configs"][config["label"]] = r
        seen_rows.update(r["tokens_per_layer"])
        print(f"== {config['label']}: tokens per layer {r['tokens_per_layer']}, stages (ms) "
              + ", ".join(f"{k} {v:.0f}" for k, v in r["stages_ms"].items()))
        for stage, groups in r["by_group_ms"].items():
            print(f"   {stage:>8}: " + ", ".join(f"{k} {v:.0f}" for k, v in groups.items()))
        for g in r["gemms"][:6]:
            print(f"   gemm {g['stage']:>8} {g['m']:>5} x {g['k']:>5} x {g['n']:>5} x{g['calls']:<3} {g['ms']:>8.1f} ms "
                  f"{g['gflops_per_s']:>7.1f} GFLOP/s")
    s = engine.llm_shape
    shapes = [(s.hidden, s.hidden), (s.hidden, s.intermediate), (s.intermediate, s.hidden)]
    report["gemm_rate"] = gemm_rate(sorted(seen_rows | {1}), shapes)
    print("GEMM rate (fp32, x @ W^T):")
    for g in report["gemm_rate"]:
        print(f"   m {g['m']:>5}  {g['k']:>5} -> {g['n']:>5}: {g['ms']:>8.2f} ms {g['gflops_per_s']:>7.1f} GFLOP/s")
    report["load_average_after"] = load_average()
    print(f"load average before {report['load_average_before']}, after {report['load_average_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
