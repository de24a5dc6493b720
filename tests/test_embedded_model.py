"""The shipped embedded model: loads offline through pruning.model and knows its world."""

import numpy as np
import pytest

from pruning.cli import main
from pruning.engine import Engine
from pruning.model import DEFAULT_MODEL_DIR, load_model
from pruning.shapes import world
from pruning.strategies import get_strategy


@pytest.fixture(scope="module")
def engine():
    return Engine(load_model(str(DEFAULT_MODEL_DIR), device="cpu"))


def test_shipped_files_and_size():
    files = [f for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file()]
    names = {f.name for f in files}
    assert {"config.json", "model.safetensors", "processor_config.json", "README.md", "train.log"} <= names
    assert not any(f.suffix in (".bin", ".pt", ".pth", ".pkl") for f in files)  # safetensors only
    assert sum(f.stat().st_size for f in files) < 30 * 2**20
    assert (DEFAULT_MODEL_DIR / "clip" / "model.safetensors").is_file()  # CLIP text half for IVTP
    card = (DEFAULT_MODEL_DIR / "README.md").read_text()
    assert "cannot" in card and "synthetic" in card


def test_geometry(engine):
    g = engine.geometry
    assert g.rows * g.cols >= 144 and g.has_cls and g.vision_feature_layer == -2
    assert g.vision_layers >= 6 and g.llm_layers >= 8


def test_heldout_accuracy_floor(engine):
    pairs = world.heldout_questions(60, seed0=world.HELD_OUT_SEED + 20_000)
    hits = [engine.generate(s.image, q.text, get_strategy("none"), max_new_tokens=3)[0] == q.answer
            for s, q in pairs]
    # measured on 1000 held-out questions: 98.7% (assets/model/evaluation.json); chance is about 32%
    assert np.mean(hits) >= 0.85


def test_colour_answers_come_from_the_named_objects_patches(engine):
    """Keep only the asked-about object's patches: the colour is still named; keep everything but them: it is
    not (measured on 150 questions: 100.0% vs 20.7%, chance 16.7%)."""
    from pruning.shapes.evaluate import FixedPatches

    g = engine.geometry
    pairs = world.heldout_questions(20, seed0=world.HELD_OUT_SEED + 30_000, types=("colour",))
    only, without = [], []
    for scene, q in pairs:
        cov = scene.patch_coverage(g.patch_size, list(q.objects))
        for patches, out in ((np.flatnonzero(cov > 0), only), (np.flatnonzero(cov == 0), without)):
            answer, _ = engine.generate(scene.image, q.text, FixedPatches(patches=tuple(patches.tolist())),
                                        max_new_tokens=3)
            out.append(answer == q.answer)
    assert np.mean(only) >= 0.8 and np.mean(without) <= 0.5


def test_cls_attention_looks_at_objects(engine):
    """The penultimate layer's [CLS] attention puts its top-25% patches on objects at least twice as often
    as chance (measured: 84.6% vs 30.8% on 300 scenes)."""
    g = engine.geometry
    on, chance = [], []
    for i in range(40):
        scene = world.make_scene(world.HELD_OUT_SEED + 40_000 + i)
        ctx = engine.vision_pass(engine.prepare(scene.image, "Describe the image."))
        covered = scene.patch_coverage(g.patch_size) > 0
        top = ctx.cls_scores(1).topk(g.n_patches // 4).indices.numpy()
        on.append(covered[top].mean())
        chance.append(covered.mean())
    assert np.mean(on) >= 2 * np.mean(chance)


def test_cli_defaults_to_embedded_model(tmp_path, capsys):
    path = tmp_path / "scene.png"
    world.make_scene(world.HELD_OUT_SEED + 5).image.save(path)
    assert main(["ask", "--image", str(path), "--question", "How many objects are there?", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"answer": "' in out and '"visual_tokens": 144' in out
