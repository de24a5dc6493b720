"""``python -m pruning bench --processes N`` and the same under a launcher (accelerate launch): the questions are split over
the processes and the merged sweep equals the one-process sweep, row for row (timings apart)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.serving import free_port
from pruning.bench import SweepJob, merge_shards, run_shard
from pruning.cli import main

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["bench", "--n", "10", "--strategies", "vtc-cls,fastv", "--keep", "36", "--threads", "1", "--json"]
TIMED = ("prefill_ms", "prefill_speedup", "prefill_efficiency")


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMED} for r in rows]


@pytest.fixture(scope="module")
def launched():
    """``accelerate launch --multi_gpu`` (torchrun's launcher: on a CPU-only machine plain ``accelerate launch``
    starts one process), started beside ``one_process`` (each is mostly its own start-up, one core each); the
    finished process, its output read."""
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()),
           "-m", "pruning", *ARGS]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    yield proc
    proc.kill()
    proc.communicate()


@pytest.fixture(scope="module")
def one_process(launched):
    proc = subprocess.run([sys.executable, "-m", "pruning", *ARGS], cwd=ROOT, capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _env(**extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        if key not in extra:
            env.pop(key, None)
    return env


def test_processes_equal_one_process(one_process, capsys):
    assert [r["label"] for r in one_process] == ["none", "vtc-cls", "vtc-cls (keep)", "fastv"]
    assert main([*ARGS, "--processes", "2"]) == 0
    captured = capsys.readouterr()
    two = json.loads(captured.out)
    assert untimed(two) == untimed(one_process)
    assert "bench (2 processes)" in captured.err  # one progress bar over both processes
    assert all(r["prefill_ms"] > 0 for r in two)


def test_accelerate_launch_processes_equal_one_process(one_process, launched):
    """``accelerate launch --multi_gpu`` sets WORLD_SIZE / RANK; the shards meet on rank 0 over gloo."""
    stdout, stderr = launched.communicate(timeout=300)
    assert launched.returncode == 0, stderr
    rows = [line for line in stdout.splitlines() if line.startswith("[")]
    assert len(rows) == 1  # rank 0 prints, rank 1 does not
    assert untimed(json.loads(rows[0])) == untimed(one_process)


def test_shards_split_like_lmms_eval_and_merge_in_order():
    job = SweepJob(model=str(ROOT / "assets" / "model"), n=5, strategies="vtc-cls", keep="36", threads=1,
                   position_variants=False)
    shards = [run_shard(job, rank, 2, rank) for rank in range(2)]
    assert [i for i, _ in shards[0]["records"][0]] == [0, 2, 4] and [i for i, _ in shards[1]["records"][0]] == [1, 3]
    rows = merge_shards(shards)
    assert [r["label"] for r in rows] == ["none", "vtc-cls"] and rows[1]["tokens_entering_llm"] == 36
    with pytest.raises(ValueError, match="do not cover every question"):
        merge_shards(shards[:1])
    other = dict(shards[1], n_samples=6)
    with pytest.raises(ValueError, match="built different sweeps"):
        merge_shards([shards[0], other])


def test_bad_input_before_and_inside_the_processes(capsys):
    assert main(["bench", "--strategies", "nope", "--processes", "2"]) == 2  # refused before any process starts
    assert "unknown strategy 'nope'" in capsys.readouterr().err
    assert main(["bench", "--n", "2", "--strategies", "vtc-cls", "--keep", "1000", "--processes", "2"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"bench process [01]: budget '1000' gives 1000 tokens, outside 0\.\.144", err), err
    assert main(["bench", "--processes", "0"]) == 2
    assert "--processes 0" in capsys.readouterr().err


def test_processes_option_under_a_launcher_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["bench", "--processes", "2"]) == 2
    assert "use one or the other" in capsys.readouterr().err
