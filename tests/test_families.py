"""Families beyond LLaVA-1.5 (issue 27): image-only processors without torchvision, tiny checkpoints built offline
(``family_dirs`` in conftest, shared by the session; ``build-toy`` here builds its own)."""

import json
import math
import subprocess
import sys

import pytest
import torch

from pruning.processors import load_processor

SIZES = [(64, 80), (100, 60), (48, 48), (30, 200)]


def _prompt(processor):
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


def _image(h, w):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.RandomState(h * w).randint(0, 255, (h, w, 3), dtype=np.uint8))


def _ask(model, image, keep: str, new_tokens: int) -> list[str]:
    return [sys.executable, "-m", "pruning", "ask", "--model", str(model), "--image", str(image), "--question",
            "what colour?", "--strategy", "random", "--keep", keep, "--max-new-tokens", str(new_tokens), "--device",
            "cpu", "--json"]


# the command-line runs each test reads: each is mostly its own start-up (one core, seconds), so those of the selected
# tests start together when this module's first test starts, and run beside the tests before them
CLI_READ_BY = {"test_build_toy_cli_writes_a_loadable_family": ["build-toy"],
               "test_ask_cli_on_a_dynamic_grid_family": ["ask 64x80 keep 200"],
               "test_ask_cli_ratio_budget_follows_the_image": ["ask 64x80 keep 0.25", "ask 48x48 keep 0.25"]}


@pytest.fixture(scope="module", autouse=True)
def cli(request, tmp_path_factory, family_dirs):
    """``cli(name)``: (the finished command-line run ``name``: returncode, stdout, stderr; the path it was given: the
    output directory, or the image). Started with the module's first test (``CLI_READ_BY``)."""
    root = tmp_path_factory.mktemp("families-cli")

    def command(name):
        if name == "build-toy":
            out = root / "q"
            return [sys.executable, "-m", "pruning", "build-toy", "--geometry", "qwen2.5-vl", "--out", str(out)], out
        _, shape, _, keep = name.split()
        h, w = map(int, shape.split("x"))
        image = root / f"{h}x{w}-{keep}.png"
        _image(h, w).save(image)
        return _ask(family_dirs["qwen2.5-vl"], image, keep, 2 if keep == "200" else 1), image

    started = {}

    def start(name):
        cmd, path = command(name)
        started[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), path)

    for item in request.session.items:
        if item.module is request.module:
            for name in CLI_READ_BY.get(item.name, []):
                if name not in started:
                    start(name)

    def finished(name):
        if name not in started:
            start(name)
        proc, path = started[name]
        stdout, stderr = proc.communicate(timeout=300)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), path

    yield finished
    for proc, _ in started.values():
        proc.kill()
        proc.communicate()


def test_torchvision_is_not_importable_here():
    """The premise of the image-only route: if this fails, torchvision arrived and docs/install.md is out of date."""
    with pytest.raises(ImportError):
        import torchvision  # noqa: F401


def test_saved_processor_names_the_stock_class(family_dirs):
    for name, stock in (("qwen2.5-vl", "Qwen2_5_VLProcessor"), ("llava-onevision", "LlavaOnevisionProcessor")):
        saved = json.loads((family_dirs[name] / "processor_config.json").read_text())
        assert saved["processor_class"] == stock
        assert "video_processor" not in saved


def test_qwen_token_count_is_the_family_formula(family_dirs):
    """Qwen2.5-VL: smart_resize to multiples of patch x merge (8 px here), then one token per 2x2 merged patches."""
    from transformers import AutoModelForImageTextToText

    path = family_dirs["qwen2.5-vl"]
    processor = load_processor(str(path), "qwen2_5_vl")
    assert not hasattr(processor, "video_processor")
    model = AutoModelForImageTextToText.from_pretrained(str(path)).eval()
    factor = 8
    for h, w in SIZES:
        inputs = processor(images=_image(h, w), text=_prompt(processor), return_tensors="pt")
        n = int((inputs.input_ids == model.config.image_token_id).sum())
        rh, rw = round(h / factor) * factor, round(w / factor) * factor
        if rh * rw < 256:  # min_pixels: scaled up, rounded up (smart_resize)
            beta = math.sqrt(256 / (h * w))
            rh, rw = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
        assert n == (rh // factor) * (rw // factor), (h, w)
        with torch.no_grad():
            feats = model.model.get_image_features(pixel_values=inputs.pixel_values,
                                                   image_grid_thw=inputs.image_grid_thw).pooler_output
        assert sum(f.shape[0] for f in feats) == n


def test_onevision_token_count_matches_the_model(family_dirs):
    """LLaVA-OneVision: the placeholders equal the rows the stock model packs (base + anyres crops + newlines)."""
    from transformers import AutoModelForImageTextToText

    path = family_dirs["llava-onevision"]
    processor = load_processor(str(path), "llava_onevision")
    assert not hasattr(processor, "video_processor")
    model = AutoModelForImageTextToText.from_pretrained(str(path)).eval()
    counts = set()
    for h, w in SIZES:
        inputs = processor(images=_image(h, w), text=_prompt(processor), return_tensors="pt")
        n = int((inputs.input_ids == model.config.image_token_id).sum())
        with torch.no_grad():
            feats = model.model.get_image_features(pixel_values=inputs.pixel_values, image_sizes=inputs.image_sizes,
                                                   batch_num_images=inputs.batch_num_images).pooler_output
        assert sum(f.shape[0] for f in feats) == n
        assert n > 16  # more than the base image's 4x4: crops and newlines are there
        counts.add(n)
    assert len(counts) > 1  # the count follows the image's shape


def test_llava_next_loads_with_autoprocessor_and_counts_match(family_dirs):
    """LLaVA-NeXT's stock processor has no video part: saved and loaded as it is, its count = the model's rows."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = family_dirs["llava-next"]
    processor = AutoProcessor.from_pretrained(str(path))
    assert type(processor).__name__ == "LlavaNextProcessor"
    model = AutoModelForImageTextToText.from_pretrained(str(path)).eval()
    for h, w in SIZES:
        inputs = processor(images=_image(h, w), text=_prompt(processor), return_tensors="pt")
        n = int((inputs.input_ids == model.config.image_token_id).sum())
        with torch.no_grad():
            feats = model.model.get_image_features(pixel_values=inputs.pixel_values,
                                                   image_sizes=inputs.image_sizes).pooler_output
        assert sum(f.shape[0] for f in feats) == n


def test_internvl_token_count_is_tiles_times_sequence(family_dirs):
    """InternVL: image_seq_length (16 here: 8x8 patches pixel-shuffled by 0.5) per tile, tiles + thumbnail; equal to
    the rows the stock model projects."""
    from transformers import AutoModelForImageTextToText

    path = family_dirs["internvl"]
    processor = load_processor(str(path), "internvl")
    assert not hasattr(processor, "video_processor")
    model = AutoModelForImageTextToText.from_pretrained(str(path)).eval()
    for h, w in SIZES:
        inputs = processor(images=_image(h, w), text=_prompt(processor), return_tensors="pt")
        n = int((inputs.input_ids == model.config.image_token_id).sum())
        tiles = inputs.pixel_values.shape[0]
        assert n == 16 * tiles and tiles >= 1
        with torch.no_grad():
            feats = model.model.get_image_features(pixel_values=inputs.pixel_values).pooler_output
        assert feats.shape[0] * feats.shape[1] == n


def test_build_toy_cli_writes_a_loadable_family(cli):
    done, out = cli("build-toy")
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl"
    assert (out / "chat_template.jinja").is_file()
    load_processor(str(out), "qwen2_5_vl")


def test_ask_cli_on_a_dynamic_grid_family(cli):
    """``python -m pruning ask`` on Qwen2.5-VL: the grid and the clamp note are this image's (8x10 = 80 tokens),
    not a fixed grid's."""
    from PIL import Image

    done, image = cli("ask 64x80 keep 200")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["grid"] == [8, 10] and out["visual_tokens"] == 80 and out["visual_tokens_kept"] == 80
    assert any("clamped to 80" in note for note in out["notes"])
    assert Image.open(image).size == (80, 64)


def test_budget_forms():
    from pruning.budgets import keep_tokens, parse_budget

    assert parse_budget("64") == 64 and isinstance(parse_budget("64"), int)
    assert parse_budget("0.25") == 0.25 and parse_budget("1.0") == 1.0
    for bad in ("-5", "2.5", "0.0", "abc", "nan"):
        with pytest.raises(ValueError):
            parse_budget(bad)
    assert keep_tokens(0.25, 80) == 20 and keep_tokens(0.25, 36) == 9 and keep_tokens(0.001, 36) == 1
    assert keep_tokens(200, 80) == 80 and keep_tokens(20, 80) == 20


def test_ask_cli_ratio_budget_follows_the_image(cli):
    """``--keep 0.25`` keeps a quarter of each image's own tokens: 20 of 80 (64x80), 9 of 36 (48x48)."""
    kept = {}
    for h, w in ((64, 80), (48, 48)):
        done, _ = cli(f"ask {h}x{w} keep 0.25")
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        kept[(h, w)] = (out["visual_tokens_kept"], out["visual_tokens"])
    assert kept == {(64, 80): (20, 80), (48, 48): (9, 36)}
