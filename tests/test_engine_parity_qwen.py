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
