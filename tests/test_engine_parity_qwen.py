"""The engine on Qwen2.5-VL against transformers' own Qwen2_5_VLForConditionalGeneration (issue 27's anchors):
unpruned == ``generate`` token for token and the prefill logits; pruning before the LLM == the stock forward on the
shortened input with the kept rows' own M-RoPE ids (or contiguous ids); dropping rows at layer k == the mask
formulation. A tiny random-init checkpoint built offline (``pruning.toy_families``), three image shapes, so three
token grids (8x10, 12x8, 6x6)."""

import pytest
import torch

from pruning.engine import Engine
from pruning.model import load_model
from pruning.strategies import get_strategy
from pruning.toy_families import build_family

from .conftest import QUESTIONS

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def engine(request, tmp_path_factory):
    path = build_family(tmp_path_factory.mktemp("qwen") / "qwen2.5-vl", "qwen2.5-vl", seed=1)
    return Engine(load_model(str(path), device="cpu", attn_implementation=request.param))


def hf_inputs(engine, image, question):
    lm = engine.lm
    return lm.processor(images=image, text=lm.prompt(question), return_tensors="pt")


def reference_greedy(model, inputs_embeds, position_ids, steps):
    """Greedy decoding with transformers' own forward and cache, explicit (3, 1, S) M-RoPE ids; each generated
    token at the prompt's largest id + 1, + 2, ... (what ``rope_deltas`` gives in ``generate``)."""
    out = model(inputs_embeds=inputs_embeds, position_ids=position_ids, use_cache=True)
    logits_all = out.logits[0]
    past, pos, tokens = out.past_key_values, int(position_ids.max()) + 1, []
    logits = logits_all[-1]
    for _ in range(steps):
        tok = int(logits.argmax())
        tokens.append(tok)
        out = model(input_ids=torch.tensor([[tok]]), past_key_values=past,
                    position_ids=torch.full((3, 1, 1), pos), use_cache=True)
        past, pos, logits = out.past_key_values, pos + 1, out.logits[0, -1]
    return logits_all, tokens


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


def test_unpruned_matches_generate(engine, images):
    for image, question in zip(images, QUESTIONS):
        inputs = hf_inputs(engine, image, question)
        ref = engine.model.generate(**inputs, max_new_tokens=10, do_sample=False)[0, inputs.input_ids.shape[1]:]
        result = engine.run(image, question, get_strategy("none"), max_new_tokens=10, warmup=0)
        assert result.generated_tokens == ref.tolist()
        assert len(result.generated_tokens) >= 2
        assert result.grid == [engine.prepare(image, question).rows, engine.prepare(image, question).cols]


def test_unpruned_prefill_logits_match_forward(engine, images):
    inputs = hf_inputs(engine, images[1], QUESTIONS[0])
    with torch.no_grad():
        ref = engine.model(**inputs).logits[0]
    prepared = engine.prepare(images[1], QUESTIONS[0])
    state = engine.prefill(prepared, engine.vision_pass(prepared), get_strategy("none"), keep_hidden=True)
    with torch.no_grad():
        ours = engine.lm_head(state.hidden_states)
    torch.testing.assert_close(ours, ref, **TOL)
    torch.testing.assert_close(state.logits, ref[-1], **TOL)


@pytest.mark.parametrize("positions", ["keep", "rearrange"])
def test_before_llm_equals_forward_on_shortened_input(engine, images, positions):
    """Pruning after the PatchMerger, before the LLM = the stock forward on the prompt with only the kept image rows,
    each at its own 3-D M-RoPE id ("keep") or all at 0..S-1 ("rearrange")."""
    image, question = images[0], QUESTIONS[1]
    prepared = engine.prepare(image, question)
    n = prepared.n_image
    strategy = get_strategy("random", keep=n // 3, positions=positions, seed=3)
    result = engine.run(image, question, strategy, max_new_tokens=6, warmup=0)
    kept = torch.tensor(result.kept)
    assert len(kept) == n // 3

    inputs = hf_inputs(engine, image, question)
    ids = inputs.input_ids[0]
    a = prepared.image_start
    short_ids = torch.cat([ids[:a], ids[a:a + len(kept)], ids[a + n:]])
    model = engine.model
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=inputs.pixel_values,
                                               image_grid_thw=inputs.image_grid_thw).pooler_output[0]  # (N, D)
        embeds = model.get_input_embeddings()(short_ids[None])
        mask = (short_ids == engine.image_token_id)[None, :, None].expand_as(embeds)
        embeds = embeds.masked_scatter(mask, feats[kept].to(embeds.dtype))
        full, _ = model.model.get_rope_index(ids[None], mm_token_type_ids=inputs.mm_token_type_ids,
                                             image_grid_thw=inputs.image_grid_thw)  # (3, 1, S_full)
        rows = torch.cat([torch.arange(a), a + kept, torch.arange(a + n, len(ids))])
        pos = full[:, :, rows] if positions == "keep" else torch.arange(len(short_ids)).view(1, 1, -1).expand(3, 1, -1)
        ref_logits, ref_tokens = reference_greedy(model, embeds, pos, steps=len(result.generated_tokens))

    state = engine.prefill(prepared, engine.vision_pass(prepared, seed=3), strategy, keep_hidden=True)
    with torch.no_grad():
        torch.testing.assert_close(engine.lm_head(state.hidden_states), ref_logits, **TOL)
    assert result.generated_tokens == ref_tokens[:len(result.generated_tokens)]
    if positions == "keep":  # the kept rows' ids are not contiguous: the two modes are different computations
        assert state.next_positions[0] == int(full.max()) + 1


def mask_reference(engine, image, question, k, dropped_patches, steps):
    """The full sequence through every layer with the stock M-RoPE ids; in layers >= k the dropped image rows are
    excluded as keys by the attention mask (a dropped row still sees itself); decode at the prompt's max id + 1..."""
    from transformers import DynamicCache

    lm_model = engine.language_model
    model = engine.model
    inputs = hf_inputs(engine, image, question)
    ids = inputs.input_ids[0]
    a = int((ids == engine.image_token_id).nonzero()[0])
    s = len(ids)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids[None])
        feats = model.model.get_image_features(pixel_values=inputs.pixel_values,
                                               image_grid_thw=inputs.image_grid_thw).pooler_output[0]
        embeds[0, a:a + feats.shape[0]] = feats.to(embeds.dtype)
        pos, _ = model.model.get_rope_index(ids[None], mm_token_type_ids=inputs.mm_token_type_ids,
                                            image_grid_thw=inputs.image_grid_thw)
        neg = torch.finfo(embeds.dtype).min
        causal = torch.full((s, s), neg).triu(1)
        dropped_cols = a + torch.tensor(dropped_patches, dtype=torch.long)
        late = causal.clone()
        late[:, dropped_cols] = neg
        late[dropped_cols, dropped_cols] = 0.0
        cos_sin = lm_model.rotary_emb(embeds, pos)
        cache, h = DynamicCache(), embeds
        for i, layer in enumerate(lm_model.layers):
            m = (causal if i < k else late)[None, None]
            h = layer(h, attention_mask=m, position_embeddings=cos_sin, past_key_values=cache, use_cache=True)
        logits = engine.lm_head(lm_model.norm(h))[0]
        tokens, last, p = [], logits[-1], int(pos.max()) + 1
        decode_mask_late = torch.zeros(1, 1, 1, s + steps)
        decode_mask_late[..., dropped_cols] = neg
        for step in range(steps):
            tok = int(last.argmax())
            tokens.append(tok)
            h = engine.embed_tokens(torch.tensor([[tok]]))
            cs = lm_model.rotary_emb(h, torch.full((3, 1, 1), p))
            for i, layer in enumerate(lm_model.layers):
                m = torch.zeros(1, 1, 1, s + step + 1) if i < k else decode_mask_late[..., :s + step + 1]
                h = layer(h, attention_mask=m, position_embeddings=cs, past_key_values=cache, use_cache=True)
            last, p = engine.lm_head(lm_model.norm(h))[0, -1], p + 1
    return logits, tokens


def test_drop_in_llm_equals_mask_reference(engine, images):
    image, question = images[2], QUESTIONS[2]
    prepared = engine.prepare(image, question)
    n, k = prepared.n_image, 2
    strategy = get_strategy("random", keep=n // 4, stage="llm", layer=k, seed=5)
    result = engine.run(image, question, strategy, max_new_tokens=6, warmup=0)
    assert result.kept == list(range(n))
    assert result.image_tokens_per_layer == [n] * k + [n // 4] * (len(engine.layers) - k)
    dropped = sorted(set(range(n)) - set(result.kept_final))
    ref_logits, ref_tokens = mask_reference(engine, image, question, k, dropped, len(result.generated_tokens))

    state = engine.prefill(prepared, engine.vision_pass(prepared, seed=5), strategy, keep_hidden=True)
    a = prepared.image_start
    kept_rows = torch.cat([torch.arange(a), a + torch.tensor(result.kept_final),
                           torch.arange(a + n, prepared.input_ids.shape[0])])
    with torch.no_grad():
        torch.testing.assert_close(engine.lm_head(state.hidden_states), ref_logits[kept_rows], **TOL)
    assert result.generated_tokens == ref_tokens


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
    note = "mean attention each merged token's patches receive"
    read = engine.run(images[0], QUESTIONS[0], get_strategy("vtc-cls", keep=20), max_new_tokens=2, warmup=0)
    unread = engine.run(images[0], QUESTIONS[0], get_strategy("random", keep=20), max_new_tokens=2, warmup=0)
    assert any(note in n for n in read.notes)
    assert not any(note in n for n in unread.notes)
