"""Is an input outside what the embedded model knows? And how was the image resized for the model?

The embedded toy model knows one synthetic world (``pruning.shapes.world``): 1-5 flat-coloured shapes in six
colours on a grey background, and questions of a few exact forms (``pruning.shapes.grammar``). For it,
``check`` returns plain-sentence warnings when the question is not one of those forms or when the image's
statistics are unlike that world's (the border is not a plain grey background; too little of the picture is grey
background or one of the six object colours; no object colour at all). For any model it says how the processor
resized and cropped the image (``resize_note``). Everything returned is plain values.

The image thresholds were set against the world's own scenes: over 400 held-out scenes the border was at least 96%
grey and at least 98% of the pixels were grey background or an object colour (see tests/test_offworld.py, which
checks held-out scenes pass and photo-like images do not).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from .shapes import grammar, world

GREY_CHROMA = 45  # a grey pixel: max - min of its channels at most this (the world's tint +-12, noise sd 7)
GREY_LEVELS = (60, 215)  # a grey background's brightness (the world's: 95-165, +-17 gradient, stripes, noise)
BACKGROUND_SPREAD = 50  # a background pixel is within this brightness of the border's median
PALETTE_DISTANCE = 45  # an object pixel is within this RGB distance of one of the six colours (jitter +-15)
BORDER = 2  # pixels of the image's edge read as background (the world's objects never touch the edge)
MIN_BORDER_GREY = 0.8  # share of border pixels that must be grey
MIN_EXPLAINED = 0.9  # share of all pixels that must be grey background or an object colour
MIN_OBJECT = 0.005  # share of pixels in an object colour below which no object is seen
_PALETTE = np.array(list(world.COLOURS.values()), np.float32)


def image_stats(view: np.ndarray) -> dict:
    """Statistics of ``view`` ((H, W, 3) uint8, the image as the model sees it) against the shapes world:
    ``border_grey`` (share of the edge's pixels that are grey and of a background's brightness),
    ``border_rgb`` (the edge's median colour), ``background`` (share of pixels grey and near the edge's
    brightness), ``object_colours`` (share within ``PALETTE_DISTANCE`` of one of the six colours), ``explained``
    (share that is either)."""
    px = np.asarray(view, np.float32).reshape(-1, 3)
    v = np.asarray(view, np.float32)
    b = BORDER
    ring = np.concatenate([v[:b].reshape(-1, 3), v[-b:].reshape(-1, 3), v[b:-b, :b].reshape(-1, 3),
                           v[b:-b, -b:].reshape(-1, 3)])
    chroma, level = ring.max(1) - ring.min(1), ring.mean(1)
    border_grey = (chroma <= GREY_CHROMA) & (level >= GREY_LEVELS[0]) & (level <= GREY_LEVELS[1])
    median_level = float(np.median(level))
    background = (px.max(1) - px.min(1) <= GREY_CHROMA) & (np.abs(px.mean(1) - median_level) <= BACKGROUND_SPREAD)
    distance = np.sqrt(((px[:, None, :] - _PALETTE[None]) ** 2).sum(-1)).min(1)
    objects = distance <= PALETTE_DISTANCE
    return {"border_grey": float(border_grey.mean()), "border_rgb": [int(c) for c in np.median(ring, 0)],
            "background": float(background.mean()), "object_colours": float(objects.mean()),
            "explained": float((background | objects).mean())}


def image_warnings(stats: dict) -> list[str]:
    """Plain sentences for what in ``image_stats`` is unlike the shapes world (empty: nothing is)."""
    out = []
    if stats["border_grey"] < MIN_BORDER_GREY:
        r, g, b = stats["border_rgb"]
        out.append(f"The picture's edge is not a plain grey background (only {stats['border_grey']:.0%} of it is "
                   f"grey; its median colour is RGB {r}, {g}, {b}): the embedded model has only seen coloured shapes "
                   "on grey, so its answers about this image are guesses.")
    if stats["explained"] < MIN_EXPLAINED:
        out.append(f"Only {stats['explained']:.0%} of the picture is grey background or one of the six flat "
                   f"colours of the model's shapes ({', '.join(world.COLOUR_NAMES)}); in its world that is at least "
                   f"{MIN_EXPLAINED:.0%}. A photo or drawing is outside what the embedded model knows.")
    if stats["object_colours"] < MIN_OBJECT:
        out.append("No object in one of the six colours of the model's shapes is visible: the embedded model "
                   "always expects 1-5 coloured shapes.")
    return out


def question_warnings(question: str) -> list[str]:
    """A plain sentence when ``question`` is not one of the forms the embedded model was trained on."""
    if grammar.question_type(question) is not None:
        return []
    forms = " / ".join(dict.fromkeys(f["form"] for f in grammar.question_forms() if f["evaluated"]))
    return [f"The embedded model was trained only on questions of a few exact forms ({forms}; capitals and "
            "wording as written): this question is not one of them, so its answer, even unpruned, is meaningless."]


def _ratio(w: int, h: int) -> str:
    f = Fraction(w, h).limit_denominator(16)
    return f"{f.numerator}:{f.denominator}" if abs(f - w / h) <= 0.01 * w / h else f"{w / h:.2f}:1"


def _size(size, key):
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def resize_note(original: tuple[int, int], processor, view_shape: tuple[int, ...]) -> dict:
    """How ``processor`` (a transformers image processor) turned an image of ``original`` (width, height) into
    the model's input of ``view_shape`` (H, W, ...): ``{"sentence", "original", "input", "resized", "cut"}`` with
    ``resized`` the size after resizing (before any crop) and ``cut`` the pixels removed from [left, top, right,
    bottom] of the resized image (None: nothing cropped)."""
    w, h = int(original[0]), int(original[1])
    out_h, out_w = int(view_shape[0]), int(view_shape[1])
    size = getattr(processor, "size", None) if getattr(processor, "do_resize", True) else None
    short = _size(size, "shortest_edge") if size is not None else None
    fixed = (_size(size, "height"), _size(size, "width")) if size is not None else (None, None)
    base = {"original": [w, h], "input": [out_w, out_h], "resized": [out_w, out_h], "cut": None}
    if short:
        rw, rh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        left, top = (rw - out_w) // 2, (rh - out_h) // 2
        cut = [left, top, rw - out_w - left, rh - out_h - top]
        base.update(resized=[rw, rh], cut=cut if any(cut) else None)
        if (w, h) == (out_w, out_h):
            return {**base, "sentence": f"Your {w} x {h} image is what the model sees (no resizing or cropping)."}
        if not any(cut):
            return {**base, "sentence": f"Your {w} x {h} image was scaled to {rw} x {rh} (its shape kept; "
                                        "nothing cropped)."}
        lost = (rw - out_w) / rw if rw > out_w else (rh - out_h) / rh
        sides = (f"{cut[0]} px from the left and {cut[2]} px from the right" if rw > out_w
                 else f"{cut[1]} px from the top and {cut[3]} px from the bottom")
        return {**base, "sentence": f"Your {w} x {h} image ({_ratio(w, h)}) was scaled to {rw} x {rh} (shorter side "
                                    f"{short} px, shape kept), then only its centre {out_w} x {out_h} was kept: "
                                    f"{sides} were cut off: the model never sees {lost:.0%} of the picture."}
    if all(fixed):
        squashed = abs(w * out_h - h * out_w) > 0.01 * w * out_h
        how = (f"without keeping its shape: its {_ratio(w, h)} picture squashed to {_ratio(out_w, out_h)}"
               if squashed else "its shape kept")
        return {**base, "sentence": f"Your {w} x {h} image was resized to {out_w} x {out_h}, {how}."}
    return {**base, "sentence": f"Your {w} x {h} image was resized by the model's processor to {out_w} x {out_h}."}


def check(view: np.ndarray, original: tuple[int, int], question: str, processor, embedded: bool) -> dict:
    """Everything this module says about one input: ``warnings`` (plain sentences; the question's and the image's
    only for the embedded toy model, whose world is known), ``resize`` (``resize_note``) and ``image_stats``
    (None for other models)."""
    stats = image_stats(view) if embedded else None
    warnings = (question_warnings(question) + image_warnings(stats)) if embedded else []
    return {"warnings": warnings, "resize": resize_note(original, processor, np.shape(view)), "image_stats": stats}
