"""``python -m pruning ask``: the --json schema and one-line errors with a non-zero exit code."""

import json
import subprocess
import sys

import pytest

from pruning.cli import main

SCHEMA = {"answer": str, "strategy": str, "visual_tokens": int, "visual_tokens_kept": int, "tokens_per_layer": list,
          "kept": list, "grid": list, "timings": dict, "tflops": dict, "kv_cache_bytes": int}


@pytest.fixture(scope="module")
def image_path(images, tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "noise.png"
    images[0].save(path)
    return str(path)


def run_json(capsys, argv):
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_ask_json_schema(model_dirs, image_path, capsys):
    out = run_json(capsys, ["ask", "--model", str(model_dirs["llava15"]), "--image", image_path,
                            "--question", "what colour is it?", "--strategy", "random", "--keep", "100",
                            "--max-new-tokens", "4"])
    for key, kind in SCHEMA.items():
        assert isinstance(out[key], kind), key
    assert out["strategy"] == "random" and out["visual_tokens"] == 576 and out["visual_tokens_kept"] == 100
    assert out["grid"] == [24, 24] and len(out["kept"]) == 100 and out["kept"] == sorted(out["kept"])
    assert out["tokens_per_layer"] == [out["tokens_per_layer"][0]] * 6
    assert set(out["timings"]) == {"vision_ms", "prefill_ms", "decode_ms_per_token", "total_ms"}
    assert all(v > 0 for v in out["timings"].values())
    assert set(out["tflops"]) == {"vision", "prefill", "decode_per_token", "total"}
    assert out["kv_cache_bytes"] == sum(out["kv_cache_bytes_per_layer"]) > 0


def test_ask_layer_implies_llm_stage_and_4bit(model_dirs, image_path, capsys):
    out = run_json(capsys, ["ask", "--model", str(model_dirs["tiny"]), "--image", image_path, "--question", "how many?",
                            "--strategy", "random", "--keep", "5", "--layer", "2", "--positions", "rearrange",
                            "--4bit", "--max-new-tokens", "3"])
    assert out["params"]["stage"] == "llm" and out["params"]["positions"] == "rearrange"
    assert out["visual_tokens_kept"] == 25 and len(out["kept"]) == 25
    assert [n for n in out["tokens_per_layer"]] == [out["tokens_per_layer"][0]] * 2 + [out["tokens_per_layer"][0] - 20] * 2


def test_trace_shares_sum_to_one(model_dirs, image_path, capsys):
    out = run_json(capsys, ["ask", "--model", str(model_dirs["llava15"]), "--image", image_path, "--question", "what?",
                            "--strategy", "random", "--keep", "50", "--trace", "--max-new-tokens", "4"])
    trace = out["trace"]
    assert len(trace["attention_share"]) == 6 and trace["queries"] >= 1
    for shares, patches in zip(trace["attention_share"], trace["patch_attention"]):
        assert abs(sum(shares.values()) - 1) < 1e-4
        assert abs(sum(patches) - shares["image"]) < 1e-4
        assert all(patches[i] == 0 for i in set(range(576)) - set(out["kept"]))  # pruned patches receive none


@pytest.mark.parametrize("extra,message", [
    (["--image", "/nonexistent.png"], "does not exist"),
    (["--strategy", "bogus"], "unknown strategy 'bogus'"),
    (["--question", "  "], "question is empty"),
    (["--strategy", "random", "--layer", "40"], "layer=40"),
])
def test_bad_input_one_line_error(model_dirs, image_path, capsys, extra, message):
    argv = ["ask", "--model", str(model_dirs["tiny"]), "--image", image_path, "--question", "q?"] + extra
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_unreadable_image_and_model(tmp_path, image_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert main(["ask", "--model", str(tmp_path), "--image", str(text), "--question", "q"]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["ask", "--model", str(tmp_path / "x"), "--image", image_path, "--question", "q"]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_module_entry_point_exit_code(model_dirs, image_path):
    proc = subprocess.run([sys.executable, "-m", "pruning", "ask", "--model", str(model_dirs["tiny"]), "--image",
                           image_path, "--question", "q", "--strategy", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: unknown strategy")
