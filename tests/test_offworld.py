"""The off-world check (issue 23, item 7): shapes-world inputs pass cleanly, photo-like images and off-grammar
questions get warnings; the question forms match every question the world asks; the resize sentence says what the
processor did."""

import numpy as np
import pytest
from PIL import Image

from pruning import offworld
from pruning.shapes import grammar, world


def test_every_world_question_has_a_known_form():
    rng = np.random.default_rng(0)
    for seed in range(world.HELD_OUT_SEED, world.HELD_OUT_SEED + 60):
        scene = world.make_scene(seed)
        for qtype in world.QUESTION_TYPES + world.TRAINING_ONLY_TYPES:
            for q in world.questions_for(scene, qtype, rng):
                assert grammar.question_type(q.text) == q.type, q.text
                assert offworld.question_warnings(q.text) == []


def test_pick_list_examples_are_in_the_grammar():
    forms = grammar.question_forms()
    assert {f["type"] for f in forms if f["evaluated"]} == set(world.QUESTION_TYPES)
    for f in forms:
        assert grammar.question_type(f["example"]) == f["type"]
        assert f["colours"] == list(world.COLOUR_NAMES) and f["shapes"] == list(world.SHAPES)


@pytest.mark.parametrize("question", ["Is the square left or right of the circle?", "What is in the sky?",
                                      "what colour is the circle?", "What color is the circle?",
                                      "Is there a pink circle?", "How many objects are there"])
def test_off_grammar_questions_are_warned(question):
    assert grammar.question_type(question) is None
    (warning,) = offworld.question_warnings(question)
    assert "not one of them" in warning and "What colour is the <shape>?" in warning


def test_held_out_scenes_pass_the_image_check():
    for seed in range(world.HELD_OUT_SEED, world.HELD_OUT_SEED + 200):
        view = np.asarray(world.make_scene(seed).image)
        assert offworld.image_warnings(offworld.image_stats(view)) == [], seed


def _landscape(rng):
    yy = np.linspace(0, 1, 96)[:, None]
    sky = np.broadcast_to(np.stack([90 + 60 * yy, 150 + 40 * yy, 230 - 20 * yy], -1), (96, 96, 3)).copy()
    sky[60:] = [60, 130, 50]
    return np.clip(sky + rng.normal(0, 12, sky.shape), 0, 255).astype(np.uint8)


def test_photo_like_images_are_warned():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    grey_photo = np.clip(rng.normal(128, 40, (96, 96, 1)), 0, 255).astype(np.uint8).repeat(3, 2)
    for image, expected in ((noise, 2), (_landscape(rng), 2), (grey_photo, 2)):
        warnings = offworld.image_warnings(offworld.image_stats(image))
        assert len(warnings) >= expected and all(w.endswith(".") for w in warnings)
    landscape = offworld.image_warnings(offworld.image_stats(_landscape(rng)))
    assert "edge is not a plain grey background" in landscape[0]


def test_warnings_only_for_the_embedded_model():
    processor = type("P", (), {"do_resize": True, "size": {"shortest_edge": 96}})()
    photo = _landscape(np.random.default_rng(1))
    toy = offworld.check(photo, (96, 96), "What is in the sky?", processor, embedded=True)
    assert len(toy["warnings"]) == 3 and toy["image_stats"]["border_grey"] < 0.8
    other = offworld.check(photo, (96, 96), "What is in the sky?", processor, embedded=False)
    assert other["warnings"] == [] and other["image_stats"] is None and other["resize"]["sentence"]
    clean = offworld.check(np.asarray(world.make_scene(world.HELD_OUT_SEED).image), (96, 96),
                           "How many objects are there?", processor, embedded=True)
    assert clean["warnings"] == []


def test_resize_sentence_matches_what_the_processor_did(engines):
    engine = engines("tiny")  # CLIP processor: shorter side to the input size, then a centre crop
    proc = engine.lm.processor.image_processor
    side = engine.geometry.image_size
    w, h = side * 4 // 3 * 3, side * 3  # 4:3
    bands = np.zeros((h, w, 3), np.uint8)
    bands[:, : w // 8] = [255, 0, 0]  # the left eighth is red: more than the crop removes (1/8 of the width)...
    bands[:, w // 8:] = [0, 255, 0]
    note = offworld.resize_note((w, h), proc, (side, side, 3))
    rw = side * 4 // 3
    assert note["resized"] == [rw, side] and note["cut"][0] + note["cut"][2] == rw - side
    assert f"Your {w} x {h} image (4:3)" in note["sentence"] and "cut off" in note["sentence"]
    prepared = engine.prepare(Image.fromarray(bands), "what?")
    assert tuple(prepared.pixel_values.shape[-2:]) == (side, side)
    mean = np.array(proc.image_mean).reshape(3, 1, 1)
    std = np.array(proc.image_std).reshape(3, 1, 1)
    view = (prepared.pixel_values[0].float().numpy() * std + mean).transpose(1, 2, 0)
    red_columns = int((view[side // 2, :, 0] > 0.5).sum())  # ...so the red left in the view is what the crop left
    assert abs(red_columns - (rw // 8 - note["cut"][0])) <= 1
    square = offworld.resize_note((side, side), proc, (side, side, 3))
    assert square["cut"] is None and "no resizing or cropping" in square["sentence"]


def test_squashing_processor_is_described():
    processor = type("P", (), {"do_resize": True, "size": {"height": 336, "width": 336}})()
    note = offworld.resize_note((1600, 1200), processor, (336, 336, 3))
    assert "squashed" in note["sentence"] and "4:3" in note["sentence"] and "1:1" in note["sentence"]
