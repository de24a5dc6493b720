"""Plotly figures from plain analysis values (no torch here)."""

from __future__ import annotations

import re

import plotly.graph_objects as go
from plotly.subplots import make_subplots


def consistency_figure(analysis: dict) -> go.Figure:
    """VTC-CLS Fig. 2: overlap ratio and Spearman correlation per LLM layer, [CLS] (K=1..5) vs random."""
    layers = list(range(analysis["layers"]))
    budgets = analysis["budgets"]
    fig = make_subplots(rows=1, cols=len(budgets) + 1,
                        subplot_titles=[f"overlap, U={u}" for u in budgets] + ["Spearman correlation"])
    for name, d in analysis["consistency"].items():
        label = "random" if name == "random" else f"[CLS] K={name.split('_k')[1]}"
        dash = "dot" if name == "random" else None
        for col, u in enumerate(budgets, start=1):
            fig.add_trace(go.Scatter(x=layers, y=d["overlap"][str(u)], name=label, legendgroup=label,
                                     showlegend=col == 1, line={"dash": dash}), row=1, col=col)
        fig.add_trace(go.Scatter(x=layers, y=d["spearman"], name=label, legendgroup=label, showlegend=False,
                                 line={"dash": dash}), row=1, col=len(budgets) + 1)
    fig.update_xaxes(title_text="LLM layer")
    fig.update_layout(title="Consistency of [CLS] importance with the LLM's (VTC-CLS Fig. 2)")
    return fig


def attention_share_figure(analysis: dict) -> go.Figure:
    """VTW Fig. 4: where the generated tokens' attention goes, per LLM layer."""
    layers = list(range(analysis["layers"]))
    fig = go.Figure()
    for seg, values in analysis["attention_share"].items():
        fig.add_trace(go.Bar(x=layers, y=values, name=seg))
    fig.update_layout(barmode="stack", title="Attention of generated tokens by segment (VTW Fig. 4)",
                      xaxis_title="LLM layer", yaxis_title="share of attention")
    return fig


def kl_figure(calibration: dict) -> go.Figure:
    """VTW Fig. 8b: KL divergence between full and withdrawn outputs against the withdrawal layer."""
    ks = sorted(int(k) for k in calibration["kl_per_layer"])
    fig = go.Figure(go.Scatter(x=ks, y=[calibration["kl_per_layer"][str(k)] for k in ks], mode="lines+markers",
                               name="KL"))
    fig.add_hline(y=calibration["eta"], line_dash="dot", annotation_text=f"eta = {calibration['eta']}")
    fig.update_layout(title=f"KL vs withdrawal layer (VTW Fig. 8b); chosen K = {calibration['k']}",
                      xaxis_title="withdrawal layer K", yaxis_title="KL", yaxis_type="log")
    return fig


def analysis_html(analysis: dict) -> str:
    figs = [consistency_figure(analysis), attention_share_figure(analysis)]
    if "vtw_kl" in analysis:
        figs.append(kl_figure(analysis["vtw_kl"]))
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    return "<html><head><meta charset='utf-8'><title>PruneScope analysis</title></head><body>" + "".join(parts) + \
        "</body></html>"


# ---------------------------------------------------------------- the app's Compare and Sweep figures

def _grid(values: list, present: list | None, rows: int, cols: int) -> list[list]:
    """A flat per-patch list as rows of the grid; patches not present become None (drawn blank)."""
    out = [v if present is None or present[i] else None for i, v in enumerate(values)]
    return [out[r * cols:(r + 1) * cols] for r in range(rows)]


def tokens_alive_figure(results: list[dict]) -> go.Figure:
    """Visual tokens present in each LLM layer, one line per strategy."""
    fig = go.Figure()
    for r in results:
        layers = list(range(len(r["image_tokens_per_layer"])))
        fig.add_trace(go.Scatter(x=layers, y=r["image_tokens_per_layer"], mode="lines+markers", name=r["strategy"],
                                 hovertemplate="%{fullData.name}: layer %{x}, %{y} visual tokens<extra></extra>"))
    fig.update_layout(title="Visual tokens alive in each LLM layer", xaxis_title="LLM layer (0 = first)",
                      yaxis_title="visual tokens in the layer", yaxis_rangemode="tozero", legend_title="strategy")
    return fig


SEGMENT_COLOURS = {"system": "#9e9e9e", "image": "#e4572e", "question": "#2e86de", "generated": "#76b041"}


def attention_shares_figure(results: list[dict], columns: int = 4) -> go.Figure:
    """VTW Fig. 4 per strategy: the generated tokens' attention on system / image / question / output
    tokens in each LLM layer (stacked bars, one panel per strategy)."""
    traced = [r for r in results if r.get("trace")]
    cols = max(1, min(columns, len(traced)))
    nrows = max(1, -(-len(traced) // cols))
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=[r["strategy"] for r in traced], shared_yaxes=True,
                        vertical_spacing=0.18 if nrows > 1 else 0.1)
    for i, r in enumerate(traced):
        shares = r["trace"]["attention_share"]
        layers = list(range(len(shares)))
        for seg in r["trace"]["segments"]:
            fig.add_trace(go.Bar(x=layers, y=[s[seg] for s in shares], name=seg, legendgroup=seg,
                                 marker_color=SEGMENT_COLOURS.get(seg), showlegend=i == 0,
                                 hovertemplate=f"{r['strategy']}, layer %{{x}}: {seg} %{{y:.1%}}<extra></extra>"),
                          row=i // cols + 1, col=i % cols + 1)
    fig.update_layout(barmode="stack", title="Where the answer's attention goes, per LLM layer (VTW Fig. 4)",
                      height=320 * nrows, legend_title="tokens attended")
    fig.update_xaxes(title_text="LLM layer")
    fig.update_yaxes(title_text="share of attention", col=1)
    return fig


def _slider_heatmaps(maps: list[list], rows: int, cols: int, title: str, layer_word: str, colorbar: str,
                     present: list | None = None, start: int = 0) -> go.Figure:
    """One heatmap per layer over the patch grid, a slider to pick the layer (no server round trip)."""
    fig = go.Figure()
    for i, values in enumerate(maps):
        z = _grid(values, present[i] if present else None, rows, cols)
        fig.add_trace(go.Heatmap(z=z, visible=i == start, colorscale="Viridis", colorbar_title=colorbar,
                                 hovertemplate=f"{layer_word} {i}: row %{{y}}, column %{{x}}: %{{z:.4f}}<extra></extra>"))
    steps = [{"method": "update", "label": str(i), "args": [{"visible": [j == i for j in range(len(maps))]},
                                                             {"title.text": f"{title}, {layer_word} {i}"}]}
             for i in range(len(maps))]
    fig.update_layout(title=f"{title}, {layer_word} {start}",
                      sliders=[{"active": start, "steps": steps, "currentvalue": {"prefix": f"{layer_word}: "},
                                "pad": {"t": 40}}],
                      xaxis_title="patch column", yaxis_title="patch row", yaxis_autorange="reversed",
                      xaxis_constrain="domain", yaxis_scaleanchor="x")
    return fig


def llm_attention_figure(result: dict) -> go.Figure:
    """The LLM's attention over the patch grid (generated tokens' queries, mean over heads) in each
    layer; pruned patches are blank (what FastV's demo shows)."""
    rows, cols = result["grid"]
    trace = result["trace"]
    return _slider_heatmaps(trace["patch_attention"], rows, cols,
                            f"LLM attention on each patch ({result['strategy']})", "LLM layer", "attention",
                            present=trace.get("patch_present"), start=min(2, len(trace["patch_attention"]) - 1))


def cls_attention_figure(cls_attention: list[list], grid: list[int], feature_layer: int | None = None) -> go.Figure:
    """The vision encoder's [CLS] attention over the patch grid in each ViT layer (mean over heads)."""
    rows, cols = grid
    start = feature_layer if feature_layer is not None and 0 <= feature_layer < len(cls_attention) else 0
    return _slider_heatmaps(cls_attention, rows, cols, "[CLS] attention on each patch", "ViT layer", "attention",
                            start=start)


def vtw_kl_figure(calibration: dict) -> go.Figure:
    """VTW Fig. 8b for one question: KL between the full and the withdrawn first-token distribution for
    every withdrawal layer, with eta and the K in use."""
    fig = kl_figure(calibration)
    used = calibration.get("used_layer")
    if used is not None:
        fig.add_vline(x=used, line_dash="dash", line_color="#e4572e",
                      annotation_text=f"in use: layer {used} (paper's K = {used + 1})")
    fig.update_traces(hovertemplate="withdraw before layer %{x} (paper's K = layer + 1): KL %{y:.4g}<extra></extra>")
    rule = calibration["k"]
    said = "none below eta" if rule is None else f"layer {rule} (paper's K = {rule + 1})"
    fig.update_layout(title=f"VTW: KL of the first answer token vs withdrawal layer, this question "
                            f"(eta = {calibration['eta']}; the rule picks {said})",
                      xaxis_title="withdrawal layer (0-based; the paper's K = layer + 1)")
    return fig


def sweep_figures(rows: list[dict]) -> tuple[go.Figure, go.Figure]:
    """Accuracy against budget (tokens entering the LLM) and against prefill TFLOPs, one line per
    strategy, the unpruned accuracy as a reference line."""
    by_budget, by_tflops = go.Figure(), go.Figure()
    ref = next((r for r in rows if r["name"] == "none"), None)
    names = list(dict.fromkeys(r.get("label", r["name"]) for r in rows if r["name"] != "none"))
    for name in names:
        pts = sorted((r for r in rows if r.get("label", r["name"]) == name), key=lambda r: r["tokens_entering_llm"])
        x = [r["tokens_entering_llm"] for r in pts]
        hover = "%{fullData.name}: %{x:.4g} -> accuracy %{y:.1%}<extra></extra>"
        by_budget.add_trace(go.Scatter(x=x, y=[r["accuracy"] for r in pts], mode="lines+markers", name=name,
                                       hovertemplate=hover))
        by_tflops.add_trace(go.Scatter(x=[r["prefill_tflops"] for r in pts], y=[r["accuracy"] for r in pts],
                                       mode="lines+markers", name=name, hovertemplate=hover))
    for fig in (by_budget, by_tflops):
        if ref is not None:
            fig.add_hline(y=ref["accuracy"], line_dash="dot", annotation_text=f"no pruning: {ref['accuracy']:.1%}")
        fig.update_layout(yaxis_title="accuracy", yaxis_tickformat=".0%", yaxis_range=[0, 1.05],
                          legend_title="strategy")
    front = pareto_front([(r["prefill_tflops"], r["accuracy"], _point_label(r)) for r in rows])
    if len(front) > 1:
        by_tflops.add_trace(go.Scatter(
            x=[p[0] for p in front], y=[p[1] for p in front], mode="lines", name="Pareto front",
            line=dict(color="rgba(0,0,0,0.45)", width=6), customdata=[p[2] for p in front],
            hovertemplate="Pareto front: %{customdata}, %{x:.4g} TFLOPs -> %{y:.1%}<extra></extra>"))
    by_budget.update_layout(title="Accuracy against budget", xaxis_title="visual tokens entering the LLM (mean)")
    by_tflops.update_layout(title="Accuracy against compute (grey: the Pareto front)",
                            xaxis_title="prefill TFLOPs (estimate, mean)")
    return by_budget, by_tflops


def _point_label(row: dict) -> str:
    """A bench row's label with its budget ("kmeans keep 32"); ``none`` and rows without a budget as they are."""
    keep = (row.get("params") or {}).get("keep")
    label = row.get("label", row["name"])
    return f"{label} keep {keep}" if keep is not None else label


def pareto_front(points: list[tuple]) -> list[tuple]:
    """The points (cost, value, ...) no other point beats: none cheaper or as cheap with a higher value. Sorted
    by cost; ties in cost keep the best value only."""
    front, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if p[1] > best:
            front.append(p)
            best = p[1]
    return front


def _series_label(row: dict) -> str:
    """A speed row's label without its budget ("fastv 64 (layer 1)" -> "fastv (layer 1)"); rows without a label:
    the strategy, and its layer when it has one."""
    if row.get("label"):
        return re.sub(r" \d+(?= |$)", "", row["label"], count=1)
    return row["strategy"] + (f" (layer {row['params']['layer']})" if "layer" in row["params"] else "")


def speed_figure(report: dict, stage: str = "prefill") -> go.Figure:
    """Measured and TFLOPs-predicted speedup over no pruning against the budget, one colour per strategy, from a
    ``python -m pruning speed`` report: solid with the per-repeat quartiles as error bars (measured), dotted
    (predicted). ``stage``: ``prefill`` or ``ttft`` (vision + prefill)."""
    if stage not in ("prefill", "ttft"):
        raise ValueError(f"stage={stage!r}: expected 'prefill' or 'ttft'")
    prefix = "prefill_" if stage == "prefill" else ""
    rows = [r for r in report["rows"] if r["strategy"] != "none"]
    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    budgets = sorted({r["params"]["keep"] for r in rows if r["params"].get("keep") is not None})
    for i, name in enumerate(dict.fromkeys(r["strategy"] for r in rows)):
        pts = [r for r in rows if r["strategy"] == name]
        if all(r["params"].get("keep") is None for r in pts):  # no budget (vtw): one level across the budgets
            pts = pts[:1] * 2 if budgets else pts[:1]
            x = [budgets[0], budgets[-1]] if budgets else [0]
        else:
            pts = sorted((r for r in pts if r["params"].get("keep") is not None), key=lambda r: r["params"]["keep"])
            x = [r["params"]["keep"] for r in pts]
        colour = palette[i % len(palette)]
        paired = [r.get(f"{prefix}speedup_paired") or {} for r in pts]
        measured = [r[f"{prefix}speedup"] for r in pts]
        label = _series_label(pts[0])
        fig.add_trace(go.Scatter(
            x=x, y=measured, mode="lines+markers", name=f"{label}: measured", line=dict(color=colour),
            error_y=dict(type="data", symmetric=False,
                         array=[max(p.get("q3", m) - m, 0) for p, m in zip(paired, measured)],
                         arrayminus=[max(m - p.get("q1", m), 0) for p, m in zip(paired, measured)]),
            customdata=[r[f"{prefix}efficiency"] for r in pts],
            hovertemplate=f"{label} keep %{{x}}: %{{y:.2f}}x measured (efficiency %{{customdata:.2f}})<extra></extra>"))
        fig.add_trace(go.Scatter(
            x=x, y=[r[f"{prefix}speedup_predicted"] for r in pts], mode="lines+markers", name=f"{label}: predicted",
            line=dict(color=colour, dash="dot"), marker=dict(symbol="circle-open"),
            hovertemplate=f"{label} keep %{{x}}: %{{y:.2f}}x predicted by TFLOPs<extra></extra>"))
    what = "prefill" if stage == "prefill" else "time to first token (vision + prefill)"
    model = report.get("model", {})
    depth = (f"{model.get('llm_layers')} LLM + {model.get('vit_layers')} ViT layers"
             if model.get("llm_layers") else "")
    fig.add_hline(y=1.0, line_dash="dash", line_color="grey")
    fig.update_layout(title=f"Speedup of the {what} over no pruning" + (f" ({depth})" if depth else ""),
                      xaxis_title="visual tokens kept (vtw has no budget: one level across)",
                      yaxis_title="speedup over none (x)", legend_title="solid: measured, dotted: TFLOPs")
    return fig
