"""The measuring commands of benchmarks/ on the tiny geometry (random weights, fast): they run, their reports hold
what the docs read from them, and the checks they make can fail. Their timings mean nothing here."""

import json

import pytest


@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.getbasetemp() / "bench-models"
    monkeypatch.setenv("PRUNESCOPE_CACHE", str(root))
    return root


def test_engine_overhead_report(cache, tmp_path, capsys):
    from benchmarks import engine_overhead

    out = tmp_path / "overhead.json"
    code = engine_overhead.main(["--geometry", "tiny", "--repeats", "2", "--new-tokens", "3", "--threads", "1",
                                 "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 0 and report["tokens_match"], "the engine's tokens equal generate's"
    assert len(report["tokens"]["engine"]) == 3
    assert set(report["ms"]) >= set(engine_overhead.MEASURES) | {"tf_decode_ms_per_token"}
    assert all(report["ms"][m]["n"] == 2 for m in engine_overhead.MEASURES)
    assert report["ms"]["cls_hooks"]["median"] > 0 and report["ms"]["probe_hook"]["median"] > 0
    for name, r in report["ratios"].items():
        assert r["paired_min"] <= r["paired_median"] <= r["paired_max"], name
    text = capsys.readouterr().out
    assert "prefill, engine / transformers forward" in text and "tokens: engine == transformers" in text


def test_hook_ms_times_only_the_hooks_in_between():
    import time

    import torch

    from benchmarks.engine_overhead import hook_ms
    import contextlib

    layer = torch.nn.Linear(4, 4)

    @contextlib.contextmanager
    def slow_hook():
        h = layer.register_forward_hook(lambda m, a, o: time.sleep(0.02))
        try:
            yield
        finally:
            h.remove()

    ms = hook_ms([layer], slow_hook(), lambda: [layer(torch.ones(1, 4)) for _ in range(3)])
    assert 55 <= ms < 200  # three calls of a 20 ms hook
    assert hook_ms([layer], contextlib.nullcontext(), lambda: layer(torch.ones(1, 4))) < 5
    assert not layer._forward_hooks, "every hook is removed"


def test_four_bit_report(cache, tmp_path, capsys):
    from benchmarks import four_bit

    out = tmp_path / "four.json"
    assert four_bit.main(["--geometry", "tiny", "--configs", "none,random:4,fastv:4,vtw", "--repeats", "1",
                          "--new-tokens", "2", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {(r["precision"], r["label"]): r for r in report["rows"]}
    assert {p for p, _ in rows} == {"fp32", "nf4"} and len(rows) == 8
    for label in ("random:4", "fastv:4", "vtw"):
        # the same token counts in both precisions, so the same predicted speedup
        assert rows[("fp32", label)]["tokens_per_layer"] == rows[("nf4", label)]["tokens_per_layer"]
        assert rows[("fp32", label)]["prefill_speedup_predicted"] == pytest.approx(
            rows[("nf4", label)]["prefill_speedup_predicted"])
        assert rows[("fp32", label)]["prefill_speedup_predicted"] > 1
    assert rows[("fp32", "none")]["prefill_ms_over_fp32"] == 1.0
    weights = report["model"]["weight_bytes"]
    assert weights["nf4"] < weights["fp32"]
    assert "| nf4 | none |" in capsys.readouterr().out


def test_four_bit_refuses_configs_without_none(cache):
    from benchmarks import four_bit

    with pytest.raises(SystemExit, match="must start with none"):
        four_bit.parse_configs("random:4,none", 2)


def test_sweep_ceiling_report(capsys):
    """The command docs/robustness.md quotes: the request's size against the ceiling, then the sweep's time."""
    from benchmarks import sweep_ceiling
    from pruning.compare import SWEEP_CEILING

    assert sweep_ceiling.main(["--strategies", "random,vtw", "--budgets", "36", "--n", "2"]) == 0
    request, sweep = capsys.readouterr().out.strip().splitlines()
    assert request == ("request: 2 strategies x 1 budgets x 2 questions = 3 configurations x 2 questions x 4 tokens = "
                       f"24 (ceiling {SWEEP_CEILING:,})")
    assert sweep.startswith("sweep: ") and "ms per question run" in sweep
    with pytest.raises(ValueError, match="more than the 20,000 one request may ask"):
        sweep_ceiling.main(["--n", "1000"])  # refused before the model loads
