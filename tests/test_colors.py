"""app/colors.py: one colour per strategy, distinct for all of them at once, the same in every figure."""

import itertools
import subprocess
import sys

import pytest

from app import colors, plots

TODAY = ["none", "random", "vtc-cls", "fastv", "vtw", "ivtp", "prumerge+", "tome", "kmeans", "topk-sim", "pooling",
         "evit"]
COMING = ["cdpruner", "vispruner", "divprune", "visionzip", "dart", "manual"]


def test_every_strategy_today_and_coming_has_a_fixed_colour():
    for name in TODAY + COMING:
        assert name in colors.STRATEGY_COLORS, name
        assert colors.strategy_color(name) == colors.STRATEGY_COLORS[name]


def test_all_colours_distinct_at_once():
    names = TODAY + COMING
    worst = min((colors.delta_e(colors.strategy_color(a), colors.strategy_color(b)), a, b)
                for a, b in itertools.combinations(names, 2))
    assert worst[0] >= colors.MIN_DELTA_E, f"{worst[1]} and {worst[2]} are too alike (ΔE {worst[0]:.1f})"


def test_markers_distinct_where_lines_overlap():
    names = TODAY + COMING
    assert len({colors.strategy_marker(n) for n in names}) == len(names)
    assert all(colors.strategy_dash(n) in ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
               for n in names)


@pytest.mark.parametrize("label, name", [("vtc-cls (keep)", "vtc-cls"), ("fastv 64 (layer 1)", "fastv"),
                                         ("random keep 16", "random"), ("prumerge+", "prumerge+"),
                                         ("Pooling", "pooling"), ("vtw (layer 1): measured", "vtw"),
                                         ("topk-sim", "topk-sim"), ("my-method (x)", "my-method")])
def test_labels_take_their_strategys_colour(label, name):
    assert colors.base_name(label) == name
    assert colors.strategy_color(label) == colors.strategy_color(name)


def test_unknown_names_get_a_stable_colour_in_every_process():
    first = colors.strategy_color("newmethod")
    assert first.startswith("#") and len(first) == 7 and first == colors.strategy_color("newmethod")
    assert colors.strategy_color("newmethod") != colors.strategy_color("othermethod")
    code = "from app.colors import strategy_color; print(strategy_color('newmethod'))"
    for seed in ("1", "2"):  # unlike hash(), the colour does not depend on PYTHONHASHSEED
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={"PYTHONHASHSEED": seed, "PATH": ""}, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
        assert out.stdout.strip() == first


def test_swatch_and_rgba():
    html = colors.swatch_html("fastv", "fastv <b>")
    assert colors.strategy_color("fastv") in html and "&lt;b&gt;" in html
    assert colors.rgba("#102030", 0.5) == "rgba(16,32,48,0.5)"
    assert colors.rgba("fastv", 1) == "rgba(214,39,40,1)"
    assert colors.color_map(["none", "vtw"]) == {"none": "#3a3a3a", "vtw": "#ff7f0e"}


# ------------------------------------------------------------------ the same colour in every figure

def _result(name, per_layer, n=4):
    return {"strategy": name, "grid": [2, 2], "image_tokens_per_layer": per_layer,
            "trace": {"segments": ["system", "image", "question", "generated"],
                      "attention_share": [{"system": 0.1, "image": 0.5, "question": 0.3, "generated": 0.1}
                                          for _ in per_layer],
                      "patch_attention": [[0.1] * n for _ in per_layer],
                      "patch_present": [[True] * n for _ in per_layer]}}


def _sweep_rows():
    def row(name, keep, acc, tokens, tflops):
        return {"name": name, "label": name, "params": {"name": name, "keep": keep}, "accuracy": acc,
                "tokens_entering_llm": tokens, "visual_tokens_per_layer_mean": tokens, "prefill_tflops": tflops,
                "accuracy_ci": [acc - 0.1, min(1.0, acc + 0.05)], "n": 40}
    return [row("none", None, 0.95, 144, 6e-4), row("fastv", 48, 0.9, 72, 3e-4), row("fastv", 16, 0.7, 48, 2.5e-4),
            row("random", 48, 0.85, 48, 2.3e-4), row("tome", 48, 0.9, 48, 2.3e-4)]


def _speed_report():
    def row(strategy, keep):
        return {"strategy": strategy, "params": {"name": strategy, **({"keep": keep} if keep else {})},
                "image_tokens_per_layer": [576, keep or 0], "prefill_speedup": 2.0, "prefill_speedup_predicted": 2.2,
                "prefill_efficiency": 0.9, "prefill_speedup_paired": {"q1": 1.9, "q3": 2.1}, "speedup": 1.5,
                "speedup_predicted": 1.7, "efficiency": 0.9}
    return {"rows": [row("none", None), row("fastv", 64), row("fastv", 128), row("random", 64), row("tome", 64)]}


def _colour_of(trace):
    if getattr(trace, "line", None) is not None and trace.line.color:
        return trace.line.color
    return trace.marker.color


def test_a_strategy_has_one_colour_across_all_figures():
    results = [_result("none", [4, 4]), _result("fastv", [4, 2]), _result("random", [2, 2]), _result("tome", [2, 2])]
    seen: dict[str, set] = {}

    def note(name, colour):
        seen.setdefault(colors.base_name(name), set()).add(colour)

    for t in plots.tokens_alive_figure(results).data:
        note(t.name, _colour_of(t))
    for fig in plots.sweep_figures(_sweep_rows()):
        for t in fig.data:
            if t.name != "Pareto front":
                note(t.name, _colour_of(t))
    for t in plots.speed_figure(_speed_report()).data:
        note(t.name, _colour_of(t))
    shares = plots.attention_shares_figure(results)
    for ann in shares.layout.annotations:  # the panel titles
        note(ann.text.replace("<b>", "").replace("</b>", ""), ann.font.color)
    for name in ("none", "fastv", "random", "tome"):
        assert seen[name] == {colors.strategy_color(name)}, (name, seen[name])


def test_vtc_cls_fig2_legend_matches_every_panel():
    """The legend entry of a series (drawn from the first panel) has the colour and dash of the same series in
    every other panel, the Spearman one included (random was red there and blue in the legend)."""
    analysis = {"layers": 3, "budgets": [2], "ks": [1, 2],
                "consistency": {"cls_k1": {"overlap": {"2": [0.5, 0.4, 0.3]}, "spearman": [0.1, 0.2, 0.3]},
                                "cls_k2": {"overlap": {"2": [0.6, 0.5, 0.4]}, "spearman": [0.2, 0.3, 0.4]},
                                "random": {"overlap": {"2": [0.3, 0.3, 0.3]}, "spearman": [0.0, 0.0, 0.0]}}}
    fig = plots.consistency_figure(analysis)
    by_name: dict[str, set] = {}
    for t in fig.data:
        by_name.setdefault(t.name, set()).add((t.line.color, t.line.dash, t.marker.symbol))
    assert set(by_name) == {"[CLS] K=1", "[CLS] K=2", "random"}
    assert all(len(styles) == 1 for styles in by_name.values()), by_name
    assert next(iter(by_name["random"]))[0] == colors.strategy_color("random")
    assert len({next(iter(s))[0] for s in by_name.values()}) == 3
