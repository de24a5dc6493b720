"""pruning/teach.py and the manual strategy (issue 26), in the library on the embedded model.

Asserted: the world's answer to every question form agrees with the questions the world itself writes (hundreds of
held-out scenes); the shipped example files are recognised by their pixels, a changed image is not; the manual
strategy keeps exactly the patches given (parsing, refusals); budgets, Jaccard, position statistics and a patch's
fate on hand-made results; every lesson's run shows what its text says (the model is deterministic).
"""

import json

import numpy as np
import pytest
from PIL import Image

from pruning.compare import Scope
from pruning.shapes import world
from pruning.strategies import get_strategy
from pruning.strategies.manual import parse_patches
from pruning.teach import (EXAMPLES_JSON, LESSONS, image_digest, jaccard, objects_kept, parse_budgets, patch_fate,
                           position_stats, world_answer)


@pytest.fixture(scope="module")
def scope():
    return Scope()


def test_world_answer_agrees_with_the_worlds_own_questions():
    checked = 0
    for seed in range(world.HELD_OUT_SEED, world.HELD_OUT_SEED + 150):
        scene = world.make_scene(seed)
        rng = np.random.default_rng(seed)
        for qtype in (*world.QUESTION_TYPES, "where"):
            for q in world.questions_for(scene, qtype, rng):
                assert world_answer(scene, q.text) == q.answer, (seed, q.text)
                checked += 1
    assert checked > 1000


def test_world_answer_none_where_there_is_no_single_answer():
    scene = world.make_scene(world.HELD_OUT_SEED)
    present = {o.shape for o in scene.objects}
    absent = next(s for s in world.SHAPES if s not in present)
    assert world_answer(scene, f"What colour is the {absent}?") is None, "no such shape"
    assert world_answer(scene, "What is in the picture?") is None, "not a trained form"
    assert world_answer(scene, "  How many objects are there?  ") == world.NUMBERS[len(scene.objects) - 1]


def test_shipped_examples_are_recognised(scope):
    rows = json.loads(EXAMPLES_JSON.read_text())
    for row in rows:
        path = EXAMPLES_JSON.parent / row["image"]
        truth = scope.teach.truth(str(path), row["question"])
        assert truth["seed"] == row["seed"] and truth["answer"] == row["answer"] and truth["judge"] == "truth"
    changed = np.asarray(Image.open(EXAMPLES_JSON.parent / rows[0]["image"]).convert("RGB")).copy()
    changed[0, 0] = 255 - changed[0, 0]
    truth = scope.teach.truth(changed, rows[0]["question"])
    assert truth["answer"] is None and truth["judge"] == "none" and "uploaded" in truth["note"]
    assert image_digest(Image.fromarray(changed)) != image_digest(Image.open(EXAMPLES_JSON.parent / rows[0]["image"]))


def test_manual_keeps_exactly_the_patches_given(scope):
    assert parse_patches("41, 3;5 3") == [3, 5, 41] and parse_patches([2, 1.0]) == [1, 2] and parse_patches("") == []
    for bad, word in (("3, x", "'x'"), ([-1], "negative"), ([True], "True"), ("1.5", "'1.5'")):
        with pytest.raises(ValueError, match=word):
            parse_patches(bad)
    s = get_strategy("manual", patches=[9, 2, 2])
    assert s.patches == "2, 9" and s.params()["patches"] == "2, 9"
    image = str(EXAMPLES_JSON.parent / "example-2-count.png")
    r = scope.engine.run(__import__("pruning.images", fromlist=["load_image"]).load_image(image),
                         "How many objects are there?", get_strategy("manual", patches="0, 13, 143", keep=36),
                         max_new_tokens=2, repeats=1, warmup=0)
    assert r.kept == [0, 13, 143] and r.kept_final == [0, 13, 143] and r.visual_tokens_kept == 3
    assert any("the budget (36) does not apply" in n for n in r.notes)
    r = scope.engine.run(__import__("pruning.images", fromlist=["load_image"]).load_image(image),
                         "How many objects are there?", get_strategy("manual", keep=5), max_new_tokens=2, repeats=1,
                         warmup=0)
    assert r.kept == [0, 1, 2, 3, 4] and any("reading order" in n for n in r.notes)


def test_parse_budgets():
    assert parse_budgets(None, 144) == [144, 72, 36, 18, 9, 4, 2, 1]
    assert parse_budgets("9, 144, 9, 36", 144) == [144, 36, 9]
    assert parse_budgets([1.0, 2], 144) == [2, 1]
    for bad, word in (("0", "budget 0"), ("145", "budget 145"), ("a", "'a'"), (",".join(map(str, range(1, 15))), "12")):
        with pytest.raises(ValueError, match=word):
            parse_budgets(bad, 144)


def test_jaccard_and_positions():
    assert jaccard([1, 2, 3], [2, 3, 4]) == 0.5 and jaccard([1], [1]) == 1.0 and jaccard([], []) == 1.0
    pos = position_stats([0, 1, 143], 12, 12)
    assert pos["rows"][0] == 2 and pos["rows"][11] == 1 and sum(pos["cols"]) == 3
    assert pos["centre"] == pytest.approx([11 / 3, 12 / 3]) and pos["mean_index"] == pytest.approx(144 / 3 / 143)
    assert pos["middle"] == [5.5, 5.5]


def test_patch_fate_on_hand_made_results():
    grid = [2, 3]
    kept_llm = {"grid": grid, "kept": [0, 1, 2, 3, 4, 5], "kept_final": [0, 1], "merge_groups": None, "kept_vit": None}
    present = [[True] * 6, [True] * 6, [True, True, False, False, False, False]]
    assert patch_fate(kept_llm, 0, present)["state"] == "kept"
    gone = patch_fate(kept_llm, 4, present)
    assert gone["state"] == "llm" and gone["layer"] == 2 and "before layer 2" in gone["words"]
    merged = {"grid": grid, "kept": [1, 5], "kept_final": [1, 5], "merge_groups": [0, 0, 0, 1, 1, 1], "kept_vit": None}
    assert patch_fate(merged, 0)["merged_into"] == 1 and "row 0, column 1" in patch_fate(merged, 0)["words"]
    assert patch_fate(merged, 5)["absorbed"] == 2
    vit = {"grid": grid, "kept": [0], "kept_final": [0], "merge_groups": None, "kept_vit": [0, 1]}
    assert patch_fate(vit, 4)["state"] == "vit" and patch_fate(vit, 1)["state"] == "before"


def test_objects_kept():
    scene = world.make_scene(world.HELD_OUT_SEED + 3)
    everything = objects_kept(scene, range(144), 12, 12)
    assert everything["with_kept_patch"] == len(scene.objects) and everything["kept"] == 144
    assert objects_kept(scene, [], 12, 12)["with_kept_patch"] == 0


# what each lesson's text says its run shows (greedy decoding, seeded strategies: the same every run)
LESSON_CLAIMS = {
    "cls-knows": {"vtc-cls": False},
    "fastv-vs-before": {"fastv": True, "vtc-cls": False, "random": False},
    "vtw-withdraw": {"vtw": True},
    "merge-vs-drop": {"tome": True, "kmeans": False, "vtc-cls": False, "random": False},
    "random-baseline": {"random": True, "vtc-cls": True, "divprune": True},
}


def test_every_lesson_is_claimed():
    assert [lesson["id"] for lesson in LESSONS] == list(LESSON_CLAIMS) and len(LESSONS) >= 4
    for lesson in LESSONS:
        assert (EXAMPLES_JSON.parent / lesson["example"]).is_file()
        assert 2 <= lesson["text"].count(". ") + 1 <= 4, "two or three sentences"


@pytest.mark.parametrize("lesson", list(LESSON_CLAIMS))
def test_lesson_shows_what_it_says(scope, lesson):
    out = scope.teach.lesson(lesson)
    got = {r["strategy"]: r["correct"] for r in out["results"]}
    assert got["none"] is True
    for name, right in LESSON_CLAIMS[lesson].items():
        assert got[name] is right, f"{lesson}: {name} right={got[name]}, the text says {right}"
    results = {r["strategy"]: r for r in out["results"]}
    if lesson == "cls-knows":  # "its 24 kept patches all lie on objects; random's mostly do not"
        assert results["vtc-cls"]["scene_objects"]["kept_on_objects"] == 24
        assert results["vtc-cls"]["scene_objects"]["with_kept_patch"] == 4
        assert results["random"]["scene_objects"]["kept_on_objects"] < 12
    if lesson == "fastv-vs-before":
        assert results["fastv"]["image_tokens_per_layer"][:3] == [144, 144, 18]
    if lesson == "vtw-withdraw":  # "the deep layers of none still read the image heavily"
        shares = [s["image"] for s in results["none"]["trace"]["attention_share"]]
        assert min(shares[3:]) > 0.3 and results["vtw"]["image_tokens_per_layer"][3] == 0
    if lesson == "random-baseline":
        assert out["random_seeds"]["correct"] == 5
