"""Measure the embedded model on held-out scenes: accuracy, [CLS] attention, pruning sanity, speed.

    python -m pruning.shapes.evaluate --model assets/model --n 1000 [--4bit] [--json]

- accuracy: greedy exact match on ``n`` held-out questions (the same number per type; seeds from
  ``world.HELD_OUT_SEED`` on, never used in training), through the same engine the app uses;
- [CLS] attention: share of the top-25% patches by the penultimate layer's [CLS] attention (mean over
  heads, VTC-CLS eq. 2) that cover object pixels, against the share of all patches that do (chance);
  also for the K=3 layer ensemble (VTC-CLS eq. 9, mean);
- pruning sanity on colour / shape questions: keeping only the patches that do not touch the asked-about
  object vs only the object's patches (original positions);
- feature probe: linear probes reading colour / shape of the covering object off the LLM's input patches;
- speed: model load time and one answer (prefill + decoding) on this machine, median of repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..engine import Engine
from ..model import load_model
from ..strategies import Selection, Strategy, get_strategy
from ..strategies.base import MAX_PATCHES, MAX_PATCHES_TEXT, hyper
from . import world


@dataclass
class FixedPatches(Strategy):
    """Keep an explicit set of patches (for analyses; not a registered strategy)."""

    name = "fixed-patches"
    patches: tuple = hyper((), "patches", high=MAX_PATCHES, max_chars=MAX_PATCHES_TEXT)

    def select_before_llm(self, ctx):
        return Selection(torch.tensor(sorted(set(self.patches)), dtype=torch.long))


def accuracy(engine: Engine, n: int, progress: bool = True, types: tuple[str, ...] = world.QUESTION_TYPES) -> dict:
    pairs = world.heldout_questions(n, types=types)
    none = get_strategy("none")
    hits: dict[str, list[int]] = {}
    modes: dict[str, list[int]] = {}
    by_objects: dict[str, dict[int, list[int]]] = {}
    wrong = []
    for scene, q in tqdm(pairs, desc="accuracy", disable=not progress, mininterval=5):
        answer, _ = engine.generate(scene.image, q.text, none, max_new_tokens=3)
        ok = int(answer == q.answer)
        hits.setdefault(q.type, []).append(ok)
        by_objects.setdefault(q.type, {}).setdefault(len(scene.objects), []).append(ok)
        if q.negative_mode:
            modes.setdefault(q.negative_mode, []).append(ok)
        if not ok and len(wrong) < 20:
            wrong.append({"seed": scene.seed, "question": q.text, "expected": q.answer, "got": answer})
    per_type = {t: float(np.mean(v)) for t, v in hits.items()}
    return {"n": len(pairs), "overall": float(np.mean([x for v in hits.values() for x in v])), "per_type": per_type,
            "exist_negatives": {m: float(np.mean(v)) for m, v in modes.items()},
            # accuracy and number of questions per type and number of objects in the scene
            "per_type_by_objects": {t: {str(k): [float(np.mean(v)), len(v)] for k, v in sorted(d.items())}
                                    for t, d in by_objects.items()},
            "examples_wrong": wrong}


def cls_attention(engine: Engine, n_scenes: int = 300) -> dict:
    g = engine.geometry
    layer = g.feature_layer_index  # the penultimate ViT layer (vision_feature_layer = -2)
    shares, shares_k3, chance = [], [], []
    for i in range(n_scenes):
        scene = world.make_scene(world.HELD_OUT_SEED + 500_000 + i, image_size=g.image_size)
        ctx = engine.vision_pass(engine.prepare(scene.image, "Describe the image."))
        covered = scene.patch_coverage(g.patch_size) > 0
        top = max(1, g.n_patches // 4)
        s = ctx.cls_attention[layer].mean(0)  # (N,) eq. 2
        s3 = ctx.cls_attention[layer - 2: layer + 1].mean(1).mean(0)  # eq. 9, K=3, E=avg
        shares.append(covered[s.topk(top).indices.numpy()].mean())
        shares_k3.append(covered[s3.topk(top).indices.numpy()].mean())
        chance.append(covered.mean())
    return {"scenes": n_scenes, "layer": layer, "top25_on_objects": float(np.mean(shares)),
            "top25_on_objects_k3": float(np.mean(shares_k3)), "chance": float(np.mean(chance)),
            "ratio": float(np.mean(shares) / np.mean(chance))}


def pruning_sanity(engine: Engine, n_per_type: int = 150) -> dict:
    g = engine.geometry
    out = {}
    for qtype in ("colour", "shape"):
        pairs = world.heldout_questions(n_per_type, seed0=world.HELD_OUT_SEED + 700_000, types=(qtype,))
        res = {"object_only": [], "without_object": [], "full": []}
        for scene, q in pairs:
            cov = scene.patch_coverage(g.patch_size, list(q.objects))
            obj = np.flatnonzero(cov > 0).tolist()
            rest = np.flatnonzero(cov == 0).tolist()
            for key, patches in (("object_only", obj), ("without_object", rest), ("full", None)):
                s = get_strategy("none") if patches is None else FixedPatches(patches=tuple(patches))
                answer, _ = engine.generate(scene.image, q.text, s, max_new_tokens=3)
                res[key].append(int(answer == q.answer))
        out[qtype] = {k: float(np.mean(v)) for k, v in res.items()}
        out[qtype]["chance"] = 1 / (len(world.COLOUR_NAMES) if qtype == "colour" else len(world.SHAPES))
    return out


def feature_probe(engine: Engine, n_train: int = 400, n_test: int = 200, steps: int = 300) -> dict:
    """Linear probes on the penultimate layer's object patches (the features the LLM receives): how well
    colour, shape and the colour-shape pair of the covering object can be read off, on held-out scenes."""
    from .train import TrainConfig, patch_labels

    g = engine.geometry
    cfg = TrainConfig(image_size=g.image_size, patch_size=g.patch_size)

    def collect(seed0: int, n: int):
        xs, ys, ps, cs = [], [], [], []
        for i in range(n):
            scene = world.make_scene(seed0 + i, image_size=g.image_size)
            ctx = engine.vision_pass(engine.prepare(scene.image, "Describe the image."))
            labels, centre, on_object = patch_labels(scene, cfg)
            sel = torch.from_numpy(on_object)
            xs.append(ctx.patch_features[sel].float())
            with torch.no_grad():
                ps.append(engine.projector(ctx.patch_features[sel]).float())
            ys.append(torch.from_numpy(labels[on_object]))
            cs.append(torch.from_numpy(centre[on_object]) * g.image_size)
        return torch.cat(xs), torch.cat(ys), torch.cat(ps), torch.cat(cs)

    x_tr, y_tr, p_tr, c_tr = collect(world.HELD_OUT_SEED + 800_000, n_train)
    x_te, y_te, p_te, c_te = collect(world.HELD_OUT_SEED + 850_000, n_test)
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    n_shapes = len(world.SHAPES)
    out = {"test_patches": int(len(y_te))}
    for name, fn in (("pair", lambda y: y), ("colour", lambda y: y // n_shapes), ("shape", lambda y: y % n_shapes)):
        torch.manual_seed(0)
        head = torch.nn.Linear(x_tr.shape[1], int(fn(y_tr).max()) + 1)
        opt = torch.optim.Adam(head.parameters(), 1e-2)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(head((x_tr - mu) / sd), fn(y_tr))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out[name] = float((head((x_te - mu) / sd).argmax(1) == fn(y_te)).float().mean())
    # where the covering object's centre is: least-squares linear regression, mean absolute error in pixels,
    # on the vision features and on the projector's output (what the LLM's first layer receives)
    for name, a_tr, a_te in (("centre_error_px_vision", x_tr, x_te), ("centre_error_px_projected", p_tr, p_te)):
        ones_tr, ones_te = torch.ones(len(a_tr), 1), torch.ones(len(a_te), 1)
        w = torch.linalg.lstsq(torch.cat([a_tr, ones_tr], 1).double(), c_tr.double()).solution
        err = (torch.cat([a_te, ones_te], 1).double() @ w - c_te.double()).abs()
        out[name] = float(err.mean())
    out["centre_error_px_predict_mean"] = float((c_te - c_tr.mean(0)).abs().mean())  # no information at all
    return out


def speed(model_dir: str, load_in_4bit: bool, repeats: int = 20) -> dict:
    loads = []
    for _ in range(3):
        t = time.perf_counter()
        lm = load_model(model_dir, load_in_4bit=load_in_4bit, device="cpu")
        loads.append((time.perf_counter() - t) * 1000)
    engine = Engine(lm)
    scene = world.make_scene(world.HELD_OUT_SEED + 1)
    r = engine.run(scene.image, "How many objects are there?", get_strategy("none"), max_new_tokens=3,
                   repeats=repeats, warmup=2)
    return {"load_ms": statistics.median(loads), "answer_ms": r.timings["total_ms"], "timings": r.timings,
            "tokens": len(r.generated_tokens)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pruning.shapes.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model directory (default: the embedded model)")
    ap.add_argument("--n", type=int, default=1000, help="held-out questions")
    ap.add_argument("--4bit", dest="load_in_4bit", action="store_true")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: accuracy,cls,pruning,probe,speed")
    ap.add_argument("--types", default=",".join(world.QUESTION_TYPES),
                    help="comma-separated question types for the accuracy part (all by default), e.g. --types "
                         "position --n 800 for a closer look at one type")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--save", action="store_true",
                    help="write the report to MODEL/evaluation.json (4-bit: evaluation-4bit.json) and its summary "
                         "into the model card (MODEL/README.md, between the <!-- figures --> markers)")
    args = ap.parse_args(argv)
    from ..model import DEFAULT_MODEL_DIR

    model_dir = args.model or str(DEFAULT_MODEL_DIR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    skip = set(filter(None, args.skip.split(",")))
    types = tuple(t.strip() for t in args.types.split(",") if t.strip())
    bad = [t for t in types if t not in world.QUESTION_TYPES]
    if bad or not types:
        raise SystemExit(f"error: --types {args.types!r}: expected some of {', '.join(world.QUESTION_TYPES)}")
    if args.save and types != world.QUESTION_TYPES:
        raise SystemExit("error: --save records the full evaluation; it cannot be combined with --types")
    engine = Engine(load_model(model_dir, load_in_4bit=args.load_in_4bit, device="cpu"))
    report = {"model": model_dir, "4bit": args.load_in_4bit}
    if "accuracy" not in skip:
        report["accuracy"] = accuracy(engine, args.n, types=types)
    if "cls" not in skip:
        report["cls_attention"] = cls_attention(engine)
    if "pruning" not in skip:
        report["pruning"] = pruning_sanity(engine)
    if "probe" not in skip:
        report["feature_probe"] = feature_probe(engine)
    if "speed" not in skip:
        report["speed"] = speed(model_dir, args.load_in_4bit)
    if args.save:
        save_report(report, Path(model_dir))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print(report)
    return 0


FIGURES_START, FIGURES_END = "<!-- figures -->", "<!-- /figures -->"


def save_report(report: dict, model_dir: Path) -> None:
    """evaluation(-4bit).json in the model directory, and the card's figures block rebuilt from the reports
    there (float32 first, then 4-bit), so the card always shows what the saved reports say."""
    name = "evaluation-4bit.json" if report["4bit"] else "evaluation.json"
    (model_dir / name).write_text(json.dumps(report, indent=1) + "\n")
    card = model_dir / "README.md"
    if not card.is_file():
        return
    text = card.read_text()
    if FIGURES_START not in text or FIGURES_END not in text:
        raise SystemExit(f"error: {card} has no {FIGURES_START} ... {FIGURES_END} block to write the figures into")
    lines = []
    for fname in ("evaluation.json", "evaluation-4bit.json"):
        if (model_dir / fname).is_file():
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                _print(json.loads((model_dir / fname).read_text()))
            lines += ["```", buf.getvalue().rstrip().replace(str(model_dir), model_dir.name), "```"]
    head, rest = text.split(FIGURES_START, 1)
    tail = rest.split(FIGURES_END, 1)[1]
    card.write_text(head + FIGURES_START + "\n" + "\n".join(lines) + "\n" + FIGURES_END + tail)


def _print(r: dict) -> None:
    print(f"model {r['model']} ({'4-bit nf4' if r['4bit'] else 'float32'})")
    if "accuracy" in r:
        a = r["accuracy"]
        print(f"accuracy on {a['n']} held-out questions: overall {a['overall']:.1%}")
        for t, v in a["per_type"].items():
            split = a.get("per_type_by_objects", {}).get(t, {})
            print(f"  {t:<9} {v:.1%}   by objects in the scene: "
                  + ", ".join(f"{k}: {acc:.0%} of {n}" for k, (acc, n) in split.items()))
        if a["exist_negatives"]:
            print("  existence negatives: " + ", ".join(f"{m} {v:.1%}" for m, v in a["exist_negatives"].items()))
    if "cls_attention" in r:
        c = r["cls_attention"]
        print(f"[CLS] attention, ViT layer {c['layer']} (penultimate): top-25% patches on objects "
              f"{c['top25_on_objects']:.1%} vs chance {c['chance']:.1%} ({c['ratio']:.2f}x); K=3 ensemble "
              f"{c['top25_on_objects_k3']:.1%}")
    if "pruning" in r:
        for t, v in r["pruning"].items():
            print(f"pruning, {t} questions: all patches {v['full']:.1%}, only the object's patches "
                  f"{v['object_only']:.1%}, all but the object's patches {v['without_object']:.1%} "
                  f"(chance {v['chance']:.1%})")
    if "feature_probe" in r:
        p = r["feature_probe"]
        print(f"linear probes on object patches ({p['test_patches']} test patches): colour {p['colour']:.1%}, "
              f"shape {p['shape']:.1%}, colour-shape pair {p['pair']:.1%}")
        if "centre_error_px_vision" in p:
            print(f"  object centre, linear regression, mean abs error: vision features "
                  f"{p['centre_error_px_vision']:.1f} px, projected features {p['centre_error_px_projected']:.1f} px "
                  f"(predicting the mean: {p['centre_error_px_predict_mean']:.1f} px)")
    if "speed" in r:
        s = r["speed"]
        print(f"speed: load {s['load_ms']:.0f} ms, one answer ({s['tokens']} tokens) {s['answer_ms']:.1f} ms "
              f"(vision {s['timings']['vision_ms']:.1f}, prefill {s['timings']['prefill_ms']:.1f}, decode "
              f"{s['timings']['decode_ms_per_token']:.1f} ms/token)")


if __name__ == "__main__":
    raise SystemExit(main())
