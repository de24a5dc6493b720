"""app/plots.py: figures drawn from synthetic plain results hold the values they were given."""

import math

from app import colors, plots


def _result(name, per_layer, grid=(2, 2)):
    n = grid[0] * grid[1]
    layers = len(per_layer)
    return {"strategy": name, "grid": list(grid), "image_tokens_per_layer": per_layer,
            "trace": {"segments": ["system", "image", "question", "generated"],
                      "attention_share": [{"system": 0.1, "image": 0.6 - 0.1 * i, "question": 0.2, "generated": 0.1 + 0.1 * i}
                                          for i in range(layers)],
                      "patch_attention": [[0.01 * (i + 1) * (p + 1) for p in range(n)] for i in range(layers)],
                      "patch_present": [[True] * n if per_layer[i] == n else [p < per_layer[i] for p in range(n)]
                                        for i in range(layers)]}}


def test_tokens_alive_one_line_per_strategy():
    fig = plots.tokens_alive_figure([_result("none", [4, 4, 4]), _result("fastv", [4, 2, 2])])
    assert [t.name for t in fig.data] == ["none", "fastv"]
    assert list(fig.data[1].y) == [4, 2, 2] and list(fig.data[1].customdata) == [0, 1, 2]
    # equal counts side by side: each series a little off its whole layer, never by a third of a layer
    for t in fig.data:
        assert all(abs(x - layer) < 0.3 for x, layer in zip(t.x, t.customdata))
    assert fig.data[0].x[0] != fig.data[1].x[0]
    assert fig.data[1].line.color == colors.strategy_color("fastv")
    assert fig.layout.xaxis.title.text and "count" in fig.layout.yaxis.title.text


def test_attention_shares_stacked_per_strategy():
    fig = plots.attention_shares_figure([_result("none", [4, 4]), _result("vtw", [4, 0])])
    assert fig.layout.barmode == "stack"
    assert len(fig.data) == 8  # 4 segments x 2 strategies
    image_bars = [t for t in fig.data if t.name == "image"]
    assert [round(v, 3) for v in image_bars[0].y] == [0.6, 0.5]
    assert sum(t.showlegend for t in fig.data) == 4  # one legend entry per segment
    assert "%" in fig.layout.yaxis.title.text


def test_llm_heatmap_marks_pruned_patches_and_has_a_layer_slider():
    r = _result("fastv", [4, 2, 2])
    fig = plots.llm_attention_figure(r)
    heat = [t for t in fig.data if t.type == "heatmap"]
    pruned = [t for t in fig.data if t.type == "scatter"]
    assert len(heat) == 3 and len(fig.layout.sliders[0].steps) == 3
    z = heat[1].z  # layer 1: patches 0, 1 present
    assert z[0][0] == 0.02 * 1 and z[1][0] is None and z[1][1] is None
    # the pruned cells of layers 1 and 2 are crossed, with a key above the grid; layer 0 has none
    assert len(pruned) == 2 and all(t.name == "pruned before this layer" for t in pruned)
    assert any("pruned before this layer" in a.text for a in fig.layout.annotations)
    assert sorted(zip(pruned[0].x, pruned[0].y)) == [(0, 1), (1, 1)]  # (column, row) of patches 2, 3
    assert fig.layout.plot_bgcolor == plots.PRUNED_CELL
    step = fig.layout.sliders[0].steps[2]
    visible = step.args[0]["visible"]
    assert [v for v, t in zip(visible, fig.data) if t.type == "heatmap"] == [False, False, True]
    assert sum(visible) == 2  # the layer's heatmap and its pruned cells
    assert "LLM layer 2" in step.args[1]["title.text"]
    assert sum(bool(t.visible) for t in fig.data) == 2  # opens at layer 2: heatmap + crosses


def test_cls_heatmap_starts_at_the_feature_layer():
    maps = [[float(i + p) for p in range(4)] for i in range(3)]
    fig = plots.cls_attention_figure(maps, [2, 2], feature_layer=1)
    assert fig.data[1].visible and not fig.data[0].visible
    assert fig.data[2].z == ((2.0, 3.0), (4.0, 5.0)) or [list(r) for r in fig.data[2].z] == [[2.0, 3.0], [4.0, 5.0]]
    assert all(t.type == "heatmap" for t in fig.data)  # nothing pruned in the vision encoder's map


def test_heatmaps_drawn_over_the_image_cell_over_patch():
    """With the view, each heatmap lies over the picture: the image fills the grid's cells exactly (cell (r, c) over
    patch (r, c)), the heat is partly transparent, and without it nothing changes."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    view = np.zeros((4, 6, 3), np.uint8)
    view[:2, :3] = (255, 0, 0)  # patch (0, 0) of a 2 x 2 grid is red
    r = _result("fastv", [4, 2, 2])
    for fig in (plots.llm_attention_figure(r, view), plots.cls_attention_figure([[0.1] * 4] * 2, [2, 2], 1, view)):
        (img,) = fig.layout.images
        assert (img.x, img.y, img.sizex, img.sizey, img.layer) == (-0.5, -0.5, 2, 2, "below")
        assert (img.xref, img.yref, img.xanchor, img.yanchor) == ("x", "y", "left", "top")
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(img.source.split(",", 1)[1]))))
        assert decoded.shape == (4, 6, 3) and tuple(decoded[0, 0]) == (255, 0, 0) and tuple(decoded[3, 5]) == (0, 0, 0)
        assert all(t.opacity == plots.HEAT_OVER_IMAGE < 1 for t in fig.data if t.type == "heatmap")
        assert list(fig.layout.yaxis.range) == [1.5, -0.5], "row 0 at the top, as in the image"
    grid_only = plots.llm_attention_figure(r)
    assert not grid_only.layout.images and grid_only.layout.plot_bgcolor == plots.PRUNED_CELL
    assert all(t.opacity in (None, 1) for t in grid_only.data if t.type == "heatmap")


def _shape_labels(fig):
    return [(s, (s.label.text or "") if s.label else "") for s in fig.layout.shapes]


def test_vtw_kl_marks_eta_the_minimum_layer_and_the_layer_in_use():
    cal = {"k": 5, "eta": 0.003, "min_layer": 4, "kl_per_layer": {"1": 2.0, "2": 0.5, "4": 0.01, "5": 0.001},
           "used_layer": 4, "samples": 1}
    fig = plots.vtw_kl_figure(cal)
    line = fig.data[0]
    assert list(line.x) == [1, 2, 4, 5] and list(line.y) == [2.0, 0.5, 0.01, 0.001]
    labels = _shape_labels(fig)
    eta = [s for s, text in labels if text == "eta = 0.003"]
    assert len(eta) == 1 and eta[0].y0 == eta[0].y1 == 0.003  # the label belongs to its line (a shape label)
    searched = [s for s, text in labels if "not searched" in text]
    assert len(searched) == 1 and searched[0].x1 == 3.5  # layers 1..3 shaded: the rule starts at layer 4
    used = [s for s, text in labels if text.startswith("in use: layer 4 (K 5)")]
    assert len(used) == 1 and used[0].x0 == 4
    assert "KL 0.01 > eta" in [t for _, t in labels if t.startswith("in use")][0]  # above eta: said on the line
    assert used[0].line.color == "#c0392b"
    notes = [(a.text or "").replace("<br>", " ") for a in fig.layout.annotations]
    assert any("above eta" in n and "not the rule" in n for n in notes)  # and why
    star = [t for t in fig.data if t.name.startswith("rule's pick")]
    assert star and list(star[0].x) == [5]
    title = fig.layout.title.text
    assert "rule picks layer 5 (K 6)" in title and "in use: layer 4" in title  # title and lines agree
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.exponentformat == "power"  # 10⁻³, not "1m"
    assert "nats" in fig.layout.yaxis.title.text and "layer" in fig.layout.xaxis.title.text


def test_vtw_kl_in_use_below_eta_is_not_red():
    cal = {"k": 5, "eta": 0.003, "min_layer": 4, "kl_per_layer": {"4": 0.01, "5": 0.001, "6": 0.0005},
           "used_layer": 5}
    fig = plots.vtw_kl_figure(cal)
    used = [s for s, text in _shape_labels(fig) if text.startswith("in use")]
    assert used[0].line.color != "#c0392b" and "> eta" not in used[0].label.text
    assert not any("above eta" in (a.text or "") for a in fig.layout.annotations)
    none = plots.kl_figure({"k": None, "eta": 0.003, "min_layer": 4, "kl_per_layer": {"4": 0.5, "5": 0.2}})
    assert "no searched layer is below eta" in none.layout.title.text


def _sweep_rows(with_new_fields=True):
    def row(name, keep, acc, entering, per_layer, tflops, words):
        r = {"name": name, "label": name, "params": {"name": name, "keep": keep}, "accuracy": acc,
             "tokens_entering_llm": entering, "prefill_tflops": tflops}
        if with_new_fields:
            r.update({"visual_tokens_per_layer_mean": per_layer, "budget_label": words, "n": 40,
                      "accuracy_ci": [acc - 0.1, min(1.0, acc + 0.05)]})
        return r
    return [row("none", None, 0.9, 144, 144, 6.5e-4, "all"),
            row("random", 16, 0.5, 16, 16, 1.1e-4, "keep 16"),
            row("random", 48, 0.7, 48, 48, 2.3e-4, "keep 48"),
            row("fastv", 16, 0.6, 144, 48, 2.5e-4, "keep 16 from layer 2"),
            row("fastv", 48, 0.8, 144, 72, 3.4e-4, "keep 48 from layer 2"),
            {**row("vtw", None, 0.6, 144, 54, 2.8e-4, "all withdrawn from layer 3"),
             "params": {"name": "vtw", "layer": None}}]


def test_sweep_x_is_visual_tokens_per_layer_with_wilson_bars_and_budget_labels():
    by_tokens, by_tflops = plots.sweep_figures(_sweep_rows())
    fastv = next(t for t in by_tokens.data if t.name == "fastv")
    assert list(fastv.x) == [48, 72]  # fastv's budgets no longer stack at 144
    assert list(fastv.text) == ["16", "48"]
    assert [round(v, 6) for v in fastv.error_y.array] == [0.05, 0.05]
    assert [round(v, 6) for v in fastv.error_y.arrayminus] == [0.1, 0.1]
    vtw = next(t for t in by_tokens.data if t.name == "vtw")
    assert list(vtw.x) == [54] and list(vtw.text) == ["L3"]
    assert "keep 16 from layer 2" in fastv.customdata[0][0]
    assert "per LLM layer" in by_tokens.layout.xaxis.title.text
    assert "Wilson 95%" in by_tokens.layout.title.text and "40 questions" in by_tokens.layout.title.text
    none = next(t for t in by_tokens.data if t.name == "none")
    assert list(none.x) == [144]
    assert any(s.y0 == 0.9 for s in by_tokens.layout.shapes)
    # compute in a unit the values read in: 1.1e-4 TFLOPs = 110 MFLOPs
    random = next(t for t in by_tflops.data if t.name == "random")
    assert [round(v) for v in random.x] == [110, 230]
    assert "MFLOPs" in by_tflops.layout.xaxis.title.text
    assert random.line.color == colors.strategy_color("random")


def test_sweep_without_the_new_fields_falls_back_and_says_so():
    by_tokens, _ = plots.sweep_figures(_sweep_rows(with_new_fields=False))
    fastv = next(t for t in by_tokens.data if t.name == "fastv")
    assert list(fastv.x) == [144, 144] and fastv.error_y.array is None
    assert "entering the LLM" in by_tokens.layout.xaxis.title.text


def test_sweep_band_from_several_seeds_sits_beneath_the_lines():
    runs = [[{"name": "random", "label": "random", "params": {"keep": k}, "accuracy": a, "prefill_tflops": t,
              "tokens_entering_llm": k, "visual_tokens_per_layer_mean": k, "budget_label": f"keep {k}"}
             for k, a, t in ((16, acc16, 1e-4), (48, acc48, 2e-4))]
            for acc16, acc48 in ((0.5, 0.7), (0.6, 0.8), (0.55, 0.75))]
    band = plots.band_from_seeds(runs)
    assert [(b["x_tokens"], b["low"], b["high"], b["seeds"]) for b in band] == [(16, 0.5, 0.6, 3), (48, 0.7, 0.8, 3)]
    by_tokens, by_tflops = plots.sweep_figures(_sweep_rows(), bands={"random": band})
    first = by_tokens.data[0]
    assert first.fill == "toself" and first.name == "random: 3 seeds (range)"
    assert list(first.x) == [16, 48, 48, 16] and list(first.y) == [0.6, 0.8, 0.7, 0.5]
    assert by_tflops.data[0].name in ("Pareto front", "random: 3 seeds (range)")


def test_sweep_accuracy_vs_tflops_draws_the_pareto_front():
    rows = [{"name": "none", "label": "none", "accuracy": 0.9, "tokens_entering_llm": 144, "prefill_tflops": 2e-3},
            {"name": "random", "label": "random", "accuracy": 0.5, "tokens_entering_llm": 16, "prefill_tflops": 5e-4,
             "params": {"name": "random", "keep": 16}},
            {"name": "fastv", "label": "fastv", "accuracy": 0.4, "tokens_entering_llm": 144, "prefill_tflops": 9e-4,
             "params": {"name": "fastv", "keep": 16}},
            {"name": "random", "label": "random", "accuracy": 0.7, "tokens_entering_llm": 48, "prefill_tflops": 1e-3,
             "params": {"name": "random", "keep": 48}}]
    _, by_tflops = plots.sweep_figures(rows)
    front = [t for t in by_tflops.data if t.name == "Pareto front"]
    assert len(front) == 1
    assert list(front[0].x) == [0.5, 1.0, 2.0] and list(front[0].y) == [0.5, 0.7, 0.9]  # in GFLOPs
    assert list(front[0].customdata) == ["random keep 16", "random keep 48", "none"]  # fastv: dearer and worse
    assert by_tflops.data[0].name == "Pareto front"  # drawn beneath the strategies


def test_pareto_front_keeps_only_unbeaten_points():
    pts = [(3.0, 0.9, "none"), (1.0, 0.5, "a"), (1.0, 0.6, "b"), (2.0, 0.55, "c"), (2.5, 0.8, "d"), (0.5, 0.2, "e")]
    assert plots.pareto_front(pts) == [(0.5, 0.2, "e"), (1.0, 0.6, "b"), (2.5, 0.8, "d"), (3.0, 0.9, "none")]
    assert plots.pareto_front([]) == []


def _speed_report():
    def row(strategy, keep, measured, predicted, q1, q3, **params):
        return {"strategy": strategy, "params": {"name": strategy, **({"keep": keep} if keep else {}), **params},
                "image_tokens_per_layer": [576, keep or 0], "prefill_speedup": measured,
                "prefill_speedup_predicted": predicted, "prefill_efficiency": measured / predicted,
                "prefill_speedup_paired": {"q1": q1, "q3": q3}, "speedup": measured * 0.8,
                "speedup_predicted": predicted * 0.8, "efficiency": measured / predicted, "speedup_paired": None}
    return {"command": "python -m pruning speed ...", "model": {"llm_layers": 2, "vit_layers": 4},
            "rows": [row("none", None, 1.0, 1.0, 1.0, 1.0), row("random", 64, 4.0, 6.0, 3.8, 4.3),
                     row("random", 192, 2.5, 2.7, 2.4, 2.6), row("fastv", 64, 1.5, 1.6, 1.4, 1.6, layer=1),
                     row("vtw", None, 1.7, 1.8, 1.6, 1.8, layer=1)]}


def test_speed_figure_measured_and_predicted_per_strategy():
    fig = plots.speed_figure(_speed_report())
    names = [t.name for t in fig.data]
    assert names == ["random: measured", "random: predicted", "fastv (layer 1): measured",
                     "fastv (layer 1): predicted", "vtw (layer 1): measured", "vtw (layer 1): predicted"]
    measured, predicted = fig.data[0], fig.data[1]
    assert list(measured.x) == [64, 192]
    assert list(measured.y) == [4.0, 2.5] and list(predicted.y) == [6.0, 2.7]
    assert [round(v, 6) for v in measured.error_y.array] == [0.3, 0.1]  # q3 - measured
    assert [round(v, 6) for v in measured.error_y.arrayminus] == [0.2, 0.1]  # measured - q1
    assert list(fig.data[4].x) == [64, 192] and list(fig.data[4].y) == [1.7, 1.7]  # vtw: no budget, one level
    ttft = plots.speed_figure(_speed_report(), "ttft")
    assert list(ttft.data[0].y) == [3.2, 2.0]
    assert "time to first token" in ttft.layout.title.text


def test_speed_figure_refuses_an_unknown_stage():
    import pytest

    with pytest.raises(ValueError, match="stage='decode'"):
        plots.speed_figure(_speed_report(), "decode")


def _all_figures():
    results = [_result("none", [4, 4, 4]), _result("fastv", [4, 2, 2]), _result("vtw", [4, 0, 0])]
    analysis = {"layers": 3, "budgets": [2], "samples": 1,
                "consistency": {"cls_k1": {"overlap": {"2": [0.5, 0.4, 0.3]}, "spearman": [0.1, 0.2, 0.3]},
                                "random": {"overlap": {"2": [0.3, 0.3, 0.3]}, "spearman": [0.0, 0.0, 0.0]}},
                "attention_share": {"system": [0.1] * 3, "image": [0.5] * 3, "question": [0.3] * 3,
                                    "generated": [0.1] * 3}}
    cal = {"k": 2, "eta": 0.003, "min_layer": 1, "kl_per_layer": {"1": 0.5, "2": 0.001}, "used_layer": 1}
    return {"tokens": plots.tokens_alive_figure(results), "shares": plots.attention_shares_figure(results),
            "llm": plots.llm_attention_figure(results[1]),
            "cls": plots.cls_attention_figure([[0.1] * 4] * 2, [2, 2], 1),
            "consistency": plots.consistency_figure(analysis), "share": plots.attention_share_figure(analysis),
            "kl": plots.vtw_kl_figure(cal), "sweep-tokens": plots.sweep_figures(_sweep_rows())[0],
            "sweep-tflops": plots.sweep_figures(_sweep_rows())[1], "speed": plots.speed_figure(_speed_report())}


def test_every_figure_labels_its_axes_in_words_and_fits_a_phone():
    import re

    for name, fig in _all_figures().items():
        layout = fig.layout
        x_titles = [layout[k].title.text for k in layout if k.startswith("xaxis") and layout[k].title.text]
        y_titles = [layout[k].title.text for k in layout if k.startswith("yaxis") and layout[k].title.text]
        assert x_titles and y_titles, name
        for text in x_titles + y_titles:
            assert re.search(r"[a-z]{3}", text), (name, text)  # words, not a bare symbol
        lines = layout.title.text.split("<br>")
        title = [re.sub(r"<[^>]+>", "", line) for line in lines if "font-size" not in line]
        subtitle = [re.sub(r"<[^>]+>", "", line) for line in lines if "font-size" in line]
        assert all(len(line) <= 40 for line in title), (name, title)  # fits 390 px at the title's size (15 px)
        assert all(len(line) <= 64 for line in subtitle), (name, subtitle)  # the subtitle's 11 px
        assert layout.legend.orientation == "h", name  # legend in rows, below the plot
        assert "zoom2d" in layout.modebar.remove and "toImage" not in layout.modebar.remove, name
        assert layout.dragmode is False, name
        for ann in layout.annotations:  # notes and subplot titles wrapped to the phone's width too
            assert all(len(re.sub(r"<[^>]+>", "", line)) <= 48 for line in (ann.text or "").split("<br>")), name
