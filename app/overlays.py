"""The image with the discarded patches masked: a pure function of the library's plain result.

Every patch of the grid is in one state (``patch_states``):

- ``kept``: enters the LLM and is still there in its last layer (drawn as is);
- ``llm``: entered the LLM but was dropped inside it (FastV, VTW, IVTP stage 2): a thin neutral hatch (dark and
  light lines, the pixels between them untouched), so the picture, and every object's colour, still shows what
  the early layers saw (an amber hatch once turned a red circle orange);
- ``before``: dropped before the LLM (VTC-CLS, random, ...): dark grey;
- ``vit``: dropped inside the vision encoder (IVTP stage 1): dark blue;
- ``merged``: not kept itself, but its feature went into a kept token (merging strategies: PruMerge+, ToMe,
  k-means, pooling, EViT's fused token). Merges keep the picture visible: each group's boundary is outlined (a
  white line with dark edges, wherever two groups or a group and another state meet), groups of two or more
  patches are tinted lightly (neighbouring groups in different tints), and the token each group became is marked
  with a ring (its pixels show through the ring).

Families whose visual tokens are several grids packed into one 1 x N strip (LLaVA-OneVision, LLaVA-NeXT: the base
image, then the crops' joint grid with a newline token closing each row; InternVL: the tiles, then the thumbnail) are
drawn by ``overlay_views``: one panel per view of the library's token layout (``Adapter.token_layout``, in the ``view``
event), side by side in one picture, each view's kept cells drawn on its own picture in the styles above. Newline
tokens have no pixels: ``newline_words`` says how many were kept.

No torch here: numpy and Pillow only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

STATES = ("kept", "llm", "before", "vit", "merged")
COLOURS = {"before": (28, 28, 28), "vit": (20, 40, 150)}
HATCH_DARK, HATCH_LIGHT, HATCH_ALPHA = (32, 32, 32), (255, 255, 255), 0.55
TINTS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (23, 190, 207))
TINT_ALPHA = 0.16  # a merged group's tint: 16% of the way to the tint colour
LINE_LIGHT, LINE_DARK = (255, 255, 255), (20, 20, 20)
LEGEND = [
    ("kept", None, "kept: reaches the LLM's last layer"),
    ("llm", HATCH_DARK, "dropped inside the LLM (seen by its early layers): grey hatch"),
    ("before", COLOURS["before"], "dropped before the LLM"),
    ("vit", COLOURS["vit"], "dropped inside the vision encoder"),
    ("merged", TINTS[0], "merged: each group outlined and lightly tinted; ring = the token it became"),
]
DISPLAY = 384  # target side in pixels of the drawn overlay (integer upscaling, nearest neighbour)


def patch_states(result: dict) -> list[str]:
    """One state per patch of the grid (row-major) from a compare result's kept sets and merge groups."""
    rows, cols = result["grid"]
    n = rows * cols
    kept, final = set(result["kept"]), set(result["kept_final"])
    vit = set(result["kept_vit"]) if result.get("kept_vit") is not None else None
    groups = result.get("merge_groups")
    states = []
    for p in range(n):
        if p in final:
            states.append("kept")
        elif p in kept:
            states.append("llm")
        elif vit is not None and p not in vit:
            states.append("vit")
        elif groups is not None and groups[p] >= 0:
            states.append("merged")
        else:
            states.append("before")
    return states


def group_colour(index: int) -> tuple[int, int, int]:
    """The tint of colour index ``index`` (``group_tints`` gives each group one so that neighbours differ)."""
    return TINTS[index % len(TINTS)]


def group_tints(groups: list[int], rows: int, cols: int, states: list[str] | None = None) -> dict[int, int]:
    """A tint index per merge group of two or more patches, greedily chosen so that groups touching each other
    (4-neighbours) differ; groups in grid order of their first patch."""
    members: dict[int, list[int]] = {}
    for p, g in enumerate(groups):
        if g >= 0 and (states is None or states[p] in ("kept", "merged")):
            members.setdefault(g, []).append(p)
    neighbours: dict[int, set[int]] = {g: set() for g in members}
    for p, g in enumerate(groups):
        if g not in members:
            continue
        r, c = divmod(p, cols)
        for q in ([p + 1] if c + 1 < cols else []) + ([p + cols] if r + 1 < rows else []):
            h = groups[q]
            if h != g and h in members:
                neighbours[g].add(h)
                neighbours[h].add(g)
    tint: dict[int, int] = {}
    for g in sorted(members, key=lambda g: members[g][0]):
        if len(members[g]) < 2:
            continue
        used = {tint[h] for h in neighbours[g] if h in tint}
        tint[g] = next((i for i in range(len(TINTS)) if i not in used), len(tint) % len(TINTS))
    return tint


def scale_for(view: np.ndarray, display: int = DISPLAY) -> int:
    return max(1, display // max(view.shape[0], view.shape[1]))


def _blend(region: np.ndarray, mask: np.ndarray, colour, alpha: float) -> None:
    region[mask] = (1 - alpha) * region[mask] + alpha * np.asarray(colour, np.float32)


def as_seen(view: np.ndarray, display: int = DISPLAY // 2) -> Image.Image:
    """``view`` (H, W, 3) uint8, the image as the model sees it (after the processor's resize and crop), upscaled
    by an integer factor with nearest neighbour, so a small input stays sharp and nothing is resampled."""
    s = scale_for(view, display)
    return Image.fromarray(np.repeat(np.repeat(np.asarray(view, np.uint8), s, 0), s, 1))


def overlay(view: np.ndarray, result: dict, display: int = DISPLAY) -> Image.Image:
    """``view`` (H, W, 3) uint8, the image as the model sees it, upscaled by an integer factor, with each
    patch drawn in its state's style. Pixels outside the patch grid (if H or W is not a multiple of the
    patch size) are left as they are."""
    rows, cols = result["grid"]
    s = scale_for(view, display)
    img = np.repeat(np.repeat(np.asarray(view, dtype=np.float32), s, 0), s, 1)  # (H*s, W*s, 3)
    ph, pw = view.shape[0] // rows * s, view.shape[1] // cols * s
    states = patch_states(result)
    groups = result.get("merge_groups")
    kept = result["kept"]
    yy, xx = np.mgrid[0:ph, 0:pw]
    step = max(2, min(ph, pw) // 12)  # hatch line width; a dark and a light line every 4 widths
    phase = (xx + yy) % (4 * step)
    hatch_dark, hatch_light = phase < step, (phase >= 2 * step) & (phase < 3 * step)
    tint = group_tints(groups, rows, cols, states) if groups is not None else {}
    for p, state in enumerate(states):
        r, c = divmod(p, cols)
        tile = img[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw]
        group = groups[p] if groups is not None else -1
        if state in ("before", "vit"):
            tile[:] = 0.15 * tile + 0.85 * np.array(COLOURS[state], np.float32)
        elif state == "llm":
            _blend(tile, hatch_dark, HATCH_DARK, HATCH_ALPHA)
            _blend(tile, hatch_light, HATCH_LIGHT, HATCH_ALPHA)
        if state in ("kept", "merged") and group in tint:
            tile[:] = (1 - TINT_ALPHA) * tile + TINT_ALPHA * np.array(group_colour(tint[group]), np.float32)
    if groups is not None:
        _outline_groups(img, groups, states, rows, cols, ph, pw)
        _mark_representatives(img, groups, states, kept, cols, ph, pw)
    return Image.fromarray(img.clip(0, 255).round().astype(np.uint8))


def _sizes(groups: list[int], states: list[str]) -> dict[int, int]:
    """Patches per merge group (kept or merged patches only)."""
    sizes: dict[int, int] = {}
    for p, g in enumerate(groups):
        if g >= 0 and states[p] in ("kept", "merged"):
            sizes[g] = sizes.get(g, 0) + 1
    return sizes


def _group_key(groups: list[int], states: list[str], p: int, sizes: dict[int, int]):
    """What an outline separates: a group of two or more patches, or a state (a token nothing merged into is kept,
    like any kept patch)."""
    g = groups[p]
    return ("group", g) if sizes.get(g, 0) >= 2 and states[p] in ("kept", "merged") else ("state", states[p])


def boundary_edges(result: dict) -> list[tuple[int, int]]:
    """The pairs of neighbouring patches (p, q), q right of or below p, whose shared edge is outlined: they lie in
    different merge groups, or one is in a group and the other is not (a group: two or more patches merged into
    one token)."""
    rows, cols = result["grid"]
    groups = result.get("merge_groups")
    if groups is None:
        return []
    return _edges(groups, patch_states(result), rows, cols)


def _outline_groups(img: np.ndarray, groups, states, rows: int, cols: int, ph: int, pw: int) -> None:
    """A light line with dark edges along every edge in ``boundary_edges``: visible on any background."""
    t = max(1, min(ph, pw) // 16)  # half the light line's width
    light = np.zeros(img.shape[:2], bool)
    dark = np.zeros(img.shape[:2], bool)
    for p, q in _edges(groups, states, rows, cols):
        r, c = divmod(p, cols)
        if q == p + 1:  # vertical edge at the right of p
            x = (c + 1) * pw
            y0, y1 = r * ph, (r + 1) * ph
            light[y0:y1, max(0, x - t):x + t] = True
            dark[y0:y1, max(0, x - t - 1):x + t + 1] = True
        else:  # horizontal edge below p
            y = (r + 1) * ph
            x0, x1 = c * pw, (c + 1) * pw
            light[max(0, y - t):y + t, x0:x1] = True
            dark[max(0, y - t - 1):y + t + 1, x0:x1] = True
    dark &= ~light
    _blend(img, dark, LINE_DARK, 0.7)
    _blend(img, light, LINE_LIGHT, 0.9)


def _edges(groups, states, rows: int, cols: int) -> list[tuple[int, int]]:
    sizes = _sizes(groups, states)
    edges = []
    for p in range(rows * cols):
        r, c = divmod(p, cols)
        for q in ([p + 1] if c + 1 < cols else []) + ([p + cols] if r + 1 < rows else []):
            a, b = _group_key(groups, states, p, sizes), _group_key(groups, states, q, sizes)
            if a != b and (a[0] == "group" or b[0] == "group"):
                edges.append((p, q))
    return edges


def _mark_representatives(img: np.ndarray, groups, states, kept, cols: int, ph: int, pw: int) -> None:
    """A white ring with dark edges on the token each group of two or more patches became (``kept[group]``); its
    pixels show inside."""
    yy, xx = np.mgrid[0:ph, 0:pw]
    d = np.sqrt((yy - (ph - 1) / 2) ** 2 + (xx - (pw - 1) / 2) ** 2)
    radius = max(2.5, min(ph, pw) * 0.28)
    width = max(1.0, radius * 0.3)
    ring = (d >= radius - width / 2) & (d <= radius + width / 2)
    edge = (d >= radius - width / 2 - 1) & (d <= radius + width / 2 + 1) & ~ring
    sizes = _sizes(groups, states)
    for g in sorted(g for g, size in sizes.items() if size >= 2):
        if not 0 <= g < len(kept):
            continue
        p = kept[g]
        if not 0 <= p < len(states) or states[p] != "kept" or groups[p] != g:
            continue
        r, c = divmod(p, cols)
        tile = img[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw]
        _blend(tile, edge, LINE_DARK, 0.75)
        _blend(tile, ring, LINE_LIGHT, 0.95)


def legend_html() -> str:
    """The overlay legend as small swatches (HTML)."""
    items = []
    for state, colour, words in LEGEND:
        if colour is None:
            swatch = "background:linear-gradient(135deg,#bbb,#eee);"
        elif state == "llm":
            swatch = ("background:repeating-linear-gradient(45deg,rgba(32,32,32,.55) 0 2px,transparent 2px 4px,"
                      "rgba(255,255,255,.55) 4px 6px,transparent 6px 8px),linear-gradient(135deg,#bbb,#eee);")
        elif state == "merged":
            swatch = ("background:radial-gradient(circle,transparent 0 3px,#fff 3px 5px,transparent 5px),"
                      f"linear-gradient(rgba{colour + (0.25,)},rgba{colour + (0.25,)}),linear-gradient(135deg,#bbb,#eee);"
                      "box-shadow:inset 0 0 0 2px #fff;")
        else:
            swatch = f"background:rgb{colour};"
        items.append(f"<span class='ps-legend-item'><span class='ps-swatch' style='{swatch}'></span>{words}</span>")
    return "<div class='ps-legend'>" + "".join(items) + "</div>"


# ------------------------------------------------------------------ several views (anyres crops, InternVL tiles)

PANEL_GAP = 8  # pixels of white between two panels
CAPTION = 14  # pixels of the caption strip above each panel
BACKGROUND = (255, 255, 255)


def view_result(layout: dict, result: dict, view: int) -> dict:
    """The fields ``overlay`` draws from, for one view of ``layout``: its grid, and the result's kept sets and merge
    groups with each packed index turned into that view's row-major cell (indices of other views dropped;
    ``kept`` keeps its length, other views' entries -1, because merge groups name their token by its place in it)."""
    cols = layout["views"][view]["cols"]
    rows = layout["views"][view]["rows"]
    local = {i: layout["row"][i] * cols + layout["col"][i] for i in range(layout["n"])
             if layout["view"][i] == view and layout["col"][i] >= 0}
    if sorted(local.values()) != list(range(rows * cols)):
        raise ValueError(f"view {layout['views'][view]['name']}: the layout does not give each of its {rows} x {cols} "
                         "cells exactly one token")
    out = {"grid": [rows, cols], "kept": [local.get(p, -1) for p in result["kept"]],
           "kept_final": [local[p] for p in result["kept_final"] if p in local]}
    if result.get("kept_vit") is not None:
        out["kept_vit"] = [local[p] for p in result["kept_vit"] if p in local]
    groups = result.get("merge_groups")
    if groups is not None:
        cell_groups = [-1] * (rows * cols)
        for p, cell in local.items():
            cell_groups[cell] = groups[p]
        out["merge_groups"] = cell_groups
    return out


def _panel(picture: np.ndarray, view: dict, height: int, sub: dict | None) -> np.ndarray:
    """One view's picture scaled (nearest neighbour) to ``height`` px, with its token grid's cells drawn in their
    states (``sub``: ``view_result``; None: the picture alone)."""
    h, w = picture.shape[:2]
    width = max(1, round(w * height / h))
    img = np.asarray(Image.fromarray(np.asarray(picture, np.uint8)).resize((width, height), Image.NEAREST))
    if sub is None:
        return img
    x0, y0, x1, y1 = view["box"]
    fx, fy = width / w, height / h
    bx0, by0, bx1, by1 = round(x0 * fx), round(y0 * fy), round(x1 * fx), round(y1 * fy)
    rows, cols = sub["grid"]
    region = img[by0:by1, bx0:bx1]
    ch, cw = -(-region.shape[0] // rows), -(-region.shape[1] // cols)  # whole pixels per cell, rounded up
    exact = Image.fromarray(region).resize((cols * cw, rows * ch), Image.NEAREST)
    drawn = overlay(np.asarray(exact), sub, display=max(rows * ch, cols * cw))
    img = img.copy()
    img[by0:by1, bx0:bx1] = np.asarray(drawn.resize((region.shape[1], region.shape[0]), Image.NEAREST))
    return img


def _compose(panels: list[np.ndarray], captions: list[str]) -> Image.Image:
    """Panels side by side, ``PANEL_GAP`` px apart on white, each under a one-line caption."""
    from PIL import ImageDraw

    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + PANEL_GAP * (len(panels) - 1)
    canvas = Image.new("RGB", (width, height + CAPTION), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x = 0
    for panel, caption in zip(panels, captions):
        canvas.paste(Image.fromarray(panel), (x, CAPTION))
        draw.text((x + 2, 1), caption, fill=(40, 40, 40))
        x += panel.shape[1] + PANEL_GAP
    return canvas


def panel_boxes(pictures: list[np.ndarray], display: int = DISPLAY) -> list[tuple[int, int, int, int]]:
    """Where each view's picture lies in ``overlay_views``' output: (x0, y0, x1, y1) px, in the order of the views."""
    height = _height(pictures, display)
    boxes, x = [], 0
    for p in pictures:
        width = max(1, round(p.shape[1] * height / p.shape[0]))
        boxes.append((x, CAPTION, x + width, CAPTION + height))
        x += width + PANEL_GAP
    return boxes


def _height(pictures: list[np.ndarray], display: int) -> int:
    """The panels' common height: the tallest picture scaled by the integer factor that fits ``display``, or
    ``display`` itself when the tallest picture is taller (a real anyres image's stitched crops: up to 2304 px)."""
    tallest = max(p.shape[0] for p in pictures)
    return display if tallest > display else tallest * max(1, display // tallest)


def overlay_views(pictures: list[np.ndarray], layout: dict, result: dict | None, display: int = DISPLAY) -> Image.Image:
    """One panel per view of ``layout`` (the library's token layout), side by side: each view's picture (``pictures``,
    in the layout's order) scaled to a common height, its token grid's cells drawn in their states as ``overlay``
    draws them (``result``: a compare result whose kept sets index the packed N rows; None: the pictures alone, as
    the model sees them). Pixels outside a view's ``box`` (the crops' padding) have no token and are left as they
    are; newline tokens are not drawn (``newline_words``)."""
    if len(pictures) != len(layout["views"]):
        raise ValueError(f"{len(pictures)} pictures for {len(layout['views'])} views")
    height = _height(pictures, display)
    panels = [_panel(p, v, height, None if result is None else view_result(layout, result, i))
              for i, (p, v) in enumerate(zip(pictures, layout["views"]))]
    return _compose(panels, [v["label"] for v in layout["views"]])


def newline_words(layout: dict, result: dict) -> str | None:
    """"k of n newline tokens kept" (in the LLM's last layer; and entering it, when that differs), or None for a
    layout without newline tokens."""
    newline = layout.get("newline") or []
    if not newline:
        return None
    entered = len(set(newline) & set(result["kept"]))
    final = len(set(newline) & set(result["kept_final"]))
    words = f"{final} of {len(newline)} newline tokens kept (image-newline rows closing the crops' rows; not drawn)"
    if entered != final:
        words = (f"{entered} of {len(newline)} newline tokens entered the LLM, {final} reached its last layer "
                 "(image-newline rows closing the crops' rows; not drawn)")
    return words


__all__ = ["overlay", "overlay_views", "view_result", "newline_words", "panel_boxes", "as_seen", "patch_states", "legend_html", "group_colour", "group_tints", "boundary_edges", "LEGEND",
           "STATES"]
