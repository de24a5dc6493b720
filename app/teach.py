"""The Teach and Lessons tabs, and How it works' diagram, glossary and papers: drawing and wiring only.

Everything here draws the plain values ``pruning.teach.Teacher`` returns (through ``Scope.teach``: no torch, no
``pruning`` import): pure drawing functions first (images with numpy and Pillow, figures with plotly, HTML
strings), then ``build_tabs``, which lays out the two tabs and wires their events given the ``ScopePool`` and the
Compare tab's inputs (image, question, strategies, budget, model, results), and ``how_it_works``.

Every event that runs the model has a JSON twin with an ``api_name`` (``probe``, ``handpick``, ``kept_set``,
``budget_film``, ``agreement``, ``random_seeds``, ``random_band``, ``lesson``, ``export``): it returns the
library's plain values (without the image arrays) and raises with the library's message on bad input. In the page,
bad input is said beside the input it names and the results already drawn stay.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw, ImageFont
from plotly.subplots import make_subplots

from . import overlays, plots
from .colors import rgba, strategy_color, swatch_html, trace_style
from .units import format_bytes, format_flops, format_ms

DISPLAY = overlays.DISPLAY  # the side of a drawn image in pixels
THUMB = 96  # the side of a film frame
# viridis at ten stops (perceptually even, readable by colour-blind readers)
VIRIDIS = np.array([(68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142), (31, 158, 137),
                    (53, 183, 121), (109, 205, 89), (180, 222, 44), (253, 231, 37)], np.float32)
RIGHT, WRONG = "#1a7f37", "#b42318"
CLS_COLOUR = "#111111"  # the [CLS] token's own line (not a strategy)
MERGING = ("tome", "kmeans", "pooling", "prumerge+", "evit", "visionzip")  # strategies whose tokens merge patches
TOY_NOTE = ("The embedded model is a toy: it knows only its world of coloured shapes on grey backgrounds (the "
            "examples' questions). What these tools show is how pruning behaves on it; on photographs or other "
            "questions its answers mean nothing, and the papers' figures come from LLaVA on real images.")

# ---------------------------------------------------------------- small helpers


def font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def data_uri(image: Image.Image) -> str:
    """A PIL image as an inline ``data:image/png;base64,...`` URI (for HTML that carries its own images)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plain(value):
    """The library's values for a JSON API: image arrays (``view``) left out, numbers as plain numbers."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != "view"}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def upscale(view: np.ndarray, display: int = DISPLAY) -> np.ndarray:
    s = overlays.scale_for(view, display)
    return np.repeat(np.repeat(np.asarray(view, np.float32), s, 0), s, 1)


def colormap(t) -> np.ndarray:
    """Viridis colours (float RGB, ..., 3) of values ``t`` in 0..1."""
    t = np.clip(np.asarray(t, np.float32), 0, 1) * (len(VIRIDIS) - 1)
    lo = np.floor(t).astype(int)
    hi = np.minimum(lo + 1, len(VIRIDIS) - 1)
    frac = (t - lo)[..., None]
    return VIRIDIS[lo] * (1 - frac) + VIRIDIS[hi] * frac


def _cells(img: np.ndarray, grid) -> tuple[int, int]:
    rows, cols = grid
    return img.shape[0] // rows, img.shape[1] // cols


def _outline(img: np.ndarray, patch: int, grid, colour=(255, 40, 40), width: int = 3) -> None:
    """A thick outline (white inside, ``colour`` outside) around one patch."""
    ph, pw = _cells(img, grid)
    r, c = divmod(patch, grid[1])
    y0, x0, y1, x1 = r * ph, c * pw, (r + 1) * ph, (c + 1) * pw
    for w, col in ((width + 2, colour), (1, (255, 255, 255))):
        img[max(0, y0 - w + 1):y0 + w, x0:x1] = col
        img[max(0, y1 - w):y1 + w - 1, x0:x1] = col
        img[y0:y1, max(0, x0 - w + 1):x0 + w] = col
        img[y0:y1, max(0, x1 - w):x1 + w - 1] = col


def _grid_lines(img: np.ndarray, grid, alpha: float = 0.35) -> None:
    ph, pw = _cells(img, grid)
    for r in range(1, grid[0]):
        img[r * ph, :] = (1 - alpha) * img[r * ph, :] + alpha * 255
    for c in range(1, grid[1]):
        img[:, c * pw] = (1 - alpha) * img[:, c * pw] + alpha * 255


def _key(width: int, vmax: float, label: str, vmin: float = 0.0) -> np.ndarray:
    """A colour key under a heat image: the viridis bar from ``vmin`` to ``vmax`` with the values and ``label``."""
    h = 34
    key = np.full((h, width, 3), 255, np.float32)
    bar = colormap(np.linspace(0, 1, width - 20))[None].repeat(10, 0)
    key[4:14, 10:width - 10] = bar
    im = Image.fromarray(key.astype(np.uint8))
    d = ImageDraw.Draw(im)
    f = font(11)
    d.text((10, 16), f"{vmin:.3g}", fill=(40, 40, 40), font=f)
    right = f"{vmax:.3g}"
    d.text((width - 10 - d.textlength(right, font=f), 16), right, fill=(40, 40, 40), font=f)
    d.text(((width - d.textlength(label, font=f)) / 2, 16), label, fill=(40, 40, 40), font=f)
    return np.asarray(im, np.float32)


# ---------------------------------------------------------------- images

def grid_image(view: np.ndarray, grid, mark: int | None = None, display: int = DISPLAY) -> Image.Image:
    """The image as the model sees it, upscaled, with the patch grid drawn faintly and ``mark`` outlined: what a
    visitor clicks to probe a patch."""
    img = upscale(view, display)
    _grid_lines(img, grid)
    if mark is not None:
        _outline(img, mark, grid)
    return Image.fromarray(img.clip(0, 255).round().astype(np.uint8))


def heat_overlay(view: np.ndarray, values, grid, label: str = "attention (share of the row)", alpha: float = 0.6,
                 mark: int | None = None, vmax: float | None = None, numbers: bool = False,
                 display: int = DISPLAY) -> Image.Image:
    """Per-patch ``values`` (row-major; None where the patch is absent: drawn dark grey with a cross) over the
    image, in viridis at ``alpha``, scaled from 0 to ``vmax`` (default: the largest value), with a key under it
    naming ``label``; ``numbers`` writes each value in its cell (counts); ``mark`` outlines one patch."""
    rows, cols = grid
    img = upscale(view, display)
    ph, pw = _cells(img, grid)
    present = [v for v in values if v is not None]
    top = vmax if vmax is not None else (max(present) if present else 1.0)
    top = top if top > 0 else 1.0
    pil = None
    for p, v in enumerate(values):
        r, c = divmod(p, cols)
        tile = img[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw]
        if v is None:
            tile[:] = 0.25 * tile + 0.75 * np.array((60, 60, 60), np.float32)
            n = min(ph, pw)
            for i in range(n):
                tile[i, i] = tile[i, n - 1 - i] = (150, 150, 150)
        else:
            tile[:] = (1 - alpha) * tile + alpha * colormap(v / top)
    _grid_lines(img, grid, 0.2)
    if mark is not None:
        _outline(img, mark, grid)
    if numbers:
        pil = Image.fromarray(img.clip(0, 255).round().astype(np.uint8))
        d = ImageDraw.Draw(pil)
        f = font(max(9, min(ph, pw) // 2))
        for p, v in enumerate(values):
            if v:
                r, c = divmod(p, cols)
                text = f"{v:g}"
                x = c * pw + (pw - d.textlength(text, font=f)) / 2
                light = v / top < 0.6
                d.text((x, r * ph + ph * 0.2), text, font=f, fill=(255, 255, 255) if light else (20, 20, 20))
        img = np.asarray(pil, np.float32)
    out = np.concatenate([img, _key(img.shape[1], top, label)], 0)
    return Image.fromarray(out.clip(0, 255).round().astype(np.uint8))


def frame_result(frame: dict, grid) -> dict:
    """A film frame (or any kept-set record) as the fields ``app.overlays.overlay`` draws from."""
    return {"grid": grid, "kept": frame["kept"], "kept_final": frame.get("kept_final", frame["kept"]),
            "kept_vit": frame.get("kept_vit"), "merge_groups": frame.get("merge_groups")}


def selection_image(view: np.ndarray, grid, patches, display: int = DISPLAY) -> Image.Image:
    """The patches chosen by hand drawn as the overlays draw a kept set (the others dark)."""
    return overlays.overlay(view, {"grid": grid, "kept": list(patches), "kept_final": list(patches)}, display)


# ---------------------------------------------------------------- figures

def _axes_finish(fig: go.Figure, title: str, subtitle: str = "", height: int = 420) -> go.Figure:
    fig.update_layout(template="plotly_white", height=height, dragmode=False, font={"size": 12},
                      title={"text": title + (f"<br><span style='font-size:11px;color:#555'>{subtitle}</span>"
                                              if subtitle else ""), "x": 0.01, "xanchor": "left", "font": {"size": 15}},
                      margin={"l": 64, "r": 20, "t": 80 if subtitle else 56, "b": 110},
                      legend={"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0,
                              "font": {"size": 11}},
                      modebar={"remove": plots.MODEBAR_REMOVE})
    return fig


def probe_figure(probe: dict) -> go.Figure:
    """Two panels for the probed patch: the attention [CLS] pays it in each ViT layer (the feature layer marked), and
    the attention the answer's queries pay it in each LLM layer, one line per strategy (a gap where the strategy
    no longer has the patch)."""
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.2,  # stacked: legible on a phone
                        subplot_titles=("from [CLS], per ViT layer", "from the answer, per LLM layer"))
    if probe.get("cls_received"):
        layers = list(range(len(probe["cls_received"])))
        fig.add_trace(go.Scatter(x=layers, y=probe["cls_received"], mode="lines+markers", name="[CLS] (no pruning)",
                                 line={"color": CLS_COLOUR, "width": 2, "dash": "dot"},
                                 marker={"color": CLS_COLOUR, "symbol": "x", "size": 8},
                                 hovertemplate="ViT layer %{x}: [CLS] gives it %{y:.2%}<extra></extra>"), 1, 1)
        fig.add_vline(x=probe["feature_layer"], line_dash="dot", line_color="#777", row=1, col=1,
                      annotation_text="feeds the LLM", annotation_font_size=10)
        fig.add_hline(y=1 / (probe["grid"][0] * probe["grid"][1]), line_dash="dash", line_color="#aaa", row=1, col=1)
    elif probe.get("vit_note"):  # no [CLS] row on this family: the panel says so rather than stay blank
        fig.add_annotation(text="not available for this model (see the note under the table)", showarrow=False,
                           xref="x domain", yref="y domain", x=0.5, y=0.5, font={"color": "#777"}, row=1, col=1)
    for name, values in probe["llm_received"].items():
        fig.add_trace(go.Scatter(x=list(range(len(values))), y=values, mode="lines+markers", name=name,
                                 connectgaps=False, **trace_style(name, size=7),
                                 hovertemplate=f"{name}, LLM layer %{{x}}: %{{y:.2%}}<extra></extra>"), 2, 1)
    fig.update_xaxes(title_text="ViT layer (0 = first)", dtick=1, row=1, col=1)
    fig.update_xaxes(title_text="LLM layer (0 = first)", dtick=1, row=2, col=1)
    fig.update_yaxes(title_text="attention received (% of the row)", tickformat=".1%", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="attention received (% of the row)", tickformat=".1%", rangemode="tozero", row=2, col=1)
    fig.update_annotations(font_size=12)
    return _axes_finish(fig, f"How much attention patch {probe['patch']} receives",
                        f"row {probe['row']}, column {probe['col']}; dashed: an even share (1 / patches)", 620)


def film_curve_figure(film: dict) -> go.Figure:
    """'Answer still right' against the budget, one step line per strategy (1 = right, 0 = not; lines offset a
    little so that equal ones stay visible), the x axis from all tokens down to 1 (log scale)."""
    fig = go.Figure()
    names = film["strategies"]
    for i, name in enumerate(names):
        frames = film["frames"][name]
        dy = (i - (len(names) - 1) / 2) * 0.03
        fig.add_trace(go.Scatter(
            x=[f["keep"] for f in frames], y=[(1 if f["right"] else 0) + dy for f in frames], mode="lines+markers",
            name=name, line_shape="hv", **trace_style(name, size=8), customdata=[f["answer"] for f in frames],
            hovertemplate=f"{name}, %{{x}} tokens: answers %{{customdata}}<extra></extra>"))
    judge = "the scene's answer" if film["judge"] == "truth" else "the unpruned answer (none)"
    fig.update_layout(xaxis={"title": f"visual tokens kept (of {film['n_patches']}, log scale)", "type": "log",
                             "autorange": "reversed", "tickvals": film["budgets"]},
                      yaxis={"title": "answer right (1 = yes, 0 = no)", "tickvals": [0, 1], "ticktext": ["no", "yes"],
                             "range": [-0.3, 1.3]})
    return _axes_finish(fig, "Answer still right as the budget shrinks",
                        f"right = {judge} ('{film['reference']}')", 400)


def jaccard_figure(agreement: dict) -> go.Figure:
    """The pairwise Jaccard overlap of the strategies' kept sets as a heatmap with its values written in."""
    names = agreement["strategies"]
    z = agreement["jaccard"]
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, zmin=0, zmax=1, colorscale="Viridis",
                               text=[[f"{v:.2f}" for v in row] for row in z], texttemplate="%{text}",
                               colorbar={"title": {"text": "overlap<br>(Jaccard, 0-1)"}, "thickness": 12},
                               hovertemplate="%{y} and %{x}: %{z:.2f} of their union shared<extra></extra>"))
    fig.update_xaxes(title_text="strategy (kept set)", tickangle=-30)
    fig.update_yaxes(title_text="strategy (kept set)", autorange="reversed")
    return _axes_finish(fig, "Where methods agree: shared kept tokens",
                        "|A ∩ B| / |A ∪ B| of the kept patches", 420)


def position_figure(agreement: dict) -> go.Figure:
    """Where each strategy's kept tokens lie: a row histogram and a column histogram (counts), one line per
    strategy, the grid's middle dotted. On a packed strip (``drawn`` False: no rows and columns of the picture), one
    histogram of the kept tokens' places in the sequence, in tenths, the middle dotted."""
    if not agreement.get("drawn", True):
        n = agreement["grid"][0] * agreement["grid"][1]
        bins = 10
        fig = go.Figure()
        for name in agreement["strategies"]:
            counts = [0] * bins
            for p in agreement["sets"][name]:
                counts[min(bins - 1, p * bins // max(n, 1))] += 1
            fig.add_trace(go.Scatter(x=[(i + 0.5) / bins for i in range(bins)], y=counts, mode="lines+markers",
                                     name=name, **trace_style(name, size=6),
                                     hovertemplate=f"{name}: %{{y}} kept in this tenth of the sequence<extra></extra>"))
        fig.add_vline(x=0.5, line_dash="dot", line_color="#999")
        fig.update_xaxes(title_text=f"place in the sequence of {n} tokens (0 first, 1 last)", range=[0, 1])
        fig.update_yaxes(title_text="kept tokens (count)", rangemode="tozero")
        return _axes_finish(fig, "Position bias: where the kept tokens lie in the sequence",
                            "a packed strip has no rows and columns of the picture; dotted: the middle", 420)
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.2,  # stacked: legible on a phone
                        subplot_titles=("per patch row (0 = top)", "per patch column (0 = left)"))
    for name in agreement["strategies"]:
        pos = agreement["positions"][name]
        style = trace_style(name, size=6)
        fig.add_trace(go.Scatter(x=list(range(len(pos["rows"]))), y=pos["rows"], mode="lines+markers", name=name,
                                 legendgroup=name, **style,
                                 hovertemplate=f"{name}: row %{{x}}, %{{y}} kept<extra></extra>"), 1, 1)
        fig.add_trace(go.Scatter(x=list(range(len(pos["cols"]))), y=pos["cols"], mode="lines+markers", name=name,
                                 legendgroup=name, showlegend=False, **style,
                                 hovertemplate=f"{name}: column %{{x}}, %{{y}} kept<extra></extra>"), 2, 1)
    rows, cols = agreement["grid"]
    fig.add_vline(x=(rows - 1) / 2, line_dash="dot", line_color="#999", row=1, col=1)
    fig.add_vline(x=(cols - 1) / 2, line_dash="dot", line_color="#999", row=2, col=1)
    fig.update_xaxes(title_text="patch row", dtick=max(1, rows // 6), row=1, col=1)
    fig.update_xaxes(title_text="patch column", dtick=max(1, cols // 6), row=2, col=1)
    fig.update_yaxes(title_text="kept tokens (count)", rangemode="tozero")
    fig.update_annotations(font_size=12)
    return _axes_finish(fig, "Position bias: where the kept tokens lie",
                        "dotted: the grid's middle; late positions = bottom rows", 600)


def band_figure(band: dict):
    """The held-out sweep with random's spread over its seeds as a band (``app.plots.sweep_figures``)."""
    rows = list(band["rows"]) + list(band["random_runs"][0])
    fig, _ = plots.sweep_figures(rows, bands={"random": plots.band_from_seeds(band["random_runs"])})
    return fig


# ---------------------------------------------------------------- HTML

def truth_mark(r: dict) -> str:
    """A card's mark against the ground truth: "✓ right" / "✗ wrong (the answer is X)"; nothing when none is
    known (the card's "≠ unpruned answer" then says all there is)."""
    if r.get("correct") is None:
        return ""
    if r["correct"]:
        return f" <span style='color:{RIGHT};font-weight:600'>✓ right</span>"
    return (f" <span style='color:{WRONG};font-weight:600'>✗ wrong (the answer is "
            f"{html.escape(str(r['truth']['answer']))})</span>")


def card_lines(r: dict) -> str:
    """Extra lines for a Compare card (markdown): random's answer over its seeds, how the kept set covers a known
    scene's objects, and, on none's card, what results are judged against."""
    lines = []
    seeds = r.get("random_seeds")
    if seeds:
        if seeds.get("correct") is not None:
            lines.append(f"random answered right with **{seeds['correct']} of {seeds['n']} seeds** "
                         f"(kept none's answer in {seeds['same_as_none']} of {seeds['n']})")
        else:
            lines.append(f"random kept none's answer in **{seeds['same_as_none']} of {seeds['n']} seeds**")
    objs = r.get("scene_objects")
    if objs and r["strategy"] != "none":
        lines.append(f"{objs['with_kept_patch']} of {objs['objects']} objects keep a patch; {objs['kept_on_objects']} "
                     f"of {objs['kept']} kept patches lie on an object")
    truth = r.get("truth")
    if truth and r["strategy"] == "none" and truth.get("note"):
        lines.append(f"_Ground truth: {html.escape(truth['note'])}._")
    return "  \n".join(lines)


def fates_html(probe: dict) -> str:
    """One line per strategy: what it did with the probed patch."""
    rows = "".join(
        f"<tr><td style='padding:3px 8px'>{swatch_html(f['strategy'])}</td>"
        f"<td style='padding:3px 8px'>{html.escape(f['words'])}</td>"
        f"<td style='padding:3px 8px'>{html.escape(probe['answers'].get(f['strategy'], ''))}</td></tr>"
        for f in probe["fates"])
    return ("<div style='overflow-x:auto'><table style='border-collapse:collapse;font-size:0.9em'>"
            "<thead><tr><th style='text-align:left;padding:3px 8px'>strategy</th>"
            f"<th style='text-align:left;padding:3px 8px'>patch {probe['patch']} (row {probe['row']}, column "
            f"{probe['col']})</th><th style='text-align:left;padding:3px 8px'>answer</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>"
            + (f"<p style='font-size:0.85em;color:#555;margin:4px 0'>{html.escape(probe['vit_note'])}.</p>"
               if probe.get("vit_note") else ""))


def _answer_cell(answer: str, right: bool | None) -> str:
    colour = "#222" if right is None else (RIGHT if right else WRONG)
    mark = "" if right is None else ("✓ " if right else "✗ ")
    return f"<span style='color:{colour};font-weight:600'>{mark}{html.escape(answer or '(empty)')}</span>"


def film_strip_html(film: dict) -> str:
    """The budget film as a strip: one row per strategy, one frame per budget (the overlay and the answer, ✓ or
    ✗), the frame where the answer first breaks framed in red. Scrolls sideways on a narrow screen."""
    view, grid = film["view"], film["grid"]
    drawn = film.get("drawn", True)  # a packed strip: the answers and counts, no picture
    head = "".join(f"<th style='padding:2px 4px;font-weight:600'>{b}</th>" for b in film["budgets"])
    body = []
    for name in film["strategies"]:
        cells = []
        broke = film["first_break"].get(name)
        for f in film["frames"][name]:
            border = f"3px solid {WRONG}" if f["keep"] == broke else "3px solid transparent"
            tag = "<div style='font-size:10px;color:%s'>breaks here</div>" % WRONG if f["keep"] == broke else ""
            if drawn:
                thumb = data_uri(overlays.overlay(view, frame_result(f, grid), THUMB))
                picture = (f"<img src='{thumb}' alt='{html.escape(name)} at {f['keep']} tokens' "
                           f"style='width:{THUMB}px;height:{THUMB}px;max-width:none;border:{border};border-radius:4px;"
                           "display:block'>")
            else:
                picture = (f"<div style='width:{THUMB}px;border:{border};border-radius:4px;font-size:11px;"
                           f"color:#444'>{f['tokens_last_layer']} tokens in the last layer</div>")
            cells.append(f"<td style='padding:2px 4px;text-align:center;vertical-align:top'>{picture}"
                         f"<div style='font-size:11px;max-width:{THUMB}px;overflow-wrap:anywhere'>"
                         f"{_answer_cell(f['answer'], f['right'])}</div>{tag}</td>")
        body.append(f"<tr><th style='padding:2px 6px;text-align:left;white-space:nowrap'>{swatch_html(name)}</th>"
                    + "".join(cells) + "</tr>")
    judge = ("the scene's answer" if film["judge"] == "truth" else "none's answer (no ground truth for this image)")
    notes = "".join(f" {html.escape(n)}." for n in film.get("notes") or [])
    if not drawn and film.get("overlay_note"):
        notes += " " + html.escape(film["overlay_note"])
    return (f"<div style='font-size:0.9em;margin:4px 0'>Budget (visual tokens kept of {film['n_patches']}) along the "
            f"top; ✓ = the answer is {judge}: <b>{html.escape(film['reference'])}</b>. "
            f"{film['cached']} of {film['frames_total']} frames came from the cache.{notes}</div>"
            "<div style='overflow-x:auto' class='ps-film-strip'><table style='border-collapse:collapse'>"
            f"<thead><tr><th></th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def seeds_html(seeds: dict) -> str:
    """random over N seeds on one image: the summary sentence and each seed's kept set with its answer."""
    judge_truth = seeds.get("correct") is not None
    reference = seeds["truth"]["answer"] if judge_truth else seeds["none_answer"]
    cells = []
    for seed, answer, kept in zip(seeds["seeds"], seeds["answers"], seeds["kept"]):
        right = _norm(answer) == _norm(reference)
        if seeds.get("drawn", True):
            thumb = data_uri(overlays.overlay(seeds["view"], {"grid": seeds["grid"], "kept": kept, "kept_final": kept},
                                              THUMB))
            picture = (f"<img src='{thumb}' alt='random seed {seed}' style='width:{THUMB}px;height:{THUMB}px;"
                       "max-width:none;border-radius:4px;display:block'>")
        else:  # a packed strip: where the kept tokens lie is not a place on the picture
            picture = (f"<div style='font-size:11px;color:#444'>{len(kept)} of "
                       f"{seeds['grid'][0] * seeds['grid'][1]} tokens</div>")
        cells.append(f"<td style='padding:2px 4px;text-align:center'>{picture}"
                     f"<div style='font-size:11px'>seed {seed}: {_answer_cell(answer, right)}</div></td>")
    if judge_truth:
        summary = (f"random ({seeds['keep']} tokens) answered right with <b>{seeds['correct']} of {seeds['n']}</b> "
                   f"seeds and kept none's answer in {seeds['same_as_none']} of {seeds['n']}.")
    else:
        summary = (f"random ({seeds['keep']} tokens) kept none's answer (<b>{html.escape(seeds['none_answer'])}</b>) "
                   f"in <b>{seeds['same_as_none']} of {seeds['n']}</b> seeds (no ground truth for this image).")
    return (f"<p style='margin:4px 0'>{summary}</p><div style='overflow-x:auto'><table style='border-collapse:"
            f"collapse'><tr>{''.join(cells)}</tr></table></div>")


def cards_html(view: np.ndarray, results: list[dict], size: int = 192, panels: tuple | None = None,
               drawn: bool = True) -> str:
    """Compact cards, one per result: its overlay, answer (✓ / ✗ against the scene when known, else ≠ none),
    tokens into the LLM and prefill compute. Used by handpick, lessons and the export. ``panels``: (layout, pictures)
    where the rows are several grids (the anyres crops, InternVL's tiles): each card then draws one panel per view
    (``overlays.overlay_views``) and counts its newline tokens in words. ``drawn`` False without ``panels`` (a model
    whose tokens are a packed strip, and no layout at hand): no overlay, the card says so."""
    cards = []
    for r in results:
        width, height = (size, f"{size}px") if panels is None else (2 * size, "auto")  # panels: side by side
        if panels is not None or drawn:
            pic = data_uri(overlays.overlay(view, r, size) if panels is None
                           else overlays.overlay_views(panels[1], panels[0], r, size))
            picture = (f"<img src='{pic}' alt='{html.escape(r['strategy'])} overlay' style='width:{width}px;"
                       f"height:{height};display:block;margin:4px 0'>")
        else:
            picture = ("<div style='font-size:11px;color:#666;margin:4px 0'>(no overlay: this model's tokens are a "
                       "packed strip, not a grid over the picture)</div>")
        right = r.get("correct")
        if right is None and r["strategy"] != "none":
            right = bool(r.get("same_as_none", True))
        details = (f"{r['visual_tokens_kept']} of {r['visual_tokens']} visual tokens into the LLM, "
                   f"{r['image_tokens_per_layer'][-1]} in its last layer; prefill {format_flops(r['tflops']['prefill'])}")
        if r.get("speedup") is not None and r["strategy"] != "none":
            details += f"; {r['speedup']:.2f}x time to first token vs none"
        objs = r.get("scene_objects")
        if objs and r["strategy"] != "none":
            details += (f"; {objs['with_kept_patch']} of {objs['objects']} objects keep a patch, "
                        f"{objs['kept_on_objects']} of {objs['kept']} kept patches on an object")
        newline = overlays.newline_words(panels[0], r) if panels is not None else None
        if newline:
            details += f"; {newline}"
        cards.append(f"<div style='border:1px solid #ccc;border-radius:8px;padding:6px;width:{width + 12}px;"
                     f"flex:none'><div style='font-weight:600'>{swatch_html(r['strategy'])}</div>"
                     f"{picture}<div>{_answer_cell(r['answer'], right)}</div>"
                     f"<div style='font-size:11px;color:#444'>{html.escape(details)}</div></div>")
    return f"<div style='display:flex;gap:10px;overflow-x:auto;padding-bottom:4px'>{''.join(cards)}</div>"


def positions_html(agreement: dict) -> str:
    """The centre of mass of each strategy's kept set, and its mean position in the sequence (0 first, 1 last). On a
    packed strip (``drawn`` False) there is no row and column of the picture: the mean position alone."""
    drawn = agreement.get("drawn", True)

    def centre(p: dict) -> str:
        return f"{p['centre'][0]:.1f}, {p['centre'][1]:.1f}" if drawn else "(a strip: no rows or columns)"

    rows = "".join(
        f"<tr><td style='padding:2px 8px'>{swatch_html(n)}</td>"
        f"<td style='padding:2px 8px;text-align:right'>{centre(p)}</td>"
        f"<td style='padding:2px 8px;text-align:right'>{p['mean_index']:.2f}</td>"
        f"<td style='padding:2px 8px;text-align:right'>{p['n']}</td></tr>"
        for n, p in agreement["positions"].items())
    middle = next(iter(agreement["positions"].values()))["middle"] if agreement["positions"] else [0, 0]
    where = (f"The grid's middle is ({middle[0]:.1f}, {middle[1]:.1f}) and 0.50. Attention-based scores are known to "
             "favour late positions, the bottom rows (arXiv 2502.11501): a centre well below the middle is that bias."
             if drawn else "The sequence's middle is 0.50. Attention-based scores are known to favour late positions "
             "(arXiv 2502.11501): a mean position well above 0.50 is that bias.")
    return ("<div style='overflow-x:auto'><table style='border-collapse:collapse;font-size:0.9em'><thead><tr>"
            "<th style='text-align:left;padding:2px 8px'>strategy</th><th style='padding:2px 8px'>centre of mass "
            "(row, column)</th><th style='padding:2px 8px'>mean position in the sequence (0 first, 1 last)</th>"
            f"<th style='padding:2px 8px'>kept</th></tr></thead><tbody>{rows}</tbody></table></div>"
            f"<p style='font-size:0.85em;color:#555;margin:4px 0'>{where}"
            + "".join(f" {html.escape(n)}." for n in agreement.get("notes") or []) + "</p>")


def lesson_list_html(lessons: list[dict]) -> str:
    return "".join(f"<p style='margin:2px 0'><b>{i + 1}. {html.escape(l['title'])}</b></p>"
                   for i, l in enumerate(lessons))


def lesson_text_html(lesson: dict, results: list[dict] | None = None) -> str:
    strategies = ", ".join(lesson["strategies"])
    return (f"<div style='border-left:4px solid #b8860b;padding:4px 10px;background:#fffaf0;color:#222'>"
            f"<h3 style='margin:2px 0'>{html.escape(lesson['title'])}</h3>"
            f"<p style='margin:4px 0'>{html.escape(lesson['text'])}</p>"
            f"<p style='margin:4px 0;font-size:0.85em;color:#555'>Question: <i>{html.escape(lesson['question'])}</i>; "
            f"strategies: {html.escape(strategies)} (none runs first, as the reference); budget: {lesson['keep']} "
            "visual tokens.</p></div>")


# ---------------------------------------------------------------- How it works

GLOSSARY = [
    ("visual token", "One patch of the image after the vision encoder and the projector: a vector the LLM reads like "
                     "a word. LLaVA-1.5 turns a 336 px image into 24 x 24 = 576 of them; the toy here, 12 x 12 = 144."),
    ("[CLS]", "An extra token the vision encoder (CLIP) carries beside the patches; its attention row says which "
              "patches the encoder summarises the image from. VTC-CLS, PruMerge+, EViT, VisionZip and VisPruner "
              "score patches by it."),
    ("prefill", "The LLM's pass over the whole prompt (system text, visual tokens, question) before the first answer "
                "token; its cost grows with the number of tokens, so pruning visual tokens shrinks it."),
    ("decode", "Producing the answer one token at a time, each step reading the KV cache; bound by reading the "
               "weights, so pruning changes it little."),
    ("KV cache", "The keys and values every LLM layer keeps for each token so that decoding need not recompute them; "
                 "its size (bytes) is proportional to the tokens kept in each layer."),
    ("FLOPs", "Floating-point operations (2 per multiply-add): the arithmetic a pass needs, here estimated from the "
              "real token counts of each layer; TFLOPs = 10^12 of them."),
    ("time to first token", "Vision pass + prefill: how long until the answer starts. The speedups on the cards are "
                            "its ratio against no pruning."),
    ("budget", "The number of visual tokens a strategy keeps (the slider); vtw has none: it withdraws all of them "
               "at one layer."),
    ("Jaccard overlap", "|A ∩ B| / |A ∪ B| of two kept sets: 1 when they are the same patches, 0 when they share none."),
]

PAPERS = [
    ("VTC-CLS", "[CLS] Token Tells Everything Needed for Training-free Efficient MLLMs", "2412.05819"),
    ("FastV", "An Image is Worth 1/2 Tokens After Layer 2", "2403.06764"),
    ("VTW", "Boosting Multimodal Large Language Models with Visual Tokens Withdrawal for Rapid Inference",
     "2405.05803"),
    ("IVTP", "IVTP: Instruction-guided Visual Token Pruning for Large Vision-Language Models (ECCV 2024; "
             "no arXiv version)", None),
    ("ToMe", "Token Merging: Your ViT But Faster", "2210.09461"),
    ("PruMerge+", "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large Multimodal Models", "2403.15388"),
    ("EViT", "Not All Patches are What You Need: Expediting Vision Transformers via Token Reorganizations",
     "2202.07800"),
    ("CDPruner", "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in MLLMs",
     "2506.10967"),
    ("DivPrune", "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", "2503.02175"),
    ("DART", "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More",
     "2502.11494"),
    ("VisionZip", "VisionZip: Longer is Better but Not Necessary in Vision Language Models", "2412.04467"),
    ("VisPruner", "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in VLMs",
     "2412.01818"),
    ("position bias", "attention-based pruning favours late positions (the bottom of the image)", "2502.11501"),
]


def _chip(name: str) -> str:
    colour = strategy_color(name)
    return (f"<span style='display:inline-block;margin:2px;padding:1px 7px;border-radius:10px;font-size:12px;"
            f"background:{rgba(colour, 0.15)};border:1px solid {colour};color:#222'>{html.escape(name)}</span>")


def diagram_html(stages: dict) -> str:
    """Where each strategy acts, as boxes along the model's pipeline: inside the vision encoder, between the vision
    encoder and the LLM, inside the LLM (a strategy offering two stages appears in both, its default first)."""
    vit = [n for n, s in stages.items() if s["vit"]]
    before = [n for n, s in stages.items() if "before" in s["stages"] and n != "none"]
    llm = [n for n, s in stages.items() if "llm" in s["stages"] and not s["vit"]] + vit
    merging = [n for n in before if n in MERGING]

    def box(title, sub, names, colour):
        chips = "".join(_chip(n) for n in names) or "<span style='color:#777'>(none here)</span>"
        return (f"<div style='flex:1 1 200px;border:2px solid {colour};border-radius:10px;padding:8px;min-width:180px'>"
                f"<div style='font-weight:700'>{title}</div><div style='font-size:12px;color:#555;margin-bottom:4px'>"
                f"{sub}</div>{chips}</div>")

    arrow = "<div style='align-self:center;font-size:22px;color:#888;flex:none'>→</div>"
    return ("<h2 style='margin:8px 0 4px'>Where each method acts</h2>"
            "<div style='display:flex;flex-wrap:wrap;gap:8px;align-items:stretch'>"
            "<div style='align-self:center;flex:none;padding:6px;border:1px dashed #999;border-radius:8px'>image<br>"
            "+ question</div>" + arrow
            + box("inside the vision encoder (ViT)", "drops patch tokens between ViT layers", vit, "#0b2e74") + arrow
            + box("between the ViT and the LLM", "keeps or merges patches before they are projected"
                  + (f"; merging: {', '.join(merging)}" if merging else ""), before, "#1f77b4") + arrow
            + box("inside the LLM", "every token enters; image rows are dropped before a layer K", llm, "#d62728")
            + arrow + "<div style='align-self:center;flex:none;padding:6px;border:1px dashed #999;border-radius:8px'>"
            "answer</div></div><p style='font-size:0.85em;color:#555'>A strategy listed twice can run at either stage "
            "(its stage setting); IVTP prunes in both the ViT and the LLM.</p>")


def glossary_html() -> str:
    items = "".join(f"<dt style='font-weight:700;margin-top:6px'>{html.escape(t)}</dt>"
                    f"<dd style='margin:0 0 0 16px'>{html.escape(d)}</dd>" for t, d in GLOSSARY)
    return f"<h2 style='margin:12px 0 4px'>Glossary</h2><dl style='margin:0'>{items}</dl>"


def papers_html() -> str:
    items = []
    for name, title, arxiv in PAPERS:
        link = (f"<a href='https://arxiv.org/abs/{arxiv}' target='_blank' rel='noopener'>arXiv {arxiv}</a>"
                if arxiv else "")
        items.append(f"<li><b>{html.escape(name)}</b>: {html.escape(title)}{' · ' + link if link else ''}</li>")
    return f"<h2 style='margin:12px 0 4px'>The papers</h2><ul style='margin:0'>{''.join(items)}</ul>"


# ---------------------------------------------------------------- export

def export_html(inputs: dict, view: np.ndarray, results: list[dict], extras: dict | None = None,
                panels: tuple | None = None, drawn: bool = True) -> str:
    """The whole comparison as one self-contained HTML page: the inputs (the image inline), one card per strategy
    with its overlay, the cost table, the plots (plotly's script inline, once) and, when given in ``extras``, the
    budget film and the agreement heatmap. Opens offline in any browser. ``panels``: (layout, pictures) where the
    rows are several grids (``cards_html``): the image is then its views side by side, and the heatmaps are drawn as
    the strip alone, never over ``view``. ``drawn`` False without ``panels`` (a packed strip, no layout at hand):
    no overlays, and the heatmaps as the strip alone. ``inputs["budget"]``, when given, is the budget in words (else
    ``inputs["keep"]`` visual tokens)."""
    from plotly.offline import get_plotlyjs

    from . import ui  # the table is the Compare tab's own (imported here: ui imports this module)

    extras = extras or {}
    # the image 3x (nearest), or its views side by side at the cards' display height
    shown, times = ((np.asarray(view, np.uint8), 3) if panels is None else
                    (np.asarray(overlays.overlay_views(panels[1], panels[0], None)), 1))
    image = data_uri(Image.fromarray(shown).resize((shown.shape[1] * times, shown.shape[0] * times), Image.NEAREST))
    heat_view = view if panels is None and drawn else None
    figs = [("Visual tokens in each LLM layer", plots.tokens_alive_figure(results))]
    if any(r.get("trace") for r in results):
        figs.append(("Where the answer's attention goes", plots.attention_shares_figure(results)))
        for r in results:
            if r.get("trace") and r["strategy"] != "none":
                figs.append((f"LLM attention over the grid: {r['strategy']}",
                             plots.llm_attention_figure(r, heat_view)))
    if extras.get("film"):
        figs.append(("Budget film: answer still right", film_curve_figure(extras["film"])))
    if extras.get("agreement"):
        figs.append(("Where methods agree", jaccard_figure(extras["agreement"])))
        figs.append(("Position bias", position_figure(extras["agreement"])))
    plot_divs = "".join(f"<section><h3>{html.escape(t)}</h3>{f.to_html(full_html=False, include_plotlyjs=False)}"
                        "</section>" for t, f in figs)
    truth = next((r.get("truth") for r in results if r.get("truth")), None)
    truth_line = f"<p><b>Ground truth:</b> {html.escape(truth['note'])}.</p>" if truth else ""
    film = f"<section><h3>Budget film</h3>{film_strip_html(extras['film'])}</section>" if extras.get("film") else ""
    table = ui.table_html(results) + ui.table_caption(results)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>PruneScope comparison: {html.escape(inputs.get('question', ''))}</title>
<script type="text/javascript">{get_plotlyjs()}</script>
<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:16px auto;padding:0 12px;color:#222}}
table.ps-table{{border-collapse:collapse;font-size:0.86em}} table.ps-table th,table.ps-table td{{padding:4px 8px;
border-bottom:1px solid #ddd;text-align:right}} .ps-table-wrap{{overflow-x:auto}} .ps-differs{{color:#c0392b}}
section{{margin:18px 0}}</style></head><body>
<h1>PruneScope: visual-token pruning, side by side</h1>
{'<p style="background:#fff7e0;border-left:4px solid #f0a500;padding:6px 10px">' + html.escape(TOY_NOTE) + '</p>'
   if inputs.get('embedded', True) else ''}
<section><h2>Inputs</h2><img src="{image}" alt="the image as the model sees it" style="float:left;margin:0 16px 8px 0;
width:{shown.shape[1] * times}px;image-rendering:pixelated">
<p><b>Question:</b> {html.escape(inputs.get('question', ''))}</p>
<p><b>Strategies:</b> {html.escape(', '.join(r['strategy'] for r in results))}</p>
<p><b>Budget:</b> {html.escape(str(inputs['budget'])) if inputs.get('budget') else
                    html.escape(str(inputs.get('keep'))) + ' visual tokens of ' +
                    str(results[0]['visual_tokens'] if results else '?')}</p>
<p><b>Model:</b> {html.escape(str(inputs.get('model', '')))}</p>{truth_line}<div style="clear:both"></div></section>
<section><h2>Cards</h2>{overlays.legend_html() if drawn or panels is not None else ''}{cards_html(view, results, panels=panels, drawn=drawn)}</section>
<section><h2>What each strategy cost</h2>{table}</section>
{film}{plot_divs}
<p style="color:#777;font-size:0.8em">Saved from PruneScope's Teach tab. Timings are one machine's, at one moment.</p>
</body></html>"""


def write_export(text: str) -> str:
    f = tempfile.NamedTemporaryFile("w", suffix=".html", prefix="prunescope-comparison-", delete=False,
                                    encoding="utf-8")
    with f:
        f.write(text)
    return f.name


# ---------------------------------------------------------------- the painter (a gr.HTML custom component)

def painter_template(rows: int, cols: int) -> str:
    """The painter's HTML template: the patch grid over the image (prop ``image``, a data URI) with the chosen
    patches (``value``, "3, 4, 17") clear and the others dimmed. The grid's size is written into the template (an
    update of one prop replaces the others), and its aspect ratio (cols : rows, the picture's on Qwen2.5-VL, whose
    grid follows the image); the app swaps the template when the image's grid changes."""
    return (
        "<div class='pp-wrap'><div class='pp-grid' style=\"grid-template-columns: repeat(%(cols)d, 1fr); "
        "grid-template-rows: repeat(%(rows)d, 1fr); aspect-ratio: %(cols)d / %(rows)d; "
        "background-image: url('${image || ''}');\">"
        "${(() => { const sel = new Set(String(value || '').split(/[^0-9]+/).filter(Boolean).map(Number)); "
        "return Array.from({length: %(n)d}, (_, i) => '<div class=\"pp-c' + (sel.has(i) ? ' on' : '') + "
        "'\" data-i=\"' + i + '\" title=\"patch ' + i + ' (row ' + Math.floor(i / %(cols)d) + ', column ' + "
        "(i %% %(cols)d) + ')\"></div>').join(''); })()}</div>"
        "<div class='pp-count'>${String(value || '').split(/[^0-9]+/).filter(Boolean).length} of %(n)d "
        "patches chosen: drag to paint, drag from a chosen patch to erase</div></div>") % {
            "rows": rows, "cols": cols, "n": rows * cols}


def painter_message(text: str) -> str:
    """The painter's template when there is no grid to paint (a model whose tokens are a packed strip, or no image
    yet): ``text`` where the grid would be."""
    safe = html.escape(text).replace("$", "&#36;").replace("`", "&#96;").replace("\\", "&#92;")  # a JS template
    return f"<div class='pp-wrap'><div class='pp-count'>{safe}</div></div>"


PAINTER_CSS = """
.pp-grid {display: grid; width: min(384px, 100%); aspect-ratio: 1; background-size: 100% 100%;
          image-rendering: pixelated; touch-action: none; user-select: none; cursor: crosshair;
          border: 1px solid #888; background-color: #777;}
.pp-c {border: 1px solid rgba(255,255,255,0.25); background: rgba(20,20,20,0.55);}
.pp-c.on {background: transparent; outline: 2px solid #b8860b; outline-offset: -2px;}
.pp-count {font-size: 0.85em; color: #555; margin-top: 4px;}
"""
PAINTER_JS = """
let mode = null;
function commit() {
  const on = Array.from(element.querySelectorAll('.pp-c.on')).map(c => Number(c.dataset.i));
  props.value = on.join(', ');
  trigger('paint');
}
element.addEventListener('pointerdown', (e) => {
  const c = e.target.closest('.pp-c'); if (!c) return;
  mode = c.classList.contains('on') ? 'off' : 'on';
  c.classList.toggle('on', mode === 'on');
  e.preventDefault();
});
element.addEventListener('pointerover', (e) => {
  if (!mode) return; const c = e.target.closest('.pp-c'); if (!c) return;
  c.classList.toggle('on', mode === 'on');
});
element.addEventListener('pointermove', (e) => {
  if (!mode || e.pointerType === 'mouse') return;  // touch: pointerover does not fire while the finger moves
  const t = document.elementFromPoint(e.clientX, e.clientY); const c = t && t.closest('.pp-c');
  if (c && element.contains(c)) c.classList.toggle('on', mode === 'on');
});
window.addEventListener('pointerup', () => { if (mode) { mode = null; commit(); } });
"""


def invert_selection(value: str, n: int) -> str:
    chosen = {int(p) for p in str(value or "").replace(",", " ").split() if p.isdigit()}
    return ", ".join(str(p) for p in range(n) if p not in chosen)


# ---------------------------------------------------------------- the tabs

API_NAMES = ("probe", "handpick", "kept_set", "budget_film", "agreement", "random_seeds", "random_band", "lesson",
             "export")
SWITCH_TO_COMPARE = """() => {
  const tab = Array.from(document.querySelectorAll('button[role=tab]')).find(b => b.textContent.trim() === 'Compare');
  if (tab) tab.click();
  setTimeout(() => { const run = document.querySelector('#ps-run'); if (run) run.click(); }, 600);
}"""


def build_tabs(pool, info: dict, compare: dict) -> dict:
    """Lay out the Teach and Lessons tabs (call inside the app's ``gr.Tabs``) and wire their events. ``compare``:
    the Compare tab's components ``image``, ``question``, ``strategies``, ``keep``, ``model`` and ``results`` (the
    state holding its last results), which the Teach tab reads and a lesson fills; optionally ``export_button``,
    ``export_file`` and ``export_msg``, an export under the Compare tab's table, wired here as the Teach tab's own.
    Returns the new components by name (for tests and for the caller)."""
    from .ui import library_budget, plot_value, undecoded

    scope = pool.get()
    n_patches, grid = info["n_patches"], info["grid"]  # None on a default model whose grid is per image
    names = info["strategies"]
    lessons = teacher_lessons(scope)
    image, question, strategies, keep = compare["image"], compare["question"], compare["strategies"], compare["keep"]
    model, results_state = compare["model"], compare["results"]
    grid_state = compare.get("grid_state") or gr.State([n_patches, grid])  # the picked model's [n_patches, grid]
    c = {}

    def msg():
        return gr.Markdown("", elem_classes="ps-field-msg")

    def warn(e: Exception) -> str:
        return f"⚠ {e}"

    def ints(value):
        return int(value) if isinstance(value, float) and value.is_integer() else value

    # ------------------------------------------------------------ Teach tab
    with gr.Tab("Teach", id="teach") as teach_tab:
        gr.HTML("<div class='ps-intro'><p><b>Teach with it.</b> Probe a patch, keep the patches you choose, play the "
                "budget down, see where methods agree and whether they beat random. Everything here uses the "
                "<b>Compare tab's</b> image, question, strategies and budget (the papers' default parameters).</p>"
                f"</div><div class='ps-toy'>{html.escape(TOY_NOTE)}</div>" if info["embedded"] else
                "<div class='ps-intro'><p><b>Teach with it.</b> Everything here uses the Compare tab's image, "
                "question, strategies and budget.</p></div>", padding=False)
        using = gr.Markdown("", elem_id="ps-teach-using")

        with gr.Accordion("1. Probe a patch: what does it look at, and what happens to it?", open=True,
                          elem_id="ps-probe-box"):
            with gr.Row():
                with gr.Column(min_width=300):
                    probe_img = gr.Image(label="Click a patch (the image as the model sees it)", type="pil",
                                         interactive=False, height=320, elem_id="ps-probe-image",
                                         buttons=["download"])
                    with gr.Row():  # a grid per image (Qwen2.5-VL): its range is this image's, said by the probe
                        probe_row = gr.Number(value=grid[0] // 2 if grid else 0, precision=0,
                                              label=f"row (0 = top, 0..{grid[0] - 1})" if grid else "row (0 = top)",
                                              elem_id="ps-probe-row", min_width=100)
                        probe_col = gr.Number(value=grid[1] // 2 if grid else 0, precision=0,
                                              label=f"column (0 = left, 0..{grid[1] - 1})" if grid else
                                              "column (0 = left)", elem_id="ps-probe-col", min_width=100)
                    probe_msg = msg()
                    probe_btn = gr.Button("Probe this patch", variant="primary", elem_id="ps-probe-run")
                with gr.Column(min_width=300):
                    vit_layer = gr.Slider(0, info["vision_layers"] - 1, value=info["feature_layer"], step=1,
                                          label=f"ViT layer (the LLM reads layer {info['feature_layer']})",
                                          elem_id="ps-probe-layer")
                    probe_attn = gr.Image(label="Where this patch's token attends in that ViT layer", type="pil",
                                          interactive=False, height=320, elem_id="ps-probe-attends",
                                          buttons=["download"])
            probe_plot = gr.Plot(show_label=False, elem_id="ps-probe-plot")
            probe_fates = gr.HTML("", elem_id="ps-probe-fates", padding=False)
        probe_state = gr.State(None)
        view_grid = gr.State(grid)  # the grid of the image on show, for the model picked (None: a packed strip)

        with gr.Accordion("2. Attention over the image: [CLS] and the LLM", open=False, elem_id="ps-attn-box"):
            gr.Markdown("Drawn from the last probe (probe any patch first). Brighter: more attention; crossed grey "
                        "cells: tokens the strategy had dropped before that layer.")
            with gr.Row():
                with gr.Column(min_width=300):
                    cls_layer = gr.Slider(0, info["vision_layers"] - 1, value=info["feature_layer"], step=1,
                                          label="[CLS] attention: ViT layer", elem_id="ps-attn-cls-layer")
                    cls_over = gr.Image(label="[CLS] attention over the image", type="pil", interactive=False,
                                        height=320, elem_id="ps-attn-cls", buttons=["download"])
                with gr.Column(min_width=300):
                    with gr.Row():
                        llm_choice = gr.Dropdown(["none"], value="none", label="LLM attention of",
                                                 elem_id="ps-attn-llm-choice", min_width=120)
                        llm_layer = gr.Slider(0, info["llm_layers"] - 1, value=min(2, info["llm_layers"] - 1), step=1,
                                              label="LLM layer", elem_id="ps-attn-llm-layer", min_width=160)
                    llm_over = gr.Image(label="The answer's attention over the image", type="pil", interactive=False,
                                        height=320, elem_id="ps-attn-llm", buttons=["download"])

        with gr.Accordion("3. Keep the patches you choose", open=False, elem_id="ps-hand-box"):
            gr.Markdown("Paint patches on the grid (drag; drag from a chosen patch to erase), or fill the selection "
                        "from a strategy's kept set, then run the model with **exactly** those patches (the `manual` "
                        "strategy) beside the unpruned reference.")
            with gr.Row():
                with gr.Column(min_width=300):
                    painter = gr.HTML("", html_template=painter_template(*grid) if grid else
                                      painter_message("The patch grid appears with the image."), css_template=PAINTER_CSS,
                                      js_on_load=PAINTER_JS, image="", elem_id="ps-painter", padding=False)
                with gr.Column(min_width=260):
                    fill_from = gr.Dropdown([s for s in names if s not in ("none", "manual")],
                                            value=next((s for s in info["default_strategies"] if s != "none"), None),
                                            label="Fill from this strategy's kept set (at the Compare budget)",
                                            elem_id="ps-hand-from")
                    with gr.Row():
                        fill_btn = gr.Button("Fill", elem_id="ps-hand-fill", min_width=60)
                        invert_btn = gr.Button("Invert", elem_id="ps-hand-invert", min_width=60)
                        clear_btn = gr.Button("Clear", elem_id="ps-hand-clear", min_width=60)
                    hand_msg = msg()
                    hand_btn = gr.Button("Run with these patches", variant="primary", elem_id="ps-hand-run")
            hand_out = gr.HTML("", elem_id="ps-hand-out", padding=False)

        with gr.Accordion("4. Play the budget: where does the answer break?", open=False, elem_id="ps-film-box"):
            with gr.Row():
                film_budgets = gr.Textbox(film_budget_value(n_patches), label=film_budget_label(n_patches),
                                          elem_id="ps-film-budgets")
                film_btn = gr.Button("▶ Play the film", variant="primary", elem_id="ps-film-run", min_width=120)
            film_msg = msg()
            film_strip = gr.HTML("", elem_id="ps-film-strip", padding=False)
            film_plot = gr.Plot(show_label=False, elem_id="ps-film-plot")
        film_state = gr.State(None)

        with gr.Accordion("5. Where methods agree, and where their tokens lie", open=False, elem_id="ps-agree-box"):
            gr.Markdown("The kept sets of the Compare tab's strategies at its budget (the patches each keeps to the "
                        "LLM's last layer; a merged token counts as the patch it stands at).")
            agree_btn = gr.Button("Compare the kept sets", variant="primary", elem_id="ps-agree-run")
            agree_msg = msg()
            with gr.Row():
                agree_plot = gr.Plot(show_label=False, elem_id="ps-agree-plot", min_width=300)
                agree_counts = gr.Image(label="How many strategies kept each patch", type="pil", interactive=False,
                                        height=340, elem_id="ps-agree-counts", min_width=300, buttons=["download"])
            position_plot = gr.Plot(show_label=False, elem_id="ps-position-plot")
            position_table = gr.HTML("", elem_id="ps-position-table", padding=False)
        agree_state = gr.State(None)

        with gr.Accordion("6. Is it better than random?", open=False, elem_id="ps-random-box"):
            with gr.Row():
                seeds_n = gr.Slider(2, 20, value=5, step=1, label="random over N seeds", elem_id="ps-seeds-n")
                seeds_btn = gr.Button("Run random on this image", elem_id="ps-seeds-run", min_width=140)
            seeds_msg = msg()
            seeds_out = gr.HTML("", elem_id="ps-seeds-out", padding=False)
            gr.Markdown("**On held-out questions:** the Compare tab's strategies and random over the N seeds, on the "
                        "same questions at each budget; random's spread over its seeds is the band.")
            with gr.Row():
                band_budgets = gr.Textbox(", ".join(str(round(n_patches * f)) for f in (0.25, 0.125, 0.0625))
                                          if n_patches else "",
                                          label="Budgets (visual tokens, comma-separated)", elem_id="ps-band-budgets")
                band_n = gr.Slider(5, 200, value=20, step=5, label="Questions", elem_id="ps-band-n")
                band_btn = gr.Button("Run the band", elem_id="ps-band-run", min_width=120)
            band_msg = msg()
            band_plot = gr.Plot(show_label=False, elem_id="ps-band-plot")

        with gr.Accordion("7. Export", open=False, elem_id="ps-export-box"):
            gr.Markdown("One click saves the Compare tab's last comparison (inputs, cards with their overlays, the "
                        "cost table, the plots) and the budget film and agreement above, when run, as one HTML file "
                        "that opens offline. Without a comparison on the page, it runs one first.")
            export_btn = gr.Button("Save as one HTML file", elem_id="ps-export-run")
            export_msg = msg()
            export_file = gr.File(label="The comparison (HTML)", elem_id="ps-export-file")

    # ------------------------------------------------------------ Lessons tab
    with gr.Tab("Lessons", id="lessons"):
        gr.HTML("<div class='ps-intro'><p><b>Guided lessons.</b> Each loads a prepared scene, question, strategies "
                "and budget with one click, runs them, and says what to look at.</p></div>"
                f"<div class='ps-toy'>{html.escape(TOY_NOTE)}</div>", padding=False)
        with gr.Row(elem_id="ps-lesson-buttons"):
            lesson_btns = [gr.Button(f"{i + 1}. {l['title']}", elem_id=f"ps-lesson-{l['id']}", min_width=180,
                                     size="sm") for i, l in enumerate(lessons)]
        lesson_msg = msg()
        lesson_text = gr.HTML("<p>Pick a lesson above.</p>", elem_id="ps-lesson-text", padding=False)
        lesson_cards = gr.HTML("", elem_id="ps-lesson-cards", padding=False)
        with gr.Row():
            lesson_image = gr.Image(label="What to look at", type="pil", interactive=False, height=340,
                                    elem_id="ps-lesson-image", min_width=300, buttons=["download"])
            lesson_plot = gr.Plot(show_label=False, elem_id="ps-lesson-plot", min_width=300)
        lesson_open = gr.Button("Open this lesson in the Compare tab", elem_id="ps-lesson-open")
        lesson_state = gr.State(None)

        # hidden inputs and outputs of the JSON API (inside a tab: the caller's gr.Tabs holds only tabs)
        with gr.Column(visible=False):
            a_image = undecoded(gr.Image(type="filepath", label="image"))
            a_question = gr.Textbox(label="question")
            a_strategies = gr.Dropdown(names, multiselect=True, value=[], label="strategies")
            a_strategy = gr.Dropdown(names, value=names[0], label="strategy")
            a_keep = gr.Number(value=None, label="keep (visual tokens; on a model whose grid is per image, a "
                                                 "percentage of the image's tokens, as /compare's)")
            a_row = gr.Number(value=0, precision=0, label="row")
            a_col = gr.Number(value=0, precision=0, label="col")
            a_patches = gr.Textbox(label="patches (e.g. '3, 4, 17')")
            a_budgets = gr.Textbox(label="budgets (e.g. '144, 72, 36'; empty: halving from all)")
            a_n = gr.Number(value=5, precision=0, label="n")
            a_seeds = gr.Number(value=5, precision=0, label="seeds")
            a_lesson = gr.Dropdown([l["id"] for l in lessons], value=lessons[0]["id"], label="lesson")
            a_out = gr.JSON()
            a_file = gr.File()
            api_buttons = {name: gr.Button(visible=False) for name in API_NAMES}

    # ------------------------------------------------------------ the library calls (shared by page and API)
    def t(model_name):
        return pool.get(model_name).teach

    def budget(m, k) -> dict:
        """The Compare tab's budget for the library, as the Compare tab passes it: a count on a fixed grid, a
        percentage of each image's tokens (``keep_ratio``) on a model whose grid is per image."""
        return library_budget(ints(k), pool.get(m).budget_info())

    def progress_of(progress):
        return lambda fraction, words: progress(fraction, desc=words)

    def run_probe(img, q, row, col, chosen, k, m):
        return t(m).probe(img, q, ints(row), ints(col), chosen or [], **budget(m, k))

    def run_handpick(img, q, patches, m):
        return t(m).handpick(img, q, patches)

    def run_film(img, q, chosen, budgets, m, progress=None):
        return t(m).budget_film(img, q, chosen or [], budgets, progress=progress)

    def run_agreement(img, q, chosen, k, m):
        return t(m).agreement(img, q, chosen or [], **budget(m, k))

    def run_seeds(img, q, k, n, m):
        b = budget(m, k)
        return t(m).random_seeds(img, q, b.pop("keep", None), ints(n), **b)

    def run_band(chosen, budgets, n, seeds, m, progress=None):
        return t(m).random_band(chosen or [], budgets, ints(n), ints(seeds), progress=progress)

    def run_export(img, q, chosen, k, m, results, film, agreement, progress=None):
        scope_ = pool.get(m)
        if not results:
            if progress is not None:
                progress(0.2, desc="running the comparison")
            results = scope_.compare(img, q, chosen or [], **budget(m, k))
        seen = scope_.teach.view(img)
        # a film or agreement drawn on another model's grid (the menu changed since) is left out, not redrawn wrong
        extras = {key: value for key, value in (("film", film), ("agreement", agreement))
                  if value and value.get("grid") == seen["grid"]}
        words = budget_words_of(pool.get(m).budget_info(), k)
        text = export_html({"question": q, "keep": ints(k), "budget": words, "model": pool.label(m or pool.default),
                            "embedded": pool.get(m).info()["embedded"]}, seen["view"], results, extras,
                           panels=None if seen["grid_on_view"] else (seen["layout"], seen["views"]),
                           drawn=seen["drawn"])
        return write_export(text)

    # ------------------------------------------------------------ page callbacks
    def using_words(img, q, chosen, k, g):
        """The Compare tab's inputs in words; ``g``: the picked model's [n_patches, grid] (the Compare tab's state,
        set once the model is loaded: n_patches None on a grid per image), so that nothing loads here."""
        name = Path(img).name if img else "(no image)"
        n = (g or [n_patches])[0]
        said = budget_words_of({"unit": "count", "max": n} if n else {"unit": "ratio"}, k)
        return (f"**Using** image `{html.escape(name)}` · question _{html.escape(q or '')}_ · strategies "
                f"{', '.join(chosen or []) or '(none chosen)'} · budget **{said}**. Change them on the Compare tab.")

    def grid_refusal(m, what: str, n_tokens: int | None = None) -> str | None:
        """The library's words when ``what`` needs a grid over the picture and model ``m`` has none; else None."""
        try:
            t(m).check_grid(what, n_tokens)
        except ValueError as e:
            return warn(e)
        return None

    def refresh_views(img, q, m, row, col, shown_grid):
        """The image as the model sees it, in the probe's grid and behind the painter (no model call): the grid is
        this image's on the model picked (Qwen2.5-VL's follows the image); on a model whose tokens are a packed strip
        neither is drawn, and the words beside them say why. Outputs: probe image, painter, the grid shown, the
        probe's and the painter's messages."""
        seen = None
        if img:
            try:
                seen = t(m).view(img, q or "What is this?")
            except ValueError as e:
                return gr.skip(), gr.skip(), gr.skip(), warn(e), gr.skip()
        refusal = grid_refusal(m, "probing or painting a patch", seen["visual_tokens"] if seen else None)
        if refusal is not None:
            blank = painter_message(refusal[2:])
            return None, gr.update(html_template=blank, value=""), None, refusal, refusal
        if seen is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        g = seen["grid"]
        row, col = ints(row), ints(col)
        inside = isinstance(row, int) and isinstance(col, int) and 0 <= row < g[0] and 0 <= col < g[1]
        picture = grid_image(seen["view"], g, row * g[1] + col if inside else None)
        paint = gr.update(image=data_uri(Image.fromarray(seen["view"])))
        if g != shown_grid:  # a new grid (another model, or another image on Qwen2.5-VL): a new painter, empty
            paint = gr.update(image=data_uri(Image.fromarray(seen["view"])), html_template=painter_template(*g),
                              value="")
        return picture, paint, g, "", ""

    def model_budgets(m):
        """The film's and the band's budget boxes for model ``m`` (its grid's counts, or empty on a grid per image),
        and the layer sliders' ranges (the probe's and [CLS]'s ViT layer, the LLM layer) from its own depths."""
        try:
            picked = pool.get(m).info()
        except ValueError:  # the model cannot load: the menu's own message says so
            return (gr.skip(),) * 5
        n, feature = picked["n_patches"], picked["feature_layer"]
        band = ", ".join(str(round(n * f)) for f in (0.25, 0.125, 0.0625)) if n else ""
        vit_max, llm_max = picked["vision_layers"] - 1, picked["llm_layers"] - 1
        return (gr.update(value=film_budget_value(n), label=film_budget_label(n)), band,
                gr.update(maximum=vit_max, value=feature, label=f"ViT layer (the LLM reads layer {feature})"),
                gr.update(maximum=vit_max, value=feature), gr.update(maximum=llm_max, value=min(2, llm_max)))

    def pick_patch(img_value, g, evt: gr.SelectData):
        if not g:  # no grid over the picture (a packed strip): nothing to pick
            return gr.skip(), gr.skip()
        x, y = evt.index[0], evt.index[1]
        width, height = (DISPLAY, DISPLAY) if img_value is None else img_value.size
        return min(g[0] - 1, int(y // (height / g[0]))), min(g[1] - 1, int(x // (width / g[1])))

    def page_probe(img, q, row, col, chosen, k, m, layer):
        try:
            p = run_probe(img, q, row, col, chosen, k, m)
        except ValueError as e:
            return {probe_msg: warn(e)}
        names_ = list(p["llm_attention"])
        pick = next((n for n in names_ if n != "none"), "none")
        return {probe_msg: "", probe_state: p, probe_img: grid_image(p["view"], p["grid"], p["patch"]),
                probe_attn: probe_attention_image(p, int(layer)), probe_plot: plot_value(probe_figure(p)),
                probe_fates: fates_html(p), cls_over: cls_image(p, int(layer)),
                llm_choice: gr.update(choices=names_, value=pick), llm_over: llm_image(p, pick, p["llm_layers"] // 4)}

    def redraw_layer(p, layer):
        if not p:
            return gr.skip()
        return probe_attention_image(p, int(layer))

    def redraw_cls(p, layer):
        return cls_image(p, int(layer)) if p else gr.skip()

    def redraw_llm(p, name, layer):
        return llm_image(p, name, int(layer)) if p else gr.skip()

    def page_fill(img, q, strategy, k, m):
        try:
            teacher = t(m)
            if not teacher.on_picture():  # refused, with this image's token count in the words
                teacher.check_grid("filling the painter from a strategy's kept set",
                                   teacher.view(img, q or "What is this?")["visual_tokens"])
            kept = teacher.kept_set(img, q, strategy, **budget(m, k))
        except ValueError as e:
            return {hand_msg: warn(e)}
        return {hand_msg: "", painter: ", ".join(str(p) for p in kept["kept_final"])}

    def page_handpick(img, q, patches, m, results):
        try:
            h = run_handpick(img, q, patches, m)
        except ValueError as e:
            return {hand_msg: warn(e)}
        manual = h["results"][-1]
        body = cards_html(h["view"], h["results"], drawn=h["drawn"])
        if results and all(r.get("grid") == h["grid"] for r in results):  # drawn on this image's grid only
            body += ("<p style='margin:8px 0 2px'><b>Beside the strategies of your last comparison</b> (the Compare "
                     "tab's cards, drawn on this image):</p>" + cards_html(h["view"], results, 144))
        head = (f"<p style='margin:4px 0'>The model received exactly these <b>{len(manual['kept'])}</b> patches: "
                f"{html.escape(', '.join(map(str, manual['kept'])))}.</p>")
        return {hand_msg: "", hand_out: head + body}

    def page_film(img, q, chosen, budgets, m, progress=gr.Progress()):
        try:
            f = run_film(img, q, chosen, budgets, m, progress_of(progress))
        except ValueError as e:
            return {film_msg: warn(e)}
        return {film_msg: "", film_state: f, film_strip: film_strip_html(f),
                film_plot: plot_value(film_curve_figure(f))}

    def page_agreement(img, q, chosen, k, m):
        try:
            a = run_agreement(img, q, chosen, k, m)
        except ValueError as e:
            return {agree_msg: warn(e)}
        n = len(a["strategies"])
        counts = (heat_overlay(a["view"], a["counts"], a["grid"], label=f"strategies that kept it (of {n})", vmax=n,
                               numbers=True) if a["drawn"] else None)  # a packed strip: no picture to count over
        return {agree_msg: "", agree_state: a, agree_plot: plot_value(jaccard_figure(a)), agree_counts: counts,
                position_plot: plot_value(position_figure(a)), position_table: positions_html(a)}

    def page_seeds(img, q, k, n, m, progress=gr.Progress()):
        try:
            s = run_seeds(img, q, k, n, m)
        except ValueError as e:
            return {seeds_msg: warn(e)}
        return {seeds_msg: "", seeds_out: seeds_html(s)}

    def page_band(chosen, budgets, n, seeds, m, progress=gr.Progress()):
        try:
            b = run_band(chosen, budgets, n, seeds, m, progress_of(progress))
        except ValueError as e:
            return {band_msg: warn(e)}
        return {band_msg: "", band_plot: plot_value(band_figure(b))}

    def export_into(msg_out, file_out):
        """The export callback of one button (the Teach tab's, or the one under the Compare tab's table), writing
        its message and file into its own components."""
        def page_export(img, q, chosen, k, m, results, film, agreement, progress=gr.Progress()):
            try:
                path = run_export(img, q, chosen, k, m, results, film, agreement, progress)
            except ValueError as e:
                return {msg_out: warn(e)}
            return {msg_out: "", file_out: path}
        return page_export

    def page_lesson(index):
        def run(m):
            lesson = lessons[index]
            said, switch = "", {}
            try:
                scope_ = pool.get(m)
                toy = pool.embedded_label()
                if scope_.info()["dynamic"] and toy is not None:  # lessons are the toy's: switch to it, saying so
                    said = (f"ℹ The lessons are prepared on the embedded toy model (its scenes, and budgets counted on "
                            f"its grid), so the Model menu was switched from `{pool.label(m or pool.default)}` to "
                            f"`{toy}`.")
                    scope_, switch = pool.get(toy), {model: toy}
                out = scope_.teach.lesson(lesson["id"])  # on a family model without the toy on offer: refused
            except ValueError as e:
                return {lesson_msg: warn(e)}
            toy_info = scope_.info()
            image_, label_, plot_ = lesson_focus(out, toy_info)
            return {lesson_msg: said, lesson_state: out, lesson_text: lesson_text_html(lesson),
                    lesson_cards: cards_html(out["view"], out["results"]),
                    lesson_image: gr.update(value=image_, label=label_), lesson_plot: plot_value(plot_), **switch}
        return run

    def open_lesson(state):
        if not state:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        lesson = state["lesson"]
        return state["image"], lesson["question"], lesson["strategies"], lesson["keep"]

    # ------------------------------------------------------------ wiring
    model_q = dict(concurrency_id="model", api_visibility="private")
    for comp in (image, question, strategies, keep, grid_state):
        comp.change(using_words, [image, question, strategies, keep, grid_state], using, queue=False,
                    show_progress="hidden", api_visibility="private")
    teach_tab.select(using_words, [image, question, strategies, keep, grid_state], using, queue=False,
                     show_progress="hidden", api_visibility="private")
    views_in = [image, question, model, probe_row, probe_col, view_grid]
    views_out = [probe_img, painter, view_grid, probe_msg, hand_msg]
    teach_tab.select(refresh_views, views_in, views_out, show_progress="hidden", **model_q)
    image.change(refresh_views, views_in, views_out, show_progress="hidden", **model_q)
    model.change(refresh_views, views_in, views_out, show_progress="hidden", **model_q)
    # budgets typed for one model's tokens do not fit another's: the film's box follows the model picked
    model.change(model_budgets, [model], [film_budgets, band_budgets, vit_layer, cls_layer, llm_layer],
                 show_progress="hidden", **model_q)

    probe_inputs = [image, question, probe_row, probe_col, strategies, keep, model, vit_layer]
    probe_outputs = [probe_msg, probe_state, probe_img, probe_attn, probe_plot, probe_fates, cls_over, llm_choice,
                     llm_over]
    probe_btn.click(page_probe, probe_inputs, probe_outputs, **model_q)
    probe_img.select(pick_patch, [probe_img, view_grid], [probe_row, probe_col], queue=False, show_progress="hidden",
                     api_visibility="private").then(page_probe, probe_inputs, probe_outputs, **model_q)
    vit_layer.change(redraw_layer, [probe_state, vit_layer], probe_attn, queue=False, show_progress="hidden",
                     api_visibility="private")
    cls_layer.change(redraw_cls, [probe_state, cls_layer], cls_over, queue=False, show_progress="hidden",
                     api_visibility="private")
    for comp in (llm_choice, llm_layer):
        comp.change(redraw_llm, [probe_state, llm_choice, llm_layer], llm_over, queue=False, show_progress="hidden",
                    api_visibility="private")

    fill_btn.click(page_fill, [image, question, fill_from, keep, model], [hand_msg, painter], **model_q)
    invert_btn.click(lambda v, g: invert_selection(v, g[0] * g[1]) if g else gr.skip(), [painter, view_grid], painter,
                     queue=False, show_progress="hidden", api_visibility="private")
    clear_btn.click(lambda: "", None, painter, queue=False, show_progress="hidden", api_visibility="private")
    hand_btn.click(page_handpick, [image, question, painter, model, results_state], [hand_msg, hand_out], **model_q)
    film_btn.click(page_film, [image, question, strategies, film_budgets, model],
                   [film_msg, film_state, film_strip, film_plot], **model_q)
    agree_btn.click(page_agreement, [image, question, strategies, keep, model],
                    [agree_msg, agree_state, agree_plot, agree_counts, position_plot, position_table], **model_q)
    seeds_btn.click(page_seeds, [image, question, keep, seeds_n, model], [seeds_msg, seeds_out], **model_q)
    # the band is a sweep: in the Sweep's own concurrency group, as it lets go of the model between questions
    band_btn.click(page_band, [strategies, band_budgets, band_n, seeds_n, model], [band_msg, band_plot],
                   **{**model_q, "concurrency_id": "sweep"})
    export_inputs = [image, question, strategies, keep, model, results_state, film_state, agree_state]
    export_btn.click(export_into(export_msg, export_file), export_inputs, [export_msg, export_file], **model_q)
    if "export_button" in compare:  # the same export, one click from the Compare tab's results
        compare["export_button"].click(export_into(compare["export_msg"], compare["export_file"]), export_inputs,
                                       [compare["export_msg"], compare["export_file"]], **model_q)
    lesson_outputs = [lesson_msg, lesson_state, lesson_text, lesson_cards, lesson_image, lesson_plot]
    for i, b in enumerate(lesson_btns):
        b.click(page_lesson(i), [model], [*lesson_outputs, model], **model_q)
    lesson_open.click(open_lesson, [lesson_state], [image, question, strategies, keep], queue=False,
                      api_visibility="private").then(None, None, None, js=SWITCH_TO_COMPARE)

    # ------------------------------------------------------------ the JSON API: plain values, refusals raise
    def api(fn, make_file: bool = False):
        @functools.wraps(fn)  # gradio reads the parameter names (the API's keywords) from the signature
        def call(*args):
            try:
                value = fn(*args)
            except ValueError as e:
                raise gr.Error(str(e), print_exception=False) from e
            return value if make_file else plain(value)
        return call

    def api_probe(image, question, row, col, strategies, keep, model):
        """Probe patch (row, col): its ViT attention, the attention it receives, each strategy's fate."""
        return run_probe(image, question, row, col, strategies, keep, model)

    def api_handpick(image, question, patches, model):
        """Run the model with exactly these patches (the manual strategy) beside none."""
        return run_handpick(image, question, patches, model)

    def api_kept_set(image, question, strategy, keep, model):
        """The patches a strategy keeps on this image at this budget."""
        return t(model).kept_set(image, question, strategy, **budget(model, keep))

    def api_film(image, question, strategies, budgets, model):
        """Per strategy and budget: the kept set, the answer, right or not; where it first breaks."""
        return run_film(image, question, strategies, budgets, model)

    def api_agreement(image, question, strategies, keep, model):
        """Jaccard overlap of the strategies' kept sets, per-patch counts, position histograms."""
        return run_agreement(image, question, strategies, keep, model)

    def api_seeds(image, question, keep, n, model):
        """random at budget keep over n seeds on this image."""
        return run_seeds(image, question, keep, n, model)

    def api_band(strategies, budgets, n, seeds, model):
        """Held-out accuracy per strategy and budget, random once per seed (its band)."""
        return run_band(strategies, budgets, n, seeds, model)

    def api_lesson(lesson_id, model):
        """Run one lesson: its text, the comparison and its analyses."""
        return pool.get(model).teach.lesson(lesson_id)

    def api_export(image, question, strategies, keep, model):
        """Run a comparison and save it as one self-contained HTML file."""
        return run_export(image, question, strategies, keep, model, None, None, None)

    endpoints = [
        ("probe", api_probe, [a_image, a_question, a_row, a_col, a_strategies, a_keep, model], a_out),
        ("handpick", api_handpick, [a_image, a_question, a_patches, model], a_out),
        ("kept_set", api_kept_set, [a_image, a_question, a_strategy, a_keep, model], a_out),
        ("budget_film", api_film, [a_image, a_question, a_strategies, a_budgets, model], a_out),
        ("agreement", api_agreement, [a_image, a_question, a_strategies, a_keep, model], a_out),
        ("random_seeds", api_seeds, [a_image, a_question, a_keep, a_n, model], a_out),
        ("random_band", api_band, [a_strategies, a_budgets, a_n, a_seeds, model], a_out),
        ("lesson", api_lesson, [a_lesson, model], a_out),
        ("export", api_export, [a_image, a_question, a_strategies, a_keep, model], a_file),
    ]
    for name, fn, inputs, output in endpoints:
        api_buttons[name].click(api(fn, make_file=output is a_file), inputs, output, api_name=name,
                                concurrency_id="sweep" if name == "random_band" else "model")

    c.update(teach_tab=teach_tab, probe_img=probe_img, painter=painter, film_strip=film_strip, using=using,
             lesson_text=lesson_text, lesson_open=lesson_open)
    return c


def how_it_works(pool) -> None:
    """How it works' diagram of where each method acts, the glossary and the papers (call inside that tab)."""
    gr.HTML(diagram_html(pool.get().teach.stages()) + glossary_html() + papers_html(), elem_id="ps-how",
            padding=False)


def teacher_lessons(scope) -> list[dict]:
    """The library's lessons (plain data), through the scope's teacher."""
    return scope.teach.lessons()


def film_budget_value(n_patches: int | None) -> str:
    """The film's budgets box: all tokens, then halving, on a fixed grid; empty (the library's halving from this
    image's own tokens) where the grid is per image."""
    return ", ".join(str(b) for b in teacher_budgets(n_patches)) if n_patches else ""


def film_budget_label(n_patches: int | None) -> str:
    if n_patches:
        return f"Budgets, from all tokens down (comma-separated, at most 12, 1..{n_patches})"
    return ("Budgets, from all tokens down (comma-separated, at most 12, counts of this image's visual tokens; "
            "empty: all of them, then halving)")


def budget_words_of(budget: dict, k) -> str:
    """The Compare tab's budget in words, from ``Scope.budget_info()``: a count of the grid's tokens, or a
    percentage of each image's own."""
    if k is None:
        return "none"
    k = int(k) if isinstance(k, float) and k.is_integer() else k
    if budget["unit"] == "ratio":
        return f"{k}% of the image's visual tokens"
    return f"{k} of {budget['max']} visual tokens"


def teacher_budgets(n_patches: int) -> list[int]:
    out, b = [], n_patches
    while b >= 1 and len(out) < 12:
        out.append(b)
        b //= 2
    return out


def probe_attention_image(probe: dict, layer: int) -> Image.Image | None:
    """The probed token's ViT attention over the grid at ``layer``; None where the family gives none (Qwen2.5-VL:
    the probe's ``vit_note`` says why)."""
    if not probe.get("vit_attention"):
        return None
    layer = max(0, min(layer, len(probe["vit_attention"]) - 1))
    values = probe["vit_attention"][layer]
    share = probe["vit_to_cls"][layer] if probe.get("vit_to_cls") else None
    label = f"patch {probe['patch']}'s attention, ViT layer {layer}" + (f" ({share:.0%} to [CLS])" if share is not None
                                                                          else "")
    return heat_overlay(probe["view"], values, probe["grid"], label=label, mark=probe["patch"])


def cls_image(probe: dict, layer: int) -> Image.Image | None:
    if not probe.get("cls_attention"):
        return None
    layer = max(0, min(layer, len(probe["cls_attention"]) - 1))
    return heat_overlay(probe["view"], probe["cls_attention"][layer], probe["grid"],
                        label=f"[CLS] attention (share), ViT layer {layer}")


def llm_image(probe: dict, name: str, layer: int) -> Image.Image | None:
    maps = probe["llm_attention"].get(name)
    if not maps:
        return None
    layer = max(0, min(layer, len(maps) - 1))
    return heat_overlay(probe["view"], maps[layer], probe["grid"], label=f"{name}: answer's attention, LLM layer {layer}")


def _norm(text) -> str:
    return str(text or "").strip().rstrip(".").strip().lower()


def lesson_focus(out: dict, info: dict):
    """What a lesson opens with (its ``focus``): an image over the scene, its label, and a figure.

    - cls: [CLS]'s attention at the feature layer over the image; tokens alive per LLM layer;
    - tokens: the answer's attention at the layer before FastV drops (what it ranks by); tokens alive;
    - shares: none's answer attention in the last LLM layer (the image still read); attention shares per layer;
    - cards: the first merging strategy's overlay, large; tokens alive;
    - seeds: how many of random's seeds kept each patch; one bar per seed, right or not."""
    lesson, results, view, grid = out["lesson"], out["results"], out["view"], out["grid"]
    by = {r["strategy"]: r for r in results}
    focus = lesson["focus"]
    image, label = None, "What to look at"
    cls = (out.get("inspect") or {}).get("cls_attention")
    if focus == "cls" and cls:
        layer = info["feature_layer"]
        image = heat_overlay(view, cls[layer], grid, label=f"[CLS] attention (share), ViT layer {layer}")
        label = "[CLS] attention over the image (before the question)"
    elif focus == "tokens" and by.get("fastv", {}).get("trace"):
        k = by["fastv"]["params"]["layer"]
        image = heat_overlay(view, by["fastv"]["trace"]["patch_attention"][k - 1], grid,
                             label=f"answer's attention (share), LLM layer {k - 1}")
        label = f"What FastV ranks by: the LLM's attention in layer {k - 1}"
    elif focus == "shares" and by.get("none", {}).get("trace"):
        maps = by["none"]["trace"]["patch_attention"]
        image = heat_overlay(view, maps[-1], grid, label=f"none: answer's attention (share), LLM layer {len(maps) - 1}")
        label = "none's last LLM layer still reads the image"
    elif focus == "cards":
        merging = next((r for r in results if r["strategy"] in MERGING), None)
        if merging is not None:
            image = overlays.overlay(view, merging)
            label = f"{merging['strategy']}: what went into each of its {merging['visual_tokens_kept']} tokens"
    elif focus == "seeds" and out.get("random_seeds"):
        s = out["random_seeds"]
        counts = [0] * (grid[0] * grid[1])
        for kept in s["kept"]:
            for p in kept:
                counts[p] += 1
        image = heat_overlay(view, counts, grid, label=f"seeds that kept the patch (of {s['n']})", vmax=s["n"],
                             numbers=True)
        label = f"random's {s['n']} seeds: how often each patch was kept"
    if focus == "shares":
        fig = plots.attention_shares_figure(results)
    elif focus == "seeds" and out.get("random_seeds"):
        s = out["random_seeds"]
        reference = s["truth"]["answer"] or s["none_answer"]
        fig = go.Figure(go.Bar(x=[f"seed {x}" for x in s["seeds"]],
                               y=[1 if _norm(a) == _norm(reference) else 0 for a in s["answers"]],
                               marker_color=strategy_color("random"), text=s["answers"], textposition="outside"))
        fig.update_layout(xaxis_title="random's seed", yaxis={"title": "answer right (1 = yes)", "range": [0, 1.4],
                                                               "tickvals": [0, 1]})
        right = s["correct"] if s["correct"] is not None else s["same_as_none"]
        fig = _axes_finish(fig, f"random at {s['keep']} tokens: {right} of {s['n']} seeds right",
                           "each bar one seed's answer", 360)
    else:
        fig = plots.tokens_alive_figure(results)
    return image, label, fig


__all__ = ["build_tabs", "how_it_works", "grid_image", "heat_overlay", "selection_image", "probe_figure", "film_curve_figure",
           "jaccard_figure", "position_figure", "band_figure", "truth_mark", "card_lines", "fates_html",
           "film_strip_html", "seeds_html", "cards_html", "positions_html", "diagram_html", "glossary_html",
           "papers_html", "export_html", "invert_selection", "colormap", "data_uri", "plain", "GLOSSARY", "PAPERS"]
