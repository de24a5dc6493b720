"""4-bit (bitsandbytes nf4) on the families beyond LLaVA-1.5, on the CPU: each tiny family checkpoint is loaded with
``load_in_4bit=True`` and runs one strategy through the engine. bitsandbytes' CPU nf4 kernels need every quantised
linear layer's input width to be a multiple of 64: LLaVA-OneVision's, LLaVA-NeXT's and InternVL's toys are 64 wide;
the default tiny Qwen2.5-VL's vision blocks are 32 wide, so that checkpoint is refused at load time, in words, and a
Qwen2.5-VL toy with a 64-wide ViT (``build_family(..., vision_width=64)``) is the one that runs."""

import numpy as np
import pytest
from PIL import Image

bnb = pytest.importorskip("bitsandbytes")

from pruning.engine import Engine  # noqa: E402
from pruning.model import ModelLoadError, load_model  # noqa: E402
from pruning.strategies import get_strategy  # noqa: E402
from pruning.toy_families import build_family  # noqa: E402

RUNS = {"qwen2.5-vl": {"vision_width": 64}, "llava-onevision": {}, "llava-next": {}, "internvl": {}}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("four-bit-families")


@pytest.fixture(scope="module")
def image():
    return Image.fromarray(np.random.RandomState(5).randint(0, 255, (64, 80, 3), dtype=np.uint8))


@pytest.mark.parametrize("family", list(RUNS))
def test_each_family_runs_a_strategy_in_4bit_on_the_cpu(root, image, family):
    lm = load_model(str(build_family(root / family, family, seed=1, **RUNS[family])), load_in_4bit=True, device="cpu")
    assert lm.load_in_4bit
    engine = Engine(lm)
    quantised = [m for m in lm.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantised and all(m.weight.quant_state.quant_type == "nf4" for m in quantised)
    # the engine's own decoder layers and the vision tower are quantised (the LM head stays full precision)
    assert all(isinstance(layer.self_attn.q_proj, bnb.nn.Linear4bit) for layer in engine.layers)
    vision = lm.model.model.visual if family == "qwen2.5-vl" else lm.model.model.vision_tower
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in vision.modules())
    result = engine.run(image, "What is in the picture?", get_strategy("random", keep=8), max_new_tokens=2, warmup=0)
    assert isinstance(result.answer, str) and result.answer
    assert result.visual_tokens_kept == 8 < result.visual_tokens
    assert len(result.kept) == 8 and all(0 <= i < result.visual_tokens for i in result.kept)


def test_a_checkpoint_too_narrow_for_cpu_4bit_is_refused_at_load_time(root):
    """The default tiny Qwen2.5-VL: its ViT blocks take 32 features; bitsandbytes would fail at the first forward
    with a reshape error, so the load refuses with the layer's name and the rule."""
    path = build_family(root / "qwen-narrow", "qwen2.5-vl", seed=1)
    with pytest.raises(ModelLoadError, match=r"cannot run in 4-bit on the CPU: .*multiple of 64, and "
                                             r"model\.visual\.blocks\.0\.attn\.qkv takes 32"):
        load_model(str(path), load_in_4bit=True, device="cpu")
    assert not load_model(str(path), device="cpu").load_in_4bit  # the same checkpoint loads without 4-bit
