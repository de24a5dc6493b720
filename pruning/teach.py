"""Teaching with PruneScope: the requests behind the app's Teach and Lessons tabs, as plain values.

A ``Teacher`` wraps one ``pruning.compare.Scope`` (``Scope.teach``) and answers the questions a class asks:

- ``truth``: the correct answer when the image is a scene the shapes world knows (the app's examples and the
  lessons' scenes are recognised by their pixels), for any question of the forms the embedded model was trained
  on (``world_answer``); None for uploads (results are then judged against the unpruned answer only);
- ``card_fields``: what a Compare card adds: ``truth`` / ``correct``, and for ``random`` its answer over more
  seeds (``random_seeds``: "random kept the answer in 4 of 5 seeds");
- ``probe``: one patch: where its token attends in every ViT layer, the attention it receives from [CLS] (every
  ViT layer) and from the answer's queries (every LLM layer), and what each strategy did with it (kept, dropped
  before / inside the LLM at which layer / inside the ViT, merged into which token); with the [CLS] and LLM
  attention maps of the whole grid (drawn over the image by the app);
- ``handpick``: the model run with exactly the patches given (the ``manual`` strategy) beside ``none``;
- ``budget_film``: per strategy and budget (from all tokens down to 1), the kept set and the answer, and where it
  first breaks; cached, so a second play is instant;
- ``agreement``: pairwise Jaccard overlap of the strategies' kept sets, how many strategies kept each patch, and
  where each strategy's kept tokens lie (row and column histograms, centre of mass: attention scores are known to
  favour late positions, arXiv 2502.11501);
- ``random_seeds`` / ``random_band``: random over N seeds on this image, and on held-out questions (a band);
- ``lesson``: one of ``LESSONS`` (a prepared scene, question, strategies and budget) run as a comparison.

On the families whose token grid is per image (``Scope.dynamic``: Qwen2.5-VL, LLaVA-OneVision, LLaVA-NeXT,
InternVL) every request works on the prepared image's own grid and token count (``grid_of``; budgets as a count of
its tokens or ``keep_ratio``). ``probe`` and ``handpick`` need a grid over the picture: Qwen2.5-VL's merged grid is
one; the others' tokens are a packed 1 x N strip, and ``check_grid`` refuses there in words. ``random_band`` (a
shapes sweep) and ``lesson`` (the embedded toy's scenes) are refused on all four.

Runs here are untimed (``quick``) except ``handpick`` and ``lesson``, which go through ``Scope.compare_stream``.
Every request is checked before anything runs; a ``ValueError`` names the value. The embedded model is a toy
that knows only its shapes world: ``truth`` exists only for that world's scenes.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from . import bench
from .images import load_image
from .model import DEFAULT_MODEL_DIR
from .shapes import world
from .strategies import get_strategy
from .strategies.base import check_params, spec_of
from .strategies.manual import Manual, parse_patches

EXAMPLES_JSON = DEFAULT_MODEL_DIR.parent / "examples" / "examples.json"
MAX_FILM_STEPS = 12  # budgets in one budget film, at most
MAX_FILM_STRATEGIES = 8
MAX_SEEDS = 20  # random over N seeds, at most
FILM_CACHE = 1024  # untimed runs kept (film frames, probe and agreement runs)

# ---------------------------------------------------------------- ground truth

_C = "|".join(world.COLOUR_NAMES)
_S = "|".join(world.SHAPES)
_OBJ = f"({_C}) ({_S})"
_FORMS = [
    ("colour", re.compile(f"What colour is the ({_S})\\?")),
    ("shape", re.compile(f"What shape is the ({_C}) object\\?")),
    ("exist", re.compile(f"Is there a {_OBJ}\\?")),
    ("count", re.compile("How many objects are there\\?")),
    ("leftright", re.compile(f"Is the {_OBJ} left or right of the {_OBJ}\\?")),
    ("abovebelow", re.compile(f"Is the {_OBJ} above or below the {_OBJ}\\?")),
    ("where_lr", re.compile(f"Is the {_OBJ} on the left or the right\\?")),
    ("where_tb", re.compile(f"Is the {_OBJ} at the top or the bottom\\?")),
]


def world_answer(scene: world.Scene, question: str) -> str | None:
    """The shapes world's answer to ``question`` about ``scene``: one word, or None when the question is not one of
    the forms the model was trained on, or has no single answer in this scene (a shape or colour not present or not
    unique, two objects too close to tell left from right)."""
    text = str(question).strip()
    objs = scene.objects

    def find(colour, shape):
        return next((o for o in objs if o.colour == colour and o.shape == shape), None)

    for kind, rx in _FORMS:
        m = rx.fullmatch(text)
        if not m:
            continue
        g = m.groups()
        if kind == "colour":
            hits = [o for o in objs if o.shape == g[0]]
            return hits[0].colour if len(hits) == 1 else None
        if kind == "shape":
            hits = [o for o in objs if o.colour == g[0]]
            return hits[0].shape if len(hits) == 1 else None
        if kind == "exist":
            return "yes" if find(*g) is not None else "no"
        if kind == "count":
            return world.NUMBERS[len(objs) - 1] if 1 <= len(objs) <= len(world.NUMBERS) else None
        if kind in ("leftright", "abovebelow"):
            a, b = find(g[0], g[1]), find(g[2], g[3])
            if a is None or b is None or a is b:
                return None
            if kind == "leftright":
                return None if abs(a.cx - b.cx) < world.MIN_GAP else ("left" if a.cx < b.cx else "right")
            return None if abs(a.cy - b.cy) < world.MIN_GAP else ("above" if a.cy < b.cy else "below")
        o = find(g[0], g[1])
        if o is None:
            return None
        half = scene.image.width / 2
        if kind == "where_lr":
            return None if abs(o.cx - half) < world.MIN_GAP else ("left" if o.cx < half else "right")
        return None if abs(o.cy - half) < world.MIN_GAP else ("top" if o.cy < half else "bottom")
    return None


def image_digest(image) -> str:
    """A digest of an RGB image's size and pixels (how a known scene is recognised, whatever its file name)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return hashlib.sha1(f"{arr.shape}".encode() + arr.tobytes()).hexdigest()


# ---------------------------------------------------------------- lessons
# Each: a scene (an example image file, or a held-out seed), a question, strategies, a budget, parameters, a title,
# what to look at (two or three sentences), and which figure the lesson opens with (``focus``).

LESSONS = [
    {"id": "cls-knows", "title": "[CLS] already knows where the objects are",
     "example": "example-2-count.png", "question": "How many objects are there?", "strategies": ["vtc-cls", "random"],
     "keep": 24, "params": {}, "focus": "cls",
     "text": "The heatmap is the vision encoder's [CLS] attention at the layer that feeds the LLM, drawn over the "
             "image before any question is read: its bright cells sit on objects, if unevenly. vtc-cls keeps the 24 "
             "patches [CLS] ranks highest, every one on an object and some on each of the four (its card counts "
             "them), where random's 24 are mostly background. Yet here vtc-cls counts wrong: knowing where the "
             "objects are is not keeping what a count needs."},
    {"id": "fastv-vs-before", "title": "FastV at layer 2 vs pruning before the LLM",
     "example": "example-1-small-colour.png", "question": "What colour is the triangle?",
     "strategies": ["fastv", "vtc-cls", "random"], "keep": 18, "params": {}, "focus": "tokens",
     "text": "All three keep 18 of the 144 visual tokens, but FastV lets the LLM's first two layers read every "
             "token and then keeps the 18 the question's last token attended to most; vtc-cls and random drop "
             "theirs before the LLM. The plot counts the tokens in each LLM layer (FastV pays for two full "
             "layers); here only FastV still answers right."},
    {"id": "vtw-withdraw", "title": "VTW: after layer K the image is no longer read",
     "example": "example-3-left-right.png", "question": "Is the blue triangle left or right of the cyan cross?",
     "strategies": ["vtw"], "keep": 72, "params": {}, "focus": "shares",
     "text": "VTW withdraws every visual token before one LLM layer (layer 3 here, the paper's K = 4 of this "
             "model's 8). The bars show where the answer's attention goes in each layer: on this toy model none's "
             "deep layers still read the image heavily, unlike LLaVA in VTW's Figure 4. Yet vtw answers as none "
             "does: by layer 3 the question's tokens already carry what the answer needs."},
    {"id": "merge-vs-drop", "title": "Merging vs dropping on a count question",
     "example": "example-2-count.png", "question": "How many objects are there?",
     "strategies": ["tome", "kmeans", "vtc-cls", "random"], "keep": 12, "params": {}, "focus": "cards",
     "text": "With 12 tokens for 4 objects, vtc-cls and random keep 12 patches and lose the rest, while tome and "
             "kmeans merge every patch into one of 12 tokens, so nothing is lost outright (the tinted groups show "
             "what went into each token). Here tome still counts four; kmeans, vtc-cls and random do not."},
    {"id": "random-baseline", "title": "Random is a strong baseline",
     "example": "example-4-small-shape.png", "question": "What shape is the yellow object?",
     "strategies": ["random", "vtc-cls", "divprune"], "keep": 18, "params": {}, "focus": "seeds",
     "text": "Random keeps 18 patches drawn at random, and the plot runs it with 5 seeds: here every seed still "
             "names the shape, as do vtc-cls and divprune. A scoring rule earns its cost only where it beats this; "
             "try the Teach tab's band on held-out questions to see how often it does."},
]


def lesson_by_id(lesson_id: str) -> dict:
    for lesson in LESSONS:
        if lesson["id"] == lesson_id:
            return lesson
    raise ValueError(f"lesson {lesson_id!r} does not exist; lessons: {', '.join(l['id'] for l in LESSONS)}")


# ---------------------------------------------------------------- the teacher

def _names(strategies) -> list[str]:
    from .compare import check_strategy_names

    return list(dict.fromkeys(check_strategy_names(strategies)))


def parse_budgets(budgets, n_patches: int, whose: str = "the grid's visual tokens") -> list[int]:
    """Budgets for a film: a list or ``"144, 72, 36"``; each a whole number in 1..n_patches, unique, descending;
    at most ``MAX_FILM_STEPS``. None or empty: all tokens, then halving down to 1. ``whose``: what n_patches counts,
    in the messages (a dynamic grid's budgets are counts of one image's tokens)."""
    if budgets is None or (isinstance(budgets, str) and not budgets.strip()) or budgets == []:
        out, b = [], n_patches
        while b >= 1:
            out.append(b)
            b //= 2
        return out[:MAX_FILM_STEPS]
    parts = [p.strip() for p in budgets.split(",") if p.strip()] if isinstance(budgets, str) else list(budgets)
    out = set()
    for p in parts:
        try:
            value = int(p) if not isinstance(p, float) or p.is_integer() else None
        except (TypeError, ValueError):
            value = None
        if value is None or isinstance(p, bool):
            raise ValueError(f"budget {p!r} is not a whole number of visual tokens (1..{n_patches})")
        if not 1 <= value <= n_patches:
            raise ValueError(f"budget {value} is outside 1..{n_patches} ({whose})")
        out.add(value)
    if len(out) > MAX_FILM_STEPS:
        raise ValueError(f"budgets: {len(out)} steps given; at most {MAX_FILM_STEPS} per film")
    return sorted(out, reverse=True)


def same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and bench.normalise(a) == bench.normalise(b)


class Teacher:
    """The Teach and Lessons tabs' requests on one ``Scope`` (its engine and its lock)."""

    def __init__(self, scope):
        from .compare import _LRU

        self.scope = scope
        self.engine = scope.engine
        self._runs = _LRU(FILM_CACHE)
        self._known: dict[str, int] | None = None

    # ------------------------------------------------------------ ground truth
    def known_scenes(self) -> dict[str, int]:
        """Digest of each scene the app ships (examples) -> its world seed."""
        if self._known is None:
            seeds = []
            if EXAMPLES_JSON.is_file():
                seeds = [row["seed"] for row in json.loads(EXAMPLES_JSON.read_text())]
            self._known = {image_digest(world.make_scene(s).image): s for s in seeds}
        return self._known

    def truth(self, image, question: str) -> dict:
        """``answer`` (the world's, or None), ``seed`` of the recognised scene (or None), ``judge`` ("truth" or
        "none": what a result is judged against) and ``note`` in words."""
        if not self.scope.is_embedded:
            return {"answer": None, "seed": None, "judge": "none",
                    "note": "no ground truth for this model's images: results are compared with the unpruned answer"}
        seed = self.known_scenes().get(image_digest(load_image(image)))
        if seed is None:
            return {"answer": None, "seed": None, "judge": "none",
                    "note": "an uploaded image: no ground truth is known, so results are compared with the unpruned "
                            "answer only"}
        answer = world_answer(world.make_scene(seed), question)
        if answer is None:
            return {"answer": None, "seed": seed, "judge": "none",
                    "note": "a known scene, but this question has no single answer in it (or is not a form the "
                            "embedded model knows): results are compared with the unpruned answer only"}
        return {"answer": answer, "seed": seed, "judge": "truth", "note": f"the scene's correct answer is '{answer}'"}

    def card_fields(self, image, prepared, strategy, fields_: dict, reference: dict | None,
                    max_new_tokens: int = 8, seeds: int = 5) -> dict:
        """What a Compare card adds (called by ``Scope.compare_stream`` with its lock held): ``truth`` (the
        ``truth`` dict), ``correct`` (True / False against the scene's answer, None when there is none) and, for
        ``random``, ``random_seeds`` over ``seeds`` seeds (its own seed first)."""
        truth = self.truth(image, prepared.question)
        out = {"truth": truth, "correct": None if truth["answer"] is None else same(fields_["answer"], truth["answer"])}
        if truth["seed"] is not None:
            out["scene_objects"] = objects_kept(world.make_scene(truth["seed"]), fields_["kept_final"], *fields_["grid"])
        if strategy.name == "random" and seeds > 1:
            ref = reference["answer"] if reference is not None else fields_["answer"]
            out["random_seeds"] = self._random_seeds(prepared, strategy, seeds, ref, truth, max_new_tokens,
                                                     first=fields_["answer"])
        return out

    # ------------------------------------------------------------ untimed runs
    def _prepare(self, image, question: str):
        self.scope.check_question(question)
        image = load_image(image)
        prepared = self.engine.prepare(image, question)
        digest = hashlib.sha1(prepared.pixel_values.float().cpu().numpy().tobytes()).hexdigest()
        return image, prepared, digest

    def quick(self, prepared, digest: str, strategy, max_new_tokens: int = 8, trace: bool = False) -> dict:
        """One untimed run of ``strategy`` (no lock taken: the caller holds it): ``own_fields`` of its result (kept
        sets, merge groups, answer, TFLOPs; timings empty), with the attention trace when asked. Cached."""
        from .compare import SAMPLING, own_fields

        key = (digest, prepared.question, strategy.name, json.dumps(strategy.params(), sort_keys=True),
               max_new_tokens, trace)
        hit = key in self._runs

        def run():
            self.engine.check(strategy, max_new_tokens)
            vision = self.engine.vision_pass(prepared, seed=strategy.seed, strategy=strategy)
            state = self.engine.prefill(prepared, vision, strategy)
            tokens = self.engine.decode(state, max_new_tokens, **SAMPLING)
            result = self.engine.make_result(prepared, strategy, state, tokens, {}, None, None)
            out = own_fields(result)
            if trace:
                out["trace"] = self.engine.trace(prepared, strategy, max_new_tokens, dict(SAMPLING))
            return out

        value, _ = self._runs.get_or(key, run)
        return {**value, "cached": hit}

    def _strategies(self, names, keep: int | None, params: dict | None) -> list:
        """``Scope._strategies`` without ``none`` in front (callers add it where they want it)."""
        return [s for s in self.scope._strategies(names, keep, params) if s.name != "none" or "none" in names]

    def _keep(self, keep):
        from .compare import _check_budget

        return _check_budget(keep, self.engine.geometry.n_patches)

    # ------------------------------------------------------------ one image's grid, and budgets on a dynamic one
    def grid_of(self, prepared) -> list[int]:
        """This image's token grid [rows, cols]: the model's fixed grid (LLaVA-1.5), this image's merged-token grid
        (Qwen2.5-VL), or the packed 1 x N strip (LLaVA-OneVision, LLaVA-NeXT, InternVL)."""
        g = self.engine.geometry
        if not self.scope.dynamic:
            return [g.rows, g.cols]
        return [prepared.rows or 1, prepared.cols or prepared.n_image]

    def on_picture(self) -> bool:
        """Whether the visual tokens are one row-major grid over the picture the model sees (LLaVA-1.5, Qwen2.5-VL), so
        that a patch can be pointed at, painted and drawn; the anyres families' and InternVL's are a packed strip
        (``Scope.overlay_info``)."""
        return self.scope.overlay_info()["panels"] is None

    def strip_note(self, n_tokens: int) -> str:
        """Why a strip model's tokens are not drawn as one grid over the picture (the Compare cards draw them in
        panels, one per view)."""
        packed = ("its tiles' tokens (the thumbnail last)" if self.scope.family == "internvl"
                  else "its base image and crops (a newline token closing each crop row)")
        return (f"{self.scope.family_name} packs {packed} into one strip of {n_tokens} tokens: patches are not drawn "
                "here, for they have no one grid over the picture; this view shows answers and counts (the Compare "
                "cards draw each crop's or tile's kept tokens on it, in panels)")

    def check_grid(self, what: str, n_tokens: int | None = None) -> None:
        """Refuse ``what`` (e.g. "probing a patch") in words on a model whose visual tokens are a packed 1 x N strip
        of several images (no patch has one place on the picture); nothing on a grid over the picture. ``n_tokens``:
        this image's N, when it is known."""
        if self.on_picture():
            return
        n = f"{n_tokens} tokens" if n_tokens is not None else "N tokens (N depends on the image)"
        packed = ("its tiles' tokens (the thumbnail last)" if self.scope.family == "internvl"
                  else "its base image and crops (a newline token closing each crop row)")
        raise ValueError(f"{what} needs a patch grid over the picture; {self.scope.family_name} packs {packed} into "
                         f"one strip of {n}, so its tokens have no one place on the image: pick the embedded model "
                         "(or a Qwen2.5-VL model, whose tokens are a grid over the picture) in the Model menu")

    def _budget_first(self, keep, keep_ratio) -> tuple[int | None, float | None]:
        """The budget checked before any work: a count (``keep``) or a share of the image's tokens (``keep_ratio``,
        in (0, 1]), not both. A fixed grid: (the count, None), a share already turned into a count of the grid. A
        dynamic grid: (count or None, share or None), turned into a count of the image's tokens by ``_budget_for``
        once the image is prepared."""
        from .budgets import keep_tokens
        from .compare import _check_budget, _check_ratio
        from .strategies.base import shown

        ratio = _check_ratio(keep_ratio)
        if ratio is not None and keep is not None:
            raise ValueError(f"keep={shown(keep)} and keep_ratio={shown(keep_ratio)}: give one budget, a count or a "
                             "share of the image's tokens")
        if not self.scope.dynamic:
            n = self.engine.geometry.n_patches
            return (keep_tokens(ratio, n) if ratio is not None else _check_budget(keep, n)), None
        return _check_budget(keep, None), ratio

    def _budget_for(self, keep: int | None, ratio: float | None, prepared, notes: list | None = None) -> int | None:
        """On a dynamic grid, the budget as a count of this prepared image's tokens (a count clamped to them, a share
        of them; ``notes`` says what it became); on a fixed grid, ``keep`` as it is."""
        if not self.scope.dynamic or (keep is None and ratio is None):
            return keep
        return self.scope._image_budget(keep, ratio, prepared.n_image, notes if notes is not None else [])

    @staticmethod
    def _stand_in(keep, ratio):
        """The count strategies are checked with before the image is prepared (a share: 1)."""
        return keep if keep is not None or ratio is None else 1

    # ------------------------------------------------------------ probe
    def probe(self, image, question: str, row: int, col: int, strategies=(), keep: int | None = None,
              params: dict | None = None, max_new_tokens: int = 8, keep_ratio: float | None = None) -> dict:
        """One patch (``row``, ``col``, 0-based) of the grid: see the module docstring. Returns ``patch`` (its
        index), ``grid``, ``view`` (the image as the model sees it), ``vit_attention`` (per ViT layer, the patch
        token's attention over the patches, mean over heads), ``vit_to_cls`` (per ViT layer, the share it pays to
        [CLS]), ``cls_received`` (per ViT layer, [CLS]'s attention to this patch), ``cls_attention`` (per ViT
        layer, [CLS]'s attention over the grid), ``llm_received`` and ``llm_attention`` (per strategy that ran
        with none first: per LLM layer, the answer's attention to this patch / over the grid, None where the patch
        was gone), ``fates`` (per strategy, what it did with the patch), ``answers``, ``truth``.

        Qwen2.5-VL: the grid is this image's merged-token grid (``row`` and ``col`` are checked against it once the
        image is prepared); its ViT attends over unmerged patches in windows and has no [CLS], so the ViT fields are
        None and ``vit_note`` says why (the LLM's attention and the fates are there). The anyres families and
        InternVL are refused (``check_grid``). ``keep_ratio``: the budget as a share of the image's tokens."""
        self.scope.check_question(question)  # before any work and outside the lock (Scope.check_question)
        g = self.engine.geometry
        fixed = not self.scope.dynamic
        for name, value, top in (("row", row, g.rows), ("col", col, g.cols)):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (fixed and value >= top):
                raise ValueError(f"{name}={value!r}: expected a whole number 0..{top - 1} (the grid is "
                                 f"{g.rows}x{g.cols})" if fixed else
                                 f"{name}={value!r}: expected a whole number >= 0 (a {'row' if name == 'row' else 'column'}"
                                 " of this image's token grid)")
        row, col = int(row), int(col)
        keep, ratio = self._budget_first(keep, keep_ratio)
        names = ["none", *[s for s in _names(strategies) if s != "none"]]
        chosen = self.scope._strategies(names, self._stand_in(keep, ratio), params)
        for s in chosen:
            self.engine.check(s, max_new_tokens)
        vit = self.scope.family == "llava"  # a patch token's ViT attention row: LLaVA-1.5's CLIP only
        with self.scope.lock:
            image_, prepared, digest = self._prepare(image, question)
            self.check_grid("probing a patch", prepared.n_image)
            rows, cols = self.grid_of(prepared)
            for name, value, top in (("row", row, rows), ("col", col, cols)):
                if value >= top:
                    raise ValueError(f"{name}={value}: expected 0..{top - 1} (this image's grid is {rows}x{cols} "
                                     f"{self.scope.family_name} tokens)")
            if not fixed:
                chosen = self.scope._strategies(names, self._budget_for(keep, ratio, prepared), params)
            self.scope._check_family(prepared, digest, chosen)
            patch = row * cols + col
            view = self.scope.view(prepared)
            if vit:
                token = patch + (1 if g.has_cls else 0)
                att = self.engine.token_attention(prepared, token).float().mean(1)  # (L_v, T)
                vision = self.engine.vision_pass(prepared)
            runs = [self.quick(prepared, digest, s, max_new_tokens, trace=True) for s in chosen]
        start = 1 if g.has_cls else 0
        cls_att = (vision.cls_attention.float().mean(1) if vit and vision.cls_attention is not None
                   else None)  # (L_v, N)
        vit_note = None if vit else (
            f"The ViT's attention is not drawn for {self.scope.family_name}: its vision tower attends over unmerged "
            "patches (in windows), not over these merged tokens, and has no [CLS]; the LLM's attention and each "
            "strategy's fate are this token's own")
        out = {"patch": patch, "row": row, "col": col, "grid": [rows, cols], "view": view, "drawn": True,
               "vit_layers": g.vision_layers, "feature_layer": g.feature_layer_index, "llm_layers": g.llm_layers,
               "vit_attention": att[:, start:].tolist() if vit else None,
               "vit_to_cls": att[:, 0].tolist() if vit and g.has_cls else None,
               "cls_received": cls_att[:, patch].tolist() if cls_att is not None else None,
               "cls_attention": cls_att.tolist() if cls_att is not None else None, "vit_note": vit_note,
               "llm_received": {}, "llm_attention": {}, "fates": [], "answers": {},
               "truth": self.truth(image_, prepared.question)}
        for s, r in zip(chosen, runs):
            present = r["trace"]["patch_present"]
            maps = [[v if here else None for v, here in zip(layer, flags)]
                    for layer, flags in zip(r["trace"]["patch_attention"], present)]
            out["llm_attention"][s.name] = maps
            out["llm_received"][s.name] = [m[patch] for m in maps]
            out["answers"][s.name] = r["answer"]
            out["fates"].append({"strategy": s.name, **patch_fate(r, patch, present)})
        return out

    # ------------------------------------------------------------ handpick
    def handpick(self, image, question: str, patches, max_new_tokens: int = 8, repeats: int = 3) -> dict:
        """The model run with exactly ``patches`` (indices, row-major; a list or ``"3, 4, 17"``) entering the LLM
        (the ``manual`` strategy), beside ``none``: ``view``, ``grid``, ``patches`` (sorted, unique), ``results``
        ([none, manual], ``Scope.compare_stream``'s fields: answer, kept, cost, speedup, truth)."""
        n = self.engine.geometry.n_patches
        self.scope.check_question(question)
        spec_of(Manual, "patches").check("manual", "patches", patches)  # its length, before parsing it
        chosen = parse_patches(patches)
        if not chosen:
            raise ValueError("patches: none chosen; paint or click at least one patch (or fill from a strategy)")
        where = "the grid"
        if self.scope.dynamic:  # the image's own grid: Qwen2.5-VL's merged tokens (a strip is refused)
            with self.scope.lock:
                _, prepared, _ = self._prepare(image, question)
            self.check_grid("choosing the patches by hand", prepared.n_image)
            n = prepared.n_image
            where = "this image's grid of {} x {} tokens".format(*self.grid_of(prepared))
        outside = [p for p in chosen if p >= n]
        if outside:
            raise ValueError(f"patches: {outside[0]} is outside {where} (patches 0..{n - 1})")
        events = list(self.scope.compare_stream(image, question, ["manual"], None,
                                                {"manual": {"patches": chosen}}, max_new_tokens=max_new_tokens,
                                                repeats=repeats, warmup=1, inspect=False))
        view = next(e for e in events if e["kind"] == "view")
        results = [e["result"] for e in events if e["kind"] == "result"]
        return {"view": view["view"], "grid": view["grid"], "patches": chosen, "results": results,
                "drawn": view["grid_on_view"]}

    def kept_set(self, image, question: str, strategy: str, keep: int | None = None, params: dict | None = None,
                 max_new_tokens: int = 8, keep_ratio: float | None = None) -> dict:
        """The patches ``strategy`` keeps to the LLM's last layer (``kept_final``) on this image and question at this
        budget: what the app's "fill from a strategy" puts in the selection. ``kept`` (entering the LLM) too. On a
        dynamic grid the budget is a count of this image's tokens (or ``keep_ratio``, a share of them)."""
        self.scope.check_question(question)
        keep, ratio = self._budget_first(keep, keep_ratio)
        (s,) = [x for x in self.scope._strategies([strategy], self._stand_in(keep, ratio), params) if x.name == strategy]
        self.engine.check(s, max_new_tokens)
        with self.scope.lock:
            _, prepared, digest = self._prepare(image, question)
            if self.scope.dynamic:
                (s,) = [x for x in self.scope._strategies([strategy], self._budget_for(keep, ratio, prepared), params)
                        if x.name == strategy]
            self.scope._check_family(prepared, digest, [s])
            r = self.quick(prepared, digest, s, max_new_tokens)
        return {"strategy": strategy, "kept_final": r["kept_final"], "kept": r["kept"], "answer": r["answer"],
                "grid": r["grid"], "visual_tokens": r["visual_tokens"], "drawn": self.on_picture()}

    # ------------------------------------------------------------ budget film
    def budget_film(self, image, question: str, strategies, budgets=None, params: dict | None = None,
                    max_new_tokens: int = 8, progress=None) -> dict:
        """Per strategy and budget (descending), one untimed run: ``frames[strategy]`` = list of {``keep``, ``answer``,
        ``right``, ``kept``, ``kept_final``, ``merge_groups``, ``kept_vit``, ``visual_tokens_kept``,
        ``tokens_last_layer``, ``prefill_tflops``}; ``first_break[strategy]``: the largest budget whose answer is
        not right (None: right at every budget). Right: the scene's answer where it is known (``truth``), else
        none's answer. Strategies without a budget (none, vtw) are left out and named in ``notes``. ``progress``:
        called with (fraction done, words). ``cached``: how many frames came from the cache."""
        from .compare import BUDGET_FREE

        self.scope.check_question(question)
        g = self.engine.geometry
        dynamic = self.scope.dynamic  # budgets are counts of this image's tokens, parsed once it is prepared
        budget_list = parse_budgets(budgets, g.n_patches) if not dynamic else None
        names = [s for s in _names(strategies)]
        skipped = [s for s in names if s in BUDGET_FREE]
        names = [s for s in names if s not in BUDGET_FREE]
        if not names:
            raise ValueError("strategies: pick at least one strategy with a budget (none and vtw have none)")
        if len(names) > MAX_FILM_STRATEGIES:
            raise ValueError(f"strategies: {len(names)} chosen; at most {MAX_FILM_STRATEGIES} per film")
        plan = [(b, self.scope._strategies([s], b, params)[1:]) for b in budget_list or [1] for s in names]
        for _, (s,) in plan:
            self.engine.check(s, max_new_tokens)
        frames: dict[str, list] = {s: [] for s in names}
        cached = 0
        with self.scope.lock:
            image_, prepared, digest = self._prepare(image, question)
            n_image = prepared.n_image
            if dynamic:
                budget_list = parse_budgets(budgets, n_image, f"this image's {n_image} visual tokens")
                plan = [(b, self.scope._strategies([s], b, params)[1:]) for b in budget_list for s in names]
                self.scope._check_family(prepared, digest, [s for _, (s,) in plan[:len(names)]])
            total = len(plan) + 1
            view = self.scope.view(prepared)
            none = self.quick(prepared, digest, get_strategy("none"), max_new_tokens)
            truth = self.truth(image_, prepared.question)
            reference = truth["answer"] if truth["answer"] is not None else none["answer"]
            for i, (b, (s,)) in enumerate(plan):
                if progress is not None:
                    progress((i + 1) / total, f"{s.name} at {b} tokens ({i + 1} of {len(plan)})")
                r = self.quick(prepared, digest, s, max_new_tokens)
                cached += r["cached"]
                frames[s.name].append({
                    "keep": b, "answer": r["answer"], "right": same(r["answer"], reference), "kept": r["kept"],
                    "kept_final": r["kept_final"], "merge_groups": r["merge_groups"], "kept_vit": r["kept_vit"],
                    "visual_tokens_kept": r["visual_tokens_kept"], "tokens_last_layer": r["image_tokens_per_layer"][-1],
                    "prefill_tflops": r["tflops"]["prefill"], "notes": r["notes"]})
        first_break = {s: next((f["keep"] for f in fs if not f["right"]), None) for s, fs in frames.items()}
        notes = [f"{s} has no budget (it is not in the film)" for s in skipped if s != "none"]
        on_picture = self.on_picture()
        return {"view": view, "grid": self.grid_of(prepared), "n_patches": n_image, "budgets": budget_list,
                "drawn": on_picture, "overlay_note": None if on_picture else self.strip_note(n_image),
                "strategies": names, "frames": frames, "first_break": first_break, "none_answer": none["answer"],
                "truth": truth, "reference": reference, "judge": truth["judge"], "cached": cached,
                "frames_total": len(plan), "notes": notes}

    # ------------------------------------------------------------ agreement and position bias
    def agreement(self, image, question: str, strategies, keep: int | None = None, params: dict | None = None,
                  max_new_tokens: int = 8, keep_ratio: float | None = None) -> dict:
        """The strategies' kept sets (the patches present in the LLM's last layer; a merged token counts as its
        representative patch) compared: ``jaccard`` (matrix, |A ∩ B| / |A ∪ B|, symmetric, 1 on the diagonal),
        ``counts`` (per patch, how many strategies kept it), ``positions`` (per strategy: ``rows`` and ``cols``
        histograms of its kept patches, ``centre`` [row, col] of mass, ``mean_index`` over N - 1: 0.5 is the
        grid's middle, larger is later in the sequence). none, and strategies that keep nothing to the last layer
        (vtw), are left out and named in ``notes``.

        On Qwen2.5-VL the grid is this image's merged-token grid; on the anyres families and InternVL a 1 x N strip
        (``drawn`` False): the overlap and the counts are the tokens', and a position is a place in the sequence
        (``mean_index``), not a row and column of the picture (``notes`` says so)."""
        self.scope.check_question(question)
        keep, ratio = self._budget_first(keep, keep_ratio)
        names = [s for s in _names(strategies) if s != "none"]
        if len(names) < 2:
            raise ValueError("strategies: pick at least two strategies to compare their kept sets (none keeps all)")
        chosen = self.scope._strategies(names, self._stand_in(keep, ratio), params)[1:]
        for s in chosen:
            self.engine.check(s, max_new_tokens)
        with self.scope.lock:
            _, prepared, digest = self._prepare(image, question)
            if self.scope.dynamic:
                chosen = self.scope._strategies(names, self._budget_for(keep, ratio, prepared), params)[1:]
            self.scope._check_family(prepared, digest, chosen)
            view = self.scope.view(prepared)
            runs = {s.name: self.quick(prepared, digest, s, max_new_tokens) for s in chosen}
        rows, cols = self.grid_of(prepared)
        sets, notes = {}, []
        for name, r in runs.items():
            if not r["kept_final"]:
                notes.append(f"{name} keeps no visual token to the LLM's last layer: left out")
                continue
            sets[name] = sorted(r["kept_final"])
        kept_names = list(sets)
        jac = [[jaccard(sets[a], sets[b]) for b in kept_names] for a in kept_names]
        counts = [0] * prepared.n_image
        for s in sets.values():
            for p in s:
                counts[p] += 1
        positions = {name: position_stats(s, rows, cols) for name, s in sets.items()}
        drawn = self.on_picture()
        if not drawn:
            packed = "its tiles" if self.scope.family == "internvl" else "base image, crops and newline tokens"
            notes.append(f"{self.scope.family_name}'s tokens are a 1 x {prepared.n_image} strip ({packed}, packed): "
                         "a position here is a place in that sequence (mean position), not a row and column of the "
                         "picture")
        return {"view": view, "grid": [rows, cols], "drawn": drawn, "strategies": kept_names, "sets": sets,
                "jaccard": jac, "counts": counts, "positions": positions, "notes": notes,
                "answers": {name: r["answer"] for name, r in runs.items()}}

    # ------------------------------------------------------------ random over seeds
    def _random_seeds(self, prepared, strategy, n: int, reference: str, truth: dict, max_new_tokens: int,
                      first: str | None = None) -> dict:
        digest = hashlib.sha1(prepared.pixel_values.float().cpu().numpy().tobytes()).hexdigest()
        seeds = [strategy.seed] + [s for s in range(MAX_SEEDS * 2) if s != strategy.seed][:n - 1]
        runs = []
        for seed in seeds:
            params = {**strategy.params(), "seed": seed}
            runs.append(self.quick(prepared, digest, get_strategy("random", **params), max_new_tokens))
        answers = [r["answer"] for r in runs]
        if first is not None:
            answers[0] = first
        correct = None if truth["answer"] is None else sum(same(a, truth["answer"]) for a in answers)
        return {"n": len(seeds), "seeds": seeds, "answers": answers, "kept": [r["kept"] for r in runs],
                "same_as_none": sum(same(a, reference) for a in answers), "correct": correct,
                "reference": reference, "judge": truth["judge"]}

    def random_seeds(self, image, question: str, keep: int | None, n: int = 5, params: dict | None = None,
                     max_new_tokens: int = 8, keep_ratio: float | None = None) -> dict:
        """``random`` at budget ``keep`` with ``n`` seeds (0..n-1) on this image: ``answers``, ``kept`` per seed,
        ``same_as_none`` (how many answer as none does), ``correct`` (how many give the scene's answer; None when
        unknown), ``view``, ``truth`` and ``none_answer``."""
        self.scope.check_question(question)
        if isinstance(n, float) and n.is_integer():
            n = int(n)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SEEDS:
            raise ValueError(f"seeds: n={n!r}, expected 1..{MAX_SEEDS}")
        keep, ratio = self._budget_first(keep, keep_ratio)
        if keep is None and ratio is None:
            raise ValueError("keep: give a budget for random (1..%s)" % (
                self.engine.geometry.n_patches if not self.scope.dynamic else "N, N this image's visual tokens"))
        p = {k: v for k, v in check_params(params).get("random", {}).items() if k != "seed"}
        strategy = get_strategy("random", keep=self._stand_in(keep, ratio), seed=0, **p)
        with self.scope.lock:
            image_, prepared, digest = self._prepare(image, question)
            if self.scope.dynamic:
                keep = self._budget_for(keep, ratio, prepared)
                strategy = get_strategy("random", keep=keep, seed=0, **p)
            view = self.scope.view(prepared)
            none = self.quick(prepared, digest, get_strategy("none"), max_new_tokens)
            truth = self.truth(image_, prepared.question)
            out = self._random_seeds(prepared, strategy, n, none["answer"], truth, max_new_tokens)
        return {**out, "view": view, "grid": self.grid_of(prepared), "drawn": self.on_picture(), "keep": keep,
                "visual_tokens": prepared.n_image, "truth": truth, "none_answer": none["answer"]}

    def random_band(self, strategies, budgets, n: int = 40, seeds: int = 5, progress=None, types=None,
                    seed: int | None = None) -> dict:
        """Accuracy on ``n`` held-out shapes questions at each budget: one sweep row per chosen strategy and budget
        (and none), and ``random`` once per seed 0..seeds-1 on the same questions, so that the spread of random's
        accuracy over its seeds is a band (``random_runs``: one list of rows per seed; the app draws it with
        ``app.plots.band_from_seeds``). ``types`` and ``seed`` pick the questions as ``Scope.sweep`` does
        (``seed`` also seeds k-means); random's own seeds stay 0..seeds-1."""
        if self.scope.dynamic:
            raise ValueError("random's band is a sweep over the shapes world's held-out questions, and "
                             + self.scope.sweep_info()["reason"] + "; random over N seeds on this image runs here")
        seed = bench.check_seed(seed)
        g = self.engine.geometry
        names = [s for s in _names(strategies) if s not in ("none", "random")]
        budget_list = parse_budgets(budgets, g.n_patches)
        if isinstance(n, float) and n.is_integer():
            n = int(n)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 400:
            raise ValueError(f"questions: n={n!r}, expected 1..400")
        if isinstance(seeds, float) and seeds.is_integer():
            seeds = int(seeds)
        if isinstance(seeds, bool) or not isinstance(seeds, int) or not 2 <= seeds <= MAX_SEEDS:
            raise ValueError(f"seeds={seeds!r}: expected 2..{MAX_SEEDS}")
        configs = [("none", {"name": "none"})]
        from .compare import BUDGET_FREE

        for name in names:
            seeded = {"seed": seed} if seed and name in bench.SEEDED else {}
            if name in BUDGET_FREE:
                configs.append((name, {"name": name, **seeded}))
            else:
                configs += [(name, {"name": name, "keep": b, **seeded}) for b in budget_list]
        random_cfgs = [(s, {"name": "random", "keep": b, "seed": s}) for s in range(seeds) for b in budget_list]
        from .compare import check_sweep_size

        # the same ceiling as a sweep's (random's seeds are its configurations too), before any work
        check_sweep_size(len(names) + 1, len(budget_list), len(configs) + len(random_cfgs), n)
        for _, p in configs + random_cfgs:
            self.engine.check(get_strategy(**p))
        total = len(configs) + len(random_cfgs)
        rows, runs = [], [[] for _ in range(seeds)]
        samples = bench.load_samples("shapes", n, types=types, seed=seed)
        for i, (label, p) in enumerate(configs + random_cfgs):
            if progress is not None:
                progress((i + 1) / total, f"{label} ({i + 1} of {total})")
            row = self.scope.evaluate(dict(p), samples)  # the model's lock per question, as a Sweep's
            if isinstance(label, int):
                row.update(label="random", seed=label)
                runs[label].append(row)
            else:
                row.update(label=label)
                rows.append(row)
        bench.add_prefill_speedups(rows)
        return {"rows": rows, "random_runs": runs, "n": n, "seeds": seeds, "budgets": budget_list, "seed": seed}

    # ------------------------------------------------------------ lessons and export
    def lesson(self, lesson_id: str, max_new_tokens: int = 8) -> dict:
        """Run one of ``LESSONS`` as a comparison (one timed repeat; ``inspect`` analyses included): ``lesson``,
        ``image`` (its file), ``view``, ``results`` (none first), ``inspect`` ([CLS] attention per ViT layer, ...),
        ``random_seeds`` when the lesson is about random."""
        lesson = lesson_by_id(lesson_id)
        if self.scope.dynamic:
            raise ValueError(f"the lessons are prepared on the embedded toy model (its shapes scenes, and budgets "
                             f"counted on its fixed grid); this model is {self.scope.family_name}, whose tokens are "
                             "not that grid: pick the embedded model in the Model menu")
        path = str(EXAMPLES_JSON.parent / lesson["example"])
        events = list(self.scope.compare_stream(path, lesson["question"], lesson["strategies"], lesson["keep"],
                                                lesson["params"], max_new_tokens=max_new_tokens, repeats=1, warmup=0))
        view = next(e for e in events if e["kind"] == "view")
        results = [e["result"] for e in events if e["kind"] == "result"]
        inspect = next((e for e in events if e["kind"] == "inspect"), {})
        out = {"lesson": lesson, "image": path, "view": view["view"], "grid": view["grid"], "results": results,
               "inspect": {k: v for k, v in inspect.items() if k != "kind"}}
        if lesson["focus"] == "seeds":
            out["random_seeds"] = self.random_seeds(path, lesson["question"], lesson["keep"], 5)
        return out

    def lessons(self) -> list[dict]:
        """``LESSONS`` (plain data: id, title, example image, question, strategies, budget, text, focus)."""
        return [dict(lesson) for lesson in LESSONS]

    def stages(self) -> dict:
        """Per registered strategy, where it acts with its defaults: ``stages`` (the stages it offers: "before" the
        LLM, "llm"), ``default`` (its default stage), ``vit`` (prunes inside the vision encoder)."""
        from .strategies import available

        g = self.engine.geometry
        out = {}
        for name in available():
            try:  # with a budget: some rules (IVTP's ViT stage) act only when there is one
                s = get_strategy(name, keep=max(1, g.n_patches // 4))
            except ValueError:  # vtw takes no budget
                s = get_strategy(name)
            out[name] = {"stages": list(s.stages), "default": s.stage,
                         "vit": bool(s.vit_prune_layers(g.vision_layers, g.feature_layer_index))}
        return out

    def view(self, image, question: str = "What is this?") -> dict:
        """The image as the model sees it (``view``, uint8 (H, W, 3)) and this image's grid (``grid_of``): what an
        export, the probe's picture and the painter draw on; ``drawn``: whether that grid lies over the picture
        (False: a packed strip, ``note`` says why); with the token ``layout``, one picture per view (``views``) and
        ``grid_on_view``, as the compare stream's view event."""
        self.scope.check_question(question)
        with self.scope.lock:
            _, prepared, _ = self._prepare(image, question)
            view = self.scope.view(prepared)
            layout = self.engine.adapter.token_layout(prepared)
            views = self.scope.views(prepared, layout)
        on_picture = self.on_picture()
        return {"view": view, "grid": self.grid_of(prepared), "visual_tokens": prepared.n_image, "layout": layout,
                "views": views, "grid_on_view": on_picture, "drawn": on_picture,
                "note": None if on_picture else self.strip_note(prepared.n_image)}


def objects_kept(scene: world.Scene, kept, rows: int, cols: int, share: float = 0.1) -> dict:
    """How a kept set covers a known scene's objects: ``objects`` (how many), ``with_kept_patch`` (objects with at
    least one kept patch of which ``share`` or more is that object), ``kept_on_objects`` (kept patches of which
    ``share`` or more is some object) and ``kept``. Patches of ``scene.image.width // cols`` pixels."""
    patch = scene.image.width // cols
    kept = list(kept)
    per_object = [scene.patch_coverage(patch, [i]) for i in range(len(scene.objects))]
    total = scene.patch_coverage(patch)
    return {"objects": len(scene.objects),
            "with_kept_patch": int(sum(any(cov[p] >= share for p in kept) for cov in per_object)),
            "kept_on_objects": int(sum(total[p] >= share for p in kept)), "kept": len(kept)}


def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def position_stats(kept, rows: int, cols: int) -> dict:
    """Where kept patches lie on a rows x cols grid: ``rows`` / ``cols`` histograms (count per grid row / column),
    ``centre`` [mean row, mean column] (the grid's middle is [(rows-1)/2, (cols-1)/2]), ``mean_index`` (mean
    row-major index over N - 1: 0 first, 1 last, 0.5 the middle), ``n``."""
    kept = list(kept)
    hist_r, hist_c = [0] * rows, [0] * cols
    for p in kept:
        r, c = divmod(p, cols)
        hist_r[r] += 1
        hist_c[c] += 1
    n = len(kept)
    centre = [sum(p // cols for p in kept) / n, sum(p % cols for p in kept) / n] if n else [None, None]
    mean_index = sum(kept) / n / max(rows * cols - 1, 1) if n else None
    return {"rows": hist_r, "cols": hist_c, "centre": centre, "mean_index": mean_index, "n": n,
            "middle": [(rows - 1) / 2, (cols - 1) / 2]}


def patch_fate(result: dict, patch: int, present: list | None = None) -> dict:
    """What a strategy did with one patch, from its result (and, for drops inside the LLM, the trace's
    ``patch_present`` per layer): ``state`` (kept, llm, before, vit, merged), ``layer`` (the LLM layer it was gone
    from, for llm), ``merged_into`` (the patch of the token it went into, for merged; for a kept token that others
    merged into, ``absorbed``: how many), and ``words``."""
    cols = result["grid"][1]
    kept, final = set(result["kept"]), set(result["kept_final"])
    groups = result.get("merge_groups")
    vit = result.get("kept_vit")
    where = lambda p: f"row {p // cols}, column {p % cols}"  # noqa: E731
    if patch in final:
        absorbed = 0
        if groups is not None:
            g = groups[patch]
            absorbed = sum(1 for q, h in enumerate(groups) if h == g and q != patch) if g >= 0 else 0
        words = "kept: it reaches the LLM's last layer"
        if absorbed:
            words += f", and {absorbed} other patch{'es' if absorbed > 1 else ''} merged into its token"
        return {"state": "kept", "layer": None, "merged_into": None, "absorbed": absorbed, "words": words}
    if patch in kept:
        layer = None
        if present is not None:
            layer = next((i for i, flags in enumerate(present) if not flags[patch]), None)
        words = ("dropped inside the LLM" + (f" before layer {layer} (layers 0-{layer - 1} read it)"
                                             if layer is not None else ""))
        return {"state": "llm", "layer": layer, "merged_into": None, "absorbed": 0, "words": words}
    if vit is not None and patch not in set(vit):
        return {"state": "vit", "layer": None, "merged_into": None, "absorbed": 0,
                "words": "dropped inside the vision encoder"}
    if groups is not None and groups[patch] >= 0:
        into = result["kept"][groups[patch]]
        return {"state": "merged", "layer": None, "merged_into": into, "absorbed": 0,
                "words": f"merged into the token at patch {into} ({where(into)})"}
    return {"state": "before", "layer": None, "merged_into": None, "absorbed": 0, "words": "dropped before the LLM"}


__all__ = ["Teacher", "LESSONS", "lesson_by_id", "world_answer", "image_digest", "parse_budgets", "jaccard", "objects_kept",
           "position_stats", "patch_fate", "MAX_FILM_STEPS", "MAX_SEEDS"]
