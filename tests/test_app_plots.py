"""app/plots.py: figures drawn from synthetic plain results hold the values they were given."""

import math

from app import plots


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
    assert list(fig.data[1].y) == [4, 2, 2] and list(fig.data[1].x) == [0, 1, 2]
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_attention_shares_stacked_per_strategy():
    fig = plots.attention_shares_figure([_result("none", [4, 4]), _result("vtw", [4, 0])])
    assert fig.layout.barmode == "stack"
    assert len(fig.data) == 8  # 4 segments x 2 strategies
    image_bars = [t for t in fig.data if t.name == "image"]
    assert [round(v, 3) for v in image_bars[0].y] == [0.6, 0.5]
    assert sum(t.showlegend for t in fig.data) == 4  # one legend entry per segment


def test_llm_heatmap_blanks_pruned_patches_and_has_a_layer_slider():
    r = _result("fastv", [4, 2, 2])
    fig = plots.llm_attention_figure(r)
    assert len(fig.data) == 3 and len(fig.layout.sliders[0].steps) == 3
    z = fig.data[1].z  # layer 1: patches 0, 1 present
    assert z[0][0] == 0.02 * 1 and z[1][0] is None and z[1][1] is None
    assert sum(t.visible for t in fig.data) == 1
    step = fig.layout.sliders[0].steps[2]
    assert step.args[0]["visible"] == [False, False, True]


def test_cls_heatmap_starts_at_the_feature_layer():
    maps = [[float(i + p) for p in range(4)] for i in range(3)]
    fig = plots.cls_attention_figure(maps, [2, 2], feature_layer=1)
    assert fig.data[1].visible and not fig.data[0].visible
    assert fig.data[2].z == ((2.0, 3.0), (4.0, 5.0)) or [list(r) for r in fig.data[2].z] == [[2.0, 3.0], [4.0, 5.0]]


def test_vtw_kl_marks_eta_and_the_layer_in_use():
    cal = {"k": 5, "eta": 0.003, "kl_per_layer": {"1": 2.0, "2": 0.5, "5": 0.001}, "used_layer": 4}
    fig = plots.vtw_kl_figure(cal)
    assert list(fig.data[0].x) == [1, 2, 5] and list(fig.data[0].y) == [2.0, 0.5, 0.001]
    shapes = fig.layout.shapes
    assert any(s.y0 == 0.003 for s in shapes) and any(s.x0 == 4 for s in shapes)


def test_sweep_figures_reference_line_and_points():
    rows = [{"name": "none", "label": "none", "accuracy": 0.9, "tokens_entering_llm": 144, "prefill_tflops": 2e-3},
            {"name": "random", "label": "random", "accuracy": 0.5, "tokens_entering_llm": 16, "prefill_tflops": 5e-4},
            {"name": "random", "label": "random", "accuracy": 0.7, "tokens_entering_llm": 48, "prefill_tflops": 1e-3}]
    by_budget, by_tflops = plots.sweep_figures(rows)
    assert [t.name for t in by_budget.data] == ["random"]
    assert list(by_budget.data[0].x) == [16, 48] and list(by_budget.data[0].y) == [0.5, 0.7]
    assert list(by_tflops.data[0].x) == [5e-4, 1e-3]
    assert any(math.isclose(s.y0, 0.9) for s in by_budget.layout.shapes)


def test_pareto_front_keeps_only_unbeaten_points():
    pts = [(3.0, 0.9, "none"), (1.0, 0.5, "a"), (1.0, 0.6, "b"), (2.0, 0.55, "c"), (2.5, 0.8, "d"), (0.5, 0.2, "e")]
    assert plots.pareto_front(pts) == [(0.5, 0.2, "e"), (1.0, 0.6, "b"), (2.5, 0.8, "d"), (3.0, 0.9, "none")]
    assert plots.pareto_front([]) == []


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
    assert list(front[0].x) == [5e-4, 1e-3, 2e-3] and list(front[0].y) == [0.5, 0.7, 0.9]
    assert list(front[0].customdata) == ["random keep 16", "random keep 48", "none"]  # fastv: dearer and worse


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
