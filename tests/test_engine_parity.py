"""The engine against transformers' own LlavaForConditionalGeneration (the correctness anchors)."""

import pytest
import torch

from pruning.strategies import get_strategy

from .conftest import QUESTIONS

VARIANTS = [("tiny", False, "sdpa"), ("llava15", False, "sdpa"), ("tiny", False, "eager"), ("llava15", True, "sdpa"),
            ("tiny", True, "sdpa")]
IDS = ["tiny", "llava15", "tiny-eager", "llava15-4bit", "tiny-4bit"]


def tol(four_bit):
    return dict(atol=2e-3, rtol=2e-3) if four_bit else dict(atol=1e-4, rtol=1e-4)


def hf_inputs(engine, image, question):
    lm = engine.lm
    return lm.processor(images=image, text=lm.prompt(question), return_tensors="pt")


def reference_greedy(model, inputs_embeds, position_ids, steps):
    """Greedy decoding with transformers' own forward and cache, explicit position ids."""
    out = model(inputs_embeds=inputs_embeds, position_ids=position_ids, use_cache=True)
    logits_all = out.logits[0]
    past, pos, tokens = out.past_key_values, int(position_ids[0, -1]) + 1, []
    logits = logits_all[-1]
    for _ in range(steps):
        tok = int(logits.argmax())
        tokens.append(tok)
        out = model(input_ids=torch.tensor([[tok]]), past_key_values=past, position_ids=torch.tensor([[pos]]),
                    use_cache=True)
        past, pos, logits = out.past_key_values, pos + 1, out.logits[0, -1]
    return logits_all, tokens


@pytest.mark.parametrize("name,four_bit,attn", VARIANTS, ids=IDS)
def test_unpruned_matches_generate(engines, images, name, four_bit, attn):
    engine = engines(name, four_bit, attn)
    for image, question in zip(images, QUESTIONS):
        inputs = hf_inputs(engine, image, question)
        ref = engine.model.generate(**inputs, max_new_tokens=10, do_sample=False)[0, inputs.input_ids.shape[1]:]
        result = engine.run(image, question, get_strategy("none"), max_new_tokens=10, warmup=0)
        assert result.generated_tokens == ref.tolist()
        assert len(result.generated_tokens) >= 2


@pytest.mark.parametrize("name,four_bit,attn", VARIANTS, ids=IDS)
def test_unpruned_prefill_logits_match_forward(engines, images, name, four_bit, attn):
    engine = engines(name, four_bit, attn)
    inputs = hf_inputs(engine, images[0], QUESTIONS[0])
    with torch.no_grad():
        ref = engine.model(**inputs).logits[0]
    prepared = engine.prepare(images[0], QUESTIONS[0])
    state = engine.prefill(prepared, engine.vision_pass(prepared), get_strategy("none"), keep_hidden=True)
    with torch.no_grad():
        ours = engine.lm_head(state.hidden_states)
    torch.testing.assert_close(ours, ref, **tol(four_bit))
    torch.testing.assert_close(state.logits, ref[-1], **tol(four_bit))


@pytest.mark.parametrize("positions", ["keep", "rearrange"])
@pytest.mark.parametrize("name,four_bit,attn", VARIANTS, ids=IDS)
def test_before_llm_equals_forward_on_shortened_input(engines, images, name, four_bit, attn, positions):
    """Pruning before the LLM = transformers' forward on the prompt with only the kept image rows."""
    engine = engines(name, four_bit, attn)
    n = engine.geometry.n_patches
    strategy = get_strategy("random", keep=n // 3, positions=positions, seed=3)
    image, question = images[1], QUESTIONS[1]
    result = engine.run(image, question, strategy, max_new_tokens=6, warmup=0)
    kept = torch.tensor(result.kept)
    assert len(kept) == n // 3

    inputs = hf_inputs(engine, image, question)
    ids = inputs.input_ids[0]
    a = int((ids == engine.image_token_id).nonzero()[0])
    short_ids = torch.cat([ids[:a], ids[a:a + len(kept)], ids[a + n:]])  # len(kept) placeholders
    model = engine.model
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=inputs.pixel_values).pooler_output[0]  # (N, D)
        embeds = model.get_input_embeddings()(short_ids[None])
        mask = (short_ids == engine.image_token_id)[None, :, None].expand_as(embeds)
        embeds = embeds.masked_scatter(mask, feats[kept].to(embeds.dtype))
        full_pos = torch.cat([torch.arange(a), a + kept, torch.arange(a + n, len(ids))])
        pos = full_pos if positions == "keep" else torch.arange(len(short_ids))
        ref_logits, ref_tokens = reference_greedy(model, embeds, pos[None], steps=len(result.generated_tokens))

    prepared = engine.prepare(image, question)
    state = engine.prefill(prepared, engine.vision_pass(prepared, seed=3), strategy, keep_hidden=True)
    with torch.no_grad():
        torch.testing.assert_close(engine.lm_head(state.hidden_states), ref_logits, **tol(four_bit))
    assert result.generated_tokens == ref_tokens[:len(result.generated_tokens)]


def mask_reference(engine, image, question, k, dropped_patches, steps):
    """FastV's formulation: the full sequence runs through every layer, and in layers >= k the dropped
    image tokens are excluded by the attention mask (as keys, for every query); positions unchanged."""
    from transformers import DynamicCache

    lm_model = engine.language_model
    inputs = hf_inputs(engine, image, question)
    ids = inputs.input_ids[0]
    a = int((ids == engine.image_token_id).nonzero()[0])
    s = len(ids)
    with torch.no_grad():
        embeds = engine.model.model.get_input_embeddings()(ids[None])
        feats = engine.model.model.get_image_features(pixel_values=inputs.pixel_values).pooler_output[0]
        embeds[0, a:a + feats.shape[0]] = feats.to(embeds.dtype)
        neg = torch.finfo(embeds.dtype).min
        causal = torch.full((s, s), neg).triu(1)
        dropped_cols = a + torch.tensor(dropped_patches, dtype=torch.long)
        late = causal.clone()
        late[:, dropped_cols] = neg
        late[dropped_cols, dropped_cols] = 0.0  # a dropped row still sees itself (avoids an all-masked row)
        pos = torch.arange(s)[None]
        cos_sin = lm_model.rotary_emb(embeds, pos)
        cache, h = DynamicCache(), embeds
        for i, layer in enumerate(lm_model.layers):
            m = (causal if i < k else late)[None, None]
            h = layer(h, attention_mask=m, position_embeddings=cos_sin, past_key_values=cache, use_cache=True)
        logits = engine.lm_head(lm_model.norm(h))[0]
        tokens, last, p = [], logits[-1], s
        decode_mask_late = torch.zeros(1, 1, 1, s + steps)
        decode_mask_late[..., dropped_cols] = neg
        for step in range(steps):
            tok = int(last.argmax())
            tokens.append(tok)
            h = engine.embed_tokens(torch.tensor([[tok]]))
            cs = lm_model.rotary_emb(h, torch.tensor([[p]]))
            for i, layer in enumerate(lm_model.layers):
                m = torch.zeros(1, 1, 1, p + 1) if i < k else decode_mask_late[..., :p + 1]
                h = layer(h, attention_mask=m, position_embeddings=cs, past_key_values=cache, use_cache=True)
            last, p = engine.lm_head(lm_model.norm(h))[0, -1], p + 1
    return logits, tokens


@pytest.mark.parametrize("name,four_bit,attn", VARIANTS, ids=IDS)
def test_drop_in_llm_equals_mask_reference(engines, images, name, four_bit, attn):
    engine = engines(name, four_bit, attn)
    n, k = engine.geometry.n_patches, 2
    strategy = get_strategy("random", keep=n // 4, stage="llm", layer=k, seed=5)
    image, question = images[2], QUESTIONS[2]
    result = engine.run(image, question, strategy, max_new_tokens=6, warmup=0)
    assert result.kept == list(range(n))  # nothing pruned before the LLM
    assert result.image_tokens_per_layer == [n] * k + [n // 4] * (engine.geometry.llm_layers - k)
    dropped = sorted(set(range(n)) - set(result.kept_final))
    ref_logits, ref_tokens = mask_reference(engine, image, question, k, dropped, len(result.generated_tokens))

    prepared = engine.prepare(image, question)
    state = engine.prefill(prepared, engine.vision_pass(prepared, seed=5), strategy, keep_hidden=True)
    a = prepared.image_start
    kept_rows = torch.cat([torch.arange(a), a + torch.tensor(result.kept_final),
                           torch.arange(a + n, prepared.input_ids.shape[0])])
    with torch.no_grad():
        torch.testing.assert_close(engine.lm_head(state.hidden_states), ref_logits[kept_rows], **tol(four_bit))
    assert result.generated_tokens == ref_tokens


def test_positions_rearrange_changes_in_llm_result(engines, images):
    """The two position modes are really different computations (guards against a no-op option)."""
    engine = engines("llava15")
    prepared = engine.prepare(images[0], QUESTIONS[0])
    logits = {}
    for positions in ("keep", "rearrange"):
        s = get_strategy("random", keep=50, stage="llm", layer=2, positions=positions)
        logits[positions] = engine.prefill(prepared, engine.vision_pass(prepared), s).logits
    assert not torch.allclose(logits["keep"], logits["rearrange"], atol=1e-5)
