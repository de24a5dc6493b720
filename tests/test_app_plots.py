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
