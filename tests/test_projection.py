"""The projection of a comparison's kept sets to LLaVA-1.5-7B (issue 23, item 2), against the speed report it reads
(assets/reports/speed-7b.json), with the arithmetic written out by hand."""

import copy
import dataclasses
import statistics

import pytest

from pruning import projection
from pruning.geometries import BUILT_IN

REPORT = projection.load_report()
D, M, V = 4096, 11008, 32064  # LLaVA-1.5-7B's width, MLP width, vocabulary


def layer_flops(t):  # one decoder layer at t rows, written out: q k v o, attention over t keys, gated MLP
    return 2 * t * D * D * 4 + 4 * t * t * D + 2 * t * D * M * 3


def projector_flops(n):
    return 2 * n * (1024 * D + D * D)


LM_HEAD = 2 * D * V


def row(label):
    return next(r for r in REPORT["rows"] if r["label"] == label)


def toy_result(image_per_layer, kept, text=35, n=144):
    return {"visual_tokens": n, "visual_tokens_kept": kept, "image_tokens_per_layer": image_per_layer,
            "tokens_per_layer": [text + i for i in image_per_layer], "vit_tokens_per_layer": [n + 1] * 6}


def test_report_is_the_sweep_tabs_and_its_flops_are_the_hand_formula():
    assert REPORT is not None and REPORT["model"]["geometry"] == "llava-1.5-7b"
    none = row("none")
    assert none["tokens_per_layer"] == [611, 611]
    assert (2 * layer_flops(611) + projector_flops(576) + LM_HEAD) / 1e12 == pytest.approx(none["tflops"]["prefill"])


def test_unpruned_projection_scales_the_measured_layer_to_32_layers():
    none = row("none")
    ms, total = none["timings"]["prefill_ms"]["median"], none["tflops"]["prefill"] * 1e12
    per_layer = ms * layer_flops(611) / total  # 4085.67 ms x 253.42 / 531.26 GFLOPs = 1948.9 ms
    assert per_layer == pytest.approx(1948.93, abs=0.01)
    out = projection.project(toy_result([144] * 8, 144), REPORT)  # 35 text + 4 x 144 = 611 rows: a measured point
    assert out["available"] and out["tokens_per_layer"] == [611] * 32 and out["visual_tokens_kept"] == 576
    rest = (projector_flops(576) + LM_HEAD) * ms / total
    assert out["prefill_ms"] == pytest.approx(32 * per_layer + rest)
    assert out["prefill_ms"] == pytest.approx(ms * (32 * layer_flops(611) + projector_flops(576) + LM_HEAD) / total)
    assert out["kv_cache_bytes"] == 32 * 2 * 611 * D * 2  # 32 layers x (K, V) x rows x width x fp16
    assert out["kv_cache_mib"] == pytest.approx(305.5, abs=0.05)
    # vision: the ViT's measured ms per FLOP (median over the report's rows) x the 24-layer ViT's FLOPs
    vit_layer = 2 * 577 * 1024 * 1024 * 4 + 4 * 577 * 577 * 1024 + 4 * 577 * 1024 * 4096
    embed = 2 * 576 * 3 * 14 * 14 * 1024
    vision = statistics.median(r["timings"]["vision_ms"]["median"] for r in REPORT["rows"])
    assert out["vision_ms"] == pytest.approx(vision * (embed + 24 * vit_layer) / (embed + 4 * vit_layer))
    assert out["ttft_ms"] == pytest.approx(out["vision_ms"] + out["prefill_ms"])
    assert out["speedup_ttft"] == pytest.approx(1.0)
    low, high = out["prefill_ms_range"]
    assert low < out["prefill_ms"] < high


def test_pruned_before_the_llm_uses_the_rows_measured_at_that_width():
    # 48 of 144 kept -> 192 of 576, + 35 text = 227 rows: vtc-cls, random and topk-sim 192 were measured there
    ms = statistics.median(row(f"{s} 192")["timings"]["prefill_ms"]["median"]
                           for s in ("vtc-cls", "random", "topk-sim"))
    assert ms == row("topk-sim 192")["timings"]["prefill_ms"]["median"]  # 1720 ms, the middle of the three
    total = 2 * layer_flops(227) + projector_flops(192) + LM_HEAD
    assert total / 1e12 == pytest.approx(row("topk-sim 192")["tflops"]["prefill"])
    out = projection.project(toy_result([48] * 8, 48), REPORT)
    assert out["tokens_per_layer"] == [227] * 32 and out["visual_tokens_kept"] == 192
    assert out["prefill_ms"] == pytest.approx(ms * (32 * layer_flops(227) + projector_flops(192) + LM_HEAD) / total)
    none = projection.project(toy_result([144] * 8, 144), REPORT)
    assert out["speedup_ttft"] == pytest.approx(none["ttft_ms"] / out["ttft_ms"])
    assert out["kv_cache_bytes"] == 32 * 2 * 227 * D * 2


def test_layers_map_by_depth_and_rows_between_points_interpolate():
    # fastv on the toy: 144 image tokens in layers 0-1, 36 after -> 7B layers 0-7 at 576 + 13, 8-31 at 144 + 13
    out = projection.project(toy_result([144, 144] + [36] * 6, 144, text=13), REPORT)
    assert out["visual_tokens_per_layer"] == [576] * 8 + [144] * 24
    assert out["tokens_per_layer"] == [589] * 8 + [157] * 24
    points = dict(projection.layer_points(REPORT))
    between = points[156] + (points[163] - points[156]) * (157 - 156) / (163 - 156)
    assert projection.layer_ms(projection.layer_points(REPORT), BUILT_IN["llava-1.5-7b"].llm, 157) == \
        pytest.approx(between)
    assert any("by depth" in n for n in out["notes"]) and any("13" in n for n in out["notes"])


def test_held_out_rows_of_the_report_are_reproduced_within_their_quartiles():
    """FastV and VTW ran 611 rows in one layer and fewer in the other: no point comes from them, yet the
    projection at the report's own depth (2 LLM + 4 ViT layers) lands within each row's measured quartiles."""
    g = BUILT_IN["llava-1.5-7b"]
    shallow = dataclasses.replace(g, llm=dataclasses.replace(g.llm, layers=2),
                                  vision=dataclasses.replace(g.vision, layers=4))
    for r in REPORT["rows"]:
        if len(set(r["tokens_per_layer"])) == 1:
            continue
        schedule = {"tokens": r["tokens_per_layer"], "kept": r["visual_tokens_kept"], "vit": r["vit_tokens_per_layer"]}
        ms = projection.timed(schedule, shallow, REPORT)["prefill_ms"]
        spread = r["timings"]["prefill_ms"]
        assert spread["q1"] <= ms <= spread["q3"], (r["label"], ms, spread)


def test_label_names_the_measurement_and_the_machine():
    out = projection.project(toy_result([36] * 8, 36), REPORT)
    assert out["label"].startswith("Projected for LLaVA-1.5-7B") and "python -m pruning speed" in out["label"]
    assert "AMD EPYC" in out["label"] and "2 cores" in out["machine"] and "float32" in out["machine"]


def test_what_the_report_lacks_is_said_never_invented():
    assert projection.project(toy_result([36] * 8, 36), None) == {
        "available": False, "reason": projection.unavailable(None),
        "label": f"No projection to LLaVA-1.5-7B: {projection.unavailable(None)}."}
    other = copy.deepcopy(REPORT)
    other["model"]["geometry"] = "tiny"
    assert "not a built-in" in projection.project(toy_result([36] * 8, 36), other)["reason"]
    narrow = copy.deepcopy(REPORT)
    narrow["model"]["hidden"] = 2048
    assert "widths" in projection.project(toy_result([36] * 8, 36), narrow)["reason"]
    mixed = copy.deepcopy(REPORT)
    mixed["rows"] = [r for r in mixed["rows"] if len(set(r["tokens_per_layer"])) > 1]
    assert "per-layer time" in projection.project(toy_result([36] * 8, 36), mixed)["reason"]
