"""The engine on the anyres families against transformers' own classes (issue 27): LLaVA-OneVision
(``LlavaOnevisionForConditionalGeneration``: SigLIP without [CLS], Qwen2 LLM) and LLaVA-NeXT
(``LlavaNextForConditionalGeneration``: CLIP with [CLS], Llama LLM), and InternVL
(``InternVLForConditionalGeneration``: tiles + thumbnail, pixel shuffle, Qwen2 LLM). Unpruned == ``generate`` token for token and the
prefill logits; pruning before the LLM == the stock forward on the shortened input (original or contiguous
positions); dropping rows at layer k == the mask formulation. Tiny random-init checkpoints built offline
(``pruning.toy_families``): anyres crops + base image + newline tokens, three image shapes hence three token counts."""

import pytest
import torch

from pruning.engine import Engine
from pruning.model import load_model
from pruning.strategies import get_strategy
from pruning.toy_families import build_family

from .conftest import QUESTIONS

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module", params=[("llava-onevision", "sdpa"), ("llava-onevision", "eager"),
                                        ("llava-next", "sdpa"), ("llava-next", "eager"), ("internvl", "sdpa"),
                                        ("internvl", "eager")],
                ids=["onevision", "onevision-eager", "next", "next-eager", "internvl", "internvl-eager"])
def engine(request, tmp_path_factory):
    family, attn = request.param
    path = build_family(tmp_path_factory.mktemp("anyres") / family, family, seed=1)
    return Engine(load_model(str(path), device="cpu", attn_implementation=attn))


def hf_inputs(engine, image, question):
    lm = engine.lm
    return lm.processor(images=image, text=lm.prompt(question), return_tensors="pt")


def stock_rows(engine, inputs):
    """(N, D): the stock model's packed, projected image rows (base image, crops, newline tokens; InternVL: the tiles'
    pixel-shuffled rows, tile after tile)."""
    extra = {k: inputs[k] for k in ("image_sizes", "batch_num_images") if k in inputs}
    out = engine.model.model.get_image_features(pixel_values=inputs.pixel_values, **extra)
    return torch.cat([r.reshape(-1, r.shape[-1]) for r in out.pooler_output])


def reference_greedy(model, inputs_embeds, position_ids, steps):
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


def test_token_count_follows_the_image(engine, images):
    counts = {engine.prepare(image, QUESTIONS[0]).n_image for image in images}
    assert len(counts) > 1  # (InternVL: 64x80 and 100x60 both make 6 tiles + the thumbnail)


def test_unpruned_matches_generate(engine, images):
    for image, question in zip(images, QUESTIONS):
        inputs = hf_inputs(engine, image, question)
        ref = engine.model.generate(**inputs, max_new_tokens=10, do_sample=False)[0, inputs.input_ids.shape[1]:]
        result = engine.run(image, question, get_strategy("none"), max_new_tokens=10, warmup=0)
        assert result.generated_tokens == ref.tolist()
        assert len(result.generated_tokens) >= 2


def test_unpruned_prefill_logits_match_forward(engine, images):
    inputs = hf_inputs(engine, images[1], QUESTIONS[0])
    with torch.no_grad():
        ref = engine.model(**inputs).logits[0]
    prepared = engine.prepare(images[1], QUESTIONS[0])
    state = engine.prefill(prepared, engine.vision_pass(prepared), get_strategy("none"), keep_hidden=True)
    with torch.no_grad():
        ours = engine.lm_head(state.hidden_states)
    torch.testing.assert_close(ours, ref, **TOL)


@pytest.mark.parametrize("positions", ["keep", "rearrange"])
def test_before_llm_equals_forward_on_shortened_input(engine, images, positions):
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
        feats = stock_rows(engine, inputs)
        embeds = model.get_input_embeddings()(short_ids[None])
        mask = (short_ids == engine.image_token_id)[None, :, None].expand_as(embeds)
        embeds = embeds.masked_scatter(mask, feats[kept].to(embeds.dtype))
        full_pos = torch.cat([torch.arange(a), a + kept, torch.arange(a + n, len(ids))])
        pos = full_pos if positions == "keep" else torch.arange(len(short_ids))
        ref_logits, ref_tokens = reference_greedy(model, embeds, pos[None], steps=len(result.generated_tokens))
    state = engine.prefill(prepared, engine.vision_pass(prepared, seed=3), strategy, keep_hidden=True)
    with torch.no_grad():
        torch.testing.assert_close(engine.lm_head(state.hidden_states), ref_logits, **TOL)
    assert result.generated_tokens == ref_tokens[:len(result.generated_tokens)]


def test_drop_in_llm_equals_mask_reference(engine, images):
    from transformers import DynamicCache

    image, question = images[2], QUESTIONS[2]
    prepared = engine.prepare(image, question)
    n, k = prepared.n_image, 2
    strategy = get_strategy("random", keep=n // 4, stage="llm", layer=k, seed=5)
    result = engine.run(image, question, strategy, max_new_tokens=6, warmup=0)
    assert result.image_tokens_per_layer == [n] * k + [n // 4] * (len(engine.layers) - k)
    inputs = hf_inputs(engine, image, question)
    ids = inputs.input_ids[0]
    a, s, steps = prepared.image_start, len(ids), len(result.generated_tokens)
    lm_model = engine.language_model
    with torch.no_grad():
        embeds = engine.model.get_input_embeddings()(ids[None])
        embeds[0, a:a + n] = stock_rows(engine, inputs).to(embeds.dtype)
        neg = torch.finfo(embeds.dtype).min
        dropped = a + torch.tensor(sorted(set(range(n)) - set(result.kept_final)), dtype=torch.long)
        causal = torch.full((s, s), neg).triu(1)
        late = causal.clone()
        late[:, dropped] = neg
        late[dropped, dropped] = 0.0
        cos_sin = lm_model.rotary_emb(embeds, torch.arange(s)[None])
        cache, h = DynamicCache(), embeds
        for i, layer in enumerate(lm_model.layers):
            h = layer(h, attention_mask=(causal if i < k else late)[None, None], position_embeddings=cos_sin,
                      past_key_values=cache, use_cache=True)
        ref_logits = engine.lm_head(lm_model.norm(h))[0]
        tokens, last = [], ref_logits[-1]
        a_cols = torch.zeros(1, 1, 1, s + steps)
        a_cols[..., dropped] = neg
        for step in range(steps):
            tok = int(last.argmax())
            tokens.append(tok)
            h = engine.embed_tokens(torch.tensor([[tok]]))
            cs = lm_model.rotary_emb(h, torch.tensor([[s + step]]))
            for i, layer in enumerate(lm_model.layers):
                m = torch.zeros(1, 1, 1, s + step + 1) if i < k else a_cols[..., :s + step + 1]
                h = layer(h, attention_mask=m, position_embeddings=cs, past_key_values=cache, use_cache=True)
            last = engine.lm_head(lm_model.norm(h))[0, -1]
    state = engine.prefill(prepared, engine.vision_pass(prepared, seed=5), strategy, keep_hidden=True)
    kept_rows = torch.cat([torch.arange(a), a + torch.tensor(result.kept_final), torch.arange(a + n, s)])
    with torch.no_grad():
        torch.testing.assert_close(engine.lm_head(state.hidden_states), ref_logits[kept_rows], **TOL)
    assert result.generated_tokens == tokens


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
    note = "a substitute"
    read = engine.run(images[0], QUESTIONS[0], get_strategy("vtc-cls", keep=20), max_new_tokens=2, warmup=0)
    unread = engine.run(images[0], QUESTIONS[0], get_strategy("divprune", keep=20), max_new_tokens=2, warmup=0)
    assert any(note in n for n in read.notes)
    assert not any(note in n for n in unread.notes)
