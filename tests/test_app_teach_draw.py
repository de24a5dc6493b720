"""app/teach.py's pure drawing functions (issue 26) on hand-made plain values: no model, no server.

Asserted: heat overlays colour each patch by its value (viridis, a key underneath, absent patches grey and
crossed, counts written in), the probe grid outlines its patch; every figure's axes are titled in words with
units, strategies in their fixed colours; the film strip frames the first break; cards, fates, seeds and the
position table say what they show; the diagram places every strategy, the papers link arXiv; the export is one
self-contained page; app/teach.py imports neither torch nor pruning.
"""

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from app import teach
from app.colors import strategy_color

GRID = [4, 4]
VIEW = np.full((32, 32, 3), 128, np.uint8)  # 8 px patches, upscaled x12 to 384


def result(name, kept, final=None, groups=None, answer="four", correct=None):
    final = kept if final is None else final
    return {"strategy": name, "grid": GRID, "kept": kept, "kept_final": final, "kept_vit": None,
            "merge_groups": groups, "answer": answer, "visual_tokens": 16, "visual_tokens_kept": len(kept),
            "image_tokens_per_layer": [len(kept), len(final)], "tokens_per_layer": [len(kept) + 5, len(final) + 5],
            "tflops": {"prefill": 1e-4, "vision": 1e-5}, "timings": {"vision_ms": 1.0, "prefill_ms": 2.0,
                                                                   "decode_ms_per_token": 1.0, "total_ms": 5.0},
            "kv_cache_bytes": 1024, "speedup": 1.5, "speedup_predicted": 2.0, "same_as_none": answer == "four",
            "correct": correct}


def test_colormap_ends_are_viridis():
    assert teach.colormap(0).tolist() == [68, 1, 84] and teach.colormap(1).tolist() == [253, 231, 37]
    mid = teach.colormap(np.array([0.5]))
    assert mid.shape == (1, 3)


def test_heat_overlay_colours_patches_and_keys():
    values = [0.0] * 16
    values[5] = 1.0
    values[10] = None
    img = np.asarray(teach.heat_overlay(VIEW, values, GRID, alpha=1.0))
    assert img.shape[0] > 384 and img.shape[1] == 384, "the image, then a key under it"
    cell = 384 // 4
    hot = img[1 * cell + cell // 2, 1 * cell + cell // 3]  # patch 5: row 1, column 1
    cold = img[cell // 2, cell // 3]
    assert tuple(hot) == (253, 231, 37) and tuple(cold) == (68, 1, 84)
    gone = img[2 * cell + cell // 2, 2 * cell + 5]  # patch 10: absent, dark grey
    assert gone.max() < 130 and abs(int(gone[0]) - int(gone[2])) < 5
    counts = np.asarray(teach.heat_overlay(VIEW, [0, 1, 2, 3] * 4, GRID, numbers=True, vmax=3))
    assert counts.shape == img.shape


def test_grid_image_outlines_the_probed_patch():
    img = np.asarray(teach.grid_image(VIEW, GRID, mark=6))
    cell = 384 // 4
    r, c = divmod(6, 4)
    edge = img[r * cell + cell // 2, c * cell]  # the left edge of patch 6
    assert tuple(edge) in ((255, 40, 40), (255, 255, 255))
    assert tuple(img[cell // 2, cell // 2]) == (128, 128, 128), "other patches untouched"


PROBE = {"patch": 5, "row": 1, "col": 1, "grid": GRID, "feature_layer": 1, "cls_received": [0.1, 0.2, 0.05],
         "llm_received": {"none": [0.1, 0.2], "fastv": [0.1, None]},
         "fates": [{"strategy": "none", "words": "kept: it reaches the LLM's last layer"},
                   {"strategy": "fastv", "words": "dropped inside the LLM before layer 1 (layers 0-0 read it)"}],
         "answers": {"none": "four", "fastv": "three"}}


def axis_titles(fig) -> list[str]:
    layout = fig.to_plotly_json()["layout"]
    return [v["title"]["text"] for k, v in layout.items() if re.match(r"[xy]axis\d*$", k) and v.get("title")]


def test_probe_figure_axes_and_colours():
    fig = teach.probe_figure(PROBE)
    titles = axis_titles(fig)
    assert "ViT layer (0 = first)" in titles and "LLM layer (0 = first)" in titles
    assert titles.count("attention received (% of the row)") == 2
    colours = {t.name: t.line.color for t in fig.data}
    assert colours["fastv"] == strategy_color("fastv") and colours["none"] == strategy_color("none")
    assert colours["[CLS] (no pruning)"] not in {strategy_color(n) for n in ("vtc-cls", "none", "fastv")}
    html = teach.fates_html(PROBE)
    assert "patch 5 (row 1, column 1)" in html and "before layer 1" in html and "three" in html


FILM = {"view": VIEW, "grid": GRID, "n_patches": 16, "budgets": [16, 4, 1], "strategies": ["vtc-cls", "tome"],
        "frames": {"vtc-cls": [{"keep": 16, "answer": "four", "right": True, "kept": list(range(16))},
                               {"keep": 4, "answer": "two", "right": False, "kept": [0, 1, 2, 3]},
                               {"keep": 1, "answer": "one", "right": False, "kept": [0]}],
                   "tome": [{"keep": b, "answer": "four", "right": True, "kept": list(range(b)),
                             "merge_groups": [min(p, b - 1) for p in range(16)]} for b in (16, 4, 1)]},
        "first_break": {"vtc-cls": 4, "tome": None}, "reference": "four", "judge": "truth", "cached": 0,
        "frames_total": 6, "notes": ["vtw has no budget (it is not in the film)"]}


def test_film_strip_frames_the_first_break():
    html = teach.film_strip_html(FILM)
    assert html.count("<img") == 6 and html.count("breaks here") == 1
    assert "vtc-cls at 4 tokens" in html and "✗ two" in html and "vtw has no budget" in html
    first_break = html.index("vtc-cls at 4 tokens")
    assert teach.WRONG in html[first_break - 300:first_break + 300]
    fig = teach.film_curve_figure(FILM)
    assert axis_titles(fig) == ["visual tokens kept (of 16, log scale)", "answer right (1 = yes, 0 = no)"]
    assert [t.name for t in fig.data] == ["vtc-cls", "tome"] and fig.data[1].line.color == strategy_color("tome")
    assert [round(y) for y in fig.data[0].y] == [1, 0, 0]


AGREE = {"strategies": ["vtc-cls", "random"], "jaccard": [[1.0, 0.25], [0.25, 1.0]], "grid": GRID,
         "positions": {"vtc-cls": {"rows": [2, 0, 0, 0], "cols": [1, 1, 0, 0], "centre": [0, 0.5], "mean_index": 0.03,
                                   "n": 2, "middle": [1.5, 1.5]},
                       "random": {"rows": [0, 0, 1, 1], "cols": [0, 1, 1, 0], "centre": [2.5, 1.5], "mean_index": 0.7,
                                  "n": 2, "middle": [1.5, 1.5]}}, "notes": ["vtw keeps no visual token"]}


def test_agreement_figures():
    fig = teach.jaccard_figure(AGREE)
    assert axis_titles(fig) == ["strategy (kept set)", "strategy (kept set)"]
    assert fig.data[0].zmin == 0 and fig.data[0].zmax == 1 and list(fig.data[0].x) == ["vtc-cls", "random"]
    pos = teach.position_figure(AGREE)
    assert "patch row" in axis_titles(pos) and "kept tokens (count)" in axis_titles(pos)
    assert {t.line.color for t in pos.data} == {strategy_color("vtc-cls"), strategy_color("random")}
    table = teach.positions_html(AGREE)
    assert "2.5, 1.5" in table and "0.70" in table and "2502.11501" in table and "vtw keeps no visual token" in table


def test_truth_marks_and_card_lines():
    assert teach.truth_mark({"correct": None}) == ""
    assert "✓ right" in teach.truth_mark({"correct": True})
    assert "the answer is four" in teach.truth_mark({"correct": False, "truth": {"answer": "four"}})
    lines = teach.card_lines({"strategy": "random", "random_seeds": {"n": 5, "correct": 4, "same_as_none": 3},
                              "scene_objects": {"objects": 4, "with_kept_patch": 3, "kept_on_objects": 10, "kept": 18}})
    assert "4 of 5 seeds" in lines and "3 of 4 objects keep a patch" in lines
    none = teach.card_lines({"strategy": "none", "truth": {"note": "an uploaded image: no ground truth is known"}})
    assert "uploaded" in none
    no_truth = teach.card_lines({"strategy": "random", "random_seeds": {"n": 5, "correct": None, "same_as_none": 2}})
    assert "kept none's answer in **2 of 5 seeds**" in no_truth


def test_cards_and_seeds_html():
    html = teach.cards_html(VIEW, [result("none", list(range(16)), correct=True),
                                   result("tome", [0, 5], groups=[0] * 8 + [1] * 8, answer="three", correct=False)])
    assert html.count("<img") == 2 and "✓ four" in html and "✗ three" in html and "1.50x" in html
    seeds = {"view": VIEW, "grid": GRID, "seeds": [0, 1], "answers": ["four", "two"], "kept": [[0, 1], [2, 3]],
             "keep": 2, "n": 2, "correct": 1, "same_as_none": 1, "truth": {"answer": "four"}, "none_answer": "four"}
    out = teach.seeds_html(seeds)
    assert "1 of 2</b> seeds" in out and out.count("<img") == 2


def test_selection_invert():
    assert teach.invert_selection("0, 2", 4) == "1, 3" and teach.invert_selection("", 3) == "0, 1, 2"


def test_how_it_works_places_every_strategy():
    stages = {"ivtp": {"stages": ["llm"], "default": "llm", "vit": True},
              "fastv": {"stages": ["llm"], "default": "llm", "vit": False},
              "vtc-cls": {"stages": ["before", "llm"], "default": "before", "vit": False},
              "tome": {"stages": ["before"], "default": "before", "vit": False},
              "none": {"stages": ["before"], "default": "before", "vit": False}}
    html = teach.diagram_html(stages)
    vit_box, before_box, llm_box = (html.split("inside the vision encoder")[1].split("between the ViT")[0],
                                    html.split("between the ViT and the LLM")[1].split("inside the LLM")[0],
                                    html.split("inside the LLM")[1])
    assert ">ivtp<" in vit_box and ">ivtp<" in llm_box and ">fastv<" in llm_box
    assert ">vtc-cls<" in before_box and ">vtc-cls<" in llm_box and ">tome<" in before_box and "merging: tome" in html
    assert ">none<" not in html
    papers = teach.papers_html()
    assert papers.count("https://arxiv.org/abs/") == sum(1 for p in teach.PAPERS if p[2])
    assert "2412.05819" in papers and "2403.06764" in papers and "2405.05803" in papers
    glossary = teach.glossary_html()
    for term in ("visual token", "[CLS]", "prefill", "decode", "KV cache", "FLOPs", "time to first token"):
        assert f">{term}<" in glossary.replace("&#x27;", "'")


def test_export_is_self_contained():
    results = [result("none", list(range(16)), correct=True), result("vtc-cls", [0, 1, 2, 3], correct=False)]
    text = teach.export_html({"question": "How many?", "keep": 4, "model": "toy"}, VIEW, results,
                             {"film": FILM, "agreement": AGREE})
    assert text.startswith("<!doctype html>") and "How many?" in text and "Plotly" in text
    assert not re.search(r"""<(script|img|link)[^>]+(src|href)=["']https?:""", text)
    assert "none overlay" in text and "vtc-cls overlay" in text and "Budget film" in text
    assert "What each strategy cost" in text and "toy" in text


def test_plain_drops_images():
    assert teach.plain({"view": VIEW, "a": [np.int64(3)], "b": {"view": 1, "c": 2}}) == {"a": [3], "b": {"c": 2}}


def test_app_teach_imports_neither_torch_nor_pruning():
    tree = ast.parse(Path(teach.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(n.split(".")[0] in ("torch", "pruning") for n in names), names


@pytest.mark.parametrize("rows, cols", [(12, 12), (24, 24)])
def test_painter_template_holds_the_grid(rows, cols):
    t = teach.painter_template(rows, cols)
    assert f"repeat({cols}, 1fr)" in t and f"length: {rows * cols}" in t and f"of {rows * cols} patches" in t
