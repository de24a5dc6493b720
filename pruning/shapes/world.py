"""The synthetic world of the embedded model: seeded scenes of coloured shapes, captions, questions.

A scene has 1-5 objects (4 shapes x 6 colours x 2 sizes) at random positions, small overlaps allowed,
on a plain or textured background. No two objects share a (colour, shape) pair, so "the red circle" is
always unique. Every object comes with its visible-pixel mask, so tests and the UI can say which patches
hold which object.

Question types (each answer is one word):
- ``colour``: "What colour is the circle?" (asked only when the shape is unique in the scene)
- ``shape``: "What shape is the red object?" (asked only when the colour is unique)
- ``exist``: "Is there a red circle?" yes/no, POPE-style: balanced, negatives drawn ``random`` (any absent
  pair), ``popular`` (the most frequent absent pairs under the generator's prior) or ``adversarial``
  (absent pairs sharing a colour or a shape with a present object: this world's analogue of POPE's
  co-occurring objects)
- ``count``: "How many objects are there?" -> one..five
- ``position``: "Is the red circle left or right of the blue square?" -> left/right (asked only when
  the centres are at least ``MIN_GAP`` pixels apart horizontally), and the same for above/below.

Training draws scene seeds from ``[0, HELD_OUT_SEED)``; evaluation uses seeds from ``HELD_OUT_SEED`` on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 96
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 235),
    "yellow": (235, 215, 40), "purple": (150, 60, 200), "cyan": (40, 205, 215),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = {"small": 12, "large": 16}  # radius in pixels (+-1 jitter); an object spans 3-4 patches of 8 px
NUMBERS = ("one", "two", "three", "four", "five")
QUESTION_TYPES = ("colour", "shape", "exist", "count", "position")
# asked in training only, as a stepping stone to "position": where one named object is in the picture
TRAINING_ONLY_TYPES = ("where",)
NEGATIVE_MODES = ("random", "popular", "adversarial")
MIN_GAP = 12  # pixels between centres for a left/right or above/below question
HELD_OUT_SEED = 1_000_000_000

# A non-uniform prior over colours and shapes, so that POPE's "popular" negatives mean something.
COLOUR_PRIOR = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
SHAPE_PRIOR = np.array([1.0, 0.85, 0.7, 0.55])
PAIR_PRIOR = np.outer(COLOUR_PRIOR, SHAPE_PRIOR).ravel() / np.outer(COLOUR_PRIOR, SHAPE_PRIOR).sum()
PAIRS = [(c, s) for c in COLOUR_NAMES for s in SHAPES]  # index = colour_index * 4 + shape_index
POPULAR_ORDER = [PAIRS[i] for i in np.argsort(-PAIR_PRIOR, kind="stable")]


@dataclass
class SceneObject:
    colour: str
    shape: str
    size: str
    cx: float  # centre x in pixels
    cy: float  # centre y in pixels
    radius: float
    mask: np.ndarray = field(repr=False)  # (H, W) bool, visible pixels

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def pair_index(self) -> int:
        return COLOUR_NAMES.index(self.colour) * len(SHAPES) + SHAPES.index(self.shape)


@dataclass
class Question:
    type: str
    text: str
    answer: str
    objects: tuple[int, ...] = ()  # indices of the objects the question is about
    negative_mode: str | None = None  # exist questions with answer "no"


@dataclass
class Scene:
    seed: int
    image: Image.Image
    objects: list[SceneObject]
    textured: bool

    @property
    def caption(self) -> str:
        return caption(self)

    def object_mask(self) -> np.ndarray:
        """(H, W) bool: pixels covered by any object."""
        out = np.zeros((self.image.height, self.image.width), bool)
        for o in self.objects:
            out |= o.mask
        return out

    def patch_coverage(self, patch: int, objects: list[int] | None = None) -> np.ndarray:
        """(rows*cols,) fraction of each patch's pixels covered by the given objects (default: all)."""
        chosen = self.objects if objects is None else [self.objects[i] for i in objects]
        mask = np.zeros((self.image.height, self.image.width), bool)
        for o in chosen:
            mask |= o.mask
        rows, cols = self.image.height // patch, self.image.width // patch
        return mask[:rows * patch, :cols * patch].reshape(rows, patch, cols, patch).mean((1, 3)).ravel()


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float):
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx + r * math.cos(angle + k * 2 * math.pi / 3 - math.pi / 2),
                 cy + r * math.sin(angle + k * 2 * math.pi / 3 - math.pi / 2)) for k in range(3)]
    if shape == "cross":
        a, b = r, r * 0.38
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b),
               (-b, -b)]
        return [(cx + x, cy + y) for x, y in pts]
    raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, size: int, textured: bool) -> np.ndarray:
    base = rng.uniform(95, 165)
    img = np.full((size, size, 3), base, np.float32)
    if textured:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        gx, gy = rng.uniform(-35, 35, 2)
        img += (gx * (xx - 0.5) + gy * (yy - 0.5))[..., None]
        period = rng.integers(6, 14)
        if rng.random() < 0.5:  # faint stripes or checks
            img += (8 * ((np.floor(xx * size / period) + np.floor(yy * size / period)) % 2))[..., None]
        img += rng.normal(0, 7, img.shape)
        img += rng.uniform(-12, 12, 3)  # a slight tint
    return np.clip(img, 0, 255)


def make_scene(seed: int, n_objects: int | None = None, image_size: int = IMAGE_SIZE,
               textured: bool | None = None, max_objects: int = 5) -> Scene:
    """The scene for ``seed`` (deterministic)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, max_objects + 1)) if n_objects is None else n_objects
    if not 1 <= n <= len(PAIRS):
        raise ValueError(f"n_objects={n}: expected 1..{len(PAIRS)}")
    textured = bool(rng.random() < 0.5) if textured is None else textured
    pair_ids = rng.choice(len(PAIRS), size=n, replace=False, p=PAIR_PRIOR)
    canvas = Image.fromarray(_background(rng, image_size, textured).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    label = np.full((image_size, image_size), -1, np.int16)  # which object owns each pixel (last drawn wins)
    placed: list[tuple[float, float, float]] = []
    objects: list[SceneObject] = []
    for k, pid in enumerate(pair_ids):
        colour, shape = PAIRS[pid]
        size = "large" if rng.random() < 0.5 else "small"
        r = SIZES[size] + rng.uniform(-1, 1)
        for _ in range(200):  # rejection sampling: centres inside, at most a small overlap
            cx, cy = rng.uniform(r + 1, image_size - r - 1, 2)
            if all(math.hypot(cx - x, cy - y) >= 0.95 * (r + rr) for x, y, rr in placed):
                break
        else:
            continue  # no room: the scene gets fewer objects
        placed.append((cx, cy, r))
        fill = tuple(int(np.clip(v + rng.integers(-15, 16), 0, 255)) for v in COLOURS[colour])
        layer = Image.new("L", canvas.size, 0)
        layer_draw = ImageDraw.Draw(layer)
        if shape == "circle":
            box = (cx - r, cy - r, cx + r, cy + r)
            draw.ellipse(box, fill=fill)
            layer_draw.ellipse(box, fill=255)
        else:
            poly = _shape_polygon(shape, cx, cy, r, angle=0.0)
            draw.polygon(poly, fill=fill)
            layer_draw.polygon(poly, fill=255)
        label[np.asarray(layer) > 0] = k
        objects.append(SceneObject(colour, shape, size, float(cx), float(cy), float(r), mask=None))
    for k, o in enumerate(objects):
        o.mask = label == k
    return Scene(seed=seed, image=canvas, objects=objects, textured=textured)


def _where(o: SceneObject, size: int) -> str:
    third = size / 3
    v = "top" if o.cy < third else ("bottom" if o.cy > 2 * third else "middle")
    h = "left" if o.cx < third else ("right" if o.cx > 2 * third else "centre")
    return "centre" if (v, h) == ("middle", "centre") else f"{v} {h}" if v != "middle" else f"middle {h}"


def caption(scene: Scene) -> str:
    n = len(scene.objects)
    parts = [f"a {o.size} {o.colour} {o.shape} at the {_where(o, scene.image.width)}" for o in scene.objects]
    listing = parts[0] if n == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{NUMBERS[n - 1]} object{'s' if n > 1 else ''}: {listing}."


def _unique(values: list[str]) -> list[str]:
    return [v for v in values if values.count(v) == 1]


def _negative(scene: Scene, mode: str, rng: np.random.Generator) -> tuple[str, str] | None:
    present = {(o.colour, o.shape) for o in scene.objects}
    absent = [p for p in PAIRS if p not in present]
    if mode == "random":
        pool = absent
    elif mode == "popular":
        pool = [p for p in POPULAR_ORDER if p not in present][:3]
    elif mode == "adversarial":
        colours = {c for c, _ in present}
        shapes = {s for _, s in present}
        pool = [p for p in absent if p[0] in colours or p[1] in shapes]
    else:
        raise ValueError(f"negative mode {mode!r}: expected one of {NEGATIVE_MODES}")
    return pool[int(rng.integers(len(pool)))] if pool else None


def questions_for(scene: Scene, qtype: str, rng: np.random.Generator, min_gap: float = MIN_GAP) -> list[Question]:
    """All candidate questions of one type for a scene (possibly none). ``min_gap``: the least distance in
    pixels between two centres for a position question (training widens it early on, as a curriculum)."""
    objs = scene.objects
    if qtype == "colour":
        shapes = _unique([o.shape for o in objs])
        return [Question("colour", f"What colour is the {o.shape}?", o.colour, (i,))
                for i, o in enumerate(objs) if o.shape in shapes]
    if qtype == "shape":
        colours = _unique([o.colour for o in objs])
        return [Question("shape", f"What shape is the {o.colour} object?", o.shape, (i,))
                for i, o in enumerate(objs) if o.colour in colours]
    if qtype == "count":
        return [Question("count", "How many objects are there?", NUMBERS[len(objs) - 1],
                         tuple(range(len(objs))))]
    if qtype == "exist":
        i = int(rng.integers(len(objs)))
        out = [Question("exist", f"Is there a {objs[i].name}?", "yes", (i,))]
        mode = NEGATIVE_MODES[int(rng.integers(len(NEGATIVE_MODES)))]
        neg = _negative(scene, mode, rng)
        if neg is not None:
            out.append(Question("exist", f"Is there a {neg[0]} {neg[1]}?", "no", (), negative_mode=mode))
        return out
    if qtype == "position":
        out = []
        for i, a in enumerate(objs):
            for j, b in enumerate(objs):
                if i == j:
                    continue
                if abs(a.cx - b.cx) >= min_gap:
                    out.append(Question("position", f"Is the {a.name} left or right of the {b.name}?",
                                        "left" if a.cx < b.cx else "right", (i, j)))
                if abs(a.cy - b.cy) >= min_gap:
                    out.append(Question("position", f"Is the {a.name} above or below the {b.name}?",
                                        "above" if a.cy < b.cy else "below", (i, j)))
        return out
    if qtype == "where":
        half = scene.image.width / 2
        out = []
        for i, o in enumerate(objs):
            if abs(o.cx - half) >= MIN_GAP:
                out.append(Question("where", f"Is the {o.name} on the left or the right?",
                                    "left" if o.cx < half else "right", (i,)))
            if abs(o.cy - half) >= MIN_GAP:
                out.append(Question("where", f"Is the {o.name} at the top or the bottom?",
                                    "top" if o.cy < half else "bottom", (i,)))
        return out
    raise ValueError(f"unknown question type {qtype!r}: expected one of {QUESTION_TYPES + TRAINING_ONLY_TYPES}")


def answer_vocabulary() -> list[str]:
    return sorted(set(COLOUR_NAMES) | set(SHAPES) | {"yes", "no"} | set(NUMBERS) | {"left", "right", "above", "below"})


def heldout_questions(n: int, seed0: int = HELD_OUT_SEED, types: tuple[str, ...] = QUESTION_TYPES
                      ) -> list[tuple[Scene, Question]]:
    """``n`` held-out (scene, question) pairs, the same number per type, one question per scene.

    Existence questions alternate yes / no, so the set is balanced (POPE); each negative's mode (random,
    popular, adversarial) is drawn at random."""
    per_type = {t: n // len(types) + (1 if k < n % len(types) else 0) for k, t in enumerate(types)}
    out: list[tuple[Scene, Question]] = []
    seed = seed0
    for t in types:
        made = 0
        while made < per_type[t]:
            scene = make_scene(seed)
            rng = np.random.default_rng(seed + 7)
            seed += 1
            cands = questions_for(scene, t, rng)
            if t == "exist":
                want = "yes" if made % 2 == 0 else "no"
                cands = [q for q in cands if q.answer == want]
            if not cands:
                continue
            out.append((scene, cands[int(rng.integers(len(cands)))]))
            made += 1
    return out


def main(argv=None) -> int:
    """``python -m pruning.shapes.world --seed S --out scene.png``: save a scene, print its caption and questions."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pruning.shapes.world", description=main.__doc__)
    ap.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    ap.add_argument("--out", required=True)
    ap.add_argument("--scale", type=int, default=1, help="upscale factor for viewing (nearest neighbour)")
    args = ap.parse_args(argv)
    scene = make_scene(args.seed)
    image = scene.image
    if args.scale > 1:
        image = image.resize((image.width * args.scale, image.height * args.scale), Image.NEAREST)
    image.save(args.out)
    print(scene.caption)
    rng = np.random.default_rng(args.seed)
    for t in QUESTION_TYPES:
        for q in questions_for(scene, t, rng):
            print(f"[{t}] {q.text} -> {q.answer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
