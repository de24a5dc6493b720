"""The served app reads no file outside its examples and Gradio's temp dir, caps uploads, binds loopback,
and loads models only from safetensors and the host's allow-list."""

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pruning.compare import ScopePool
from pruning.model import ModelLoadError, load_model

ROOT = Path(__file__).resolve().parents[1]


def _status(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


@pytest.mark.parametrize("path", ["/etc/passwd", str(ROOT / "app.py"), str(ROOT / "assets" / "model" / "config.json"),
                                  str(ROOT / "assets" / "examples" / ".." / "model" / "config.json"),
                                  "../../../../etc/passwd"])
def test_files_outside_the_allowed_paths_are_refused(app_server, path):
    code, _ = _status(f"{app_server.url}gradio_api/file={path}")
    assert code in (403, 404), (path, code)


def test_the_examples_are_served(app_server):
    example = ROOT / "assets" / "examples" / app_server.examples[0]["image"].split("/")[-1]
    code, _ = _status(f"{app_server.url}gradio_api/file={example}")
    assert code == 200


def test_uploads_over_10_mb_are_refused(app_server):
    boundary = "psboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + b"\0" * (10 * 2**20 + 1000) + f"\r\n--{boundary}--\r\n".encode()
    code, text = _status(f"{app_server.url}gradio_api/upload", body,
                         {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert code == 413 or "maximum allowed size" in text, (code, text[:200])


def test_binds_loopback_and_never_shares_by_default():
    import importlib.util

    spec = importlib.util.spec_from_file_location("prunescope_app_main_args", ROOT / "app.py")
    main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main)
    args = main.parse_args([])
    assert args.host == "127.0.0.1" and args.port == 7860
    assert main.parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"
    source = (ROOT / "app.py").read_text()
    assert "share=False" in source and "share=True" not in source


def test_models_outside_the_allow_list_are_never_loaded(model_dirs, monkeypatch):
    pool = ScopePool(str(model_dirs["tiny"]), allowed=[str(model_dirs["llava15"])], threads=None)
    loaded = []
    monkeypatch.setattr("pruning.compare.Scope", lambda name, **kw: loaded.append(name) or name)
    for bad in ("llava-hf/llava-1.5-7b-hf", "/etc", str(ROOT), "../assets/model"):
        with pytest.raises(ValueError, match="not on this host's allow-list"):
            pool.get(bad)
    assert loaded == []
    assert pool.get(str(model_dirs["llava15"])) == str(model_dirs["llava15"])


def test_a_pickle_checkpoint_is_refused_and_never_unpickled(model_dirs, tmp_path, monkeypatch):
    import pickle
    import shutil

    target = tmp_path / "pickled"
    shutil.copytree(model_dirs["tiny"], target)
    for f in target.glob("*.safetensors"):
        f.unlink()
    (target / "pytorch_model.bin").write_bytes(pickle.dumps({"never": "read"}))
    calls = []
    monkeypatch.setattr(pickle, "load", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append(a))
    import torch

    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    with pytest.raises(ModelLoadError, match="no .safetensors"):
        load_model(str(target), device="cpu")
    assert calls == []


def test_models_load_with_safetensors_only_and_no_remote_code(monkeypatch):
    """Every loader PruneScope calls (the config a hub id's family is read from, the LLaVA, its processor, IVTP's
    CLIP and tokenizer), for a local directory and for a hub id, is asked for safetensors only and no remote
    code."""
    from types import SimpleNamespace

    import transformers

    from pruning.model import load_clip

    calls = []
    hub_id = "nobody/no-such-llava"

    def recorder(name, fail=False):
        def from_pretrained(source, *args, **kwargs):
            calls.append((name, source, kwargs))
            if fail:
                raise OSError("recorded, not loaded")
            if name == "AutoConfig" and source == hub_id:  # the hub is out of reach: say it is a LLaVA
                return SimpleNamespace(model_type="llava")
            return original[name](source, *args, **kwargs)
        return from_pretrained

    original = {name: getattr(transformers, name).from_pretrained for name in
                ("LlavaForConditionalGeneration", "AutoProcessor", "CLIPModel", "AutoTokenizer", "AutoConfig")}
    for name in original:
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", recorder(name))
    lm = load_model(str(ROOT / "assets" / "model"), device="cpu")
    load_clip(lm)
    monkeypatch.setattr(transformers.LlavaForConditionalGeneration, "from_pretrained",
                        recorder("LlavaForConditionalGeneration", fail=True))
    with pytest.raises(ModelLoadError, match="nobody/no-such-llava"):
        load_model(hub_id, device="cpu")
    assert {name for name, _, _ in calls} >= set(original) - {"AutoConfig"}
    for name, source, kwargs in calls:
        assert kwargs.get("trust_remote_code") is False, (name, source)
        if name in ("LlavaForConditionalGeneration", "CLIPModel"):
            assert kwargs.get("use_safetensors") is True, (name, source)
    made = {(n, s) for n, s, _ in calls}
    assert ("AutoConfig", hub_id) in made, "a hub id's family is read from its config, with no remote code"
    assert ("LlavaForConditionalGeneration", hub_id) in made
