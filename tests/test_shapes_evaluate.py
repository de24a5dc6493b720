"""The evaluation command of the embedded model: its parts on a few questions, and --save."""

import json
import shutil

import pytest

from pruning.engine import Engine
from pruning.model import DEFAULT_MODEL_DIR, load_model
from pruning.shapes import evaluate, world


@pytest.fixture(scope="module")
def engine():
    return Engine(load_model(str(DEFAULT_MODEL_DIR), device="cpu"))


def test_accuracy_report_counts_every_type_and_the_negative_modes(engine):
    report = evaluate.accuracy(engine, 10, progress=False)
    assert report["n"] == 10 and set(report["per_type"]) == set(world.QUESTION_TYPES)
    assert 0 <= report["overall"] <= 1
    assert set(report["exist_negatives"]) <= set(world.NEGATIVE_MODES) and report["exist_negatives"]
    for wrong in report["examples_wrong"]:
        assert wrong["got"] != wrong["expected"]
    # the split by number of objects covers every question once and agrees with the per-type accuracy
    split = report["per_type_by_objects"]
    assert sum(n for d in split.values() for _, n in d.values()) == 10
    for t, d in split.items():
        assert all(1 <= int(k) <= 5 for k in d)
        weighted = sum(acc * n for acc, n in d.values()) / sum(n for _, n in d.values())
        assert weighted == pytest.approx(report["per_type"][t])


def test_pruning_sanity_keeps_the_full_answer_when_nothing_is_pruned(engine):
    report = evaluate.pruning_sanity(engine, n_per_type=4)
    for qtype in ("colour", "shape"):
        assert set(report[qtype]) == {"object_only", "without_object", "full", "chance"}
    assert report["colour"]["chance"] == pytest.approx(1 / 6) and report["shape"]["chance"] == 0.25


def test_save_writes_the_report_and_the_card_block(tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    (model / "README.md").write_text("# card\nIt cannot see.\n<!-- figures -->\nnot measured yet\n<!-- /figures -->\nend\n")
    assert evaluate.main(["--model", str(model), "--n", "5", "--skip", "cls,pruning,probe,speed", "--save"]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((model / "evaluation.json").read_text())
    assert saved["accuracy"]["n"] == 5 and not saved["4bit"]
    card = (model / "README.md").read_text()
    block = card.split(evaluate.FIGURES_START, 1)[1].split(evaluate.FIGURES_END, 1)[0]
    assert f"overall {saved['accuracy']['overall']:.1%}" in block
    assert "accuracy on 5 held-out questions" in printed and "not measured yet" not in block
    assert card.startswith("# card\nIt cannot see.\n") and card.endswith("<!-- /figures -->\nend\n")


def test_save_refuses_a_card_without_the_figures_block(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    (model / "README.md").write_text("# a card without markers\n")
    with pytest.raises(SystemExit, match="no <!-- figures -->"):
        evaluate.main(["--model", str(model), "--n", "5", "--skip", "cls,pruning,probe,speed", "--save"])


def test_types_restricts_the_accuracy_part_and_refuses_bad_input(capsys):
    assert evaluate.main(["--n", "6", "--types", "position", "--skip", "cls,pruning,probe,speed", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"]["n"] == 6 and list(report["accuracy"]["per_type"]) == ["position"]
    with pytest.raises(SystemExit, match="--types 'colour,size'"):
        evaluate.main(["--types", "colour,size"])
    with pytest.raises(SystemExit, match="cannot be combined with --types"):
        evaluate.main(["--types", "position", "--save"])
