"""The engine against transformers' own LlavaForConditionalGeneration (the correctness anchors)."""

import pytest
import torch

from pruning.strategies import get_strategy

from .conftest import QUESTIONS
from .parity import (assert_before_llm_matches_shortened_input, assert_drop_in_llm_matches_mask_reference,
                     assert_prefill_logits_match_forward, assert_unpruned_matches_generate)

VARIANTS = [("tiny", False, "sdpa"), ("llava15", False, "sdpa"), ("tiny", False, "eager"), ("llava15", True, "sdpa"),
            ("tiny", True, "sdpa")]
IDS = ["tiny", "llava15", "tiny-eager", "llava15-4bit", "tiny-4bit"]


def tol(four_bit):
    return dict(atol=2e-3, rtol=2e-3) if four_bit else dict(atol=1e-4, rtol=1e-4)


def image_rows(engine):
    """The stock model's (N, D) projected image rows."""
    return lambda inputs: engine.model.model.get_image_features(pixel_values=inputs.pixel_values).pooler_output[0]


@pytest.mark.parametrize("name,four_bit,attn", VARIANTS, ids=IDS)
def test_unpruned_matches_generate(engines, images, name, four_bit, attn):
    # one image: LLaVA-1.5 resizes every image to its one fixed grid, so another shape runs the same code (the shapes
    # that change the path are the families', in test_engine_parity_qwen.py and test_engine_parity_anyres.py)
    assert_unpruned_matches_generate(engines(name, four_bit, attn), images[1], QUESTIONS[1])


@pytest.mark.parametrize("name,four_bit,attn", VARIANTS, ids=IDS)
def test_unpruned_prefill_logits_match_forward(engines, images, name, four_bit, attn):
    assert_prefill_logits_match_forward(engines(name, four_bit, attn), images[0], QUESTIONS[0], tol(four_bit))


@pytest.mark.parametrize("positions", ["keep", "rearrange"])
@pytest.mark.parametrize("name,four_bit,attn", VARIANTS, ids=IDS)
def test_before_llm_equals_forward_on_shortened_input(engines, images, name, four_bit, attn, positions):
    """Pruning before the LLM = transformers' forward on the prompt with only the kept image rows."""
    engine = engines(name, four_bit, attn)
    assert_before_llm_matches_shortened_input(engine, images[1], QUESTIONS[1], positions, image_rows(engine),
                                              n=engine.geometry.n_patches, tol=tol(four_bit))


@pytest.mark.parametrize("name,four_bit,attn", VARIANTS, ids=IDS)
def test_drop_in_llm_equals_mask_reference(engines, images, name, four_bit, attn):
    """FastV's formulation (``tests.parity.mask_reference``): the full sequence through every layer, the dropped
    image tokens excluded by the attention mask in layers >= k; positions unchanged."""
    engine = engines(name, four_bit, attn)
    assert_drop_in_llm_matches_mask_reference(engine, images[2], QUESTIONS[2], image_rows(engine),
                                              n=engine.geometry.n_patches, layers=engine.geometry.llm_layers,
                                              tol=tol(four_bit))


def test_positions_rearrange_changes_in_llm_result(engines, images):
    """The two position modes are really different computations (guards against a no-op option)."""
    engine = engines("llava15")
    prepared = engine.prepare(images[0], QUESTIONS[0])
    logits = {}
    for positions in ("keep", "rearrange"):
        s = get_strategy("random", keep=50, stage="llm", layer=2, positions=positions)
        logits[positions] = engine.prefill(prepared, engine.vision_pass(prepared), s).logits
    assert not torch.allclose(logits["keep"], logits["rearrange"], atol=1e-5)
