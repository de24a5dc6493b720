"""``python -m pruning speed`` on the later families, and their real geometries checked against the stock processors.

The real-width builds (``pruning.toy_families.build_real_width``) are gigabytes; here the same code path builds each
family with its real image processing (crop size, pinpoints, patch, merge, windows, tiles) and token geometry but
narrow layers, so that one test can check, on the geometry's own square image:
- the visual tokens the stock processor makes equal ``pruning.geometries.FAMILY_GEOMETRIES``' count, and its crops;
- the engine's FLOPs (``Result.tflops``, vision + prefill) equal ``pruning.cost.estimate`` on that geometry with the
  same narrow widths: the `cost` command and the engine count the same thing.
"""

import dataclasses
import json

import pytest

from pruning import cost, speed
from pruning.cli import main
from pruning.engine import Engine
from pruning.geometries import FAMILY_GEOMETRIES
from pruning.model import load_model
from pruning.strategies import get_strategy
from pruning.toy_families import FAMILIES, build_family

QUESTION = "What is shown in this image?"
VIT, TEXT = 128, 512  # narrow widths (head dims: ViT 128 / 16 heads = 8; LLM 512 / 4 heads = 128, M-RoPE's)


def narrow(g):
    """``g`` with narrow widths and depths (1 LLM, 2 ViT layers), its token geometry and image processing kept."""
    llm = cost.LLMShape(hidden=TEXT, heads=4, kv_heads=2, head_dim=128, intermediate=256, vocab=320, layers=1)
    full = (1,) if g.vision.window else ()  # a 2-block Qwen tower: full attention in its last block
    vision = dataclasses.replace(g.vision, hidden=VIT, intermediate=256, layers=2, projector_out=TEXT,
                                 full_attention_layers=full)
    merged = VIT * 4  # Qwen's PatchMerger and InternVL's pixel shuffle see 4 patches' features at once
    dims = {"llava_onevision": ((VIT, TEXT), (TEXT, TEXT)), "llava_next": ((VIT, TEXT), (TEXT, TEXT)),
            "qwen2_5_vl": ((merged, merged), (merged, TEXT)), "internvl": ((merged, TEXT), (TEXT, TEXT))}[g.family]
    return dataclasses.replace(g, llm=llm, vision=vision, projector_dims=dims)


@pytest.fixture(scope="module")
def narrow_engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("narrow-families")
    out = {}
    for name, g in FAMILY_GEOMETRIES.items():
        family = next(k for k, (model_type, _) in FAMILIES.items() if model_type == g.family)
        small = narrow(g)
        path = build_family(root / name, family, real={"geometry": small, "llm_layers": 1, "vit_layers": 2,
                                                       "vocab": 320}, allow_eos=False)
        out[name] = (small, Engine(load_model(str(path), device="cpu")))
    return out


@pytest.mark.parametrize("name", list(FAMILY_GEOMETRIES))
def test_real_geometry_matches_the_stock_processor_and_the_engine_matches_cost(narrow_engines, name):
    small, engine = narrow_engines[name]
    image = speed.random_image(small.image_px)
    prepared = engine.prepare(image, QUESTION)
    assert prepared.n_image == small.n_patches  # the geometry's packed rows / merged tokens, from the stock code
    assert engine.adapter.image_cost(prepared).crops == small.crops
    for strategy in (get_strategy("none"), get_strategy("random", keep=round(0.25 * prepared.n_image))):
        result = engine.run(image, QUESTION, strategy, max_new_tokens=1, warmup=0)
        text = result.tokens_per_layer[0] - result.visual_tokens_kept
        est = cost.estimate(small, text, strategy=strategy)
        assert (result.tflops["vision"] + result.tflops["prefill"]) * 1e12 == pytest.approx(est["flops"]["total"],
                                                                                             rel=1e-12)


def test_family_geometry_resolves_to_a_real_width_build(tmp_path):
    spec = speed.resolve_geometry("qwen2.5-vl-7b", llm_layers=3)
    assert spec == {"geometry": "qwen2.5-vl-7b", "llm_layers": 3, "vit_layers": 4, "vocab": 32064}
    assert speed.geometry_image_size("internvl3-8b", speed.resolve_geometry("internvl3-8b")) == 896
    with pytest.raises(ValueError, match="--vit-layers 1: expected at least 2"):
        speed.resolve_geometry("llava-next-7b", vit_layers=1)
    notes = speed.depth_notes({"hidden": 3584, "intermediate": 18944, "heads": 28, "kv_heads": 4,
                               "vision_hidden": 1280, "vision_intermediate": 3420, "llm_layers": 2, "vit_layers": 4,
                               "vocab": 32064}, "qwen2.5-vl-7b")
    assert any("2 of 28 LLM layers and 4 of 32 ViT layers" in n for n in notes)
    assert any("the real model's is 152064" in n for n in notes)
    assert any("every eighth block" in n for n in notes)


def test_speed_on_a_family_checkpoint_with_ratio_budgets(tmp_path, capsys):
    """A family model timed end to end: budgets as ratios of this image's tokens, the predicted speedups from the
    engine's family FLOPs."""
    path = build_family(tmp_path / "qwen", "qwen2.5-vl", allow_eos=False)
    speed.random_image(64).save(tmp_path / "image.png")
    out = tmp_path / "speed.json"
    assert main(["speed", "--model", str(path), "--keep", "0.5,0.25", "--strategies", "none,random,fastv",
                 "--repeats", "1", "--new-tokens", "2", "--no-memory", "--image", str(tmp_path / "image.png"), "--json", str(out),
                 "--quiet"]) == 0
    report = json.loads(out.read_text())
    n = report["settings"]["visual_tokens"]
    assert n == 64  # 64 x 64 px, patch 4, 2 x 2 merge: 8 x 8 tokens
    rows = {r["label"]: r for r in report["rows"]}
    assert set(rows) == {"none", "random 32", "random 16", "fastv 32 (layer 2)", "fastv 16 (layer 2)"}
    assert rows["random 16"]["visual_tokens_kept"] == 16
    for r in report["rows"]:
        assert r["prefill_speedup_predicted"] == pytest.approx(
            rows["none"]["tflops"]["prefill"] / r["tflops"]["prefill"])
    assert rows["random 16"]["prefill_speedup_predicted"] > rows["random 32"]["prefill_speedup_predicted"] > 1
    assert rows["random 16"]["tflops"]["vision"] == rows["none"]["tflops"]["vision"]


def test_bench_on_a_family_refuses_a_fixed_budget_in_words(family_dirs, capsys):
    """A question sweep's budgets are counts of one fixed grid; a family's tokens follow each image, and a fraction
    of no grid would silently keep nothing: refused, naming what takes ratios."""
    assert main(["bench", "--model", str(family_dirs["llava-next"]), "--strategies", "random", "--keep", "0.5", "--n", "4"]) == 2
    err = capsys.readouterr().err
    assert "no fixed patch grid" in err and "`ask --keep 0.25`" in err
