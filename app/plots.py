"""Plotly figures from plain analysis values (no torch here)."""

from __future__ import annotations

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
