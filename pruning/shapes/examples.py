"""The app's example gallery: held-out scenes with questions that make pruning visible.

``python -m pruning.shapes.examples --out assets/examples`` writes one PNG per example and
``examples.json`` (image file, question, expected answer, why it was picked). Scenes come from the
held-out seed range (never seen in training), searched in order from ``START`` for:

- a colour question about a *small* object in a crowded scene (a few patches decide the answer);
- a count in a scene of four objects (every object must survive pruning);
- a left/right question between two objects far apart (position must survive pruning);
- a shape question about a small object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from . import world

START = world.HELD_OUT_SEED + 500_000  # far from the held-out evaluation sets' first seeds


def _pick(seed: int, kind: str):
    scene = world.make_scene(seed)
    n = len(scene.objects)
    rng = np.random.default_rng(seed + 7)
    if kind == "small colour" and n >= 3:
        qs = [q for q in world.questions_for(scene, "colour", rng) if scene.objects[q.objects[0]].size == "small"]
        return scene, qs[0] if qs else None, "colour of a small object among several: a few patches decide it"
    if kind == "count" and n == 4:
        return scene, world.questions_for(scene, "count", rng)[0], "count: every object must survive pruning"
    if kind == "left/right" and n >= 3:
        qs = [q for q in world.questions_for(scene, "position", rng, min_gap=30) if "left or right" in q.text]
        return scene, qs[0] if qs else None, "left or right: where the objects are must survive pruning"
    if kind == "small shape" and n >= 3:
        qs = [q for q in world.questions_for(scene, "shape", rng) if scene.objects[q.objects[0]].size == "small"]
        return scene, qs[0] if qs else None, "shape of a small object: its outline must survive"
    return scene, None, ""


def find_examples(kinds=("small colour", "count", "left/right", "small shape")) -> list[dict]:
    out = []
    seed = START
    for kind in kinds:
        while True:
            scene, question, why = _pick(seed, kind)
            seed += 1
            if question is not None:
                out.append({"seed": scene.seed, "kind": kind, "question": question.text, "answer": question.answer,
                            "why": why, "image": scene.image})
                break
    return out


def write_examples(out_dir: str | Path) -> list[dict]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, ex in enumerate(find_examples()):
        name = f"example-{i + 1}-{ex['kind'].replace(' ', '-').replace('/', '-')}.png"
        ex.pop("image").save(out_dir / name)
        rows.append({"image": name, **ex})
    (out_dir / "examples.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pruning.shapes.examples", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="assets/examples")
    args = parser.parse_args(argv)
    for row in write_examples(args.out):
        print(f"{row['image']}: {row['question']} -> {row['answer']} (seed {row['seed']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
