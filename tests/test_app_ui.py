"""app/ui.py's pure helpers (no server, no browser): which input a refusal names, the comparison table, the cards'
text, the order of a comparison's cards."""

import re

import pytest

from app import ui

# the library's refusals as docs/robustness.md lists them, and the input each is shown beside
REFUSALS = [
    ("no image given: upload an image or pick an example", "image"),
    ("image '/tmp/x/empty.png' is an empty (0-byte) file", "image"),
    ("cannot read image '/tmp/x/not-an-image.png': not an image file (or a format PIL cannot open)", "image"),
    ("image '/tmp/x/bomb-8000.png' declares 8000x8000 pixels, more than the 50,000,000 accepted", "image"),
    ("question is empty: type a question about the image", "question"),
    ("question is too long: 4827 tokens; with the image's 144 tokens the prompt holds 4978, beyond the model's "
     "context of 1024", "question"),
    ("question contains the image placeholder '<image>': the image is added by PruneScope, remove the placeholder "
     "from the question", "question"),
    ("keep=2.5: expected a whole number of visual tokens (1..144)", "settings"),
    ("fastv layer=99: stage 'llm' needs 1 <= layer < 8 (the model's depth: 8 LLM layers)", "settings"),
    ("vtc-cls k_layers=99: expected 1..5 (the ViT layers up to the one that feeds the LLM)", "settings"),
    ("eta=0.0: expected a KL threshold > 0 (VTW's default: 0.003)", "settings"),
    ("tau=1.5: expected a relevance threshold in [0, 1]", "settings"),
    ("unknown strategy 'bogus'; valid strategies: evit, fastv", "settings"),
    ("max_new_tokens=1000000: expected 1..512", "settings"),
    ("model directory '/no/such/model' is not a directory", "model"),
    ("cannot load 'nobody/no-such-llava': We couldn't connect to 'https://huggingface.co'", "model"),
]


@pytest.mark.parametrize("message, target", REFUSALS, ids=[m[:24] for m, _ in REFUSALS])
def test_a_refusal_is_shown_beside_the_input_it_names(message, target):
    assert ui.refused_input(message) == target


def test_the_refusal_status_says_what_happened_and_that_the_results_stay():
    assert ui.refusal_status("question is empty: type a question about the image", True) == (
        "**Not run:** question is empty: type a question about the image. The results below are still those of the "
        "previous comparison.")
    assert ui.refusal_status("eta=0.0: expected a KL threshold > 0 (VTW's default: 0.003)", False) == (
        "**Not run:** eta=0.0: expected a KL threshold > 0 (VTW's default: 0.003).")


def result(name: str, kept: int, last: int, prefill_tflops: float, kv: int, speedup: float, answer="red") -> dict:
    return {"strategy": name, "answer": answer, "same_as_none": answer == "red", "visual_tokens": 144,
            "visual_tokens_kept": kept, "image_tokens_per_layer": [kept] * 7 + [last],
            "timings": {"vision_ms": 11.04, "prefill_ms": 16.25, "decode_ms_per_token": 4.321, "total_ms": 40.0},
            "tflops": {"prefill": prefill_tflops, "total": prefill_tflops * 1.2}, "kv_cache_bytes": kv,
            "speedup": speedup, "speedup_predicted": 1.5 * speedup, "notes": [], "repeats": 5}


RESULTS = [result("none", 144, 144, 0.0006461, 1_290_240, 1.0),
           result("vtc-cls", 72, 72, 0.0003240, 704_512, 1.21),
           result("fastv", 144, 72, 0.0004080, 851_968, 0.87, answer="blue")]


def test_the_table_has_a_row_per_strategy_and_one_unit_per_column():
    table = ui.table_html(RESULTS)
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1])
    assert len(rows) == 3
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]
    assert all(len(c) == len(ui.TABLE_COLUMNS) for c in cells)
    heads = [h for h, _, _, _ in ui.TABLE_COLUMNS]
    compute = [c[heads.index("compute")] for c in cells]
    assert compute == ["646 MFLOPs", "324 MFLOPs", "408 MFLOPs"], "prefill compute in one readable unit"
    kv = [c[heads.index("KV cache")] for c in cells]
    assert all(v.endswith(" MiB") for v in kv) or all(v.endswith(" KiB") for v in kv), kv
    assert [c[heads.index("same as none")] for c in cells][2].endswith(">no</span>")
    assert "0.87x" in rows[2] and "1.30x" in rows[2], "measured and predicted speedups"
    assert "<small>ms, here</small>" in table, "units under the headers"
    assert "overflow-x: auto" in ui.CSS and "ps-table-wrap" in table, "a wider table scrolls inside its box"


def test_an_empty_table_says_it_is_waiting():
    assert ui.WAITING in ui.table_html([])


def test_cards_name_the_strategy_first_and_say_the_cost():
    assert re.sub(r"<[^>]+>", "", ui.card_title(RESULTS[1])).splitlines()[0] == "### vtc-cls"
    assert ui.WAITING in ui.card_waiting("fastv") and "fastv" in ui.card_waiting("fastv")
    none, vtc = ui.card_details(RESULTS[0]), ui.card_details(RESULTS[1])
    assert "the reference" in none and "vs none" not in none
    assert "72 of 144 visual tokens enter the LLM, 72 reach its last layer" in vtc
    assert "**1.21x** vs none, measured (FLOPs predict 1.81x)" in vtc and "324 MFLOPs prefill" in vtc


def spread(lo, median, hi, n=5):
    return {"min": lo, "q1": (lo + median) / 2, "median": median, "q3": (median + hi) / 2, "max": hi, "n": n}


def projected(ttft_ms, kv, speedup):
    return {"available": True, "target": "llava-1.5-7b", "target_name": "LLaVA-1.5-7B",
            "machine": "AMD EPYC (2 cores, 2 torch threads), cpu, float32", "ttft_ms": ttft_ms,
            "ttft_ms_range": [ttft_ms * 0.9, ttft_ms * 1.1], "prefill_ms": ttft_ms * 0.9, "kv_cache_bytes": kv,
            "speedup_ttft": speedup}


def measured(r, speedup_spread, note=None, proj=None, warnings=()):
    return {**r, "speedup_spread": speedup_spread, "timing_note": note, "projected": proj,
            "timing_spread": {"ttft_ms": spread(20.1, 27.29, 33.4)}, "offworld_warnings": list(warnings)}


SLOWER = "Toy timings are overhead-bound: measured 0.87x (0.70x to 1.05x over 5 pairs; FLOPs predict 1.30x)."
MEASURED = [measured(RESULTS[0], None, proj=projected(36_270.0, 157_810_688, 1.0)),
            measured(RESULTS[1], spread(1.05, 1.21, 1.4), proj=projected(20_750.0, 87_000_000, 1.75)),
            measured(RESULTS[2], spread(0.7, 0.87, 1.05), note=SLOWER, proj=projected(24_100.0, 100_000_000, 1.5))]


def test_a_speedup_is_never_a_bare_claim():
    vtc, fastv = ui.card_details(MEASURED[1]), ui.card_details(MEASURED[2])
    assert "**1.21x** vs none, measured, 1.05–1.40x over 5 paired runs (FLOPs predict 1.81x)" in vtc
    assert "first token 27.3 ms (20.1–33.4 ms over 5)" in vtc, "the time with its spread"
    assert SLOWER in fastv and SLOWER not in vtc, "a speedup below 1 comes with its reason"
    rows = re.findall(r"<tr>(.*?)</tr>", ui.table_html(MEASURED).split("<tbody>")[1])
    assert "0.87x <small>(0.70–1.05)</small> †" in rows[2] and "†" not in rows[1]


def test_cards_and_table_show_the_projection_to_the_target_model():
    vtc = ui.card_details(MEASURED[1])
    assert "**LLaVA-1.5-7B, projected:** first token 20.8 s (18.7 s–22.8 s) · prefill 18.7 s" in vtc
    assert "KV cache 83.0 MiB · **1.75x**" in vtc
    none = ui.card_details(MEASURED[0])
    assert "LLaVA-1.5-7B, projected" in none and "x**" not in none.split("projected")[1], "none has no speedup"
    table = ui.table_html(MEASURED)
    assert table.count("<small>LLaVA-1.5-7B, projected</small>") == 3
    heads = [h for h, _, _, _ in ui.TABLE_COLUMNS]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1])]
    last = len(heads) - 1
    assert [c[last] for c in cells] == ["reference", "1.75x", "1.50x"]
    caption = ui.table_caption(MEASURED, {"available": True, "machine": "AMD EPYC (2 cores, 2 torch threads), cpu, "
                                                                        "float32"}, embedded=True)
    assert "measured at its real widths on AMD EPYC (2 cores, 2 torch threads), cpu, float32" in caption
    assert "0.65 GFLOPs in 16.2 ms" in caption, "why the toy's times are overhead-bound, from none's own figures"
    assert "GFLOPs" not in ui.table_caption(MEASURED, None, embedded=False), "said of the toy only"
    unavailable = {**MEASURED[1], "projected": {"available": False, "reason": "no speed report"}}
    assert "projected" not in ui.card_details(unavailable)
    assert "no speed report" in ui.table_caption([unavailable], {"available": False, "reason": "no speed report"})


def test_an_off_world_input_is_flagged_on_every_card_and_explained_under_the_view():
    warned = measured(RESULTS[1], None, warnings=["Only 40% of the picture is grey background"])
    assert "Outside the toy model's world" in ui.card_details(warned)
    assert "Outside the toy model's world" not in ui.card_details(MEASURED[1])
    words = ui.view_words({"view_note": "Your 400 x 300 image (4:3) was scaled to 128 x 96", "warnings":
                           ["Only 40% of the picture is grey background <b>"]})
    assert "(left): Your 400 x 300 image (4:3)" in words and "⚠ Only 40% of the picture" in words
    assert "&lt;b&gt;" in words, "library text is escaped"


def test_a_comparison_runs_none_first_and_each_strategy_once():
    assert ui.run_order(["fastv", "none", "vtc-cls", "fastv"]) == ["none", "fastv", "vtc-cls"]
    assert ui.run_order(None) == ["none"]


def test_a_numeric_control_names_its_range_from_the_spec():
    assert ui.range_words({"kind": "int", "min": 1, "max": 7}) == "1..7"
    assert ui.range_words({"kind": "int", "min": 0, "max": 4294967295}) == "0..4,294,967,295"
    assert ui.range_words({"kind": "float", "min": 0, "max": 1, "above": False}) == "0 to 1"
    assert ui.range_words({"kind": "float", "min": 0, "max": 1, "above": True}) == "above 0, up to 1"
    assert ui.range_words({"kind": "choice", "min": None, "max": None}) == ""
