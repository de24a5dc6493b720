"""pruning.compare: the library call behind the app (embedded model), and the rule that app/ never imports torch."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pruning.compare import Scope, compare_fields, strategy_controls
from pruning.strategies import available

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = json.loads((ROOT / "assets" / "examples" / "examples.json").read_text())


@pytest.fixture(scope="module")
def scope():
    return Scope(threads=torch.get_num_threads())  # the test process keeps its thread count


def test_embedded_model_runs_on_one_thread_by_default():
    before = torch.get_num_threads()
    try:
        Scope()
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads=0"):
            Scope(threads=0)
    finally:
        torch.set_num_threads(before)


def test_identical_requests_reuse_their_traces_never_their_timings(scope):
    image, question = _example(2)
    first = {r["strategy"]: r for r in scope.compare(image, question, ["vtc-cls", "vtw"], keep=40, repeats=1)}
    again = {r["strategy"]: r for r in scope.compare(image, question, ["vtc-cls", "vtw"], keep=40, repeats=1)}
    assert not any(r["trace_reused"] for r in first.values()) and all(r["trace_reused"] for r in again.values())
    assert again["vtc-cls"]["trace"] == first["vtc-cls"]["trace"] and again["vtc-cls"]["kept"] == first["vtc-cls"]["kept"]
    assert again["vtc-cls"]["timings"] is not first["vtc-cls"]["timings"]  # timings are measured for every request
    moved = {r["strategy"]: r for r in scope.compare(image, question, ["vtc-cls", "vtw"], keep=20, repeats=1)}
    assert moved["none"]["trace_reused"] and moved["vtw"]["trace_reused"] and not moved["vtc-cls"]["trace_reused"]
    assert len(moved["vtc-cls"]["kept"]) == 20
    other = scope.compare(image, "How many objects are there?", ["vtc-cls"], keep=20, repeats=1)
    assert not other[0]["trace_reused"]  # another question is another request


def _example(i=0):
    return str(ROOT / "assets" / "examples" / EXAMPLES[i]["image"]), EXAMPLES[i]["question"]


def test_stream_order_view_none_first_then_inspect(scope):
    image, question = _example(0)
    events = list(scope.compare_stream(image, question, ["vtc-cls", "fastv", "vtw", "ivtp"], keep=36, repeats=1))
    kinds = [e["kind"] for e in events]
    assert kinds == ["view", "result", "result", "result", "result", "result", "inspect"]
    view = events[0]["view"]
    assert view.dtype == np.uint8 and view.shape == (96, 96, 3)
    results = [e["result"] for e in events[1:-1]]
    assert [r["strategy"] for r in results] == ["none", "vtc-cls", "fastv", "vtw", "ivtp"]
    none, vtc, fastv, vtw, ivtp = results
    assert none["speedup"] == 1.0 and none["same_as_none"] is True and none["visual_tokens_kept"] == 144
    assert vtc["visual_tokens_kept"] == 36 and vtc["kept_final"] == vtc["kept"]
    assert fastv["visual_tokens_kept"] == 144 and len(fastv["kept_final"]) == 36
    assert vtw["image_tokens_per_layer"][-1] == 0 and vtw["kept_final"] == []
    assert ivtp["kept_vit"] is not None and set(ivtp["kept"]) <= set(ivtp["kept_vit"])
    assert len(ivtp["kept_final"]) == 36
    for r in results:
        assert r["speedup_predicted"] > 0 and r["speedup"] > 0
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["speedup_predicted"])
        assert len(r["trace"]["patch_present"]) == len(r["image_tokens_per_layer"])
        assert [sum(p) for p in r["trace"]["patch_present"]] == r["image_tokens_per_layer"]
    assert vtc["speedup_predicted"] > 1  # 36 of 144 tokens: fewer FLOPs than none
    inspect = events[-1]
    assert len(inspect["cls_attention"]) == scope.info()["vision_layers"]
    assert all(abs(sum(row) - 1) < 0.05 for row in inspect["cls_attention"])  # [CLS] row over patches ~ 1 - own
    assert inspect["consistency"]["budgets"] == [36]
    assert inspect["vtw_kl"]["used_layer"] == vtw["params"]["layer"] or inspect["vtw_kl"]["used_layer"] >= 1
    words = "".join(w for w, _ in inspect["ivtp_relevance"]["tokens"])
    assert words.strip() == question


def test_compare_api_fields_match_ask_json_plus_extras(scope):
    image, question = _example(1)
    results = scope.compare(image, question, ["random"], keep=20, repeats=1)
    assert [r["strategy"] for r in results] == ["none", "random"]
    ask_fields = {"answer", "strategy", "params", "visual_tokens", "visual_tokens_kept", "tokens_per_layer",
                  "image_tokens_per_layer", "kept", "kept_final", "grid", "timings", "tflops", "kv_cache_bytes",
                  "kv_cache_bytes_per_layer", "peak_memory_bytes", "device", "trace"}
    assert ask_fields <= set(results[1])
    assert results[1]["params"]["keep"] == 20 and len(results[1]["kept"]) == 20
    json.dumps(results)  # plain values only


def test_same_answer_flag_compares_with_none():
    ref = {"answer": "Four.", "timings": {"vision_ms": 1.0, "prefill_ms": 3.0}, "tflops": {"vision": 1.0, "prefill": 3.0}}

    class R:  # the fields compare_fields reads from a Result
        answer, strategy, params = "four", "x", {}
        visual_tokens = visual_tokens_kept = 4
        tokens_per_layer = image_tokens_per_layer = [4]
        kept = kept_final = [0, 1, 2, 3]
        grid, trace, notes, kept_vit, merge_groups, vit_tokens_per_layer = [2, 2], None, None, None, None, None
        timings = {"vision_ms": 1.0, "prefill_ms": 1.0}
        tflops = {"vision": 1.0, "prefill": 1.0}
        kv_cache_bytes, kv_cache_bytes_per_layer, peak_memory_bytes, device = 0, [0], None, "cpu"

    out = compare_fields(R(), ref)
    assert out["same_as_none"] is True
    assert out["speedup"] == pytest.approx(2.0) and out["speedup_predicted"] == pytest.approx(2.0)
    R.answer = "three"
    assert compare_fields(R(), ref)["same_as_none"] is False


@pytest.mark.parametrize("kwargs, message", [
    ({"question": "   "}, "question is empty"),
    ({"keep": 0}, "keep at least 1"),
    ({"keep": 2.5}, "whole number"),
    ({"strategies": ["nope"]}, "unknown strategy 'nope'"),
    ({"params": {"nope": {}}}, "unknown strategy .nope. in params"),
    ({"params": {"fastv": {"colour": 1}}}, "has no parameter"),
    ({"image": "/does/not/exist.png"}, "does not exist"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
])
def test_bad_requests_name_the_problem(scope, kwargs, message):
    image, question = _example(0)
    args = {"image": image, "question": question, "strategies": ["fastv"], "keep": 36, **kwargs}
    with pytest.raises(ValueError, match=message):
        list(scope.compare_stream(**args, repeats=1))
    assert scope.compare(image, question, ["fastv"], keep=36, repeats=1)[1]["answer"]  # still serves


def test_budget_above_the_grid_is_clamped(scope):
    image, question = _example(0)
    r = scope.compare(image, question, ["vtc-cls"], keep=1000, repeats=1)[1]
    assert r["visual_tokens_kept"] == 144


def test_controls_cover_every_strategy_with_its_defaults():
    controls = strategy_controls()
    assert set(controls) == set(available())
    vtc = {c["name"]: c for c in controls["vtc-cls"]}
    assert vtc["k_layers"]["default"] == 3 and vtc["ensemble"]["choices"] == ["avg", "max", "min"]
    assert vtc["positions"]["default"] == "rearrange" and vtc["stage"]["choices"] == ["before", "llm"]
    assert {c["name"]: c["default"] for c in controls["fastv"]}["layer"] == 2
    assert {c["name"]: c["default"] for c in controls["ivtp"]}["tau"] == pytest.approx(0.2)
    assert all(c["name"] != "keep" for cs in controls.values() for c in cs)


def test_sweep_rows_without_position_variants(scope):
    rows = scope.sweep(["random", "vtw"], [36, 18], n=5, types=["colour"], progress=False)
    assert [r["label"] for r in rows] == ["none", "random", "random", "vtw"]
    assert all(set(r["per_type"]) == {"colour"} for r in rows)
    with pytest.raises(ValueError, match="question types"):
        scope.sweep(["random"], [36], n=5, types=["weather"], progress=False)


def test_app_package_never_imports_torch():
    code = ("import sys; import app.ui, app.plots, app.overlays, app.about; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    for path in (ROOT / "app").glob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "from pruning" not in text, path


# ---------------------------------------------------------------- issue 23: timings, projection, off-world, fastv's R
def test_timing_fields_ratio_of_medians_and_per_repeat_spread():
    from pruning.compare import timing_fields

    runs = [{"vision_ms": v, "prefill_ms": p, "decode_ms_per_token": 1.0, "total_ms": v + p + 7, "ttft_ms": v + p}
            for v, p in ((2, 8), (2, 10), (3, 12))]  # ttft 10, 12, 15
    refs = [{"vision_ms": 2, "prefill_ms": p, "ttft_ms": 2 + p} for p in (18, 22, 10)]  # ttft 20, 24, 12
    out = timing_fields(runs, refs)
    assert out["timings"] == {"vision_ms": 2, "prefill_ms": 10, "decode_ms_per_token": 1.0, "total_ms": 19}
    assert out["repeats"] == 3 and out["timing_spread"]["ttft_ms"] == {"median": 12, "min": 10, "max": 15, "q1": 11,
                                                                        "q3": 13.5, "n": 3}
    assert out["speedup"] == pytest.approx(20 / 12)  # median of none's over the strategy's
    assert out["speedup_spread"]["min"] == pytest.approx(12 / 15) and out["speedup_spread"]["max"] == pytest.approx(2)
    assert out["speedup_spread"]["median"] == pytest.approx(2) and out["speedup_spread"]["n"] == 3
    assert out["prefill_speedup"] == pytest.approx(18 / 10)
    alone = timing_fields(runs, [])
    assert alone["speedup_spread"] is None and "speedup" not in alone


def test_timing_note_gives_the_reason_with_its_figures():
    from pruning.compare import timing_note
    from pruning.projection import load_report

    reference = {"tflops": {"prefill": 0.00065}, "timings": {"prefill_ms": 40.0}}
    spread = {"median": 1.1, "min": 0.8, "max": 1.3, "q1": 1.0, "q3": 1.2, "n": 5}
    straddles = {"speedup": 1.05, "speedup_predicted": 1.8, "speedup_spread": spread}
    note = timing_note(straddles, reference, embedded=True, report=load_report())
    assert note.startswith("Toy timings are overhead-bound: measured 1.05x (0.80x to 1.30x over 5 pairs")
    assert "0.65 GFLOPs" in note and "40.0 ms" in note and "130 GFLOP/s" in note and "5.0 ms of arithmetic" in note
    assert "16 GFLOP/s" in timing_note(straddles, reference, embedded=True, report=None)
    slower = {**straddles, "speedup": 0.9, "speedup_spread": {**spread, "min": 0.85, "max": 0.95}}
    assert timing_note(slower, reference, embedded=False).startswith("Slower in every pair")
    assert timing_note(straddles, reference, embedded=False).startswith("Within the noise")
    clear = {**straddles, "speedup": 1.5, "speedup_spread": {**spread, "min": 1.2, "max": 1.9}}
    assert timing_note(clear, reference, embedded=True) is None
    assert timing_note({**clear, "speedup_spread": None}, reference, embedded=True) is None  # the reference itself
    one = {**straddles, "speedup": 0.5, "speedup_spread": {**spread, "min": 0.5, "max": 0.5, "n": 1}}
    assert "(0.50x to 0.50x over 1 pair; " in timing_note(one, reference, embedded=False)


def test_results_carry_spread_paired_speedup_projection_and_warnings(scope):
    image, question = _example(1)
    events = list(scope.compare_stream(image, question, ["vtc-cls", "vtw"], keep=36, repeats=2, inspect=False))
    view = events[0]
    assert view["view_note"] == "Your 96 x 96 image is what the model sees (no resizing or cropping)."
    assert view["warnings"] == [] and view["resize"]["cut"] is None
    none, vtc, vtw = (e["result"] for e in events[1:])
    assert none["speedup"] == 1.0 and none["speedup_spread"] is None and none["timing_note"] is None
    for r in (none, vtc, vtw):
        assert r["repeats"] == 2 and r["timing_spread"]["prefill_ms"]["n"] == 2 and r["offworld_warnings"] == []
        assert r["timings"]["prefill_ms"] == pytest.approx(r["timing_spread"]["prefill_ms"]["median"])
        assert r["projected"]["available"] and r["projected"]["label"].startswith("Projected for LLaVA-1.5-7B")
    for r in (vtc, vtw):
        assert r["speedup_spread"]["n"] == 2 and r["speedup"] > 0 and "per-repeat" in r["speedup_method"]
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["speedup_predicted"])
        assert r["projected"]["speedup_ttft"] > 1
        assert r["projected"]["kv_cache_bytes"] < none["projected"]["kv_cache_bytes"]
        assert (r["timing_note"] is None) == (r["speedup"] >= 1 and r["speedup_spread"]["min"] >= 1)
    assert vtc["projected"]["visual_tokens_kept"] == 144 and none["projected"]["visual_tokens_kept"] == 576
    json.dumps([e["result"] for e in events[1:]])  # plain values only


def test_off_world_inputs_warn_on_every_card(scope):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)  # 4:3 noise: neither grey nor six flat colours
    events = list(scope.compare_stream(photo, "What is in the sky?", ["random"], keep=36, repeats=1, inspect=False))
    view = events[0]
    assert view["view"].shape == (96, 96, 3) and "cut off" in view["view_note"] and "(4:3)" in view["view_note"]
    assert len(view["warnings"]) >= 2 and any("trained only on questions" in w for w in view["warnings"])
    assert all(e["result"]["offworld_warnings"] == view["warnings"] for e in events[1:])


def test_fastv_ratio_given_replaces_the_budget_and_says_so(scope):
    image, question = _example(0)
    budget, own = scope.compare(image, question, ["fastv"], keep=100, repeats=1)[1], \
        scope.compare(image, question, ["fastv"], keep=100, params={"fastv": {"ratio": 0.75}}, repeats=1)[1]
    assert budget["image_tokens_per_layer"][-1] == 100 and not any("R = " in n for n in budget["notes"])
    assert own["image_tokens_per_layer"][-1] == 144 - 108 and own["params"]["keep"] is None
    assert any("R = 0.75 was given" in n and "does not apply" in n for n in own["notes"])
    help_ = {c["name"]: c for c in strategy_controls()["fastv"]}["ratio"]["help"]
    assert "Used only when given" in help_
    assert all("help" in c for cs in strategy_controls().values() for c in cs)


def test_info_offers_the_question_forms_and_the_projection(scope):
    info = scope.info()
    assert info["question_forms"][0]["example"] == "What colour is the circle?" and info["repeats"] == 5
    assert info["projection"]["available"] and "AMD EPYC" in info["projection"]["machine"]


def test_sweep_seed_and_comparable_axis(scope):
    rows = scope.sweep(["random"], [36], n=5, types=["count"], progress=False, seed=2)
    assert all(r["seed"] == 2 for r in rows) and rows[1]["params"]["seed"] == 2
    assert rows[1]["visual_tokens_per_layer_mean"] == 36 and rows[0]["visual_tokens_per_layer_mean"] == 144
    assert all(r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1] for r in rows)
    with pytest.raises(ValueError, match="seed"):
        scope.sweep(["random"], [36], n=5, seed=-3, progress=False)
