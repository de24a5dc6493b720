"""One colour (and one line dash and marker) per strategy, the same in every plot, card and table.

The palette is fixed and keyed by the strategy's name, so a strategy keeps its colour whichever others are shown
beside it and in whatever order they come (plotly's default colour cycle gives colours by trace order, which is
how a legend and a panel of one figure came to disagree). The 18 known names are pairwise distinct by at least
``MIN_DELTA_E`` in CIELAB (a test checks it); a name not in the palette gets a deterministic colour from a hash
of its name (the same in every process; not guaranteed distinct from the palette). Where lines overlap, the dash
and the marker still tell strategies apart (each known strategy has its own marker).

``none`` (the reference) is dark grey and ``random`` (the baseline) mid grey; the methods have hues.

Labels such as ``"vtc-cls (keep)"``, ``"fastv (layer 1)"`` or ``"random keep 16"`` take the colour of their
strategy (``base_name``). No torch, no plotly here: plain strings, usable from any figure or from HTML.
"""

from __future__ import annotations

import colorsys
import hashlib
import html
import math
import re

# name: (colour, dash, marker symbol). Colours: hand-picked, ΔE76 >= 20 between any two (tests/test_colors.py).
STYLES: dict[str, tuple[str, str, str]] = {
    "none": ("#3a3a3a", "solid", "circle"),
    "random": ("#a0a0a0", "dot", "circle-open"),
    "vtc-cls": ("#1f77b4", "solid", "square"),
    "fastv": ("#d62728", "dash", "diamond"),
    "vtw": ("#ff7f0e", "dashdot", "triangle-up"),
    "ivtp": ("#2ca02c", "longdash", "triangle-down"),
    "prumerge+": ("#9467bd", "solid", "pentagon"),
    "tome": ("#8c564b", "dash", "hexagon"),
    "kmeans": ("#e377c2", "dot", "star"),
    "topk-sim": ("#17becf", "longdash", "x"),
    "pooling": ("#bcbd22", "dashdot", "cross"),
    "evit": ("#0b2e74", "longdashdot", "triangle-left"),
    # coming strategies: their colours are fixed now so that they never change once they arrive
    "cdpruner": ("#00a087", "solid", "triangle-right"),
    "vispruner": ("#f0c000", "dash", "star-diamond"),
    "divprune": ("#5c0f5c", "dot", "hexagram"),
    "visionzip": ("#7fb7f0", "dashdot", "diamond-tall"),
    "dart": ("#a33d00", "longdash", "bowtie"),
    "manual": ("#b8860b", "longdashdot", "hourglass"),
}
STRATEGY_COLORS: dict[str, str] = {name: s[0] for name, s in STYLES.items()}
MIN_DELTA_E = 20.0  # the smallest CIELAB distance between two palette colours

_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
_FALLBACK_MARKERS = ("circle", "square", "diamond", "triangle-up", "triangle-down", "pentagon", "hexagon", "star")


def base_name(label: str) -> str:
    """The strategy a label names: ``"vtc-cls (keep)"`` -> ``"vtc-cls"``, ``"fastv 64 (layer 1)"`` -> ``"fastv"``,
    ``"random keep 16"`` -> ``"random"``, ``"Pooling"`` -> ``"pooling"``. Unknown names come back lower-cased
    and stripped of what follows their first space, parenthesis or colon."""
    text = str(label).strip().lower()
    for name in sorted(STYLES, key=len, reverse=True):
        if text == name or re.match(re.escape(name) + r"(?=[\s(:,]|$)", text):
            return name
    return re.split(r"[\s(:,]", text, maxsplit=1)[0] if text else text


def _digest(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")


def strategy_color(name: str) -> str:
    """``"#rrggbb"`` for a strategy (or a label of one). Unknown names: a hue from a hash of the name (stable
    across processes, unlike ``hash()``), at a saturation and lightness that read on white."""
    key = base_name(name)
    if key in STRATEGY_COLORS:
        return STRATEGY_COLORS[key]
    hue = (_digest(key) % 3600) / 3600
    r, g, b = colorsys.hls_to_rgb(hue, 0.42, 0.62)
    return "#{:02x}{:02x}{:02x}".format(round(r * 255), round(g * 255), round(b * 255))


def strategy_dash(name: str) -> str:
    key = base_name(name)
    return STYLES[key][1] if key in STYLES else _DASHES[_digest(key) % len(_DASHES)]


def strategy_marker(name: str) -> str:
    key = base_name(name)
    return STYLES[key][2] if key in STYLES else _FALLBACK_MARKERS[(_digest(key) >> 8) % len(_FALLBACK_MARKERS)]


def trace_style(name: str, width: float = 2.0, size: float = 8.0) -> dict:
    """``line`` and ``marker`` keyword arguments for a plotly ``Scatter`` of this strategy:
    ``go.Scatter(x=..., y=..., **trace_style("fastv"))``."""
    colour = strategy_color(name)
    symbol = strategy_marker(name)
    marker = {"color": colour, "symbol": symbol, "size": size}
    if symbol.endswith("-open"):  # drawn by its outline only
        marker["line"] = {"color": colour, "width": 2}
    return {"line": {"color": colour, "dash": strategy_dash(name), "width": width}, "marker": marker}


def rgba(colour: str, alpha: float) -> str:
    """``"#rrggbb"`` (or a strategy name) as ``"rgba(r,g,b,alpha)"``."""
    if not colour.startswith("#"):
        colour = strategy_color(colour)
    r, g, b = hex_to_rgb(colour)
    return f"rgba({r},{g},{b},{alpha:g})"


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    if len(c) != 6:
        raise ValueError(f"colour {colour!r}: expected #rrggbb")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def color_map(names) -> dict[str, str]:
    """``{name: "#rrggbb"}`` for the given names (e.g. to colour a table's or a dropdown's entries)."""
    return {n: strategy_color(n) for n in names}


def swatch_html(name: str, text: str | None = None) -> str:
    """An inline HTML chip for cards and tables: a short bar in the strategy's colour, then ``text`` (default: the
    name). Inline styles only, so it needs no CSS class."""
    colour = strategy_color(name)
    label = html.escape(name if text is None else text)
    return (f"<span style='display:inline-flex;align-items:center;gap:6px'>"
            f"<span style='display:inline-block;width:14px;height:14px;border-radius:3px;background:{colour};"
            f"border:1px solid rgba(0,0,0,0.35);flex:none'></span>{label}</span>")


def lab(colour: str) -> tuple[float, float, float]:
    """CIELAB (D65) of an sRGB ``"#rrggbb"``."""
    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(v / 255) for v in hex_to_rgb(colour))
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116

    fx, fy, fz = f(x), f(y), f(z)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def delta_e(a: str, b: str) -> float:
    """CIE76 colour difference of two ``"#rrggbb"`` colours (about 2.3: just noticeable; 20+: clearly different)."""
    return math.dist(lab(a), lab(b))


__all__ = ["STYLES", "STRATEGY_COLORS", "MIN_DELTA_E", "base_name", "strategy_color", "strategy_dash",
           "strategy_marker", "trace_style", "rgba", "hex_to_rgb", "color_map", "swatch_html", "lab", "delta_e"]
