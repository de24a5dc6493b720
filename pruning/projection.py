"""What one comparison's kept sets would cost on LLaVA-1.5-7B, projected from a measured speed report.

The report is ``python -m pruning speed --json``'s (the app's Sweep tab shows ``assets/reports/speed-7b.json``):
prefill, vision and decode milliseconds measured on a random-init model with LLaVA-1.5-7B's real widths but only a
few layers. Since its widths are the real model's, one of its decoder layers at T rows costs what one of the real
model's layers costs at T rows on the same machine. ``project`` uses that:

1. **Measured points, ms per decoder layer at T rows.** Every report row whose LLM layers all ran the same T rows
   (``none`` and the strategies that prune before the LLM) gives one point: its prefill ms times the layer's share
   of the prefill's FLOPs (the rest is the projector and the LM head). Rows at the same T are pooled (median).
   One decode step of ``none`` gives the point at T = 1.
2. **The kept sets on the target.** The result's visual tokens per LLM layer are scaled from its grid to the
   target's (144 -> 576 patches: x4) and its layers mapped by depth (toy layer i of 8 stands for target layers
   4i..4i+3); the text tokens are the request's. The ViT's tokens per layer the same way.
3. **Time.** Each target layer at T rows takes the measured ms per layer, interpolated linearly in T between the
   points (above the largest point: that point's ms per FLOP); the projector and the LM head take the ms per FLOP
   of the first and the last layer; the vision tower the report's measured ms per FLOP of its ViT. TTFT = vision +
   prefill. The same with the report's first and third quartiles gives ``*_range``.
4. **KV cache** after the prefill, in fp16 (2 bytes per value, as the real model keeps it): 2 x rows x key/value
   heads x head dim per layer.

A report row of the same shape as a measured one is reproduced exactly (tests/test_projection.py checks it).
What the report does not hold is never made up: the result then says ``available: False`` and why.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from . import cost
from .geometries import BUILT_IN

DEFAULT_REPORT = Path(__file__).resolve().parents[1] / "assets" / "reports" / "speed-7b.json"
KV_BYTES_PER_VALUE = 2  # fp16: the real model's cache
NAMES = {"llava-1.5-7b": "LLaVA-1.5-7B", "llava-1.5-13b": "LLaVA-1.5-13B"}
_WIDTHS = ("hidden", "intermediate", "heads", "kv_heads")


def load_report(path: str | Path | None = None) -> dict | None:
    """The speed report at ``path`` (default: the one the app's Sweep tab shows), or None when there is none."""
    path = Path(path) if path is not None else DEFAULT_REPORT
    return json.loads(path.read_text()) if path.is_file() else None


def _stat(timing, stat: str) -> float:
    return float(timing[stat]) if isinstance(timing, dict) else float(timing)


def machine_words(report: dict) -> str:
    """The machine a report was measured on, in words (CPU or GPU, cores, threads, dtype)."""
    m, model = report.get("machine", {}), report.get("model", {})
    where = m.get("gpu") or f"{m.get('cpu') or 'unknown CPU'} ({m.get('cpu_count', '?')} cores, " \
                            f"{m.get('torch_threads', '?')} torch threads)"
    four_bit = ", 4-bit" if model.get("load_in_4bit") else ""
    return f"{where}, {m.get('device', '?')}, {model.get('dtype', '?')}{four_bit}"


def unavailable(report: dict | None) -> str | None:
    """Why ``report`` cannot be projected from (None: it can)."""
    if report is None:
        return "no speed report (`python -m pruning speed --json`) at assets/reports/speed-7b.json"
    model = report.get("model") or {}
    geometry = BUILT_IN.get(model.get("geometry"))
    if geometry is None:
        return f"the speed report was measured on geometry {model.get('geometry')!r}, not a built-in LLaVA-1.5"
    s = geometry.llm
    if any(model.get(k) != getattr(s, k) for k in _WIDTHS):
        return f"the speed report's widths ({ {k: model.get(k) for k in _WIDTHS} }) are not {geometry.name}'s"
    if not layer_points(report, "median"):
        return "the speed report has no row whose LLM layers all ran the same number of tokens (no per-layer time)"
    if not _vision_ms_per_flop(report, "median"):
        return "the speed report has no vision timing of the full ViT"
    return None


def layer_points(report: dict, stat: str = "median") -> list[tuple[int, float]]:
    """(rows T, ms per decoder layer at T rows) measured in ``report``: see the module docstring, step 1."""
    s = BUILT_IN[report["model"]["geometry"]].llm
    pooled: dict[int, list[float]] = {}
    for row in report.get("rows", []):
        t = row.get("tokens_per_layer") or []
        timing = (row.get("timings") or {}).get("prefill_ms")
        if not t or len(set(t)) != 1 or timing is None:
            continue
        share = cost.llm_layer_flops(s, t[0], t[0]) / (row["tflops"]["prefill"] * 1e12)
        pooled.setdefault(t[0], []).append(_stat(timing, stat) * share)
    points = {rows: statistics.median(v) for rows, v in pooled.items()}
    none = next((r for r in report.get("rows", []) if r.get("strategy") == "none"), None)
    decode = none and none.get("timings", {}).get("decode_ms_per_token")
    if points and decode is not None and 1 not in points:
        keys = none["tokens_per_layer"][0] + 1  # the first decoded token attends to the prompt and itself
        points[1] = _stat(decode, stat) * cost.llm_layer_flops(s, 1, keys) / (none["tflops"]["decode_per_token"] * 1e12)
    return sorted(points.items())


def _vision_ms_per_flop(report: dict, stat: str) -> float | None:
    """Milliseconds per ViT FLOP: the median over the report's rows that ran the full ViT."""
    full = [r for r in report.get("rows", []) if (r.get("timings") or {}).get("vision_ms") is not None
            and len(set(r.get("vit_tokens_per_layer") or [0, 1])) == 1 and r["tflops"].get("vision")]
    if not full:
        return None
    return statistics.median(_stat(r["timings"]["vision_ms"], stat) / (r["tflops"]["vision"] * 1e12) for r in full)


def layer_ms(points: list[tuple[int, float]], s, rows: int) -> float:
    """Milliseconds of one decoder layer of shape ``s`` at ``rows`` rows, from the measured ``points``."""
    flops = cost.llm_layer_flops(s, rows, rows)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= rows <= x1:
            return y0 + (y1 - y0) * (rows - x0) / (x1 - x0)
    x, y = points[-1] if rows > points[-1][0] else points[0]
    return y * flops / cost.llm_layer_flops(s, x, x)  # outside the points: that point's ms per FLOP


def target_schedule(result: dict, geometry) -> dict:
    """The result's token counts on ``geometry``: module docstring, step 2."""
    n_src, n = result["visual_tokens"], geometry.n_patches
    scale = n / n_src
    image = result["image_tokens_per_layer"]
    text = result["tokens_per_layer"][0] - image[0]
    layers = geometry.llm.layers
    visual = [round(image[j * len(image) // layers] * scale) for j in range(layers)]
    cls = geometry.vision.n_tokens - n
    vit_src = result.get("vit_tokens_per_layer")
    vit = [geometry.vision.n_tokens] * geometry.vision.layers
    if vit_src and len(set(vit_src)) > 1:
        cls_src = vit_src[0] - n_src
        vit = [round((vit_src[j * len(vit_src) // len(vit)] - cls_src) * scale) + cls for j in range(len(vit))]
    return {"text": text, "visual": visual, "tokens": [text + v for v in visual], "vit": vit,
            "kept": round(result["visual_tokens_kept"] * scale)}


def timed(schedule: dict, geometry, report: dict, stat: str = "median") -> dict:
    """``vision_ms``, ``prefill_ms`` and ``ttft_ms`` of ``schedule`` (``tokens`` per LLM layer, ``kept`` visual tokens
    through the projector, ``vit`` tokens per ViT layer) on ``geometry``, from ``report``'s ``stat`` timings."""
    points, vision_rate = layer_points(report, stat), _vision_ms_per_flop(report, stat)
    s, v = geometry.llm, geometry.vision
    tokens = schedule["tokens"]
    per_flop = [layer_ms(points, s, t) / cost.llm_layer_flops(s, t, t) for t in (tokens[0], tokens[-1])]
    prefill = (sum(layer_ms(points, s, t) for t in tokens) + cost.projector_flops(v, schedule["kept"]) * per_flop[0]
               + 2 * s.hidden * s.vocab * per_flop[1])
    vision = cost.vision_flops(v, schedule["vit"]) * vision_rate
    return {"vision_ms": vision, "prefill_ms": prefill, "ttft_ms": vision + prefill}


def _notes(result: dict, geometry, schedule: dict, points, report: dict) -> list[str]:
    out = []
    src_layers, n_src = len(result["image_tokens_per_layer"]), result["visual_tokens"]
    if (src_layers, n_src) != (geometry.llm.layers, geometry.n_patches):
        out.append(f"the {n_src} visual tokens and {src_layers} LLM layers of this model map onto the target's "
                   f"{geometry.n_patches} and {geometry.llm.layers}: counts scaled by {geometry.n_patches / n_src:g}, "
                   f"layers by depth (a layer of this model stands for {geometry.llm.layers / src_layers:g})")
    out.append(f"text tokens: this request's {schedule['text']} (the report's prompt had "
               f"{report.get('settings', {}).get('text_tokens', '?')})")
    measured = [x for x, _ in points if x > 1]
    low = sorted({t for t in schedule["tokens"] if t < measured[0]})
    if low:
        below = f"{low[0]}-{low[-1]}" if len(low) > 1 else f"{low[0]}"
        out.append(f"layers at {below} rows: time interpolated between one decode step (1 row) and {measured[0]} rows "
                   "(no prefill was measured below that)" if points[0][0] == 1 else
                   f"layers at {below} rows: timed at the ms per FLOP of {measured[0]} rows, the fewest measured "
                   "(slower in fact: an underestimate)")
    if max(schedule["tokens"]) > measured[-1]:
        out.append(f"layers above {measured[-1]} rows: timed at that row count's measured ms per FLOP")
    if len(set(schedule["vit"])) > 1:
        out.append("ViT layers with fewer tokens (pruned inside the ViT) timed at the full ViT's measured ms per FLOP")
    out.append(f"KV cache after the prefill in fp16 ({KV_BYTES_PER_VALUE} bytes per value), as the real model keeps it")
    return out


def project(result: dict, report: dict | None) -> dict:
    """``result`` (a comparison entry: ``visual_tokens``, ``visual_tokens_kept``, ``tokens_per_layer``,
    ``image_tokens_per_layer``, optionally ``vit_tokens_per_layer``) on the report's target model, as plain values:
    ``available``, ``label``, ``machine``, ``target`` (its geometry) and ``target_name`` (in words), ``vision_ms`` / ``prefill_ms`` / ``ttft_ms`` (from the
    medians) with ``*_range`` ([from the first quartiles, from the third]), ``kv_cache_bytes``, ``kv_cache_mib``,
    ``speedup_ttft`` / ``speedup_prefill`` (the unpruned schedule's projection over this one's), ``tokens_per_layer``,
    ``visual_tokens_per_layer``, ``visual_tokens_kept``, ``tflops`` and ``notes``. Without what it needs:
    ``{"available": False, "reason": ...}``."""
    reason = unavailable(report)
    if reason is not None:
        return {"available": False, "reason": reason, "label": f"No projection to LLaVA-1.5-7B: {reason}."}
    geometry = BUILT_IN[report["model"]["geometry"]]
    schedule = target_schedule(result, geometry)
    n, text = geometry.n_patches, schedule["text"]
    full = {"text": text, "visual": [n] * geometry.llm.layers, "tokens": [text + n] * geometry.llm.layers,
            "vit": [geometry.vision.n_tokens] * geometry.vision.layers, "kept": n}  # the same request unpruned
    runs = {}
    for stat in ("median", "q1", "q3"):
        runs[stat] = (timed(schedule, geometry, report, stat), timed(full, geometry, report, stat))
    mine, unpruned = runs["median"]
    kv = sum(cost.kv_cache_bytes_estimate(geometry.llm, schedule["tokens"], KV_BYTES_PER_VALUE))
    name = NAMES.get(geometry.name, geometry.name)
    machine = machine_words(report)
    tf_prefill = (cost.projector_flops(geometry.vision, schedule["kept"])
                  + cost.prefill_flops(geometry.llm, schedule["tokens"])) / 1e12
    return {
        "available": True, "target": geometry.name, "target_name": name, "machine": machine,
        "label": f"Projected for {name} ({geometry.llm.layers} LLM + {geometry.vision.layers} ViT layers) from "
                 f"`python -m pruning speed`'s per-layer times measured at its real widths on {machine}; not a run "
                 "of that model.",
        **{k: mine[k] for k in ("vision_ms", "prefill_ms", "ttft_ms")},
        **{f"{k}_range": [runs["q1"][0][k], runs["q3"][0][k]] for k in ("vision_ms", "prefill_ms", "ttft_ms")},
        "kv_cache_bytes": kv, "kv_cache_mib": kv / 2 ** 20,
        "speedup_ttft": unpruned["ttft_ms"] / mine["ttft_ms"],
        "speedup_prefill": unpruned["prefill_ms"] / mine["prefill_ms"],
        "tokens_per_layer": schedule["tokens"], "visual_tokens_per_layer": schedule["visual"],
        "visual_tokens_kept": schedule["kept"],
        "tflops": {"vision": cost.vision_flops(geometry.vision, schedule["vit"]) / 1e12, "prefill": tf_prefill},
        "notes": _notes(result, geometry, schedule, layer_points(report, "median"), report),
    }
