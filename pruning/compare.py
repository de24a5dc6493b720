"""Side-by-side comparison of pruning strategies on one image and one question: what the app calls.

``Scope`` holds one loaded model for the life of a process and serves one request at a time (a lock;
the app's queue also runs model calls one by one). Everything it returns is plain values (dicts, lists,
numbers, strings and one uint8 numpy array for the image the model sees), so the UI draws it without
importing torch.

- ``Scope.compare_stream``: yields ``{"kind": "view", ...}`` first (the image as the model sees it, how it was
  resized, and the off-world warnings), then one ``{"kind": "result", "result": {...}}`` per strategy as it
  finishes (the unpruned reference ``none`` first, always; timings with their spread, speedups from paired runs,
  the projection to LLaVA-1.5-7B), then ``{"kind": "inspect", ...}`` with this image's analyses.
  docs/architecture.md lists every field.
- ``Scope.compare``: the JSON API, the list of per-strategy results (the fields of ``python -m pruning
  ask --json`` plus what the overlay needs).
- ``Scope.sweep``: the library's ``bench`` sweep on held-out shapes questions, as table rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import analysis, bench, cost, offworld, projection, text_inputs
from .engine import Engine
from .budgets import keep_tokens
from .images import load_image
from .locks import FairLock
from .model import DEFAULT_MODEL_DIR, check_question, load_model
from .shapes import grammar
from .speed import spread
from .strategies import available, get_strategy
from .strategies.base import Strategy, check_params, parameter_specs, shown
# Words for the parameters' labels (the paper's symbol first).
LABELS = {
    "k_layers": "K: [CLS] layers ensembled (VTC-CLS eq. 9)", "ensemble": "E: how the K layers combine (eq. 9)",
    "layer": "layer: LLM layer where tokens are dropped (K)", "stage": "stage: where it prunes",
    "positions": "positions after pruning", "seed": "seed", "tau": "tau: question-word relevance threshold (eq. 8)",
    "ratio": "R: share of image tokens dropped at layer K (given, it replaces the budget)",
    "neighbours": "k: neighbours merged into each kept token",
    "iterations": "k-means iterations", "group": "layers per group", "llm_fraction": "share of LLM layers that prune",
    "vit": "stage 1: prune inside the ViT", "llm": "stage 2: prune inside the LLM",
    "qk_layer": "ViT layer whose q/k score and match (reader: the authors' code)",
    "attention": "[CLS] attention over heads (concat: one softmax, the authors' code)",
    "extra": "one extra token sums the pruned ones (the authors' code)",
    "fuse": "fused token's weights (raw: EViT eq. 2)", "head_keys": "keys over heads (mean: ToMe's code)",
    "text_encoder": "question embedding (clip: the authors' CLIP text tower; llm: the LLM's; auto: clip if present)",
    "theta": "theta: relevance weighting (1: as is, the authors' code; < 1: exp(theta / (2 (1 - theta)) r))",
    "image_pivots": "image pivots (largest key L1 norm)", "text_pivots": "text pivots (largest key L1 norm)",
    "reduction_ratio": "share of image tokens dropped when no budget is set (the app always sets one)",
    "contextual": "contextual tokens (empty: 10 of every 64 kept, the authors' split)",
    "cls_token": "[CLS] token enters the LLM as a dominant token (the authors' code)",
    "important_ratio": "r: share of the budget kept by [CLS] attention (the rest: diverse tokens)",
    "per_round": "near-duplicates dropped per round, at most (the authors' 8)",
    "order": "token order between merge rounds (tome: ToMe's code; spatial: row-major)",
    "patches": "patches to keep, row-major indices (e.g. 3, 4, 17; empty: the first budget patches)",
}
# Longer explanations of parameters whose effect depends on others, keyed (strategy, parameter).
HELP = {("fastv", "ratio"): "Used only when given: fastv then drops this share of its image tokens at layer K, and the "
                            "shared budget (keep, the budget slider) does not apply to fastv; the result's notes say "
                            "so. Not given, the budget decides; with no budget either, R's default (0.5) does."}
COMPARE_DEFAULT = ("none", "vtc-cls", "fastv", "vtw")
BUDGET_FREE = ("none", "vtw")  # strategies that ignore the budget (keep is not passed to them)
OWN_BUDGET = {"fastv": "ratio"}  # a parameter that, given for its strategy, sets that strategy's budget instead of keep
SEEDED = set(bench.SEEDED)  # strategies whose rule draws random numbers (the seed matters only there)
REPEATS = 5  # timed repeats per strategy in a comparison, each paired with one of none's (see Scope.compare_stream)
TIMINGS = ("vision_ms", "prefill_ms", "decode_ms_per_token", "total_ms", "ttft_ms")
SAMPLING = {"temperature": 0.0, "top_p": 1.0, "seed": 0}
ETA = 0.003  # VTW's KL threshold (Algorithm 1)
VISION_CACHE = 8  # images whose vision pass Scope keeps for the analyses of a re-run
SWEEP_NEW_TOKENS = 4  # tokens each question of a sweep decodes (``bench.evaluate``'s default)
# The most work one sweep request may ask: configurations (strategy x budget rows) x questions x new tokens. The
# app's default Sweep (vtc-cls, fastv, vtw at 3 budgets, 40 questions) is 8 x 40 x 4 = 1,280, and the default
# strategies on the slider's 400 questions 12,800; every strategy at 3 budgets on 100 questions is 47 x 100 x 4 =
# 18,800, which took 2.6 to 6.1 minutes of the embedded model on a shared 2-core machine (``python -m
# benchmarks.sweep_ceiling``, docs/robustness.md). The queue runs one request at a time, so this bounds how long one
# visitor's sweep keeps the others waiting.
SWEEP_CEILING = 20_000
# The families ``pruning.adapters`` drives, by ``config.model_type``, as the app names them.
FAMILY_NAMES = {"llava": "LLaVA-1.5", "qwen2_5_vl": "Qwen2.5-VL", "llava_onevision": "LLaVA-OneVision",
                "llava_next": "LLaVA-NeXT", "internvl": "InternVL"}


def strategy_controls(geometry=None) -> dict[str, list[dict]]:
    """Per strategy, the hyper-parameters a user may set (all but ``keep``), with their defaults and the values
    they accept: what the app's collapsed parameter sections are built from, so they follow the strategies'
    dataclasses. ``min`` / ``max`` (numbers; else None) and ``choices`` come from each parameter's ``Spec``, the
    source the library's own validation reads, so a control never offers what the library refuses; ``above``:
    ``min`` itself is excluded. With a model's ``geometry``, the layer bounds are that model's (an LLM layer below
    its depth, VTC-CLS's K up to its feature layer), as ``Engine.check`` applies them."""
    out = {}
    for name in available():
        strategy = get_strategy(name)
        cls = type(strategy)
        controls = []
        for pname, (spec, _) in (parameter_specs(cls).items() if name != "none" else []):  # none has no rule
            if pname == "keep":
                continue
            default = getattr(strategy, pname)
            if pname == "seed" and name not in SEEDED:
                continue
            if pname == "layer" and "llm" not in strategy.stages:
                continue  # before-only strategies never read it
            if name == "ivtp" and pname == "layer":
                continue  # IVTP prunes at the end of every group; layer is unused
            if pname == "stage" and len(strategy.stages) < 2:
                continue
            kind = {"choice": "choice", "bool": "bool", "float": "float", "int": "int"}.get(spec.kind, "text")
            low = high = None
            if kind in ("int", "float"):
                low, high = spec.low, spec.high
                if geometry is not None and spec.depth == "llm":
                    high = min(high, geometry.llm_layers - 1)
                elif geometry is not None and spec.depth == "vit":
                    high = min(high, geometry.feature_layer_index + 1)
            label = LABELS.get(pname, pname)
            if name == "vtc-cls" and pname == "positions":
                label += " (left as it is: rearrange before the LLM, keep at stage llm)"
            controls.append({"name": pname, "label": label, "kind": kind, "default": default,
                             "choices": list(spec.values(cls)) if kind == "choice" else None, "min": low, "max": high,
                             "above": spec.above, "help": HELP.get((name, pname))})
        out[name] = controls
    return out


def check_strategy_names(strategies) -> list[str]:
    """The strategies a request names (a list, or one comma-separated string), as a list of names; anything but
    text names is refused in words (unknown names are refused by ``get_strategy``, with the valid ones)."""
    if strategies is None:
        return []
    if isinstance(strategies, str):
        return [s.strip() for s in strategies.split(",") if s.strip()]
    if not isinstance(strategies, (list, tuple)):
        raise ValueError(f"strategies={shown(strategies)}: expected a list of strategy names; valid strategies: "
                         f"{', '.join(available())}")
    for s in strategies:
        if not isinstance(s, str):
            raise ValueError(f"strategies: {shown(s)} is not a strategy name; valid strategies: "
                             f"{', '.join(available())}")
    return list(strategies)


def result_json(result) -> dict:
    """``python -m pruning ask --json``'s schema: a stable subset of ``Result`` (plus the trace when present)."""
    keys = ("answer", "strategy", "params", "visual_tokens", "visual_tokens_kept", "tokens_per_layer",
            "image_tokens_per_layer", "kept", "kept_final", "grid", "timings", "tflops", "kv_cache_bytes",
            "kv_cache_bytes_per_layer", "peak_memory_bytes", "device")
    out = {k: getattr(result, k) for k in keys}
    out["notes"] = list(result.notes or [])  # what was changed in the input, or a fallback a strategy took
    if result.trace is not None:
        out["trace"] = result.trace
    return out


def own_fields(result) -> dict:
    """``result_json`` plus what the app shows of one run: where patches were dropped, merged groups, notes."""
    out = result_json(result)
    out.update(kept_vit=result.kept_vit, merge_groups=result.merge_groups, notes=result.notes or [],
               vit_tokens_per_layer=result.vit_tokens_per_layer)
    return out


def relative_fields(fields_: dict, reference: dict | None) -> dict:
    """``fields_`` plus the speedup over the unpruned ``reference`` (time to first token: vision + prefill),
    measured and as the TFLOPs estimate predicts, their ratio (efficiency), and whether the answer is the
    reference's."""
    out = dict(fields_)
    ttft = out["timings"]["vision_ms"] + out["timings"]["prefill_ms"]
    tf = out["tflops"]["vision"] + out["tflops"]["prefill"]
    if reference is None:
        out.update(speedup=1.0, speedup_predicted=1.0, efficiency=1.0, same_as_none=True)
    else:
        ref_ttft = reference["timings"]["vision_ms"] + reference["timings"]["prefill_ms"]
        ref_tf = reference["tflops"]["vision"] + reference["tflops"]["prefill"]
        measured, predicted = ref_ttft / max(ttft, 1e-9), ref_tf / max(tf, 1e-18)
        out.update(speedup=measured, speedup_predicted=predicted, efficiency=measured / predicted,
                   same_as_none=bench.normalise(out["answer"]) == bench.normalise(reference["answer"]))
    return out


def compare_fields(result, reference: dict | None) -> dict:
    """One strategy's entry of a comparison: ``own_fields`` and ``relative_fields`` against ``reference``."""
    return relative_fields(own_fields(result), reference)


def own_budget_notes(strategy, keep: int | None) -> list[str]:
    """The note for a strategy whose own budget parameter was given (``OWN_BUDGET``: fastv's R) while a shared
    budget was set: the budget did not apply to it."""
    param = OWN_BUDGET.get(strategy.name)
    if param is None or keep is None or strategy.keep is not None:
        return []
    value = getattr(strategy, param)
    return [f"{strategy.name}: R = {value:g} was given, so it drops {value:.0%} of its image tokens at layer "
            f"{strategy.layer}; the budget ({keep} tokens) does not apply to it"]


def first_token_run(engine, prepared, strategy) -> dict:
    """The vision pass and the prefill alone, timed as ``Engine.timed_run`` times them: the reference side of a
    timed pair (no decode: only none's time to first token is compared)."""
    dev = str(engine.device)
    with cost.Stopwatch(dev) as sw_v:
        vision = engine.vision_pass(prepared, seed=strategy.seed, strategy=strategy)
    with cost.Stopwatch(dev) as sw_p:
        engine.prefill(prepared, vision, strategy)
    return {"vision_ms": sw_v.ms, "prefill_ms": sw_p.ms, "ttft_ms": sw_v.ms + sw_p.ms}


def timed_pairs(engine, prepared, strategy, max_new_tokens: int, repeats: int, warmup: int, reference=None):
    """``warmup`` untimed runs of ``strategy``, then ``repeats`` timed runs (``Engine.timed_run``, plus ``ttft_ms``);
    with a ``reference`` strategy, each repeat also times the reference's first token (``first_token_run``) right
    before it (even repeats) or right after (odd), so each pair shares the machine's state of the moment. Returns
    ``(runs, reference_runs, (state, tokens) of the last run)``."""
    def run():
        timings, value = engine.timed_run(prepared, strategy, max_new_tokens, SAMPLING)
        return {**timings, "ttft_ms": timings["vision_ms"] + timings["prefill_ms"]}, value

    for _ in range(warmup):
        run()
    runs, refs, value = [], [], None
    for i in range(repeats):
        if reference is not None and i % 2 == 0:
            refs.append(first_token_run(engine, prepared, reference))
        timings, value = run()
        runs.append(timings)
        if reference is not None and i % 2 == 1:
            refs.append(first_token_run(engine, prepared, reference))
    return runs, refs, value


SPEEDUP_METHOD = ("ratio of medians: none's time to first token (vision + prefill), timed right before or after each "
                  "of this strategy's repeats, over this strategy's; spread: min, quartiles and max of the per-repeat "
                  "ratios")


def timing_fields(runs: list[dict], refs: list[dict]) -> dict:
    """``timings`` (medians, as ``ask --json``), ``timing_spread`` (median, min, max, quartiles, n of each of
    ``TIMINGS``), ``repeats``; with reference runs, ``speedup`` / ``prefill_speedup`` (ratio of medians) and
    ``speedup_spread`` / ``prefill_speedup_spread`` (the per-repeat ratios), else those spreads are None."""
    out = {"timings": {k: statistics.median(r[k] for r in runs) for k in TIMINGS if k != "ttft_ms"},
           "timing_spread": {k: spread([r[k] for r in runs]) for k in TIMINGS}, "repeats": len(runs),
           "speedup_spread": None, "prefill_speedup_spread": None, "speedup_method": SPEEDUP_METHOD}
    if refs:
        for prefix, key in (("", "ttft_ms"), ("prefill_", "prefill_ms")):
            ref_median = statistics.median(r[key] for r in refs)
            out[f"{prefix}speedup"] = ref_median / max(out["timing_spread"][key]["median"], 1e-9)
            out[f"{prefix}speedup_spread"] = spread([a[key] / max(b[key], 1e-9) for a, b in zip(refs, runs)])
    return out


def timing_note(fields_: dict, reference: dict, embedded: bool, report: dict | None = None) -> str | None:
    """One line saying why the measured speedup is below 1 or not distinguishable from 1 (its per-repeat range
    holds 1), with the figures it rests on; None when the speedup is clear (or for the reference itself)."""
    sp = fields_.get("speedup_spread")
    if sp is None or (fields_["speedup"] >= 1 and sp["min"] >= 1):
        return None
    pairs = f"{sp['n']} pair" + ("s" if sp["n"] != 1 else "")
    measured = (f"measured {fields_['speedup']:.2f}x ({sp['min']:.2f}x to {sp['max']:.2f}x over {pairs}; "
                f"FLOPs predict {fields_['speedup_predicted']:.2f}x)")
    if not embedded:
        if sp["max"] < 1:
            return (f"Slower in every pair: {measured}; this strategy's own work (scoring, selecting, merging) costs "
                    "more here than the arithmetic it removes.")
        return f"Within the noise: {measured}; the difference is smaller than the run-to-run variation here."
    gflops = reference["tflops"]["prefill"] * 1e3
    ms = reference["timings"]["prefill_ms"]
    why = (f"{gflops:.2f} GFLOPs in {ms:.1f} ms ({gflops / ms * 1e3:.0f} GFLOP/s): at that size fixed per-layer costs "
           "(Python, kernel launches, the selection) dominate, and pruning does not remove them")
    if report is not None and projection.unavailable(report) is None:
        none = next(r for r in report["rows"] if r.get("strategy") == "none")
        rate = none["tflops"]["prefill"] * 1e3 / none["timings"]["prefill_ms"]["median"] * 1e3  # GFLOP/s
        why = (f"{gflops:.2f} GFLOPs, {gflops / rate * 1e3:.1f} ms of arithmetic at the {rate:.0f} GFLOP/s the speed "
               f"report measured at LLaVA-7B's widths, yet it takes {ms:.1f} ms: the rest is fixed per-layer cost "
               "(Python, kernel launches, the selection) that pruning does not remove")
    return f"Toy timings are overhead-bound: {measured}. The toy's unpruned prefill is {why}."


class _LRU(OrderedDict):
    """A small least-recently-used cache (results of identical requests, per model)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key], True
        value = make()
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value, False


def _check_budget(keep, n_patches: int | None, notes: list | None = None) -> int | None:
    """``keep`` as a whole number in 1..n_patches; above the grid it is clamped, and ``notes`` says so.
    ``n_patches`` None: the count depends on the image (a dynamic grid), so only ``keep >= 1`` is checked here and
    ``Scope.compare_stream`` clamps it to the image's own tokens once it is prepared."""
    if keep is None:
        return None
    top = "1..N, N the image's own tokens" if n_patches is None else f"1..{n_patches}"
    if isinstance(keep, float) and keep.is_integer():
        keep = int(keep)
    if isinstance(keep, bool) or not isinstance(keep, int):
        raise ValueError(f"keep={shown(keep)}: expected a whole number of visual tokens ({top})")
    if keep < 1:
        of = "this image's" if n_patches is None else f"the {n_patches}"
        raise ValueError(f"keep={shown(keep)}: keep at least 1 of {of} visual tokens")
    if n_patches is None:
        return keep
    if keep > n_patches and notes is not None:
        notes.append(f"keep={shown(keep)} is more than the {n_patches} visual tokens of the grid: clamped to "
                     f"{n_patches}")
    return min(keep, n_patches)


def _check_ratio(keep_ratio) -> float | None:
    """``keep_ratio``: a share of the image's own visual tokens, in (0, 1]."""
    if keep_ratio is None:
        return None
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio={shown(keep_ratio)}: expected a share of the image's visual tokens in (0, 1]")
    return float(keep_ratio)


class Scope:
    """One loaded model and the requests the app makes of it (one at a time)."""

    def __init__(self, model: str | None = None, load_in_4bit: bool = False, device: str | None = None,
                 threads: int | None = None, cache_size: int = 128, speed_report=projection.DEFAULT_REPORT):
        """``speed_report``: the ``python -m pruning speed --json`` report (a dict, or a path; default: the one the
        app's Sweep tab shows) each result's ``projected`` costs come from; None: none (``projected`` then says
        so)."""
        source = model or str(DEFAULT_MODEL_DIR)
        self.speed_report = (speed_report if speed_report is None or isinstance(speed_report, dict)
                             else projection.load_report(speed_report))
        self.is_embedded = Path(source).resolve() == DEFAULT_MODEL_DIR.resolve()
        # The embedded model's matrices are tiny: one CPU thread is as fast as two, and it never stalls
        # when the other core is busy (two OpenMP threads sharing one free core wait on each other).
        if threads is None and self.is_embedded:
            threads = 1
        if threads is not None:
            if not isinstance(threads, int) or threads < 1:
                raise ValueError(f"threads={threads!r}: expected an integer >= 1")
            torch.set_num_threads(threads)
        self.engine = Engine(load_model(source, load_in_4bit=load_in_4bit, device=device))
        self.source = source
        # The family (``config.model_type``) and whether its token grid is per image: Qwen2.5-VL's grid follows the
        # image's size, the anyres families' and InternVL's rows follow its crops or tiles (``geometry.n_patches``
        # is 0 there), so budgets, the view and the overlay cannot assume one grid.
        self.family = self.engine.lm.model.config.model_type
        self.family_name = FAMILY_NAMES.get(self.family, self.family)
        self.dynamic = self.engine.geometry.n_patches == 0
        self.lock = FairLock()  # first come, first served: a Sweep lets go between questions (sweep)
        # Identical requests (same image pixels, question, strategy parameters, tokens) reuse their attention
        # trace and analyses, never their timings: when the budget slider moves, none's and vtw's traces
        # (which ignore the budget) and VTW's KL are not recomputed.
        self._runs = _LRU(cache_size)
        self._analyses = _LRU(cache_size)
        # The vision pass of the last few images (tensors, on the model's device: ~10 MB for LLaVA-1.5): only
        # a re-run on the same image (the budget slider) needs it.
        self._vision = _LRU(min(cache_size, VISION_CACHE))

    @property
    def teach(self):
        """The Teach and Lessons tabs' requests on this model (``pruning.teach.Teacher``: ground truth, probe,
        handpick, budget film, agreement, random over seeds, lessons); made on first use."""
        if getattr(self, "_teacher", None) is None:
            from .teach import Teacher

            self._teacher = Teacher(self)
        return self._teacher

    # ------------------------------------------------------------ what the UI needs to build itself
    def info(self) -> dict:
        """What the page is built from. On a family whose grid is per image (``dynamic``), ``grid`` and
        ``n_patches`` are None (there is no one grid to name) and ``budget`` is a ratio of each image's own tokens;
        ``overlay`` says how the kept patches are drawn (``overlay_info``); ``sweep`` whether the shapes sweep runs on
        this model."""
        g = self.engine.geometry
        return {"model": self.source, "embedded": self.is_embedded, "load_in_4bit": self.engine.lm.load_in_4bit,
                "device": str(self.engine.device), "family": self.family, "family_name": self.family_name,
                "dynamic": self.dynamic, "grid": None if self.dynamic else [g.rows, g.cols],
                "n_patches": None if self.dynamic else g.n_patches, "image_size": g.image_size or None,
                "llm_layers": g.llm_layers, "vision_layers": g.vision_layers,
                "feature_layer": g.feature_layer_index, "strategies": available(),
                "default_strategies": [s for s in COMPARE_DEFAULT if s in available()],
                "controls": strategy_controls(g), "repeats": REPEATS, "budget": self.budget_info(),
                "overlay": self.overlay_info(), "sweep": self.sweep_info(),
                "question_forms": grammar.question_forms() if self.is_embedded else [],
                "projection": self.projection_info()}

    def budget_info(self) -> dict:
        """How the page asks for a budget. A fixed grid: ``unit`` "count", 1..n_patches visual tokens. A dynamic grid:
        ``unit`` "ratio", a share of each image's own tokens in (0, 1] (``compare_stream``'s ``keep_ratio``), because
        a count has no maximum that holds for every image; ``keep`` as a count is still taken there, clamped to the
        image's tokens. ``sentence`` says which, in words."""
        g = self.engine.geometry
        if not self.dynamic:
            return {"unit": "count", "min": 1, "max": g.n_patches, "step": 1, "default": max(1, g.n_patches // 2),
                    "sentence": f"a count of the {g.n_patches} visual tokens of the {g.rows}x{g.cols} grid"}
        return {"unit": "ratio", "min": 0.01, "max": 1.0, "step": 0.01, "default": 0.5,
                "sentence": f"a share of this image's own visual tokens: {self.family_name}'s token count depends on "
                            "the image (" + ("its size" if self.family == "qwen2_5_vl" else "its crops or tiles") +
                            "), so no count fits every image; each result says how many tokens its image had"}

    def overlay_info(self) -> dict:
        """How the kept patches are drawn: ``drawn`` (always True now), ``note`` (None: nothing withheld) and
        ``panels`` (in words, or None). LLaVA-1.5 and Qwen2.5-VL prune one row-major grid of the picture as the model
        sees it; the anyres families' and InternVL's rows are several grids packed into one 1 x N strip, so the
        ``view`` event carries their ``layout`` (``Adapter.token_layout``: each row's view and cell) and one picture
        per view (``views``), and the app draws each view's kept cells on its own picture, side by side."""
        panels = {"llava_onevision": "the base image | the crops stitched", "llava_next": "the base image | the crops "
                  "stitched", "internvl": "the tiles stitched | the thumbnail"}.get(self.family)
        return {"drawn": True, "note": None, "panels": panels}

    def sweep_info(self) -> dict:
        """Whether ``sweep`` runs here: its budgets are counts of one fixed grid (the shapes questions' sweep), which a
        dynamic grid does not have."""
        if not self.dynamic:
            return {"available": True, "reason": None}
        return {"available": False,
                "reason": f"the sweep is not run on {self.family_name}: its budgets are counts of one fixed grid, and "
                          f"{self.family_name}'s token count changes from image to image (use the Compare tab's "
                          "share of each image's tokens, or lmms-eval with the prunescope plugin)"}

    def projection_reason(self) -> str | None:
        """Why this model's results carry no projection (None: they do). The projection is onto LLaVA-1.5-7B from a
        speed report measured at its widths: it stands for the same request on that model, which is meaningful for
        the LLaVA-1.5 family only; another family's kept counts on LLaVA-1.5-7B would be a different model's
        cost."""
        if self.family != "llava":
            from .geometries import FAMILY_GEOMETRIES

            own = next((g.name for g in FAMILY_GEOMETRIES.values() if g.family == self.family), None)
            return (f"this model is {self.family_name}, and the projection is onto LLaVA-1.5-7B"
                    + (f"; `python -m pruning speed --geometry {own}` times {self.family_name} at its real widths"
                       if own else ""))
        return projection.unavailable(self.speed_report)

    def projection_info(self) -> dict:
        """Whether results carry a projection to LLaVA-1.5-7B: ``available``, ``label`` (what it is projected from,
        on which machine) or ``reason`` (why not)."""
        reason = self.projection_reason()
        if reason is not None:
            return {"available": False, "reason": reason}
        return {"available": True, "machine": projection.machine_words(self.speed_report),
                "command": self.speed_report.get("command")}

    def model_card(self) -> dict | None:
        """The embedded model's measured accuracy (its evaluation report), or None for other models."""
        report = Path(self.source) / "evaluation.json"
        if not self.is_embedded or not report.is_file():
            return None
        return json.loads(report.read_text())

    # ------------------------------------------------------------ compare
    def _strategies(self, strategies, keep, params: dict | None) -> list[Strategy]:
        """``none`` and the named strategies (each once), built with their parameters and the shared budget; the
        names and ``params`` are checked as a whole first (``check_params``), so nothing is built from a request
        that is refused."""
        names = ["none"] + [s for s in dict.fromkeys(check_strategy_names(strategies)) if s != "none"]
        params = check_params(params)
        out = []
        for name in names:
            p = dict(params.get(name) or {})
            if name not in BUDGET_FREE and keep is not None and OWN_BUDGET.get(name) not in p:
                p["keep"] = keep
            out.append(get_strategy(name, **p))
        return out

    def compare_stream(self, image, question: str, strategies=COMPARE_DEFAULT, keep: int | None = None,
                       params: dict | None = None, max_new_tokens: int = 8, repeats: int = REPEATS, warmup: int = 1,
                       eta: float = ETA, inspect: bool = True, keep_ratio: float | None = None):
        """Run every strategy (``none`` first) on one image and question; yield plain events as they finish.
        Every request is checked before anything runs; what was changed in it (the image's animation or
        rotation, control characters removed from the question, a budget above the grid clamped) is said in
        each result's ``notes``, before the strategy's own.

        Timing: ``none`` runs ``warmup`` + ``repeats`` times; every other strategy ``warmup`` + ``repeats`` times,
        each repeat paired with a timed vision pass + prefill of ``none`` right before or after it (``timed_pairs``),
        so its speedup is a ratio of runs made moments apart, with the per-repeat spread (``timing_fields``).

        The budget: ``keep`` (a count) or ``keep_ratio`` (a share of the image's own tokens, in (0, 1]), not both.
        On a dynamic grid (``info()["dynamic"]``) both are turned into a count once the image is prepared (a count is
        clamped to the image's tokens; the notes say so). On a family that refuses a strategy (docs/strategies.md,
        the strategy x family table) the refusal comes before the first event, so nothing runs."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= 512:
            raise ValueError(f"max_new_tokens={shown(max_new_tokens)}: expected 1..512")
        for name, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 50:
                raise ValueError(f"{name}={shown(value)}: expected {low}..50")
        self.check_question(question)
        eta = bench.check_eta(eta)
        budget_notes: list[str] = []
        ratio = _check_ratio(keep_ratio)
        if ratio is not None and keep is not None:
            raise ValueError(f"keep={shown(keep)} and keep_ratio={shown(keep_ratio)}: give one budget, a count or a "
                             "share of the image's tokens")
        n_grid = None if self.dynamic else self.engine.geometry.n_patches
        keep = _check_budget(keep, n_grid, budget_notes)
        if ratio is not None and not self.dynamic:
            keep = keep_tokens(ratio, n_grid)
        # on a dynamic grid the strategies are checked with a stand-in count now and built with the image's own later
        chosen = self._strategies(strategies, 1 if ratio is not None and keep is None else keep, params)
        for strategy in chosen:
            self.engine.check(strategy, max_new_tokens)  # layers beyond the model's depth, before running
        image_notes: list[str] = []
        image = load_image(image, notes=image_notes)  # the first step that reads more than the request itself
        with self.lock:
            prepared = self.engine.prepare(image, question)
            if self.dynamic and (keep is not None or ratio is not None):
                keep = self._image_budget(keep, ratio, prepared.n_image, budget_notes)
                chosen = self._strategies(strategies, keep, params)
            digest = hashlib.sha1(prepared.pixel_values.float().cpu().numpy().tobytes()).hexdigest()
            self._check_family(prepared, digest, chosen)
            view = self.view(prepared)
            layout = self.engine.adapter.token_layout(prepared)
            if self.family == "llava":
                world = offworld.check(view, image.size, prepared.question, self.engine.lm.processor.image_processor,
                                       self.is_embedded)
            else:  # the LLaVA processor's resize rule does not apply: say what this family's processor made
                world = {"resize": self.family_resize(image.size, view, prepared, layout), "warnings": [],
                         "image_stats": None}
            overlay = self.overlay_info()
            yield {"kind": "view", "view": view, "layout": layout, "views": self.views(prepared, layout),
                   "grid_on_view": self.family in ("llava", "qwen2_5_vl"),
                   "grid": [prepared.rows or self.engine.geometry.rows, prepared.cols or self.engine.geometry.cols],
                   "view_note": world["resize"]["sentence"], "resize": world["resize"], "warnings": world["warnings"],
                   "image_stats": world["image_stats"], "overlay_drawn": overlay["drawn"],
                   "overlay_note": overlay["note"], "visual_tokens": prepared.n_image}
            request_notes = image_notes + list(prepared.notes or [])
            reference = None
            for strategy in chosen:
                fields_ = self._measured(prepared, strategy, reference, max_new_tokens, repeats, warmup)
                key = (digest, prepared.question, strategy.name, json.dumps(strategy.params(), sort_keys=True),
                       max_new_tokens)
                fields_["trace"], reused = self._runs.get_or(key, lambda: self.engine.trace(
                    prepared, strategy, max_new_tokens, dict(SAMPLING)))
                fields_["notes"] = request_notes + (budget_notes if strategy.keep is not None else []) + \
                    own_budget_notes(strategy, keep) + fields_["notes"]
                fields_["trace_reused"] = reused  # True: the attention trace of an earlier identical request
                fields_["offworld_warnings"] = world["warnings"]
                fields_.update(self.teach.card_fields(image, prepared, strategy, fields_, reference, max_new_tokens))
                if reference is None:
                    reference = fields_
                yield {"kind": "result", "result": fields_}
            if inspect:
                yield {"kind": "inspect", **self._inspect(image, digest, prepared, chosen, keep, eta)}

    @staticmethod
    def _image_budget(keep: int | None, ratio: float | None, n_image: int, notes: list) -> int:
        """A dynamic grid's budget for one prepared image of ``n_image`` tokens: a count clamped to them, or a share
        of them (``budgets.keep_tokens``); ``notes`` says what it became."""
        if ratio is not None:
            count = keep_tokens(ratio, n_image)
            notes.append(f"keep_ratio={ratio:g}: {count} of this image's {n_image} visual tokens")
            return count
        if keep > n_image:
            notes.append(f"keep={keep} is more than this image's {n_image} visual tokens: clamped to {n_image}")
        return min(keep, n_image)

    def _check_family(self, prepared, digest: str, chosen: list[Strategy]) -> None:
        """Refuse, before anything runs, a strategy this model's family cannot run (docs/strategies.md, the strategy
        x family table: topk-sim and visionzip need a [CLS] feature or per-patch keys, IVTP prunes inside the ViT by
        [CLS] attention and queries the LLM with the [CLS] feature): each strategy's own selection is tried on this
        image's vision pass (the cached one the analyses reuse), and the library's message is given with the
        family's name. LLaVA-1.5 runs every strategy, so nothing is tried there."""
        if self.family == "llava":
            return
        engine = self.engine
        vision, _ = self._vision.get_or(digest, lambda: engine.vision_pass(prepared))
        for strategy in chosen:
            try:
                if strategy.vit_prune_layers(engine.geometry.vision_layers, engine.geometry.feature_layer_index):
                    engine.vision_pass(prepared, seed=strategy.seed, strategy=strategy)
                elif strategy.stage == "before":
                    ctx = vision
                    if strategy.needs_projected or strategy.question_inputs():
                        ctx = engine._strategy_inputs(prepared, vision, strategy)
                    strategy.select_before_llm(ctx)
                if strategy.needs_group_attention and strategy.llm_drop_layers(len(engine.layers)):
                    text_inputs.pseudo_setup(engine, prepared, vision, strategy)  # IVTP's [CLS] fallback query
            except ValueError as e:
                raise ValueError(f"strategy {strategy.name} does not run on {self.family_name}: {e} (docs/strategies.md"
                                 ", the strategy x family table)") from None

    def family_resize(self, original: tuple[int, int], view: np.ndarray, prepared, layout: dict) -> dict:
        """``resize`` for a family other than LLaVA-1.5 (``original`` [w, h], ``resized``, ``input`` [w, h] of the
        picture shown, ``cut`` None, ``sentence``): what its processor made of the upload, from its own output."""
        h, w = view.shape[:2]
        ow, oh = original
        out = {"original": [ow, oh], "resized": [w, h], "input": [w, h], "cut": None}
        if self.family == "qwen2_5_vl":
            out["sentence"] = (f"Your {ow} x {oh} image was resized to {w} x {h} px (Qwen2.5-VL's smart_resize: sides "
                               f"rounded to whole merged tokens, nothing cut off): {prepared.rows} x {prepared.cols} = "
                               f"{prepared.n_image} visual tokens, one per {h // prepared.rows} x {w // prepared.cols} "
                               "px square.")
        elif self.family == "internvl":
            tiles = prepared.pixel_values.shape[0]
            first = layout["views"][0]
            if tiles > 1:
                out["sentence"] = (f"Your {ow} x {oh} image became {first['tiles'][0]} x {first['tiles'][1]} tiles of "
                                   f"{w} x {h} px (shown stitched, left) and a thumbnail of the whole picture (right); "
                                   f"the model sees {prepared.n_image} visual tokens over all of them.")
            else:
                out["sentence"] = (f"Your {ow} x {oh} image became one tile of {w} x {h} px (shown); the model sees "
                                   f"{prepared.n_image} visual tokens.")
        else:
            crops = layout["views"][1]
            out["sentence"] = (f"Your {ow} x {oh} image became a base image of {w} x {h} px (shown left) and "
                               f"{crops['tiles'][0]} x {crops['tiles'][1]} crops of that size (shown stitched, right: "
                               f"their token grid is {crops['rows']} x {crops['cols']} after the padding is cut"
                               + (" and the grid shrunk" if "shrunk" in crops["label"] else "") +
                               f"); the model sees {prepared.n_image} visual tokens over all of them, "
                               f"{len(layout['newline'])} newline tokens included.")
        return out

    def check_question(self, question) -> None:
        """The question's own checks, before any work and outside the lock: text, not empty, at most
        ``model.MAX_QUESTION_CHARS`` characters (counted, never tokenized), no image placeholder."""
        check_question(question, getattr(self.engine.lm.processor, "image_token", "<image>"))
        if not question.strip():
            raise ValueError("question is empty: type a question about the image")

    def _measured(self, prepared, strategy, reference: dict | None, max_new_tokens: int, repeats: int,
                  warmup: int) -> dict:
        """One strategy's entry, untraced: its runs timed (paired with none's unless it is the reference itself),
        ``compare_fields`` with the paired speedups and their spread, ``timing_note`` and ``projected``."""
        if str(self.engine.device).startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        runs, refs, (state, tokens) = timed_pairs(self.engine, prepared, strategy, max_new_tokens, repeats, warmup,
                                                  None if reference is None else get_strategy("none"))
        peak = torch.cuda.max_memory_allocated() if str(self.engine.device).startswith("cuda") else None
        measured = timing_fields(runs, refs)
        result = self.engine.make_result(prepared, strategy, state, tokens, measured.pop("timings"), peak, None)
        own = own_fields(result)
        own["notes"] = own["notes"][len(prepared.notes or []):]  # the question's notes are the request's
        out = relative_fields(own, reference)
        out.update(measured)
        if reference is not None:
            out["efficiency"] = out["speedup"] / out["speedup_predicted"]
        out["timing_note"] = None if reference is None else timing_note(out, reference, self.is_embedded,
                                                                          self.speed_report)
        reason = self.projection_reason()
        out["projected"] = (projection.project(out, self.speed_report) if reason is None else
                            {"available": False, "reason": reason, "label": f"No projection: {reason}."})
        return out

    def warm_up(self) -> None:
        """One untimed comparison on a blank image, so the first visitor does not pay for cold kernels
        (its cache entries never match a real request's image)."""
        blank = np.full((self.engine.geometry.image_size or 224,) * 2 + (3,), 127, np.uint8)
        budget = ({"keep_ratio": 0.5} if self.dynamic else {"keep": max(1, self.engine.geometry.n_patches // 2)})
        for _ in self.compare_stream(blank, "How many objects are there?", COMPARE_DEFAULT, repeats=1, **budget):
            pass

    def compare(self, image, question: str, strategies=COMPARE_DEFAULT, keep: int | None = None,
                params: dict | None = None, max_new_tokens: int = 8, repeats: int = REPEATS,
                warmup: int = 1, keep_ratio: float | None = None) -> list[dict]:
        """The JSON API: one dict per strategy (``none`` first)."""
        return [e["result"] for e in self.compare_stream(image, question, strategies, keep, params, max_new_tokens,
                                                          repeats, warmup, inspect=False, keep_ratio=keep_ratio)
                if e["kind"] == "result"]

    def view(self, prepared) -> np.ndarray:
        """(H, W, 3) uint8: the image as the model sees it (resized, cropped), from the processor's output.
        Qwen2.5-VL: its flattened patches put back in place (the inverse of the processor's patch layout), so the
        merged-token grid lies over it row-major. LLaVA-OneVision / NeXT: the base image (the first of the crops);
        InternVL: the thumbnail (the last tile) or the only tile."""
        proc = self.engine.lm.processor.image_processor
        pv = prepared.pixel_values.float().cpu()
        if self.family == "qwen2_5_vl":
            _, gh, gw = (int(x) for x in prepared.vision_inputs["image_grid_thw"][0])
            m, ps, tp = proc.merge_size, proc.patch_size, proc.temporal_patch_size
            # processor: (t, T, C, gh/m, m, ps, gw/m, m, ps) -> (t, gh/m, gw/m, m, m, C, T, ps, ps), flattened
            x = pv[: gh * gw].reshape(gh // m, gw // m, m, m, 3, tp, ps, ps)[:, :, :, :, :, 0]
            image = x.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * ps, gw * ps)
        elif self.family == "internvl":
            image = pv[-1]
        else:
            image = pv.reshape(-1, *pv.shape[-3:])[0]
        return self._pixels(image)

    def _pixels(self, image: torch.Tensor) -> np.ndarray:
        """(3, H, W) normalised -> (H, W, 3) uint8, with the processor's mean and std."""
        proc = self.engine.lm.processor.image_processor
        mean = torch.tensor(proc.image_mean).view(3, 1, 1)
        std = torch.tensor(proc.image_std).view(3, 1, 1)
        pixels = image * std + mean  # (3, H, W) in 0..1
        return (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()

    def views(self, prepared, layout: dict) -> list[np.ndarray]:
        """One (H, W, 3) uint8 picture per view of ``layout`` (``Adapter.token_layout``): LLaVA-1.5 and Qwen2.5-VL
        the image as the model sees it (``view``); the anyres families the base image, then the crops stitched back
        into the high-res picture they were cut from (the processor's padding included: the view's ``box`` says which
        pixels its token grid covers); InternVL the tiles stitched likewise, then the thumbnail."""
        if self.family in ("llava", "qwen2_5_vl"):
            return [self.view(prepared)]
        pv = prepared.pixel_values.float().cpu()
        pv = pv.reshape(-1, *pv.shape[-3:])  # (images, 3, h, w): anyres (base, crops...), InternVL (tiles, thumbnail)
        out = []
        for v in layout["views"]:
            rows, cols = v["tiles"]
            if len(v["sources"]) != rows * cols or max(v["sources"]) >= pv.shape[0]:
                raise ValueError(f"{self.family_name}: view {v['name']} names images {v['sources']} of "
                                 f"{pv.shape[0]}")
            tiles = pv[v["sources"]]  # (rows * cols, 3, h, w), row-major
            h, w = tiles.shape[-2:]
            stitched = tiles.view(rows, cols, 3, h, w).permute(2, 0, 3, 1, 4).reshape(3, rows * h, cols * w)
            out.append(self._pixels(stitched))
        return out


    def _inspect(self, image, digest: str, prepared, chosen: list[Strategy], keep: int | None, eta: float) -> dict:
        """This image's analyses: [CLS] attention per ViT layer, VTC-CLS Fig. 2, VTW's KL per withdrawal
        layer (when vtw runs), IVTP's question-word relevance (when ivtp runs). Each is cached by what it
        depends on (the budget changes only Fig. 2's overlap)."""
        engine, g = self.engine, self.engine.geometry
        question = prepared.question
        sample = [bench.Sample(image, question, "")]
        vision, _ = self._vision.get_or(digest, lambda: engine.vision_pass(prepared))
        out: dict = {"cls_attention": None, "consistency": None, "vtw_kl": None, "ivtp_relevance": None,
                     "inspect_note": None}
        if self.family != "llava":
            out["inspect_note"] = (f"The [CLS]-attention heatmap and VTC-CLS Fig. 2 are not drawn for "
                                   f"{self.family_name}: its vision tower gives no [CLS] attention over these rows "
                                   "(the strategies read a named substitute, mean attention received)")
        elif vision.cls_attention is not None:
            out["cls_attention"] = vision.cls_attention.float().mean(1).tolist()  # (L_v, N)
            budget = keep if keep is not None else max(1, g.n_patches // 4)
            out["consistency"], _ = self._analyses.get_or(
                ("consistency", digest, question, budget),
                lambda: analysis.consistency_and_shares(engine, sample, [budget], progress=False))
        names = [s.name for s in chosen]
        if "vtw" in names:
            vtw = chosen[names.index("vtw")]
            kl, _ = self._analyses.get_or(("vtw_kl", digest, question, eta),
                                          lambda: bench.calibrate_vtw(engine, sample, eta=eta, progress=False))
            out["vtw_kl"] = {**kl, "used_layer": vtw.llm_layer(g.llm_layers)}
        if "ivtp" in names:
            out["ivtp_relevance"] = self.word_relevance(prepared, vision, chosen[names.index("ivtp")])
        return out

    def word_relevance(self, prepared, vision, strategy) -> dict:
        """IVTP Fig. 5: each question token and its CLIP-text relevance to the image (eq. 5-7)."""
        relevance, index, note = self.engine.text_relevance(prepared, vision)
        if relevance is None:
            return {"tokens": [], "tau": strategy.tau, "note": note}
        tok = self.engine.lm.processor.tokenizer
        ids = prepared.input_ids[index].tolist()
        words = [tok.decode([i]) for i in ids]
        values = relevance[index].float().tolist()
        return {"tokens": [[w, v] for w, v in zip(words, values)], "tau": strategy.tau, "note": None}

    # ------------------------------------------------------------ sweep
    def sweep(self, strategies, budgets: list[int], n: int = 40, types=None, progress: bool = True,
              seed: int | None = None) -> list[dict]:
        """Accuracy and cost per (strategy, budget) on ``n`` held-out shapes questions (the ``bench`` sweep): per
        row ``bench.summarise``'s fields, among them ``visual_tokens_per_layer_mean`` (an x on which every
        method's budget is comparable), ``prefill_gflops``, ``accuracy_ci`` (Wilson 95%) and ``budget_label``.
        ``seed`` (0..999; None or 0: the default set) draws another held-out question set and seeds random and
        kmeans."""
        if self.dynamic:
            raise ValueError(self.sweep_info()["reason"])
        seed = bench.check_seed(seed)
        strategies = check_strategy_names(strategies)
        if not strategies:
            raise ValueError("pick at least one strategy to sweep")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
            raise ValueError(f"n={shown(n)}: expected 1..1000 questions")
        if isinstance(budgets, (str, bytes)) or not isinstance(budgets, (list, tuple, set)):
            raise ValueError(f"budgets={shown(budgets)}: expected a list of whole numbers of visual tokens")
        budgets = sorted({_check_budget(b, self.engine.geometry.n_patches) for b in budgets}, reverse=True)
        if not budgets:
            raise ValueError("give at least one budget")
        if types is not None and (isinstance(types, str) or not isinstance(types, (list, tuple))
                                  or not all(isinstance(t, str) for t in types)):
            raise ValueError(f"types={shown(types)}: expected a list of question types")
        rows = bench.configs(",".join(strategies), budgets, position_variants=False, seed=seed)
        check_sweep_size(len({p["name"] for _, p in rows} - {"none"}), len(budgets), len(rows), n)
        samples = bench.load_samples("shapes", n, types=types, seed=seed)
        out = []
        for label, params_ in tqdm(rows, desc="bench", disable=not progress):
            row = self.evaluate(params_, samples)
            row.update(label=label, seed=seed)
            out.append(row)
        bench.add_prefill_speedups(out)
        return out

    def evaluate(self, params: dict, samples: list) -> dict:
        """``bench.evaluate`` (one configuration's summary over ``samples``) with the model's lock taken per
        question, not for the whole run: a Compare that arrives meanwhile runs after the current question
        (FairLock: waiters go first), not after a whole Sweep or band."""
        strategy = get_strategy(**params)
        records = []
        for sample in samples:
            with self.lock:
                records.append(bench.sample_record(self.engine, sample, strategy))
        return bench.summarise(strategy, records)


def check_sweep_size(strategies: int, budgets: int, configurations: int, n: int,
                     new_tokens: int = SWEEP_NEW_TOKENS, ceiling: int = SWEEP_CEILING) -> int:
    """A sweep's work, configurations (its rows: each strategy at each budget, with none and vtw once) x
    questions x new tokens per question, against ``ceiling``: refused above it, with the request's size and the
    ceiling in the message. Returns the size."""
    size = configurations * n * new_tokens
    if size > ceiling:
        raise ValueError(
            f"sweep of {strategies} strategies x {budgets} budgets x {n} questions x {new_tokens} new tokens: "
            f"{configurations:,} configurations x {n} questions x {new_tokens} tokens = {size:,}, more than the "
            f"{ceiling:,} one request may ask (the app runs one request at a time); pick fewer strategies, budgets "
            f"or questions")
    return size


class ScopePool:
    """The models a host lets visitors pick: the default (``MODEL_ID`` or the embedded model) and an
    allow-list (``PRUNESCOPE_MODELS``, comma-separated local directories or hub ids). Any other name is
    refused, never loaded. Models load on first use; at most ``max_loaded`` stay in memory."""

    def __init__(self, default: str | None = None, allowed=(), load_in_4bit: bool = False,
                 device: str | None = None, max_loaded: int = 1, threads: int | None = None):
        self.default = default or str(DEFAULT_MODEL_DIR)
        if isinstance(allowed, str):
            allowed = [a.strip() for a in allowed.split(",")]
        self.names = list(dict.fromkeys([self.default, *[a for a in allowed if a]]))
        self.load_in_4bit, self.device, self.max_loaded = load_in_4bit, device, max(1, max_loaded)
        self.threads = threads
        self._loaded: dict[str, Scope] = {}
        self._lock = threading.Lock()
        self._labels: dict[str, str] = {}
        for n in self.names:  # unique labels: a second 'model (local)' becomes 'model (local, 2)'
            label, k = self.label(n), 2
            while label in self._labels.values():
                label, k = f"{self.label(n)[:-1]}, {k})" if self.label(n).endswith(")") else f"{self.label(n)} ({k})", k + 1
            self._labels[n] = label
        self._by_label = {label: n for n, label in self._labels.items()}

    def label(self, name: str) -> str:
        """How the app names a model to visitors, never by a path on the host: the embedded one says it is the toy,
        a local directory is named by its last component (numbered when two share one), a hub id is itself."""
        if name in self._labels:
            return self._labels[name]
        if Path(name).resolve() == DEFAULT_MODEL_DIR.resolve():
            return "embedded toy model"
        local = Path(name).expanduser()
        return f"{local.name or 'model'} (local)" if local.is_absolute() or local.exists() or name.startswith(".") \
            else name

    def embedded_label(self) -> str | None:
        """The embedded toy model's label when this host offers it (the default or on the allow-list), else None
        (nothing is loaded: the Lessons tab switches to it, their scenes are its)."""
        toy = DEFAULT_MODEL_DIR.resolve()
        return next((self._labels[n] for n in self.names if Path(n).expanduser().resolve() == toy), None)

    @property
    def labels(self) -> list[str]:
        """The models' labels, in the order of ``names`` (the app's model menu)."""
        return [self._labels[n] for n in self.names]

    def get(self, name: str | None = None) -> Scope:
        """The model called ``name`` (its name on the allow-list, or its label); None: the default. A model that
        cannot load is refused with its label in the message (the host's log gets the full message)."""
        name = name or self.default
        name = self._by_label.get(name, name)
        if name not in self.names:
            raise ValueError(f"model {name!r} is not on this host's allow-list (PRUNESCOPE_MODELS): "
                             f"{', '.join(self.labels)}")
        with self._lock:
            if name not in self._loaded:
                while len(self._loaded) >= self.max_loaded:
                    self._loaded.pop(next(iter(self._loaded)))
                try:
                    self._loaded[name] = Scope(name, load_in_4bit=self.load_in_4bit, device=self.device,
                                               threads=self.threads)
                except ValueError as e:
                    label = self._labels[name]
                    logging.getLogger("prunescope").warning("model %s (%s) cannot load: %s", label, name, e)
                    if label == name:
                        raise
                    raise ValueError(f"model {label!r}: " + str(e).replace(str(Path(name).expanduser().resolve()),
                                                                           label).replace(name, label)) from None
            return self._loaded[name]


__all__ = ["Scope", "ScopePool", "strategy_controls", "check_strategy_names", "check_sweep_size", "result_json",
           "compare_fields", "own_fields", "relative_fields", "timed_pairs", "timing_fields", "timing_note",
           "COMPARE_DEFAULT", "REPEATS", "SWEEP_CEILING"]
