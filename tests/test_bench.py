"""The sweep and VTW calibration commands, on the random-init models (numbers mean nothing there)."""

import json

import pytest
import torch

from pruning.bench import (Sample, calibrate_vtw, configs, kl_divergence, load_samples, markdown_table,
                           parse_budgets, sweep)
from pruning.cli import main


def test_kl_rule_hand_computed():
    p = torch.tensor([0.0, 0.0])
    q = torch.log(torch.tensor([0.25, 0.75]))
    expected = 0.5 * torch.log(torch.tensor(0.5 / 0.25)) + 0.5 * torch.log(torch.tensor(0.5 / 0.75))
    assert kl_divergence(p, q) == pytest.approx(float(expected), abs=1e-6)
    assert kl_divergence(q, q) == pytest.approx(0.0, abs=1e-7)


def test_calibration_picks_first_layer_under_eta(engines, images):
    engine = engines("llava15")
    samples = [Sample(images[i], "what?", "x") for i in range(2)]
    out = calibrate_vtw(engine, samples, eta=1e9, min_layer=2, progress=False)
    assert out["k"] == 2 and set(out["kl_per_layer"]) == {"1", "2", "3", "4", "5"}
    assert all(v >= 0 for v in out["kl_per_layer"].values())
    strict = calibrate_vtw(engine, samples, eta=-1.0, min_layer=2, progress=False)
    assert strict["k"] is None
    ks = sorted(out["kl_per_layer"].items(), key=lambda kv: float(kv[1]))
    smallest = min(out["kl_per_layer"].values())
    threshold = smallest * 1.0001
    picked = calibrate_vtw(engine, samples, eta=threshold, min_layer=1, progress=False)["k"]
    assert picked == min(int(k) for k, v in out["kl_per_layer"].items() if v < threshold) and ks


def test_budgets_and_configs():
    assert parse_budgets("192,128,64", 576) == [192, 128, 64]
    assert parse_budgets("0.5,0.25", 144) == [72, 36]
    with pytest.raises(ValueError, match="outside"):
        parse_budgets("700", 576)
    rows = configs("vtc-cls,vtw,fastv", [10, 5])
    labels = [label for label, _ in rows]
    assert labels.count("vtw") == 1 and labels.count("vtc-cls (keep)") == 2 and labels[0] == "none"
    with pytest.raises(ValueError, match="unknown strategy"):
        configs("vtc-cls,nope", [10])


def test_sweep_and_jsonl(engines, images, tmp_path):
    engine = engines("llava15")
    images[0].save(tmp_path / "a.png")
    (tmp_path / "q.jsonl").write_text(json.dumps({"image": "a.png", "question": "what?", "answer": "Red."}) + "\n")
    samples = load_samples(str(tmp_path / "q.jsonl"), 10)
    assert samples[0].answer == "Red." and samples[0].type == "all"
    rows = sweep(engine, samples * 2, "random,fastv", [64], progress=False)
    assert [r["label"] for r in rows] == ["none", "random", "random (rearrange)", "fastv"]
    assert rows[0]["tokens_entering_llm"] == 576 and rows[1]["tokens_entering_llm"] == 64
    assert rows[3]["tokens_entering_llm"] == 576 and rows[3]["tokens_last_layer"] == 64
    assert rows[1]["prefill_tflops"] < rows[0]["prefill_tflops"]
    table = markdown_table(rows)
    assert table.count("\n") == 5 and "| random | 64 | rearrange |" in table
    with pytest.raises(ValueError, match="neither"):
        load_samples(str(tmp_path / "missing.jsonl"), 5)


def test_cli_calibrate_json(model_dirs, capsys):
    assert main(["calibrate", "--model", str(model_dirs["tiny"]), "--samples", "2", "--min-layer", "1",
                 "--eta", "100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["k"] == 1 and out["layers"] == 4
