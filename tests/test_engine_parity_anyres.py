"""The engine on the anyres families against transformers' own classes (issue 27): LLaVA-OneVision
(``LlavaOnevisionForConditionalGeneration``: SigLIP without [CLS], Qwen2 LLM) and LLaVA-NeXT
(``LlavaNextForConditionalGeneration``: CLIP with [CLS], Llama LLM), and InternVL
(``InternVLForConditionalGeneration``: tiles + thumbnail, pixel shuffle, Qwen2 LLM). Unpruned == ``generate`` token for token and the
prefill logits; pruning before the LLM == the stock forward on the shortened input (original or contiguous
positions); dropping rows at layer k == the mask formulation. Tiny random-init checkpoints built offline
(``pruning.toy_families``): anyres crops + base image + newline tokens, three image shapes hence three token counts."""

import pytest
import torch


from .conftest import QUESTIONS
from .parity import (assert_substitute_named_where_read, assert_before_llm_matches_shortened_input, assert_drop_in_llm_matches_mask_reference,
                     assert_prefill_logits_match_forward, assert_unpruned_matches_generate)


@pytest.fixture(scope="module", params=[("llava-onevision", "sdpa"), ("llava-onevision", "eager"),
                                        ("llava-next", "sdpa"), ("llava-next", "eager"), ("internvl", "sdpa"),
                                        ("internvl", "eager")],
                ids=["onevision", "onevision-eager", "next", "next-eager", "internvl", "internvl-eager"])
def engine(request, family_engines):
    return family_engines(*request.param)


def stock_rows(engine, inputs):
    """(N, D): the stock model's packed, projected image rows (base image, crops, newline tokens; InternVL: the tiles'
    pixel-shuffled rows, tile after tile)."""
    extra = {k: inputs[k] for k in ("image_sizes", "batch_num_images") if k in inputs}
    out = engine.model.model.get_image_features(pixel_values=inputs.pixel_values, **extra)
    return torch.cat([r.reshape(-1, r.shape[-1]) for r in out.pooler_output])


def test_token_count_follows_the_image(engine, images):
    counts = {engine.prepare(image, QUESTIONS[0]).n_image for image in images}
    assert len(counts) > 1  # (InternVL: 64x80 and 100x60 both make 6 tiles + the thumbnail)


# The image shapes whose code paths differ. LLaVA-OneVision and LLaVA-NeXT: 64x80 (wide: 2x3 crops, the padding rows
# unpadded), 100x60 (tall: 3x2 crops, the padding columns unpadded), 48x48 (square: 2x2 crops). InternVL: 64x80 (6
# tiles + the thumbnail) and 48x48 (4 tiles + the thumbnail); 100x60 makes 6 tiles + the thumbnail again.
PATH_SHAPES = {"internvl": (0, 2)}


def test_unpruned_matches_generate(engine, images):
    for i in PATH_SHAPES.get(engine.model.config.model_type, range(len(images))):
        assert_unpruned_matches_generate(engine, images[i], QUESTIONS[i])


def test_unpruned_prefill_logits_match_forward(engine, images):
    assert_prefill_logits_match_forward(engine, images[1], QUESTIONS[0], last=False)


@pytest.mark.parametrize("positions", ["keep", "rearrange"])
def test_before_llm_equals_forward_on_shortened_input(engine, images, positions):
    assert_before_llm_matches_shortened_input(engine, images[0], QUESTIONS[1], positions,
                                              lambda inputs: stock_rows(engine, inputs))


def test_drop_in_llm_equals_mask_reference(engine, images):
    assert_drop_in_llm_matches_mask_reference(engine, images[2], QUESTIONS[2], lambda inputs: stock_rows(engine, inputs))


# ------------------------------------------------------------------ the substitute for [CLS] attention
def test_substitute_scores_follow_the_packed_rows(engine, images):
    """Mean attention received, packed as the rows are: one score per row, per ViT layer and head; 0 exactly on the
    newline rows (anyres); and, with eager attention, equal to the stock tower's own attention weights
    (``output_attentions``): summed over each crop's queries / T, [CLS] dropped where the features drop it."""
    prepared = engine.prepare(images[0], QUESTIONS[0])
    vision = engine.vision_pass(prepared)
    model, config = engine.model, engine.model.config
    scores, rows = vision.cls_attention, vision.patch_features
    assert scores.shape[-1] == rows.shape[0] == prepared.n_image
    family = config.model_type
    if family != "internvl":
        newline = (rows == model.model.image_newline.to(rows.dtype)).all(-1)
        assert 0 < int(newline.sum()) < rows.shape[0]
        assert bool((scores[:, :, newline] == 0).all()) and bool((scores[:, :, ~newline] > 0).all())
    if engine.attn_impl != "eager":
        return
    crops = prepared.pixel_values[0] if prepared.pixel_values.dim() == 5 else prepared.pixel_values
    with torch.no_grad():
        att = model.model.vision_tower(crops.to(engine.vision_dtype), output_attentions=True).attentions
    drop = 1 if config.vision_feature_select_strategy == "default" else 0
    received = torch.stack([a.sum(2) / a.shape[-1] for a in att])[..., drop:]  # (L, B, H, T')
    if family == "internvl":  # every tile's shuffled rows: each row sums its 2x2 patches
        side = int(received.shape[-1] ** 0.5)
        ref = torch.stack([torch.stack([
            model.model.pixel_shuffle(layer[:, h].reshape(-1, side, side, 1), config.downsample_ratio).sum(-1).reshape(-1)
            for h in range(layer.shape[1])]) for layer in received])
        torch.testing.assert_close(scores, ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(scores.sum(-1), received.sum(-1).sum(1))  # every tile's patches, all counted
    else:  # the base image comes first, unchanged by the packing
        base = received[:, 0]  # (L, H, side^2)
        torch.testing.assert_close(scores[:, :, :base.shape[-1]], base, atol=1e-5, rtol=1e-4)


def test_substitute_is_named_where_read(engine, images):
    assert_substitute_named_where_read(engine, images[0], QUESTIONS[0], "a substitute", unread="divprune")
