"""A 20-step smoke run of every training stage on a tiny config, and training/inference agreement."""

import json

import pytest
import torch

from pruning.engine import Engine
from pruning.model import load_model
from pruning.shapes import train, world
from pruning.strategies import get_strategy


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    work = tmp_path_factory.mktemp("train")
    out = work / "export"
    assert train.main(["--work", str(work), "--tiny", "--export", str(out)]) == 0
    return work, out


def test_smoke_run_writes_every_stage_and_a_loadable_export(smoke):
    work, out = smoke
    for name in ("tokenizer", "clip", "clip_more", "llm_text", "projector", "instruct"):
        assert (work / name).is_dir(), name
    log = (work / "train.log").read_text()
    for stage in train.STAGES:
        assert f"{stage}: done" in log
    assert "vision step 19 loss" in log and "instruct step 19 loss" in log
    assert "vision_more step 9 loss" in log and "projector: colour salience after" in log
    assert json.loads((out / "train_config.json").read_text())["llm_layers"] == train.TINY["llm_layers"]
    assert (out / "clip" / "config.json").is_file() and (out / "README.md").is_file()
    engine = Engine(load_model(str(out), device="cpu"))
    assert engine.geometry.n_patches == 144 and engine.geometry.has_cls
    answer, _ = engine.generate(world.make_scene(world.HELD_OUT_SEED).image, "How many objects are there?",
                                get_strategy("none"), max_new_tokens=3)
    assert isinstance(answer, str)


def test_rerun_skips_finished_stages(smoke):
    work, _ = smoke
    assert train.main(["--work", str(work), "--tiny", "--stages", "tokenizer,vision"]) == 0
    assert "vision: checkpoint exists, skipped" in (work / "train.log").read_text()


def test_packed_training_sequence_equals_inference(smoke):
    """Each packed question sees what a single question sees at inference: same logits for its answer."""
    work, out = smoke
    engine = Engine(load_model(str(out), device="cpu"))
    model = engine.model
    cfg = train.TrainConfig(**train.TINY)
    packer = train.Packer(engine.lm.processor.tokenizer, cfg)
    scene = world.make_scene(world.HELD_OUT_SEED + 3)
    qa = [("How many objects are there?", "two"), ("Is there a red circle?", "no"), ("Describe the image.", "x")]
    ids, pos, mask, labels, head = packer.batch([qa])
    with torch.no_grad():
        feats = model.model.multi_modal_projector(train.vision_features(model, train.to_pixels([scene.image])))
        a = len(packer.prefix)
        hidden = train.llm_forward(model, ids, pos, mask, feats, slice(a, a + packer.n_img))
        logits = model.lm_head(hidden)[0]
    first = [j for j in range(ids.shape[1]) if labels[0, j] != -100 and (j == 0 or labels[0, j - 1] == -100)]
    assert len(first) == 3
    for (question, _), j in zip(qa, first):
        prepared = engine.prepare(scene.image, question)
        state = engine.prefill(prepared, engine.vision_pass(prepared), get_strategy("none"))
        torch.testing.assert_close(logits[j], state.logits, atol=2e-3, rtol=1e-3)


def test_unknown_stage_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown stage"):
        train.main(["--work", str(tmp_path), "--tiny", "--stages", "vision,dream"])


def test_colour_salience_is_an_accuracy_above_zero_for_a_random_projector(smoke):
    """With the projector at its initialisation, colour stays visible (nearest centroid beats chance 1/6)."""
    work, _ = smoke
    from transformers import LlavaForConditionalGeneration
    model = LlavaForConditionalGeneration.from_pretrained(work / "llm_text", dtype=torch.float32)
    sal = train.colour_salience(model, train.TrainConfig(**train.TINY), n=60)
    assert 0.3 < sal <= 1.0


def test_diagnose_runs_on_a_stage_checkpoint_and_refuses_bad_input(smoke, capsys):
    from pruning.shapes import diagnose
    work, _ = smoke
    assert diagnose.main(["--work", str(work), "--start", "llm_text", "--steps", "1", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("step 0 loss") and "colour salience" in out
    with pytest.raises(SystemExit, match="--objects 9"):
        diagnose.main(["--work", str(work), "--objects", "9"])
    with pytest.raises(SystemExit, match="cannot load"):
        diagnose.main(["--work", str(work), "--start", "no_such_stage"])


def test_warm_start_share_is_checked(tmp_path):
    with pytest.raises(SystemExit, match="--warm-start 1.5"):
        train.main(["--work", str(tmp_path), "--tiny", "--warm-start", "1.5"])
