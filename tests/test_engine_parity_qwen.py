"""The engine on Qwen2.5-VL against transformers' own Qwen2_5_VLForConditionalGeneration (issue 27's anchors):
unpruned == ``generate`` token for token and the prefill logits; pruning before the LLM == the stock forward on the
shortened input with the kept rows' own M-RoPE ids (or contiguous ids); dropping rows at layer k == the mask
formulation. A tiny random-init checkpoint built offline (``pruning.toy_families``, conftest's ``family_engines``),
three image shapes, so three token grids (8x10, 12x8, 6x6)."""

import pytest
import torch


from .conftest import QUESTIONS
from .parity import (assert_substitute_named_where_read, assert_before_llm_matches_shortened_input, assert_drop_in_llm_matches_mask_reference,
                     assert_prefill_logits_match_forward, assert_unpruned_matches_generate)


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def engine(request, family_engines):
    return family_engines("qwen2.5-vl", request.param)


def image_rows(engine):
    """The stock model's (N, D) merged image rows."""
    return lambda inputs: engine.model.model.get_image_features(
        pixel_values=inputs.pixel_values, image_grid_thw=inputs.image_grid_thw).pooler_output[0]


def full_positions(engine):
    """The stock model's (3, 1, S) M-RoPE ids for the whole prompt."""
    return lambda inputs: engine.model.model.get_rope_index(
        inputs.input_ids, mm_token_type_ids=inputs.mm_token_type_ids, image_grid_thw=inputs.image_grid_thw)[0]


def test_grids_differ_per_image(engine, images):
    grids = {tuple(engine.prepare(image, QUESTIONS[0]).__dict__[k] for k in ("rows", "cols")) for image in images}
    assert len(grids) == len(images)  # dynamic resolution: one grid per image shape


def test_mrope_positions_are_three_dimensional(engine, images):
    """The image rows' ids differ between the height and width rows (a 1-D fallback would make them equal)."""
    prepared = engine.prepare(images[0], QUESTIONS[0])
    pos = prepared.position_ids
    a, n = prepared.image_start, prepared.n_image
    assert pos.shape == (3, prepared.input_ids.shape[0])
    image = pos[:, a:a + n]
    assert bool((image[1] != image[2]).any())
    assert int(image[1].max() - image[1].min()) == prepared.rows - 1
    assert int(image[2].max() - image[2].min()) == prepared.cols - 1
    assert torch.equal(pos[0, :a], torch.arange(a))  # text before the image: t = h = w = 0..a-1


# The image shapes whose code paths differ: 64x80 makes 8x10 merged tokens, its 3x3 windows padded along both axes;
# 48x48 makes 6x6, no window padded. (100x60, 12x8, padded along one axis, runs the first one's path.)
PATH_SHAPES = (0, 2)


def test_unpruned_matches_generate(engine, images):
    for i in PATH_SHAPES:
        image, question = images[i], QUESTIONS[i]
        result = assert_unpruned_matches_generate(engine, image, question)
        assert result.grid == [engine.prepare(image, question).rows, engine.prepare(image, question).cols]


def test_unpruned_prefill_logits_match_forward(engine, images):
    assert_prefill_logits_match_forward(engine, images[1], QUESTIONS[0])


@pytest.mark.parametrize("positions", ["keep", "rearrange"])
def test_before_llm_equals_forward_on_shortened_input(engine, images, positions):
    """Pruning after the PatchMerger, before the LLM = the stock forward on the prompt with only the kept image rows,
    each at its own 3-D M-RoPE id ("keep") or all at 0..S-1 ("rearrange")."""
    state, full = assert_before_llm_matches_shortened_input(engine, images[0], QUESTIONS[1], positions,
                                                            image_rows(engine), full_positions(engine))
    if positions == "keep":  # the kept rows' ids are not contiguous: the two modes are different computations
        assert state.next_positions[0] == int(full.max()) + 1


def test_drop_in_llm_equals_mask_reference(engine, images):
    """``tests.parity.mask_reference`` with the stock M-RoPE ids; decoding at the prompt's largest id + 1, ..."""
    assert_drop_in_llm_matches_mask_reference(engine, images[2], QUESTIONS[2], image_rows(engine),
                                              full_positions(engine))


# ------------------------------------------------------------------ the substitute for [CLS] attention (no [CLS] in the ViT)
def test_substitute_scores_are_attention_received(engine, images):
    """``cls_attention`` on Qwen2.5-VL = per block and head, the attention each merged token's patches receive, over
    the queries of their window (or all, in full-attention blocks), / T. Reference: the stock
    ``eager_attention_forward`` on each window of each block's own q/k (captured by a pre-hook), then the stock
    window order undone as the stock merger's output is."""
    import sys

    from transformers.vision_utils import get_vision_window_index

    prepared = engine.prepare(images[0], QUESTIONS[0])
    vision = engine.vision_pass(prepared)
    visual = engine.adapter.visual
    mod = sys.modules[type(visual.blocks[0].attn).__module__]
    seen = []

    def pre(module, args, kwargs):
        seen.append((args[0], kwargs["cu_seqlens"], kwargs["position_embeddings"]))

    handles = [b.attn.register_forward_pre_hook(pre, with_kwargs=True) for b in visual.blocks]
    try:
        with torch.no_grad():
            out = visual(prepared.pixel_values, grid_thw=prepared.vision_inputs["image_grid_thw"])
    finally:
        for h in handles:
            h.remove()
    grid = prepared.vision_inputs["image_grid_thw"]
    vc = engine.model.config.vision_config
    window_index, _ = get_vision_window_index(grid, visual.spatial_merge_size, vc.window_size, vc.patch_size)
    order = torch.argsort(window_index)
    # the window order and its undoing, as the stock tower applies them to the merger's output
    torch.testing.assert_close(visual.merger(out.last_hidden_state)[order], out.pooler_output)
    ref = []
    for block, (x, cu, (cos, sin)) in zip(visual.blocks, seen):
        attn = block.attn
        t = x.shape[0]
        with torch.no_grad():
            q, k, v = attn.qkv(x).reshape(t, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
            q, k = mod.apply_rotary_pos_emb_vision(q, k, cos, sin)
            received = torch.zeros(attn.num_heads, t)
            bounds = cu.tolist()
            for s0, s1 in zip(bounds[:-1], bounds[1:]):
                chunk = [z[s0:s1].transpose(0, 1)[None] for z in (q, k, v)]
                _, weights = mod.eager_attention_forward(attn, *chunk, attention_mask=None, scaling=attn.scaling)
                received[:, s0:s1] = weights[0].sum(1) / t
        ref.append(received.view(attn.num_heads, -1, 4).sum(-1)[:, order])
    ref = torch.stack(ref)
    torch.testing.assert_close(vision.cls_attention, ref, atol=1e-5, rtol=1e-4)
    assert vision.cls_attention.shape == (len(visual.blocks), vc.num_heads, prepared.n_image)
    torch.testing.assert_close(vision.cls_attention.sum(-1), torch.ones(len(visual.blocks), vc.num_heads))


def test_substitute_is_named_where_read(engine, images):
    """A strategy that reads the substitute says so in its notes; one that does not, does not."""
    assert_substitute_named_where_read(engine, images[0], QUESTIONS[0],
                                       "mean attention each merged token's patches receive")
