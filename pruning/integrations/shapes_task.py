"""The ``prunescope_shapes`` lmms-eval tasks: the embedded model's held-out questions, as files on disk.

``python -m pruning.integrations export-task --out DIR [--n 500]`` writes into DIR:

- ``prunescope_shapes.jsonl`` and ``images/``: ``n`` held-out questions (the set ``python -m pruning bench --n n``
  draws, every question type), ordered round-robin over the types so that lmms-eval's ``--limit k`` takes every type;
  one JSON object per line: ``id, image`` (relative to DIR), ``question, answer, type, choices, scene_seed``. The
  same file is a question set for ``python -m pruning bench --questions DIR/prunescope_shapes.jsonl``.
- ``prunescope_shapes.yaml``: generation (``generate_until``, greedy, 4 new tokens as the bench decodes), exact match
  after the bench's normalisation (case, spaces, a final period), overall (``accuracy``) and per question type
  (``colour, shape, exist, count, position``).
- ``prunescope_shapes_mc.yaml``: the same questions as multiple choice (``loglikelihood`` over the type's answers:
  the colours, the shapes, yes / no, one..five, left / right or above / below), ``acc``.
- ``utils.py``: the task functions lmms-eval's ``!function`` reads from DIR (images resolved against DIR).

Then ``python -m lmms_eval --model prunescope --tasks prunescope_shapes --include_path DIR`` runs offline: the data
loads with ``datasets``' json builder, nothing touches a hub. Nothing here imports lmms-eval.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

TASK = "prunescope_shapes"
DATA_FILE = f"{TASK}.jsonl"
MAX_NEW_TOKENS = 4  # what python -m pruning bench decodes


def question_types() -> tuple[str, ...]:
    from pruning.shapes.world import QUESTION_TYPES

    return QUESTION_TYPES


METRICS = ("accuracy", "colour", "shape", "exist", "count", "position")  # question_types(), checked by a test


def choices_for(qtype: str, answer: str) -> list[str]:
    """The answers a question of this type can have (the multiple-choice task's choices)."""
    from pruning.shapes import world

    if qtype == "colour":
        return list(world.COLOUR_NAMES)
    if qtype == "shape":
        return list(world.SHAPES)
    if qtype == "exist":
        return ["yes", "no"]
    if qtype == "count":
        return list(world.NUMBERS)
    if qtype == "position":
        return ["left", "right"] if answer in ("left", "right") else ["above", "below"]
    raise ValueError(f"question type {qtype!r} has no choices; types: {', '.join(question_types())}")


def heldout_rows(n: int) -> list[dict]:
    """``n`` held-out questions (``world.heldout_questions``: the bench's set), round-robin over the types, with
    their scenes."""
    from pruning.shapes import world

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: expected at least 1 question")
    by_type: dict[str, list] = {}
    for scene, q in world.heldout_questions(n):
        by_type.setdefault(q.type, []).append((scene, q))
    rows = []
    for k in range(max(len(v) for v in by_type.values())):
        for t in world.QUESTION_TYPES:
            if k < len(by_type.get(t, [])):
                scene, q = by_type[t][k]
                rows.append({"scene": scene, "question": q.text, "answer": q.answer, "type": q.type})
    return rows


GENERATE_YAML = f"""\
# Written by `python -m pruning.integrations export-task`: the embedded model's held-out questions (PruneScope).
task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {DATA_FILE}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {MAX_NEW_TOKENS}
  temperature: 0
  do_sample: false
  num_beams: 1
process_results: !function utils.process_results
metric_list:
""" + "".join(f"""\
  - metric: {m}
    aggregation: !function utils.aggregate_{m}
    higher_is_better: true
""" for m in METRICS) + """\
metadata:
  version: 1.0
"""

MC_YAML = f"""\
# Written by `python -m pruning.integrations export-task`: the same questions as multiple choice (loglikelihood).
task: {TASK}_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {DATA_FILE}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_choice: !function utils.doc_to_choice
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

UTILS_PY = f'''\
"""Functions of the {TASK} tasks (written by `python -m pruning.integrations export-task`): images are resolved
against this directory; the rest is pruning.integrations.shapes_task's."""

from pathlib import Path

from pruning.integrations.shapes_task import (  # noqa: F401
    aggregate_accuracy, aggregate_colour, aggregate_count, aggregate_exist, aggregate_position, aggregate_shape,
    doc_to_choice, doc_to_text, open_image, process_results)

HERE = Path(__file__).resolve().parent


def doc_to_visual(doc):
    return [open_image(HERE, doc)]
'''


def export(out: str | Path, n: int = 500, progress: bool = False) -> Path:
    """Write the task files and ``n`` questions with their images into ``out``; returns the data file."""
    from tqdm import tqdm

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a directory")
    rows = heldout_rows(n)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, r in enumerate(tqdm(rows, desc="export", disable=not progress)):
        name = f"images/{i:05d}.png"
        r["scene"].image.save(out / name)
        lines.append(json.dumps({"id": i, "image": name, "question": r["question"], "answer": r["answer"],
                                 "type": r["type"], "choices": choices_for(r["type"], r["answer"]),
                                 "scene_seed": r["scene"].seed}))
    data = out / DATA_FILE
    data.write_text("\n".join(lines) + "\n")
    (out / f"{TASK}.yaml").write_text(GENERATE_YAML)
    (out / f"{TASK}_mc.yaml").write_text(MC_YAML)
    (out / "utils.py").write_text(UTILS_PY)
    return data


# ---------------------------------------------------------------- the task functions (utils.py imports them)
def open_image(root: Path, doc: dict):
    """The document's image, read from ``root``."""
    from pruning.images import load_image

    return load_image(str(Path(root) / doc["image"]))


def doc_to_text(doc: dict, lmms_eval_specific_kwargs=None) -> str:
    return doc["question"]


def doc_to_choice(doc: dict) -> list[str]:
    return list(doc["choices"])


def process_results(doc: dict, results: list) -> dict:
    """Exact match after the bench's normalisation; every metric gets the same item, the per-type aggregations
    keep their type's."""
    from pruning.bench import normalise

    answer = results[0] if results else ""
    item = {"type": doc["type"], "correct": int(normalise(answer) == normalise(doc["answer"]))}
    return {m: item for m in METRICS}


def _mean_correct(items, qtype: str | None = None) -> float:
    picked = [i["correct"] for i in items if qtype is None or i["type"] == qtype]
    return statistics.mean(picked) if picked else math.nan  # nan: no question of this type in the run


def aggregate_accuracy(items) -> float:
    return _mean_correct(items)


def aggregate_colour(items) -> float:
    return _mean_correct(items, "colour")


def aggregate_shape(items) -> float:
    return _mean_correct(items, "shape")


def aggregate_exist(items) -> float:
    return _mean_correct(items, "exist")


def aggregate_count(items) -> float:
    return _mean_correct(items, "count")


def aggregate_position(items) -> float:
    return _mean_correct(items, "position")
