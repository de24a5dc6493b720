"""``python -m pruning speed`` on the tiny toy geometry (random weights; the timings mean nothing there, the schema,
token counts, speedup arithmetic and run order do), and the real-width geometries' shapes (no weights built)."""

import json

import pytest

from pruning import speed
from pruning.cli import main

STRATEGIES = "none,vtc-cls,random,pooling,topk-sim,fastv,vtw"
BUDGETS = [16, 9, 4]
ROW_KEYS = {"label", "strategy", "params", "visual_tokens", "visual_tokens_kept", "text_tokens", "tokens_per_layer",
            "image_tokens_per_layer", "vit_tokens_per_layer", "decoded_tokens", "timings", "runs",
            "peak_memory_bytes", "peak_memory_kind", "kv_cache_bytes", "kv_cache_bytes_per_layer", "tflops", "notes",
            "speedup", "speedup_predicted", "efficiency", "speedup_paired", "prefill_speedup",
            "prefill_speedup_predicted", "prefill_efficiency", "prefill_speedup_paired"}
STATS = {"median", "min", "max", "q1", "q3", "n"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed")
    out = root / "speed.json"
    argv = ["speed", "--geometry", "tiny", "--keep", ",".join(map(str, BUDGETS)), "--strategies", STRATEGIES,
            "--repeats", "2", "--new-tokens", "2", "--threads", "1", "--cache-dir", str(root / "models"),
            "--json", str(out), "--quiet"]
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_schema(report):
    assert set(report) >= {"command", "model", "machine", "settings", "notes", "order", "rows"}
    assert report["command"].startswith("python -m pruning speed --geometry tiny --keep 16,9,4")
    assert report["model"]["geometry"] == "tiny" and report["model"]["llm_layers"] == 4
    assert report["machine"]["torch_threads"] == 1 and len(report["machine"]["load_average_before"]) == 3
    assert report["settings"]["repeats"] == 2 and report["settings"]["new_tokens"] == 2
    labels = [r["label"] for r in report["rows"]]
    assert labels == ["none", *[f"{s} {b}" for s in ("vtc-cls", "random", "pooling", "topk-sim") for b in BUDGETS],
                      *[f"fastv {b} (layer 2)" for b in BUDGETS], "vtw (layer 1)"]
    for row in report["rows"]:
        assert set(row) == ROW_KEYS, row["label"]
        assert set(row["timings"]) == set(speed.TIMINGS)
        for name, stats in row["timings"].items():
            assert set(stats) == STATS and stats["n"] == 2
            assert 0 < stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"], name
        assert [t["repeat"] for t in row["runs"]] == [0, 1]
        assert all(t["others_cpu"] is None or 0 <= t["others_cpu"] <= 1 for t in row["runs"])
        for t in row["runs"]:
            assert t["ttft_ms"] == pytest.approx(t["vision_ms"] + t["prefill_ms"])
        assert row["decoded_tokens"] == 2  # the timing geometry never decodes EOS
        assert row["kv_cache_bytes"] == sum(row["kv_cache_bytes_per_layer"]) > 0
        assert set(row["tflops"]) == {"vision", "prefill", "decode_per_token", "total", "ttft"}
        assert row["tflops"]["ttft"] == pytest.approx(row["tflops"]["vision"] + row["tflops"]["prefill"])
        assert row["peak_memory_kind"] and (row["peak_memory_bytes"] is None or row["peak_memory_bytes"] >= 0)
    assert any("per-layer" in n or "interleaved" in n for n in report["notes"])


def test_token_counts_monotone(report):
    rows = {r["label"]: r for r in report["rows"]}
    none = rows["none"]
    assert none["tokens_per_layer"] == [none["text_tokens"] + 25] * 4
    for name in ("vtc-cls", "random", "pooling", "topk-sim", "fastv"):
        series = [rows[label] for label in rows if label.startswith(name + " ")]
        assert len(series) == 3
        kept = [r["image_tokens_per_layer"][-1] for r in series]
        assert kept == BUDGETS  # pooling: 4 x 4, 3 x 3, 2 x 2 grids are exactly the budgets here
        totals = [sum(r["tokens_per_layer"]) for r in [none] + series]
        prefill = [r["tflops"]["prefill"] for r in [none] + series]
        assert totals == sorted(totals, reverse=True) and len(set(totals)) == 4
        assert prefill == sorted(prefill, reverse=True) and len(set(prefill)) == 4
    for label, row in rows.items():  # per-layer counts never grow; in-LLM strategies drop at their layer
        t = row["tokens_per_layer"]
        assert all(a >= b for a, b in zip(t, t[1:])), label
    assert rows["fastv 4 (layer 2)"]["image_tokens_per_layer"] == [25, 25, 4, 4]
    assert rows["vtw (layer 1)"]["image_tokens_per_layer"] == [25, 0, 0, 0]
    assert rows["random 4"]["tflops"]["vision"] == none["tflops"]["vision"]  # the ViT sees every patch


def test_speedups(report):
    rows = report["rows"]
    none = rows[0]
    for prefix in ("", "prefill_"):
        assert none[f"{prefix}speedup"] == none[f"{prefix}speedup_predicted"] == none[f"{prefix}efficiency"] == 1.0
    for row in rows:
        for prefix, key, tf in (("", "ttft_ms", "ttft"), ("prefill_", "prefill_ms", "prefill")):
            measured = none["timings"][key]["median"] / row["timings"][key]["median"]
            predicted = none["tflops"][tf] / row["tflops"][tf]
            assert row[f"{prefix}speedup"] == pytest.approx(measured)
            assert row[f"{prefix}speedup_predicted"] == pytest.approx(predicted)
            assert row[f"{prefix}efficiency"] == pytest.approx(row[f"{prefix}speedup"] / row[f"{prefix}speedup_predicted"])
        assert row["speedup_paired"]["n"] == 2
        if row is not none:
            assert row["prefill_speedup_predicted"] > 1  # every configuration here prunes something


def test_interleaved_order(report):
    labels = [r["label"] for r in report["rows"]]
    n = len(labels)
    order = report["order"]
    assert len(order) == 2 * n
    for r in range(2):
        within = [label for rep, label in order if rep == r]
        assert sorted(within) == sorted(labels)  # every configuration once per repeat ...
        assert within == labels[r:] + labels[:r]  # ... round robin, each repeat starting one later
    assert [rep for rep, _ in order] == sorted(rep for rep, _ in order)  # repeats do not overlap
    assert speed.interleaved_order(3, 3) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (1, 0), (2, 2), (2, 0), (2, 1)]


@pytest.mark.parametrize("argv,message", [
    (["--geometry", "nope"], "unknown geometry 'nope'"),
    (["--geometry", "tiny", "--keep", "30"], "--keep 30"),
    (["--geometry", "tiny", "--keep", "0"], "--keep 0"),
    (["--geometry", "tiny", "--strategies", "none,bogus"], "bogus"),
    (["--geometry", "tiny", "--repeats", "0"], "--repeats 0"),
    (["--geometry", "tiny", "--new-tokens", "0"], "max_new_tokens"),
    (["--geometry", "tiny", "--llm-layers", "1", "--keep", "4", "--strategies", "fastv"], "fastv"),
    (["--geometry", "llava-1.5-7b", "--vit-layers", "1"], "vit_layers=1"),
    (["--model", "/nonexistent", "--llm-layers", "2"], "only with --geometry"),
    (["--geometry", "tiny", "--model", "x"], "not allowed with argument"),
    (["--geometry", "tiny", "--repeats", "two"], "'two' is not an integer"),
    (["--geometry", "tiny", "--json", "/nonexistent/dir/out.json"], "--json"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path):
    assert main(["speed", *argv, "--quiet", "--cache-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err
    assert captured.out == "" and not any(tmp_path.iterdir())  # nothing built before the input was checked


def test_real_width_geometry_shapes():
    from pruning.toy import build_config, build_tokenizer

    g = speed.resolve_geometry("llava-1.5-7b")
    config = build_config(g, build_tokenizer(g.vocab_size))
    t, v = config.text_config, config.vision_config
    assert (t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_key_value_heads, t.vocab_size,
            t.num_hidden_layers) == (4096, 11008, 32, 32, 32064, 2)
    assert (v.hidden_size, v.intermediate_size, v.num_attention_heads, v.image_size, v.patch_size,
            v.num_hidden_layers) == (1024, 4096, 16, 336, 14, 4)
    assert config.vision_feature_layer == -2 and config.image_seq_length == 576
    g13 = speed.resolve_geometry("llava-1.5-13b", llm_layers=3, vit_layers=2, vocab=1000)
    assert (g13.text_hidden, g13.text_intermediate, g13.text_heads, g13.text_layers, g13.vision_layers,
            g13.model_vocab) == (5120, 13824, 40, 3, 2, 1000)


def test_bench_rows_carry_predicted_speedup():
    from pruning.bench import add_prefill_speedups

    rows = [{"name": "none", "prefill_ms": 10.0, "prefill_tflops": 4.0},
            {"name": "random", "prefill_ms": 5.0, "prefill_tflops": 1.0}]
    add_prefill_speedups(rows)
    assert rows[0]["prefill_speedup"] == rows[0]["prefill_speedup_predicted"] == rows[0]["prefill_efficiency"] == 1
    assert (rows[1]["prefill_speedup"], rows[1]["prefill_speedup_predicted"], rows[1]["prefill_efficiency"]) == (2, 4, 0.5)


def test_figures_from_a_speed_report(report, tmp_path, capsys):
    """benchmarks.figures draws the measured and predicted speedups of a real report into HTML files."""
    from app.plots import speed_figure
    from benchmarks import figures

    src = tmp_path / "speed.json"
    src.write_text(json.dumps(report))
    assert figures.main(["--speed", str(src), "--out", str(tmp_path / "fig")]) == 0
    written = capsys.readouterr().out.split()
    assert sorted(p.rsplit("/", 1)[1] for p in written) == ["speedup-prefill.html", "speedup-ttft.html"]
    html = (tmp_path / "fig" / "speedup-prefill.html").read_text()
    assert "plotly" in html and "random: measured" in html
    fig = speed_figure(report)
    rows = {r["label"]: r for r in report["rows"]}
    random = next(t for t in fig.data if t.name == "random: measured")
    assert list(random.y) == [rows[f"random {b}"]["prefill_speedup"] for b in sorted(BUDGETS)]
    with pytest.raises(SystemExit):
        figures.main([])  # nothing to draw: a usage error
