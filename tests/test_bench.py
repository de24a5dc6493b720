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
    smallest_kl = min(out["kl_per_layer"].values())
    assert smallest_kl > 0
    strict = calibrate_vtw(engine, samples, eta=smallest_kl / 2, min_layer=2, progress=False)
    assert strict["k"] is None  # no layer's KL is below eta
    with pytest.raises(ValueError, match="eta=-1.0"):
        calibrate_vtw(engine, samples, eta=-1.0, min_layer=2, progress=False)
    ks = sorted(out["kl_per_layer"].items(), key=lambda kv: float(kv[1]))
    smallest = min(out["kl_per_layer"].values())
    threshold = smallest * 1.0001
    picked = calibrate_vtw(engine, samples, eta=threshold, min_layer=1, progress=False)["k"]
    assert picked == min(int(k) for k, v in out["kl_per_layer"].items() if v <= threshold) and ks
    exact = min((int(k), v) for k, v in out["kl_per_layer"].items() if int(k) >= 1)  # eta equal to a KL: <= takes it
    assert calibrate_vtw(engine, samples, eta=exact[1], min_layer=exact[0], progress=False)["k"] == exact[0]


def test_calibration_kl_is_withdrawn_against_full_as_the_authors_code(engines, images):
    """The authors' KLDivLoss(log_softmax(full), softmax(withdrawn)) is KL(withdrawn || full), not the reverse."""
    from pruning.strategies import get_strategy

    engine = engines("llava15")
    sample = Sample(images[0], "what?", "x")
    out = calibrate_vtw(engine, [sample], eta=1e9, min_layer=1, progress=False)
    prepared = engine.prepare(sample.image, sample.question)
    vision = engine.vision_pass(prepared)
    full = engine.prefill(prepared, vision, get_strategy("none")).logits
    withdrawn = engine.prefill(prepared, vision, get_strategy("vtw", layer=2)).logits
    assert out["kl_per_layer"]["2"] == pytest.approx(kl_divergence(withdrawn, full), rel=1e-5)
    assert kl_divergence(withdrawn, full) != pytest.approx(kl_divergence(full, withdrawn), rel=1e-3)


def test_budgets_and_configs():
    assert parse_budgets("192,128,64", 576) == [192, 128, 64]
    assert parse_budgets("0.5,0.25", 144) == [72, 36]
    with pytest.raises(ValueError, match="outside"):
        parse_budgets("700", 576)
    rows = configs("vtc-cls,vtw,fastv", [10, 5])
    labels = [label for label, _ in rows]
    assert labels.count("vtw") == 1 and labels.count("vtc-cls (keep)") == 2 and labels[0] == "none"
    # every before-LLM strategy with contiguous positions by default gets the original-positions row too
    assert {"cdpruner (keep)", "divprune (keep)", "visionzip (keep)", "vispruner (keep)"} <= set(
        label for label, _ in configs("all", [8]))
    assert not any(label.startswith(("fastv (", "dart (", "tome (")) for label, _ in configs("all", [8]))
    assert "manual" not in {p["name"] for _, p in configs("all", [8])}  # a person picks its patches
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


def test_spearman_and_overlap_hand_computed():
    from pruning.analysis import overlap, spearman

    a = torch.tensor([0.1, 0.4, 0.3, 0.9])
    assert spearman(a, a * 2 + 1) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    # ranks (0,2,1,3) vs (3,1,2,0): d = (-3,1,-1,3), sum d^2 = 20 -> 1 - 6*20/(4*15) = -1.0
    assert spearman(a, torch.tensor([4., 2, 3, 1])) == pytest.approx(-1.0)
    assert overlap(a, torch.tensor([0.9, 0.8, 0.0, 0.7]), 2) == 0.5  # top-2 {3,1} vs {0,1}


def test_cli_analyze_writes_json_and_html(model_dirs, images, tmp_path, capsys):
    images[0].save(tmp_path / "a.png")
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps({"image": "a.png", "question": q, "answer": "x"})
                                                for q in ("what?", "how many?")))
    out = tmp_path / "an"
    assert main(["analyze", "--model", str(model_dirs["llava15"]), "--questions", str(tmp_path / "q.jsonl"),
                 "--samples", "2", "--keep", "64,32", "--out", str(out)]) == 0
    result = json.loads((out / "analysis.json").read_text())
    assert set(result["consistency"]) == {"cls_k1", "cls_k2", "cls_k3", "random"}  # 4-layer ViT, feature layer 2
    assert len(result["consistency"]["cls_k3"]["spearman"]) == 6
    shares = result["attention_share"]
    assert all(abs(sum(shares[s][i] for s in shares) - 1) < 1e-4 for i in range(6))
    html = (out / "analysis.html").read_text()
    assert html.count("plotly-graph-div") >= 3 and "VTC-CLS Fig. 2" in html


def test_wilson_interval_known_values():
    from pruning.bench import wilson

    assert wilson(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)  # the textbook example
    assert wilson(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)  # (rule of three would say 0.3)
    assert wilson(10, 10) == pytest.approx([0.7225, 1.0], abs=1e-4)
    assert wilson(36, 40) == pytest.approx([0.7695, 0.9604], abs=1e-4)  # 90% at the Sweep tab's n = 40
    assert wilson(0, 0) == [0.0, 1.0]


def test_sweep_axis_separates_fastv_budgets_and_vtw(engines, images):
    """Average visual tokens per LLM layer: fastv's budgets (all entering the LLM) and vtw's layer each get their
    own x; with Wilson intervals and budget labels."""
    engine = engines("llava15")  # 576 visual tokens, 6 LLM layers: fastv drops before layer 2, vtw withdraws there
    rows = {r["budget_label"]: r for r in sweep(engine, [Sample(images[0], "what?", "x")], "fastv,vtw", [64, 32, 16],
                                                 progress=False, position_variants=False)}
    assert set(rows) == {"all", "keep 64 from layer 2", "keep 32 from layer 2", "keep 16 from layer 2",
                         "all withdrawn from layer 2"}
    for keep in (64, 32, 16):
        row = rows[f"keep {keep} from layer 2"]
        assert row["tokens_entering_llm"] == 576
        assert row["visual_tokens_per_layer"] == [576, 576] + [keep] * 4
        assert row["visual_tokens_per_layer_mean"] == pytest.approx((2 * 576 + 4 * keep) / 6)
    assert rows["all withdrawn from layer 2"]["visual_tokens_per_layer_mean"] == pytest.approx(2 * 576 / 6)
    assert len({r["visual_tokens_per_layer_mean"] for r in rows.values()}) == 5
    for r in rows.values():
        assert r["n"] == 1 and r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1]
        assert r["prefill_gflops"] == pytest.approx(r["prefill_tflops"] * 1e3)


def test_seed_draws_other_held_out_questions_and_seeds_random_rules():
    default = [(s.question, s.answer) for s in load_samples("shapes", 5)]
    assert [(s.question, s.answer) for s in load_samples("shapes", 5, seed=0)] == default
    other = load_samples("shapes", 5, seed=3)
    assert [s.image.tobytes() for s in other] == [s.image.tobytes() for s in load_samples("shapes", 5, seed=3)]
    assert [s.image.tobytes() for s in other] != [s.image.tobytes() for s in load_samples("shapes", 5)]
    seeded = dict((p["name"], p) for _, p in configs("random,kmeans,vtc-cls", [10], position_variants=False, seed=7))
    assert seeded["random"]["seed"] == 7 and seeded["kmeans"]["seed"] == 7 and "seed" not in seeded["vtc-cls"]
    with pytest.raises(ValueError, match="seed=-1"):
        load_samples("shapes", 5, seed=-1)


def test_seed_summary_means_and_spread_by_hand():
    from pruning.bench import seed_summary, seed_table

    def row(seed, acc, count):
        return {"label": "random", "params": {"keep": 16}, "seed": seed, "accuracy": acc,
                "per_type": {"count": count, "colour": 1.0}}
    out = seed_summary([row(0, 0.5, 0.0), row(1, 0.7, 0.5), row(2, 0.6, 1.0)])
    assert len(out) == 1 and out[0]["seeds"] == [0, 1, 2]
    assert out[0]["accuracy_mean"] == pytest.approx(0.6) and out[0]["accuracy_min"] == 0.5
    assert out[0]["accuracy_max"] == 0.7 and out[0]["accuracy_sd"] == pytest.approx((0.02 / 3) ** 0.5)
    assert out[0]["per_type_mean"] == {"colour": 1.0, "count": pytest.approx(0.5)}
    assert "| random | 16 | 0,1,2 | 60.0% | 50.0%-70.0% |" in seed_table(out)


def test_bench_seeds_option_is_checked(capsys):
    assert main(["bench", "--strategies", "random", "--seeds", "0,x"]) == 2
    assert "--seeds '0,x'" in capsys.readouterr().err
    assert main(["bench", "--strategies", "random", "--seeds", "1,1"]) == 2
    assert main(["bench", "--strategies", "random", "--seeds", "0,1", "--processes", "2"]) == 2
