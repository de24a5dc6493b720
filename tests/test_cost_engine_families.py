"""The engine's FLOPs estimates (``Result.tflops``) on every family, against torch's FlopCounterMode.

Each family's image cost (``Adapter.image_cost``) counts the vision tower once per crop or tile the processor made
for this image (Qwen2.5-VL: its real windows), and the projector where the family runs it. The counts run on the
eager-attention load (FlopCounterMode does not count CPU SDPA kernels)."""

import numpy as np
import pytest
from PIL import Image

from pruning import cost
from pruning.strategies import get_strategy
from pruning.toy_families import FAMILIES

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def eager_engines(family_engines):
    return {f: family_engines(f, "eager") for f in FAMILIES}


def image(h, w, seed=0):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (h, w, 3), dtype=np.uint8))


# Two shapes: 48 x 80 gives Qwen2.5-VL edge windows smaller than the rest and the anyres families several crops;
# 32 x 32 gives Qwen whole windows and the anyres families one base image and one crop.
@pytest.mark.parametrize("shape", [(48, 80), (32, 32)])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_vision_estimate_equals_the_stock_forward(eager_engines, family, shape):
    engine = eager_engines[family]
    estimated, counted = cost.vision_forward_flops(engine, image(*shape), QUESTION)
    assert estimated == counted


@pytest.mark.parametrize("family", list(FAMILIES))
def test_estimates_equal_the_counts_and_the_score_is_paid_only_when_read(eager_engines, family):
    engine = eager_engines[family]
    for strategy in (get_strategy("none"), get_strategy("random", keep=5)):
        rows = dict((stage, (est, counted)) for stage, est, counted in
                    cost.flop_check(engine, image(48, 80), QUESTION, strategy))
        for stage in ("prefill", "decode"):
            est, counted = rows[stage]
            assert est == counted, (family, strategy.name, stage)
        est, counted = rows["vision"]  # neither reads the substitute score: it is never computed
        assert est == counted, (family, strategy.name)
    # vtc-cls reads it: the ViT layers' attention is recomputed then, in the prefill's selection (not model FLOPs)
    rows = {stage: (e, c) for stage, e, c in cost.flop_check(engine, image(48, 80), QUESTION,
                                                            get_strategy("vtc-cls", keep=5))}
    assert rows["vision"][0] == rows["vision"][1]
    assert rows["prefill"][1] > rows["prefill"][0]


def test_image_cost_follows_the_image(eager_engines):
    """More crops, more vision FLOPs; the projector counted on every row of every crop, in the vision pass."""
    engine = eager_engines["llava-next"]
    small = engine.adapter.image_cost(engine.prepare(image(32, 32), QUESTION))
    wide = engine.adapter.image_cost(engine.prepare(image(32, 96), QUESTION))
    assert wide.crops > small.crops
    assert wide.vision_flops() > small.vision_flops()
    tokens = small.vision.n_tokens - 1  # the [CLS] column is dropped before the projector
    assert small.projector_rows == small.crops * tokens
    assert small.prefill_projector_flops(10) == 0
    result = engine.run(image(32, 96), QUESTION, get_strategy("random", keep=5), max_new_tokens=2, warmup=0)
    assert result.tflops["vision"] * 1e12 == pytest.approx(wide.vision_flops(), rel=1e-9)


def test_qwen_windows_are_the_towers_own(eager_engines):
    engine = eager_engines["qwen2.5-vl"]
    ic = engine.adapter.image_cost(engine.prepare(image(48, 80), QUESTION))
    assert sum(ic.vision.windows) == ic.vision.n_tokens
    assert len(set(ic.vision.windows)) > 1  # edge windows are smaller
    assert max(ic.vision.windows) == ic.vision.window
