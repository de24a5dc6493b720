"""The synthetic world: determinism, answers derived from the scene and checked against the masks."""

import numpy as np
import pytest

from pruning.shapes import world
from pruning.shapes.train import SeedStream


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b, c = world.make_scene(42), world.make_scene(42), world.make_scene(43)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert [(o.colour, o.shape, o.cx) for o in a.objects] == [(o.colour, o.shape, o.cx) for o in b.objects]
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_world_has_the_promised_variety():
    scenes = [world.make_scene(s) for s in range(400)]
    assert {len(s.objects) for s in scenes} == {1, 2, 3, 4, 5}
    assert {o.shape for s in scenes for o in s.objects} == set(world.SHAPES) and len(world.SHAPES) >= 4
    assert {o.colour for s in scenes for o in s.objects} == set(world.COLOUR_NAMES) and len(world.COLOUR_NAMES) >= 6
    assert {o.size for s in scenes for o in s.objects} == {"small", "large"}
    assert {s.textured for s in scenes} == {True, False}
    for s in scenes:
        pairs = [(o.colour, o.shape) for o in s.objects]
        assert len(pairs) == len(set(pairs))  # "the red circle" is always unique


def nearest_colour(rgb):
    return min(world.COLOURS, key=lambda c: np.sum((np.array(world.COLOURS[c]) - rgb) ** 2))


@pytest.mark.parametrize("seed", range(60))
def test_answers_agree_with_masks(seed):
    scene = world.make_scene(seed)
    pixels = np.asarray(scene.image).astype(float)
    rng = np.random.default_rng(seed)
    for o in scene.objects:
        assert o.mask.sum() > 20  # visible
        assert nearest_colour(pixels[o.mask].mean(0)) == o.colour  # the pixels under the mask are its colour
    for q in world.questions_for(scene, "count", rng):
        assert q.answer == world.NUMBERS[sum(o.mask.any() for o in scene.objects) - 1]
    for q in world.questions_for(scene, "colour", rng):
        (i,) = q.objects
        assert q.text == f"What colour is the {scene.objects[i].shape}?"
        assert nearest_colour(pixels[scene.objects[i].mask].mean(0)) == q.answer
    for q in world.questions_for(scene, "position", rng):
        i, j = q.objects
        (yi, xi), (yj, xj) = (np.argwhere(scene.objects[k].mask).mean(0) for k in (i, j))
        expected = {"left": xi < xj, "right": xi > xj, "above": yi < yj, "below": yi > yj}[q.answer]
        assert expected, (q.text, q.answer)  # mask centroids agree with the answer
    present = {(o.colour, o.shape) for o in scene.objects}
    for q in world.questions_for(scene, "exist", rng):
        pair = tuple(q.text[len("Is there a "):-1].split(" "))
        assert (pair in present) == (q.answer == "yes")


def test_pope_negatives():
    rng = np.random.default_rng(0)
    for seed in range(200):
        scene = world.make_scene(seed)
        present = {(o.colour, o.shape) for o in scene.objects}
        for mode in world.NEGATIVE_MODES:
            neg = world._negative(scene, mode, rng)
            if neg is None:
                continue
            assert neg not in present
            if mode == "adversarial":
                assert any(neg[0] == c or neg[1] == s for c, s in present)
            if mode == "popular":
                absent_ranked = [p for p in world.POPULAR_ORDER if p not in present]
                assert neg in absent_ranked[:3]


def test_heldout_set_is_balanced_and_disjoint_from_training():
    pairs = world.heldout_questions(100)
    types = [q.type for _, q in pairs]
    assert all(types.count(t) == 20 for t in world.QUESTION_TYPES)
    exist = [q.answer for _, q in pairs if q.type == "exist"]
    assert exist.count("yes") == exist.count("no") == 10
    assert min(s.seed for s, _ in pairs) >= world.HELD_OUT_SEED
    for stage in range(5):
        stream = SeedStream(stage, seed=0)
        assert max(stream.take(10_000)) < world.HELD_OUT_SEED


def test_patch_coverage_matches_mask():
    scene = world.make_scene(7)
    cov = scene.patch_coverage(8)
    assert cov.shape == (144,)
    assert np.isclose(cov.mean(), scene.object_mask().mean())
