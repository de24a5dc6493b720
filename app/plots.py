"""Plotly figures from plain analysis values (no torch here).

Every figure follows the same rules (``_finish``): each strategy in its own colour, dash and marker from
``app.colors`` (the same in every figure, card and table), every axis titled in words with its unit, compute in a
unit chosen for the numbers (``app.units``: MFLOPs / GFLOPs / TFLOPs), and a layout that stays legible from a
phone (390 px) to a desktop: short titles wrapped with ``<br>`` and a smaller subtitle, the legend below the plot,
left-aligned titles that stay clear of plotly's mode bar (cut to its download button, shown on hover, at the top
right), a bounded number of ticks per axis.
"""

from __future__ import annotations

import base64
import io
import math
import re
import textwrap

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from .colors import rgba, strategy_color, trace_style
from .units import flops_unit, format_flops

# plotly's mode bar keeps only "download as PNG"; the others (zoom, pan, box select, ...) need a mouse and would
# sit over the title on a phone
MODEBAR_REMOVE = ["zoom", "pan", "select", "lasso", "zoomIn", "zoomOut", "autoScale", "resetScale", "toggleSpikelines",
                  "hoverClosestCartesian", "hoverCompareCartesian", "zoom2d", "pan2d", "select2d", "lasso2d",
                  "zoomIn2d", "zoomOut2d", "autoScale2d", "resetScale2d", "toggleHover", "resetViews",
                  "resetViewMapbox"]
TITLE_SIZE, FONT_SIZE = 15, 12
PRUNED_CELL = "#d4d4d4"  # heatmap cells of pruned tokens
PHONE_CHARS = 44  # characters per line of a note that must fit a 390 px screen


def _wrap(text: str, width: int = PHONE_CHARS) -> str:
    """Plain text wrapped for plotly (``<br>`` between lines)."""
    return "<br>".join(textwrap.wrap(text, width)) if text else ""


def _title_text(title: str, subtitle: str | None = None) -> str:
    """The title with its subtitle in smaller grey lines (inside the title's text: plotly's own subtitle is placed
    off the figure when the title wraps)."""
    if not subtitle:
        return title
    return title + "<br>" + "<br>".join(f"<span style='font-size:11px;color:#555'>{line}</span>"
                                        for line in subtitle.split("<br>"))


def _finish(fig: go.Figure, title: str, subtitle: str | None = None, height: int | None = None,
            legend: bool = True, legend_title: str | None = None) -> go.Figure:
    """The shared layout: white template, left-aligned title (+ subtitle) that pushes the plot down as it wraps,
    legend below the plot in rows, mode bar reduced to its download button, no drag-to-zoom (a page scrolls
    past the plot on a phone)."""
    lines = title.count("<br>") + 1
    sub_lines = subtitle.count("<br>") + 1 if subtitle else 0
    top = 22 + 20 * lines + 15 * sub_lines + 18  # pixels above the plot area: pad, title lines, subtitle lines, gap
    text = _title_text(title, subtitle)
    title_spec: dict = {"text": text, "x": 0.01, "xanchor": "left", "xref": "container", "font": {"size": TITLE_SIZE},
                        "automargin": False, "y": 1, "yanchor": "top", "yref": "container", "pad": {"t": 22}}
    fig.update_layout(
        template="plotly_white", font={"size": FONT_SIZE}, title=title_spec,
        showlegend=legend,
        legend={"orientation": "h", "x": 0.01, "xanchor": "left", "xref": "container", "y": 0, "yanchor": "bottom", "yref": "container",
                "font": {"size": 11}, "title": {"text": legend_title or "", "side": "top left"},
                "entrywidth": 0, "itemsizing": "constant", "tracegroupgap": 2},
        margin={"l": 64, "r": 24, "t": top, "b": 64, "autoexpand": True},
        modebar={"remove": MODEBAR_REMOVE, "orientation": "h"}, dragmode=False,
        hoverlabel={"namelength": -1}, hovermode="closest")
    if height:
        fig.update_layout(height=height)
    fig.update_xaxes(automargin=True, title_standoff=6)
    fig.update_yaxes(automargin=True, title_standoff=6)
    return fig


def _legend_below(fig: go.Figure, rows: int) -> None:
    """Legend in rows under the plot: room at the bottom for ``rows`` lines of entries below the x-axis title."""
    fig.update_layout(legend={"yref": "container", "y": 0, "yanchor": "bottom"},
                      margin={"b": 70 + 22 * rows})


def _layer_axis(fig: go.Figure, n_layers: int, **where) -> None:
    """An LLM/ViT layer axis: whole layers only, every layer ticked up to 16, fewer beyond."""
    fig.update_xaxes(tickmode="linear", tick0=0, dtick=1 if n_layers <= 16 else max(2, math.ceil(n_layers / 8)),
                     **where)


# ---------------------------------------------------------------- VTC-CLS Fig. 2, VTW Fig. 4 and 8b

def _consistency_style(name: str, order: int, total: int) -> tuple[str, dict]:
    """VTC-CLS's [CLS] K = 1..5 as shades of vtc-cls's colour (dark: more ViT layers), random in random's."""
    if name == "random":
        return "random", trace_style("random")
    k = name.split("_k")[1]
    base = strategy_color("vtc-cls")
    r, g, b = (int(base[i:i + 2], 16) for i in (1, 3, 5))
    t = 0.65 * (1 - order / max(1, total - 1))  # 0.65 (lightest) .. 0 (the colour itself)
    shade = "#{:02x}{:02x}{:02x}".format(*(round(c + (255 - c) * t) for c in (r, g, b)))
    symbols = ["circle", "square", "diamond", "triangle-up", "star"]
    return f"[CLS] K={k}", {"line": {"color": shade, "width": 2}, "marker": {"color": shade, "size": 7,
                                                                              "symbol": symbols[order % len(symbols)]}}


def consistency_figure(analysis: dict) -> go.Figure:
    """VTC-CLS Fig. 2: overlap of the top-U patches by [CLS] attention (its first K ViT layers) with the top-U by
    the LLM's attention, and their Spearman rank correlation, per LLM layer; random scores as the floor. Panels
    stacked (legible on a phone), colours set per series so the legend matches every panel."""
    n_layers = analysis["layers"]
    layers = list(range(n_layers))
    budgets = analysis["budgets"]
    n_panels = len(budgets) + 1
    height = 230 * n_panels + 200
    fig = make_subplots(rows=n_panels, cols=1, shared_xaxes=True, vertical_spacing=min(0.2, 70 / height),
                        subplot_titles=[f"Top-{u} overlap" for u in budgets] + ["Spearman rank correlation"])
    cls_names = [n for n in analysis["consistency"] if n != "random"]
    for name, d in analysis["consistency"].items():
        order = cls_names.index(name) if name in cls_names else 0
        label, style = _consistency_style(name, order, len(cls_names))
        for row, u in enumerate(budgets, start=1):
            fig.add_trace(go.Scatter(x=layers, y=d["overlap"][str(u)], name=label, legendgroup=label,
                                     mode="lines+markers", showlegend=row == 1, **style,
                                     hovertemplate=f"{label}, LLM layer %{{x}}: %{{y:.0%}} of the top {u} shared"
                                                   "<extra></extra>"), row=row, col=1)
        fig.add_trace(go.Scatter(x=layers, y=d["spearman"], name=label, legendgroup=label, showlegend=False,
                                 mode="lines+markers", **style,
                                 hovertemplate=f"{label}, LLM layer %{{x}}: Spearman %{{y:.2f}}<extra></extra>"),
                      row=n_panels, col=1)
    for row, u in enumerate(budgets, start=1):
        fig.update_yaxes(title_text=f"top-{u} shared (%)", tickformat=".0%", range=[0, 1.02], row=row, col=1)
    fig.update_yaxes(title_text="Spearman ρ<br>(−1 to 1, no unit)", range=[-1.05, 1.05], row=n_panels, col=1)
    fig.update_xaxes(title_text="LLM layer (0 = first)", row=n_panels, col=1)
    _layer_axis(fig, n_layers)
    fig.update_annotations(font_size=12)
    samples = analysis.get("samples")
    where = "this image and question" if samples in (None, 1) else f"mean of {samples} questions"
    _finish(fig, "Does [CLS] rank patches<br>as the LLM does?", f"VTC-CLS Fig. 2, {where}", height=height,
            legend_title="importance from")
    _legend_below(fig, 2)
    return fig


def attention_share_figure(analysis: dict) -> go.Figure:
    """VTW Fig. 4: where the generated tokens' attention goes, per LLM layer (mean over the analysed questions)."""
    layers = list(range(analysis["layers"]))
    fig = go.Figure()
    for seg, values in analysis["attention_share"].items():
        fig.add_trace(go.Bar(x=layers, y=values, name=seg, marker_color=SEGMENT_COLOURS.get(seg),
                             hovertemplate=f"layer %{{x}}: {seg} %{{y:.1%}}<extra></extra>"))
    fig.update_layout(barmode="stack", xaxis_title="LLM layer (0 = first)", yaxis_title="share of attention (%)",
                      yaxis_tickformat=".0%")
    _layer_axis(fig, analysis["layers"])
    _finish(fig, "Where the answer's attention goes", "VTW Fig. 4, per LLM layer", height=420,
            legend_title="tokens attended")
    _legend_below(fig, 1)
    return fig


def _is_log_tick_power(fig: go.Figure) -> None:
    """A log y axis with one tick per power of ten written as 10⁻³ (plotly's SI default reads "100µ, 10µ")."""
    fig.update_yaxes(type="log", dtick=1, exponentformat="power", showexponent="all", minor={"showgrid": False})


def kl_figure(calibration: dict) -> go.Figure:
    """VTW Fig. 8b: the KL between the full and the withdrawn first-answer-token distribution for each withdrawal
    layer, with what decides K: eta (the threshold, its label on its line), the minimum layer the rule starts from
    (Algorithm 1 searches K >= 5, i.e. layer >= 4; the layers below are shaded "not searched"), the rule's pick
    (first searched layer with KL < eta), and, when given (``used_layer``), the layer the vtw strategy withdraws at,
    which is its ``layer`` setting (default depth/2 - 1), not the rule's pick: when its KL is above eta the figure
    says so in red and a note says why.

    Layers are the engine's 0-based ``layer``; the paper's K = layer + 1."""
    kl = {int(k): float(v) for k, v in calibration["kl_per_layer"].items()}
    ks = sorted(kl)
    eta = float(calibration["eta"])
    rule = calibration.get("k")
    min_layer = calibration.get("min_layer")
    used = calibration.get("used_layer")
    colour = strategy_color("vtw")
    over = "#c0392b"
    positive = [v for v in kl.values() if v > 0] + [eta]
    lo, hi = math.floor(math.log10(min(positive))) - 0.3, math.ceil(math.log10(max(positive))) + 0.6
    fig = go.Figure()
    if min_layer is not None and ks and min_layer > ks[0]:
        fig.add_vrect(x0=ks[0] - 0.5, x1=min(min_layer, ks[-1] + 1) - 0.5, fillcolor="#ececec", line_width=0,
                      layer="below",
                      label={"text": f"not searched<br>(rule: layer ≥ {min_layer},<br>K ≥ {min_layer + 1})",
                             "textposition": "bottom center", "font": {"size": 10, "color": "#555"}})
    fig.add_hrect(y0=eta, y1=10 ** hi, fillcolor="rgba(192,57,43,0.06)", line_width=0, layer="below")
    fig.add_hline(y=eta, line_dash="dot", line_color="#444", line_width=1.5,
                  label={"text": f"eta = {eta:g}", "textposition": "end", "yanchor": "bottom",
                         "font": {"size": 11, "color": "#333"}})
    ys = [kl[k] for k in ks]
    fig.add_trace(go.Scatter(
        x=ks, y=ys, mode="lines+markers", name="KL (open marker: above eta)",
        line={"color": colour, "width": 2},
        marker={"size": 9, "color": [colour if v < eta else "white" for v in ys],
                "line": {"color": [colour if v < eta else over for v in ys], "width": 2}},
        customdata=[k + 1 for k in ks],
        hovertemplate="withdraw before layer %{x} (K = %{customdata}): KL %{y:.3g} nats<extra></extra>"))
    if rule is not None and rule in kl:
        fig.add_trace(go.Scatter(x=[rule], y=[kl[rule]], mode="markers", name=f"rule's pick: layer {rule} (K {rule + 1})",
                                 marker={"symbol": "star", "size": 17, "color": colour, "line": {"color": "#222", "width": 1}},
                                 hovertemplate=f"rule's pick: layer {rule} (K = {rule + 1}), KL %{{y:.3g}}<extra></extra>"))
    note = None
    if used is not None:
        used_kl = kl.get(used)
        above = used_kl is not None and used_kl >= eta
        text = f"in use: layer {used} (K {used + 1})"
        if above:
            text += f"<br>KL {used_kl:.2g} > eta"
        fig.add_vline(x=used, line_dash="dash", line_color=over if above else "#222", line_width=2,
                      label={"text": text, "textposition": "end", "textangle": 0, "xanchor": "left",
                             "yanchor": "top", "font": {"size": 11, "color": over if above else "#222"}})
        if above:
            why = ("the layer in use is vtw's layer setting (default: depth/2 − 1), not the rule's pick"
                   if rule != used else "the rule's pick")
            note = (f"Red: the layer in use has KL {used_kl:.2g} above eta {eta:g}: withdrawing the image there moves "
                    f"the first answer token's distribution more than eta allows ({why}).")
        elif rule is not None and rule != used:
            note = (f"The layer in use is vtw's layer setting (default: depth/2 − 1); the rule would pick layer {rule}"
                    + (f" (it searches only layers ≥ {min_layer})." if min_layer is not None else "."))
    samples = calibration.get("samples")
    where = "this question" if samples in (None, 1) else f"mean of {samples} questions"
    picks = ("no searched layer is below eta" if rule is None else f"rule picks layer {rule} (K {rule + 1})")
    subtitle = f"{where}; eta {eta:g}<br>{picks}" + (f"; in use: layer {used} (K {used + 1})" if used is not None else "")
    fig.update_layout(xaxis_title="withdrawal layer (0-based; paper's K = layer + 1)",
                      yaxis_title="KL divergence (nats)", yaxis_range=[lo, hi])
    _is_log_tick_power(fig)
    _layer_axis(fig, (ks[-1] + 1) if ks else 1)
    if ks:
        fig.update_xaxes(range=[ks[0] - 0.5, ks[-1] + 0.5])
    _finish(fig, "VTW: KL by withdrawal layer<br>(VTW Fig. 8b)", subtitle, height=460)
    if note:
        wrapped = _wrap(note, PHONE_CHARS)
        lines = wrapped.count("<br>") + 1
        height = 470 + 16 * lines
        fig.add_annotation(text=wrapped, xref="paper", yref="paper", x=0, xanchor="left", y=0, yanchor="top",
                           yshift=-62, showarrow=False, align="left",
                           font={"size": 11, "color": over if note.startswith("Red") else "#444"})
        fig.update_layout(height=height, margin={"b": 100 + 16 * lines},
                          legend={"yref": "container", "y": 0, "yanchor": "bottom"})
    else:
        _legend_below(fig, 1)
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
    """A flat per-patch list as rows of the grid; patches not present become None (drawn in the pruned style)."""
    out = [v if present is None or present[i] else None for i, v in enumerate(values)]
    return [out[r * cols:(r + 1) * cols] for r in range(rows)]


def _dodge(i: int, n: int, spread: float = 0.5) -> float:
    """Horizontal offset of the i-th of n series at each whole layer, so that equal values sit side by side."""
    if n <= 1:
        return 0.0
    return (i - (n - 1) / 2) * min(spread / (n - 1), 0.12)


def tokens_alive_figure(results: list[dict]) -> go.Figure:
    """Visual tokens present in each LLM layer, one line per strategy in its colour, dash and marker. Strategies
    with the same count sit side by side around each layer (dodged), so none hides another; the hover gives the
    layer and the count."""
    fig = go.Figure()
    n_layers = max((len(r["image_tokens_per_layer"]) for r in results), default=1)
    for i, r in enumerate(results):
        layers = list(range(len(r["image_tokens_per_layer"])))
        dx = _dodge(i, len(results))
        fig.add_trace(go.Scatter(x=[x + dx for x in layers], y=r["image_tokens_per_layer"], mode="lines+markers",
                                 name=r["strategy"], customdata=layers, **trace_style(r["strategy"], size=8),
                                 hovertemplate="%{fullData.name}: layer %{customdata}, %{y} visual tokens"
                                               "<extra></extra>"))
    fig.update_layout(xaxis_title="LLM layer (0 = first)", yaxis_title="visual tokens in the layer (count)",
                      yaxis_rangemode="tozero")
    _layer_axis(fig, n_layers)
    fig.update_xaxes(range=[-0.5, n_layers - 0.5])
    _finish(fig, "Visual tokens alive<br>in each LLM layer", "equal counts are drawn side by side", height=440,
            legend_title="strategy")
    _legend_below(fig, max(1, math.ceil(len(results) / 4)))
    return fig


SEGMENT_COLOURS = {"system": "#9e9e9e", "image": "#e4572e", "question": "#2e86de", "generated": "#76b041"}


def attention_shares_figure(results: list[dict], columns: int = 3) -> go.Figure:
    """VTW Fig. 4 per strategy: the generated tokens' attention on system / image / question / output tokens in
    each LLM layer (stacked bars, one panel per strategy, the panel title in the strategy's colour). Three
    columns by default: the panels stay readable on a phone."""
    traced = [r for r in results if r.get("trace")]
    cols = max(1, min(columns, len(traced)))
    nrows = max(1, -(-len(traced) // cols))
    height = 210 * nrows + 190
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=[f"<b>{r['strategy']}</b>" for r in traced],
                        shared_yaxes=True, horizontal_spacing=0.04,
                        vertical_spacing=min(0.3, 62 / height) if nrows > 1 else 0.1)
    n_layers = 1
    for i, r in enumerate(traced):
        shares = r["trace"]["attention_share"]
        layers = list(range(len(shares)))
        n_layers = max(n_layers, len(shares))
        for seg in r["trace"]["segments"]:
            fig.add_trace(go.Bar(x=layers, y=[s[seg] for s in shares], name=seg, legendgroup=seg,
                                 marker_color=SEGMENT_COLOURS.get(seg), showlegend=i == 0,
                                 hovertemplate=f"{r['strategy']}, layer %{{x}}: {seg} %{{y:.1%}}<extra></extra>"),
                          row=i // cols + 1, col=i % cols + 1)
    for ann, r in zip(fig.layout.annotations, traced):
        ann.font = {"size": 12, "color": strategy_color(r["strategy"])}
    fig.update_layout(barmode="stack", bargap=0.1)
    fig.update_xaxes(tickmode="linear", tick0=0, dtick=max(1, math.ceil(n_layers / 4)), tickfont={"size": 10})
    fig.update_xaxes(title_text="LLM layer", row=nrows)
    fig.update_yaxes(tickformat=".0%", range=[0, 1], dtick=0.5, tickfont={"size": 10})
    fig.update_yaxes(title_text="attention (%)", col=1)
    _finish(fig, "Where the answer's attention goes", "per LLM layer (VTW Fig. 4)", height=height,
            legend_title="tokens attended")
    _legend_below(fig, 1)
    return fig


HEAT_OVER_IMAGE = 0.6  # a heatmap's opacity over the image: the colour reads, the shapes show through


def _image_beneath(fig: go.Figure, view, rows: int, cols: int) -> None:
    """``view`` (H, W, 3 uint8: the image as the model sees it) under a patch-grid figure, cell (r, c) over
    patch (r, c), so a heatmap drawn with some transparency reads as attention over the picture."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(view, np.uint8)).save(buf, format="PNG", optimize=True)
    fig.add_layout_image(source="data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"),
                         xref="x", yref="y", x=-0.5, y=-0.5, sizex=cols, sizey=rows, sizing="stretch",
                         layer="below", xanchor="left", yanchor="top")


def _slider_heatmaps(maps: list[list], rows: int, cols: int, title: str, layer_word: str, colorbar: str,
                     present: list | None = None, start: int = 0, view=None) -> go.Figure:
    """One heatmap per layer over the patch grid and a slider to pick the layer (no server round trip). Patches
    not present in a layer (pruned before it) are grey cells with a cross, with a key above the grid. With
    ``view`` (the image as the model sees it) the heatmaps are drawn over the image, partly transparent, and a
    pruned cell shows the picture under its cross."""
    fig = go.Figure()
    n = len(maps)
    heat = []
    for i, values in enumerate(maps):
        z = _grid(values, present[i] if present else None, rows, cols)
        fig.add_trace(go.Heatmap(z=z, visible=i == start, colorscale="Viridis", hoverongaps=False,
                                 opacity=HEAT_OVER_IMAGE if view is not None else 1.0,
                                 colorbar={"title": {"text": colorbar, "side": "right"}, "thickness": 12, "len": 0.8},
                                 hovertemplate=f"{layer_word} {i}: row %{{y}}, column %{{x}}: %{{z:.3g}}<extra></extra>"))
        heat.append(len(fig.data) - 1)
    pruned_of = {}  # layer -> index of its trace of pruned cells
    if present:
        for i, flags in enumerate(present):
            gone = [p for p, here in enumerate(flags) if not here]
            if not gone:
                continue
            fig.add_trace(go.Scatter(
                x=[p % cols for p in gone], y=[p // cols for p in gone], mode="markers", visible=i == start,
                name="pruned before this layer", showlegend=False,
                marker={"symbol": "x-thin", "size": max(4, min(12, 220 // max(rows, cols))), "color": "#7a7a7a",
                        "line": {"width": 1.2, "color": "#7a7a7a"}},
                hovertemplate=f"{layer_word} {i}: row %{{y}}, column %{{x}}: pruned before this layer<extra></extra>"))
            pruned_of[i] = len(fig.data) - 1

    def visible(i: int) -> list[bool]:
        on = {heat[i]} | ({pruned_of[i]} if i in pruned_of else set())
        return [j in on for j in range(len(fig.data))]

    head, _, sub = title.partition(": ")

    def title_of(i: int) -> str:
        return _title_text(f"{head}<br>{layer_word} {i}", sub or None)

    steps = [{"method": "update", "label": str(i), "args": [{"visible": visible(i)}, {"title.text": title_of(i)}]}
             for i in range(n)]
    fig.update_layout(sliders=[{"active": start, "steps": steps, "currentvalue": {"prefix": f"{layer_word}: "},
                                "pad": {"t": 36}, "len": 1.0, "x": 0, "font": {"size": 11}}],
                      xaxis_title="patch column", yaxis_title="patch row",
                      plot_bgcolor=PRUNED_CELL if view is None else "white")
    if view is not None:
        _image_beneath(fig, view, rows, cols)
    fig.update_xaxes(range=[-0.5, cols - 0.5], constrain="domain", showgrid=False, zeroline=False, nticks=7)
    fig.update_yaxes(range=[rows - 0.5, -0.5], scaleanchor="x", constrain="domain", showgrid=False, zeroline=False,
                     nticks=7)
    _finish(fig, f"{head}<br>{layer_word} {start}", sub or None, height=540)
    if pruned_of:  # the key to the crosses, as a note above the grid (a legend there pushed the margins about)
        fig.add_annotation(text="× = pruned before this layer" + (" (grey cells)" if view is None else ""),
                           xref="paper", yref="paper", x=0,
                           xanchor="left", y=1, yanchor="bottom", yshift=4, showarrow=False,
                           font={"size": 11, "color": "#444"})
    fig.update_layout(showlegend=False)
    return fig


def llm_attention_figure(result: dict, view=None) -> go.Figure:
    """The LLM's attention over the patch grid (generated tokens' queries, mean over heads) in each layer; patches
    pruned before a layer are grey with a cross (FastV's demo leaves them blank). ``view``: drawn over the image."""
    rows, cols = result["grid"]
    trace = result["trace"]
    return _slider_heatmaps(trace["patch_attention"], rows, cols,
                            f"LLM attention per patch: {result['strategy']}, mean over heads", "LLM layer", "attention<br>(share)",
                            present=trace.get("patch_present"), start=min(2, len(trace["patch_attention"]) - 1),
                            view=view)


def cls_attention_figure(cls_attention: list[list], grid: list[int], feature_layer: int | None = None,
                         view=None) -> go.Figure:
    """The vision encoder's [CLS] attention over the patch grid in each ViT layer (mean over heads); ``view``:
    drawn over the image."""
    rows, cols = grid
    start = feature_layer if feature_layer is not None and 0 <= feature_layer < len(cls_attention) else 0
    sub = f"opens at layer {start}, whose features the LLM gets" if feature_layer is not None else "vision encoder"
    return _slider_heatmaps(cls_attention, rows, cols, f"[CLS] attention per patch: {sub}", "ViT layer",
                            "attention<br>(share)", start=start, view=view)


def vtw_kl_figure(calibration: dict) -> go.Figure:
    """VTW Fig. 8b for one question (``kl_figure``), with the layer the vtw strategy uses (``used_layer``)."""
    return kl_figure(calibration)


# ---------------------------------------------------------------- Sweep

# The sweep rows' fields (pruning/bench.py summarise): the first name present is used; the later ones are the
# names this module was first written against.
TOKENS_PER_LAYER_KEYS = ("visual_tokens_per_layer_mean", "avg_tokens_per_layer")
BUDGET_KEYS = ("budget_label", "budget")


def _all_have(rows: list[dict], key: str) -> bool:
    return bool(rows) and all(r.get(key) is not None for r in rows)


def _tokens_key(rows: list[dict]) -> str:
    """The x of the first sweep figure: mean visual tokens per LLM layer where every row has it, else the tokens
    entering the LLM (older rows; fastv's budgets then share one x)."""
    return next((k for k in TOKENS_PER_LAYER_KEYS if _all_have(rows, k)), "tokens_entering_llm")


def _interval(row: dict) -> tuple[float, float] | None:
    """The Wilson 95% interval of a row's accuracy: ``accuracy_ci`` [low, high] or ``ci_low`` / ``ci_high``."""
    if row.get("accuracy_ci") is not None:
        low, high = row["accuracy_ci"]
        return float(low), float(high)
    if row.get("ci_low") is not None and row.get("ci_high") is not None:
        return float(row["ci_low"]), float(row["ci_high"])
    return None


def _budget_words(row: dict) -> str:
    """The budget in words for the hover ("keep 32 from layer 2", "all withdrawn from layer 3")."""
    for key in BUDGET_KEYS:
        if row.get(key) is not None:
            return str(row[key])
    keep = (row.get("params") or {}).get("keep")
    return "all" if keep is None else f"keep {keep}"


def _budget_text(row: dict) -> str:
    """A point's short label: the tokens kept ("32"), "all" for none, "L3" for a layer-only budget (vtw)."""
    params = row.get("params") or {}
    if params.get("keep") is not None:
        return str(params["keep"])
    if row["name"] == "none":
        return "all"
    words = _budget_words(row)
    layer = re.search(r"layer (\d+)", words)
    if layer:
        return f"L{layer.group(1)}"
    if params.get("layer") is not None:
        return f"L{params['layer']}"
    return "" if words == "all" else words


def _tflops(row: dict) -> float:
    return row["tflops"] if row.get("tflops") is not None else row["prefill_tflops"]


def add_band(fig: go.Figure, name: str, x: list, low: list, high: list, colour_of: str | None = None) -> None:
    """A shaded band from ``low`` to ``high`` over ``x`` in the strategy's colour (e.g. random over several seeds:
    the spread of its accuracy), drawn beneath the lines, with one legend entry."""
    if not x:
        return
    pts = sorted(zip(x, low, high))
    xs = [p[0] for p in pts]
    fig.add_trace(go.Scatter(x=xs + xs[::-1], y=[p[2] for p in pts] + [p[1] for p in pts][::-1], fill="toself",
                             mode="lines", line={"width": 0}, fillcolor=rgba(strategy_color(colour_of or name), 0.18),
                             name=name, hoverinfo="skip", legendgroup=f"band {name}"))
    fig.data = (fig.data[-1],) + fig.data[:-1]  # beneath everything else


def band_from_seeds(runs: list[list[dict]], label: str = "random") -> list[dict]:
    """Sweep rows of one strategy run with several seeds (one list of rows per seed) as a band per budget: the
    lowest and highest accuracy over the seeds at the mean x of the seeds (``sweep_figures``' ``bands`` format)."""
    by_budget: dict = {}
    for rows in runs:
        for r in rows:
            if r.get("label", r["name"]) == label:
                by_budget.setdefault(_budget_words(r), []).append(r)
    out = []
    for pts in by_budget.values():
        key = _tokens_key(pts)
        out.append({"x_tokens": sum(p[key] for p in pts) / len(pts),
                    "x_tflops": sum(_tflops(p) for p in pts) / len(pts),
                    "low": min(p["accuracy"] for p in pts), "high": max(p["accuracy"] for p in pts),
                    "seeds": len(pts)})
    return sorted(out, key=lambda b: b["x_tokens"])


def sweep_figures(rows: list[dict], bands: dict | None = None) -> tuple[go.Figure, go.Figure]:
    """Accuracy against a cost every strategy shares, one line per strategy (its colour, dash, marker), each point
    labelled with its budget (the tokens kept; "L3" for vtw's layer; the words in the hover), the unpruned accuracy
    as a dotted reference:

    - first figure: against the mean visual tokens per LLM layer (``visual_tokens_per_layer_mean``), so that
      FastV's budgets and VTW's layer land where their cost is (rows without it: the tokens entering the LLM, titled
      so);
    - second: against prefill compute (``prefill_tflops``), in a unit chosen for the values (MFLOPs, GFLOPs, ...),
      with the Pareto front in grey.

    Rows with ``accuracy_ci`` (Wilson 95% interval) get error bars; ``n`` (questions) is named in the subtitle.
    ``bands``: ``{name: [{"x_tokens", "x_tflops", "low", "high"}, ...]}`` (``band_from_seeds``) draws a shaded
    band per name in that strategy's colour beneath the lines (random over several seeds)."""
    tokens_key = _tokens_key(rows)
    per_layer = tokens_key != "tokens_entering_llm"
    tokens_words = "visual tokens per layer" if per_layer else "visual tokens into the LLM"
    factor, unit = flops_unit([_tflops(r) for r in rows])
    ci = bool(rows) and all(_interval(r) is not None for r in rows)
    by_tokens, by_tflops = go.Figure(), go.Figure()
    ref = next((r for r in rows if r["name"] == "none"), None)
    names = list(dict.fromkeys(r.get("label", r["name"]) for r in rows if r["name"] != "none"))

    def error_bars(pts):
        if not ci:
            return None
        return {"type": "data", "symmetric": False, "thickness": 1.2, "width": 3,
                "array": [max(_interval(r)[1] - r["accuracy"], 0) for r in pts],
                "arrayminus": [max(r["accuracy"] - _interval(r)[0], 0) for r in pts]}

    def add(fig, pts, x, name, style, text_pos):
        custom = [[_budget_words(r), format_flops(_tflops(r)), r[tokens_key], *(_interval(r) or (None, None))]
                  for r in pts]
        interval = " (95%: %{customdata[3]:.0%}–%{customdata[4]:.0%})" if ci else ""
        fig.add_trace(go.Scatter(
            x=x, y=[r["accuracy"] for r in pts], mode="lines+markers+text", name=name, **style,
            text=[_budget_text(r) for r in pts], textposition=text_pos, textfont={"size": 10, "color": "#333"},
            error_y=error_bars(pts), customdata=custom, cliponaxis=False,
            hovertemplate=f"{name}, %{{customdata[0]}}: accuracy %{{y:.1%}}{interval}<br>"
                          f"%{{customdata[2]:.1f}} {tokens_words}, %{{customdata[1]}}<extra></extra>"))

    for name in names:
        pts = sorted((r for r in rows if r.get("label", r["name"]) == name), key=lambda r: r[tokens_key])
        style = trace_style(name)
        add(by_tokens, pts, [r[tokens_key] for r in pts], name, style, "middle right")
        pts_f = sorted(pts, key=_tflops)
        add(by_tflops, pts_f, [_tflops(r) * factor for r in pts_f], name, style, "middle right")
    for name, band in (bands or {}).items():
        seeds = max((b.get("seeds", 0) for b in band), default=0)
        label = f"{name}: {seeds} seeds (range)" if seeds else f"{name}: range"
        add_band(by_tokens, label, [b["x_tokens"] for b in band], [b["low"] for b in band],
                 [b["high"] for b in band], colour_of=name)
        add_band(by_tflops, label, [b["x_tflops"] * factor for b in band], [b["low"] for b in band],
                 [b["high"] for b in band], colour_of=name)
    if ref is not None:
        style = trace_style("none")
        add(by_tokens, [ref], [ref[tokens_key]], "none", style, "middle left")
        add(by_tflops, [ref], [_tflops(ref) * factor], "none", style, "middle left")
        for fig in (by_tokens, by_tflops):
            fig.add_hline(y=ref["accuracy"], line_dash="dot", line_color=strategy_color("none"), line_width=1,
                          label={"text": f"no pruning: {ref['accuracy']:.1%}", "textposition": "start",
                                 "yanchor": "bottom", "font": {"size": 11}})
    front = pareto_front([(_tflops(r) * factor, r["accuracy"], _point_label(r)) for r in rows])
    if len(front) > 1:
        by_tflops.add_trace(go.Scatter(
            x=[p[0] for p in front], y=[p[1] for p in front], mode="lines", name="Pareto front",
            line={"color": "rgba(0,0,0,0.28)", "width": 7}, customdata=[p[2] for p in front],
            hovertemplate=f"Pareto front: %{{customdata}}, %{{x:.3g}} {unit} -> %{{y:.1%}}<extra></extra>"))
        by_tflops.data = (by_tflops.data[-1],) + by_tflops.data[:-1]  # beneath the strategies' lines
    n = next((r.get("n") for r in rows if r.get("n")), None)
    per = f"{n} questions per point; " if n else ""
    bars = "bars: Wilson 95% interval; " if ci else ""
    for fig in (by_tokens, by_tflops):
        fig.update_layout(yaxis_title="accuracy (% right)", yaxis_tickformat=".0%", yaxis_range=[0, 1.08])
        fig.update_xaxes(nticks=7, rangemode="tozero")
    by_tokens.update_layout(xaxis_title="visual tokens per LLM layer (mean over layers)" if per_layer
                            else "visual tokens entering the LLM (mean)")
    by_tflops.update_layout(xaxis_title=f"prefill compute ({unit}, estimate)")
    _finish(by_tokens, f"Accuracy against<br>{tokens_words}", _wrap(f"{per}{bars}labels: tokens kept", 60),
            height=500, legend_title="strategy")
    _finish(by_tflops, "Accuracy against compute",
            _wrap(f"{per}{bars}labels: tokens kept; grey: the Pareto front", 60), height=500, legend_title="strategy")
    legend_rows = max(1, math.ceil((len(names) + 2 + len(bands or {})) / 3))
    _legend_below(by_tokens, legend_rows)
    _legend_below(by_tflops, legend_rows)
    return by_tokens, by_tflops


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
    """Measured and TFLOPs-predicted speedup over no pruning against the budget, in each strategy's colour, from a
    ``python -m pruning speed`` report: solid with the per-repeat quartiles as error bars (measured), dotted with
    open markers (predicted). ``stage``: ``prefill`` or ``ttft`` (vision + prefill)."""
    if stage not in ("prefill", "ttft"):
        raise ValueError(f"stage={stage!r}: expected 'prefill' or 'ttft'")
    prefix = "prefill_" if stage == "prefill" else ""
    rows = [r for r in report["rows"] if r["strategy"] != "none"]
    fig = go.Figure()
    budgets = sorted({r["params"]["keep"] for r in rows if r["params"].get("keep") is not None})
    names = list(dict.fromkeys(r["strategy"] for r in rows))
    for name in names:
        pts = [r for r in rows if r["strategy"] == name]
        if all(r["params"].get("keep") is None for r in pts):  # no budget (vtw): one level across the budgets
            pts = pts[:1] * 2 if budgets else pts[:1]
            x = [budgets[0], budgets[-1]] if budgets else [0]
        else:
            pts = sorted((r for r in pts if r["params"].get("keep") is not None), key=lambda r: r["params"]["keep"])
            x = [r["params"]["keep"] for r in pts]
        colour = strategy_color(name)
        symbol = trace_style(name)["marker"]["symbol"].replace("-open", "")
        paired = [r.get(f"{prefix}speedup_paired") or {} for r in pts]
        measured = [r[f"{prefix}speedup"] for r in pts]
        label = _series_label(pts[0])
        fig.add_trace(go.Scatter(
            x=x, y=measured, mode="lines+markers", name=f"{label}: measured", legendgroup=label,
            line={"color": colour, "width": 2}, marker={"color": colour, "symbol": symbol, "size": 8},
            error_y={"type": "data", "symmetric": False, "thickness": 1.2, "width": 3,
                     "array": [max(p.get("q3", m) - m, 0) for p, m in zip(paired, measured)],
                     "arrayminus": [max(m - p.get("q1", m), 0) for p, m in zip(paired, measured)]},
            customdata=[r[f"{prefix}efficiency"] for r in pts],
            hovertemplate=f"{label} keep %{{x}}: %{{y:.2f}}x measured (efficiency %{{customdata:.2f}})<extra></extra>"))
        fig.add_trace(go.Scatter(
            x=x, y=[r[f"{prefix}speedup_predicted"] for r in pts], mode="lines+markers", name=f"{label}: predicted",
            legendgroup=label, line={"color": colour, "dash": "dot", "width": 2},
            marker={"symbol": symbol + "-open", "size": 8, "color": colour, "line": {"color": colour, "width": 1.5}},
            hovertemplate=f"{label} keep %{{x}}: %{{y:.2f}}x predicted by TFLOPs<extra></extra>"))
    what = "prefill" if stage == "prefill" else "time to first token"
    model = report.get("model", {})
    depth = (f"{model.get('llm_layers')} LLM + {model.get('vit_layers')} ViT layers"
             if model.get("llm_layers") else "")
    fig.add_hline(y=1.0, line_dash="dash", line_color="grey", label={"text": "no speedup", "textposition": "start",
                                                                       "yanchor": "bottom", "font": {"size": 10}})
    total = (report.get("rows") or [{}])[0].get("image_tokens_per_layer", [None])[0]
    fig.update_layout(xaxis_title="visual tokens kept" + (f" (of {total})" if total else ""),
                      yaxis_title="speedup over none (×)", yaxis_rangemode="tozero")
    fig.update_xaxes(nticks=8)
    sub = "solid: measured (bars: quartiles); dotted: TFLOPs' prediction; vtw: no budget, one level"
    _finish(fig, f"Speedup of the {what}<br>over no pruning" + (f" ({depth})" if depth else ""), _wrap(sub, 60),
            height=500, legend_title="strategy")
    _legend_below(fig, max(1, math.ceil(len(names) * 2 / 3)))
    return fig


__all__ = ["consistency_figure", "attention_share_figure", "kl_figure", "vtw_kl_figure", "analysis_html",
           "tokens_alive_figure", "attention_shares_figure", "llm_attention_figure", "cls_attention_figure",
           "sweep_figures", "add_band", "band_from_seeds", "pareto_front", "speed_figure", "SEGMENT_COLOURS"]
