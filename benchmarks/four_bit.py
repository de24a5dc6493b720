"""4-bit (bitsandbytes nf4) against fp32 on one model, in one process, interleaved, and the pruning speedups in each.

    .venv/bin/python -m benchmarks.four_bit [--geometry llava-1.5-7b] [--llm-layers 2] [--vit-layers 4]
        [--configs none,vtc-cls:64,random:64,fastv:64,vtw] [--repeats 5] [--new-tokens 8] [--threads 2]
        [--json out.json]

The same random-init model (``python -m pruning speed``'s geometry) is loaded twice, in fp32 and in 4-bit (nf4,
double quantization, fp32 compute: ``pruning.model.load_model(load_in_4bit=True)``), and every configuration runs
on both, round robin within each repeat (each repeat starting one configuration later), after one untimed warm-up
of each. Reported: median (min-max) vision ms, prefill ms and decode ms per token; the 4-bit / fp32 time ratio of
each configuration; each configuration's prefill speedup over ``none`` in the same precision, measured (ratio of
medians) and predicted (TFLOPs, the same in both precisions); the weights' bytes in each precision; and whether the
two precisions answer with the same tokens (nf4 rounds the weights, so they may differ).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from benchmarks import timing_parser

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_configs(spec: str, n_layers: int) -> list[dict]:
    from benchmarks.speed_profile import parse_configs as parse

    configs = parse(spec, n_layers)
    if configs[0]["params"]["name"] != "none":
        raise SystemExit("error: --configs must start with none (the reference)")
    return configs


def weight_bytes(model) -> int:
    """Bytes of the parameters and buffers as stored (4-bit weights: their packed bytes and quantization state)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def main(argv=None) -> int:
    p = timing_parser("python -m benchmarks.four_bit", __doc__.split("\n")[0], new_tokens=8, repeats=5)
    p.add_argument("--configs", default="none,vtc-cls:64,random:64,fastv:64,vtw")
    args = p.parse_args(argv)

    import torch
    from tqdm import tqdm

    from pruning.engine import Engine
    from pruning.model import load_model
    from pruning.speed import (DEFAULT_QUESTION, OthersCPU, geometry_model, interleaved_order, load_average,
                               machine_info, random_image, spread)
    from pruning.strategies import get_strategy

    torch.set_num_threads(args.threads)
    source = str(geometry_model(args.geometry, args.llm_layers, args.vit_layers))
    engines = {"fp32": Engine(load_model(source, device="cpu")),
               "nf4": Engine(load_model(source, load_in_4bit=True, device="cpu"))}
    configs = parse_configs(args.configs, len(engines["fp32"].layers))
    image = random_image()
    prepared = {k: e.prepare(image, DEFAULT_QUESTION) for k, e in engines.items()}
    runs = [(precision, c) for c in configs for precision in engines]
    strategies = [get_strategy(**c["params"]) for _, c in runs]
    sampling = dict(temperature=0.0, top_p=1.0, seed=0)
    order = interleaved_order(len(runs), args.repeats)
    times: list[list[dict]] = [[] for _ in runs]
    last: list = [None] * len(runs)
    others = []
    load_before = load_average()
    t0 = time.perf_counter()
    with tqdm(total=len(runs) + len(order), desc="4-bit vs fp32", unit="run") as bar:
        for i, (precision, c) in enumerate(runs):
            bar.set_postfix_str(f"warm-up {precision} {c['label']}")
            engines[precision].timed_run(prepared[precision], strategies[i], args.new_tokens, sampling)
            bar.update(1)
        for r, i in order:
            precision, c = runs[i]
            bar.set_postfix_str(f"repeat {r + 1}/{args.repeats} {precision} {c['label']}")
            with OthersCPU() as o:
                timings, last[i] = engines[precision].timed_run(prepared[precision], strategies[i], args.new_tokens,
                                                                sampling)
            others.append(o.share if o.share is not None else float("nan"))
            times[i].append(timings)
            bar.update(1)
    rows = []
    for i, (precision, c) in enumerate(runs):
        engine = engines[precision]
        med = {k: statistics.median(t[k] for t in times[i]) for k in ("vision_ms", "prefill_ms",
                                                                       "decode_ms_per_token", "total_ms")}
        result = engine.make_result(prepared[precision], strategies[i], *last[i], med, None, None)
        rows.append({"precision": precision, "label": c["label"], "params": c["params"],
                     "timings": {k: spread([t[k] for t in times[i]]) for k in med},
                     "tokens": result.generated_tokens, "prefill_tflops": result.tflops["prefill"],
                     "tokens_per_layer": result.tokens_per_layer})
    by = {(r["precision"], r["label"]): r for r in rows}
    for r in rows:
        ref = by[(r["precision"], "none")]
        fp = by[("fp32", r["label"])]
        r["prefill_speedup"] = ref["timings"]["prefill_ms"]["median"] / r["timings"]["prefill_ms"]["median"]
        r["prefill_speedup_predicted"] = ref["prefill_tflops"] / r["prefill_tflops"]
        r["prefill_efficiency"] = r["prefill_speedup"] / r["prefill_speedup_predicted"]
        for k in ("prefill_ms", "decode_ms_per_token", "vision_ms"):
            r[f"{k}_over_fp32"] = r["timings"][k]["median"] / fp["timings"][k]["median"]
        r["same_tokens_as_fp32"] = r["tokens"] == fp["tokens"]
    report = {
        "command": "python -m benchmarks.four_bit " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": {"source": source, "llm_layers": args.llm_layers, "vit_layers": args.vit_layers,
                  "weight_bytes": {k: weight_bytes(e.model) for k, e in engines.items()}},
        "machine": {**machine_info("cpu"), "load_before": load_before, "load_after": load_average(),
                    "others_cpu_median": statistics.median(others), "others_cpu_max": max(others)},
        "settings": {"repeats": args.repeats, "new_tokens": args.new_tokens, "wall_s": time.perf_counter() - t0},
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(text(report))
    return 0


def text(report: dict) -> str:
    m, mach = report["model"], report["machine"]
    wb = m["weight_bytes"]
    lines = [f"$ {report['command']}",
             f"model: {m['source']} ({m['llm_layers']} LLM + {m['vit_layers']} ViT layers); weights fp32 "
             f"{wb['fp32'] / 2**20:.0f} MiB, nf4 {wb['nf4'] / 2**20:.0f} MiB",
             f"machine: {mach['cpu']} ({mach['cpu_count']} cores, {mach['torch_threads']} threads); load "
             f"{mach['load_before']} -> {mach['load_after']}; others' CPU median {mach['others_cpu_median']:.1%}, "
             f"max {mach['others_cpu_max']:.1%}; {report['settings']['repeats']} repeats, "
             f"{report['settings']['wall_s']:.0f} s", "",
             "| precision | configuration | vision ms | prefill ms | decode ms/token | prefill / fp32 | decode / fp32 "
             "| prefill speedup over none: measured / predicted (efficiency) | same tokens as fp32 |",
             "|---|---|---|---|---|---|---|---|---|"]

    def ms(s):
        return f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f})"

    for r in report["rows"]:
        t = r["timings"]
        lines.append(f"| {r['precision']} | {r['label']} | {ms(t['vision_ms'])} | {ms(t['prefill_ms'])} | "
                     f"{ms(t['decode_ms_per_token'])} | {r['prefill_ms_over_fp32']:.2f} | "
                     f"{r['decode_ms_per_token_over_fp32']:.2f} | {r['prefill_speedup']:.2f}x / "
                     f"{r['prefill_speedup_predicted']:.2f}x ({r['prefill_efficiency']:.2f}) | "
                     f"{'yes' if r['same_tokens_as_fp32'] else 'no'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
