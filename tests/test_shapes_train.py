"""A 20-step smoke run of every training stage on a tiny config, and training/inference agreement."""

import json
import time

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
    # LLaVA's order (llm_text, projector, then instruct), so that every stage runs
    # (and the optional centre loss of instruct_more, off by default, on)
    assert train.main(["--work", str(work), "--tiny", "--instruct-init", "projector", "--set", "centre_aux=1.0",
                       "--export", str(out)]) == 0
    return work, out


def test_smoke_run_writes_every_stage_and_a_loadable_export(smoke):
    work, out = smoke
    for name in ("tokenizer", "clip", "clip_more", "llm_text", "projector", "instruct", "instruct_more",
                 "instruct_focus"):
        assert (work / name).is_dir(), name
    log = (work / "train.log").read_text()
    for stage in train.STAGES:
        assert f"{stage}: done" in log
    assert "vision step 19 loss" in log and "instruct step 19 loss" in log
    assert "vision_more step 9 loss" in log and "projector: colour salience after" in log
    # the second stage-2 cycle ran with its auxiliary centre loss, and the export took its weights
    assert "instruct_more step 9 loss" in log and " centre " in log.split("instruct_more step 9 loss")[1][:200]
    # instruct_focus continued instruct_more (no centre loss there), and the export took its weights
    focus_log = log.split("instruct_focus step 9 loss")[1].split("\n")[0]
    assert " centre " not in focus_log
    assert "export: the LLaVA weights come from instruct_focus" in log
    assert json.loads((out / "train_config.json").read_text())["llm_layers"] == train.TINY["llm_layers"]
    assert (out / "clip" / "config.json").is_file() and (out / "README.md").is_file()
    assert "A third cycle (`instruct_focus`)" in (out / "README.md").read_text()
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


def test_init_from_export_reruns_the_llava_stages_on_the_exported_vision_tower(smoke, tmp_path):
    """--init-from takes tokenizer + CLIP from an export and skips the vision stages; the instruct stage can
    start from a fresh LLM and projector (--instruct-init scratch)."""
    from transformers import CLIPModel

    _, out = smoke
    work = tmp_path / "again"
    assert train.main(["--work", str(work), "--tiny", "--init-from", str(out), "--stages",
                       "tokenizer,vision,llm_text,projector,instruct", "--instruct-init", "scratch"]) == 0
    log = (work / "train.log").read_text()
    assert "init-from: tokenizer and CLIP" in log and "instruct: starts from a fresh LLM and projector" in log
    assert "llm_text, projector: not run (instruct_init=scratch" in log
    assert "vision step" not in log and "instruct: done" in log
    assert not (work / "clip").exists() and not (work / "projector").exists()
    exported = CLIPModel.from_pretrained(out / "clip", dtype=torch.float32).vision_model.state_dict()
    seeded = CLIPModel.from_pretrained(work / "clip_more", dtype=torch.float32).vision_model.state_dict()
    for k, v in exported.items():
        torch.testing.assert_close(seeded[k], v, atol=0, rtol=0)
    # the instruct stage trained on that frozen tower: its LLaVA checkpoint holds the same vision weights
    from transformers import LlavaForConditionalGeneration
    llava = LlavaForConditionalGeneration.from_pretrained(work / "instruct", dtype=torch.float32)
    tower = llava.model.vision_tower.state_dict()
    torch.testing.assert_close(tower["post_layernorm.weight"], exported["post_layernorm.weight"], atol=0, rtol=0)


def test_init_from_refuses_a_directory_without_clip(tmp_path):
    with pytest.raises(SystemExit, match="not an exported model"):
        train.main(["--work", str(tmp_path / "w"), "--tiny", "--init-from", str(tmp_path)])


def test_questions_per_image_follow_the_config():
    """position_per_image / where_per_image cap how many of those questions an image gets."""
    import numpy as np
    scenes = [world.make_scene(s, n_objects=5) for s in range(20)]
    rng = np.random.default_rng(0)
    for n_pos, n_where in ((1, 1), (4, 2)):
        _, types = train._qa_items(scenes, rng, caption_prob=0.0, position_per_image=n_pos,
                                   where_per_image=n_where)
        per_image_pos = [t.count("position") for t in types]
        per_image_where = [t.count("where") for t in types]
        assert max(per_image_pos) == n_pos and max(per_image_where) == n_where


def test_set_overrides_scalar_config_fields_and_refuses_bad_ones(tmp_path):
    work = tmp_path / "w"
    assert train.main(["--work", str(work), "--tiny", "--stages", "tokenizer", "--set", "objects_start=2",
                       "--set", "caption_prob=0.5"]) == 0
    config_line = next(l for l in (work / "train.log").read_text().splitlines() if " config " in l)
    config = json.loads(config_line.split(" config ", 1)[1])
    assert config["objects_start"] == 2 and config["caption_prob"] == 0.5
    for bad, message in (("no_such_field=1", "scalar TrainConfig field"), ("steps=3", "scalar TrainConfig field"),
                         ("objects_start=two", "is not a int"), ("objects_start", "expected FIELD=VALUE"),
                         ("instruct_init=vicuna", "expected 'projector' or 'scratch'")):
        with pytest.raises(SystemExit, match=message):
            train.main(["--work", str(work), "--tiny", "--set", bad])


def test_instruct_more_without_an_instruct_checkpoint_says_so(tmp_path):
    with pytest.raises(SystemExit, match="run --stages instruct first"):
        train.main(["--work", str(tmp_path), "--tiny", "--stages", "instruct_more"])
    with pytest.raises(SystemExit, match="run --stages instruct_more first"):
        train.main(["--work", str(tmp_path), "--tiny", "--stages", "instruct_focus"])


def test_focus_scenes_hold_at_least_the_minimum_number_of_objects():
    """instruct_focus draws scenes of focus_min_objects..5 objects (all sizes of that range occur)."""
    cfg = train.TrainConfig()
    scenes = train.scenes_for(range(300), cfg, min_objects=3)
    counts = {len(s.objects) for s in scenes}
    assert counts <= {3, 4, 5} and {4, 5} <= counts
    # the default (min_objects=1) still gives one-object scenes
    assert min(len(s.objects) for s in train.scenes_for(range(300), cfg)) == 1


def test_focus_steps_mix_crowded_scenes_with_all_sizes():
    """instruct_focus: focus_crowded_share of a step's images hold focus_crowded_objects-5 objects, the rest any
    number (so one- and two-object scenes stay in the mix)."""
    cfg = train.TrainConfig()
    assert cfg.focus_crowded_share == 0.5 and cfg.focus_crowded_objects == 3
    crowded, rest = [], []
    for start in range(0, 800, 8):
        scenes = train.focus_scenes(list(range(start, start + 8)), cfg)
        assert len(scenes) == 8
        crowded += [len(s.objects) for s in scenes[:4]]
        rest += [len(s.objects) for s in scenes[4:]]
    assert min(crowded) >= 3 and {4, 5} <= set(crowded)
    assert {1, 2} <= set(rest)
    cfg.focus_crowded_share = 0.0
    assert min(len(s.objects) for s in train.focus_scenes(list(range(200)), cfg)) == 1


def _counting_step(calls, pause=0.0):
    weight = torch.nn.Parameter(torch.ones(1))

    def step_fn(step):
        calls.append(step)
        if pause:
            time.sleep(pause)
        return (weight ** 2).sum(), {}

    return [weight], step_fn


def test_a_stage_stops_at_its_step_count_when_the_machine_is_fast_enough(tmp_path):
    """The step count is the stopping rule: with a generous time cap the stage runs exactly its steps."""
    cfg = train.TrainConfig()
    cfg.steps["instruct"], cfg.minutes["instruct"] = 7, 10.0
    calls = []
    params, step_fn = _counting_step(calls)
    log = train.Log(tmp_path / "train.log")
    assert train.run_steps("instruct", cfg, params, step_fn, log) == 7
    assert calls == list(range(7))
    assert "time cap" not in (tmp_path / "train.log").read_text()


def test_a_stage_on_a_slow_machine_stops_at_its_time_cap_and_says_so(tmp_path):
    cfg = train.TrainConfig()
    cfg.steps["instruct"], cfg.minutes["instruct"] = 1000, 0.3 / 60  # 0.3 s cap, 0.1 s a step
    calls = []
    params, step_fn = _counting_step(calls, pause=0.1)
    log = train.Log(tmp_path / "train.log")
    done = train.run_steps("instruct", cfg, params, step_fn, log)
    assert 2 <= len(calls) <= 5 and done == len(calls)
    assert f"time cap of 0.0 min reached at step {len(calls)} of 1000" in (tmp_path / "train.log").read_text()


def test_default_recipe_time_caps_sum_to_at_most_150_minutes():
    """The issue's budget: the stages a default run executes (instruct_init=scratch skips llm_text and
    projector) are capped at 150 minutes in all; the vision stages run the calibrated step counts."""
    cfg = train.TrainConfig()
    assert cfg.instruct_init == "scratch"
    run = ("vision", "vision_more", "instruct", "instruct_more", "instruct_focus")
    assert sum(cfg.minutes[s] for s in run) <= 150
    assert cfg.steps["vision"] == 1369 and cfg.steps["vision_more"] == 1063
