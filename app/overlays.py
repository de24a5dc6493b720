"""The image with the discarded patches masked: a pure function of the library's plain result.

Every patch of the grid is in one state (``patch_states``):

- ``kept``: enters the LLM and is still there in its last layer (drawn as is);
- ``llm``: entered the LLM but was dropped inside it (FastV, VTW, IVTP stage 2): amber stripes, so the
  picture still shows what the early layers saw;
- ``before``: dropped before the LLM (VTC-CLS, random, ...): dark grey;
- ``vit``: dropped inside the vision encoder (IVTP stage 1): dark blue;
- ``merged``: not kept itself, but its feature went into a kept token (merging strategies): tinted with
  that token's group colour; the kept token of each group is tinted the same and marked with a white dot.

No torch here: numpy and Pillow only.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

STATES = ("kept", "llm", "before", "vit", "merged")
COLOURS = {"llm": (255, 170, 0), "before": (28, 28, 28), "vit": (20, 40, 150)}
LEGEND = [
    ("kept", None, "kept: reaches the LLM's last layer"),
    ("llm", COLOURS["llm"], "dropped inside the LLM (seen by its early layers)"),
    ("before", COLOURS["before"], "dropped before the LLM"),
    ("vit", COLOURS["vit"], "dropped inside the vision encoder"),
    ("merged", (150, 90, 220), "merged into a kept token (one tint per group; dot = the kept token)"),
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


def group_colour(group: int) -> tuple[int, int, int]:
    """A distinct, saturated colour per merge group (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((group * 0.618033988749895) % 1.0, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def scale_for(view: np.ndarray, display: int = DISPLAY) -> int:
    return max(1, display // max(view.shape[0], view.shape[1]))


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
    stripes = ((xx + yy) // max(2, s)) % 3 == 0  # diagonal hatch for "llm"
    for p, state in enumerate(states):
        r, c = divmod(p, cols)
        tile = img[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw]
        group = groups[p] if groups is not None else -1
        if state == "before" or state == "vit":
            tile[:] = 0.15 * tile + 0.85 * np.array(COLOURS[state], np.float32)
        elif state == "llm":
            tile[:] = 0.6 * tile + 0.4 * np.array(COLOURS["llm"], np.float32)
            tile[stripes] = np.array(COLOURS["llm"], np.float32)
        elif group >= 0:  # merged, or a kept token that absorbed others
            tile[:] = 0.45 * tile + 0.55 * np.array(group_colour(group), np.float32)
        if groups is not None and state == "kept" and group >= 0 and 0 <= group < len(kept) and kept[group] == p:
            cy, cx = ph // 2, pw // 2
            rad = max(1, min(ph, pw) // 6)
            tile[(yy - cy) ** 2 + (xx - cx) ** 2 <= rad * rad] = 255.0
    return Image.fromarray(img.clip(0, 255).round().astype(np.uint8))


def legend_html() -> str:
    """The overlay legend as small swatches (HTML)."""
    items = []
    for state, colour, words in LEGEND:
        if colour is None:
            swatch = "background:linear-gradient(135deg,#bbb,#eee);"
        elif state == "llm":
            swatch = (f"background:repeating-linear-gradient(45deg,rgb{colour} 0 3px,rgba{colour + (0.4,)} 3px 7px);")
        elif state == "merged":
            swatch = "background:linear-gradient(90deg,#e0457b,#45b0e0,#7be045);"
        else:
            swatch = f"background:rgb{colour};"
        items.append(f"<span class='ps-legend-item'><span class='ps-swatch' style='{swatch}'></span>{words}</span>")
    return "<div class='ps-legend'>" + "".join(items) + "</div>"


__all__ = ["overlay", "patch_states", "legend_html", "group_colour", "LEGEND", "STATES"]
