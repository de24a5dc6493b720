"""The parity tests' shared references (tests/test_engine_parity*.py): the engine against each family's own
transformers class. Each family test says how the stock model makes its image rows and its position ids; the
comparisons themselves are here, once:

- ``assert_unpruned_matches_generate``: unpruned, the engine's greedy tokens == the stock ``generate``'s;
- ``assert_prefill_logits_match_forward``: unpruned, the engine's prefill logits == the stock forward's;
- ``assert_before_llm_matches_shortened_input``: pruning before the LLM == the stock forward (and greedy decoding) on
  the prompt with only the kept image rows, at their own position ids or at contiguous ones;
- ``assert_drop_in_llm_matches_mask_reference``: dropping rows at layer k == ``mask_reference``, the full sequence
  through every layer with the dropped rows masked out as keys from layer k on.

Position ids are 1-D, ``(1, S)``, or Qwen2.5-VL's M-RoPE ``(3, 1, S)``; a generated token's id is the prompt's
largest id + 1, + 2, ... (for 1-D ids that is the last id + 1; for M-RoPE what ``rope_deltas`` gives in
``generate``)."""

import torch

TOL = dict(atol=1e-4, rtol=1e-4)


def hf_inputs(engine, image, question):
    """The stock processor's inputs for the engine's own prompt."""
    lm = engine.lm
    return lm.processor(images=image, text=lm.prompt(question), return_tensors="pt")


def _decode_position(pos: int, mrope: bool) -> torch.Tensor:
    return torch.full((3, 1, 1), pos) if mrope else torch.tensor([[pos]])


def reference_greedy(model, inputs_embeds, position_ids, steps):
    """Greedy decoding with transformers' own forward and cache, explicit position ids ((1, S), or (3, 1, S) M-RoPE
    ids); each generated token at the prompt's largest id + 1, + 2, ..."""
    mrope = position_ids.dim() == 3
    out = model(inputs_embeds=inputs_embeds, position_ids=position_ids, use_cache=True)
    logits_all = out.logits[0]
    past, pos, tokens = out.past_key_values, int(position_ids.max() if mrope else position_ids[0, -1]) + 1, []
    logits = logits_all[-1]
    for _ in range(steps):
        tok = int(logits.argmax())
        tokens.append(tok)
        out = model(input_ids=torch.tensor([[tok]]), past_key_values=past, position_ids=_decode_position(pos, mrope),
                    use_cache=True)
        past, pos, logits = out.past_key_values, pos + 1, out.logits[0, -1]
    return logits_all, tokens


def kept_rows(image_start: int, kept: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """The prompt's rows with only the ``kept`` image rows of the ``n`` at ``image_start`` (text rows all kept)."""
    a = image_start
    return torch.cat([torch.arange(a), a + kept, torch.arange(a + n, length)])


# ------------------------------------------------------------------ unpruned
def assert_unpruned_matches_generate(engine, image, question, max_new_tokens=10):
    """The engine's greedy tokens without pruning == the stock ``generate``'s; returns the engine's result."""
    from pruning.strategies import get_strategy

    inputs = hf_inputs(engine, image, question)
    ref = engine.model.generate(**inputs, max_new_tokens=max_new_tokens,
                                do_sample=False)[0, inputs.input_ids.shape[1]:]
    result = engine.run(image, question, get_strategy("none"), max_new_tokens=max_new_tokens, warmup=0)
    assert result.generated_tokens == ref.tolist()
    assert len(result.generated_tokens) >= 2
    return result


def assert_prefill_logits_match_forward(engine, image, question, tol=TOL, last=True):
    """The engine's prefill logits (every row) without pruning == the stock forward's; ``last``: the state's own
    last-row logits too."""
    from pruning.strategies import get_strategy

    inputs = hf_inputs(engine, image, question)
    with torch.no_grad():
        ref = engine.model(**inputs).logits[0]
    prepared = engine.prepare(image, question)
    state = engine.prefill(prepared, engine.vision_pass(prepared), get_strategy("none"), keep_hidden=True)
    with torch.no_grad():
        ours = engine.lm_head(state.hidden_states)
    torch.testing.assert_close(ours, ref, **tol)
    if last:
        torch.testing.assert_close(state.logits, ref[-1], **tol)


# ------------------------------------------------------------------ pruning before the LLM
def assert_before_llm_matches_shortened_input(engine, image, question, positions, image_rows, full_positions=None,
                                              n=None, tol=TOL, seed=3):
    """Pruning before the LLM (random, a third of the ``n`` image rows, ``seed``) = the stock forward on the prompt
    with only the kept image rows: ``image_rows(inputs)`` gives the stock model's (N, D) image rows,
    ``full_positions(inputs)`` the full prompt's position ids ((1, S) or (3, 1, S); None: 0..S-1); "keep" puts each
    kept row at its own ids, "rearrange" every row at 0..S'-1. Returns (engine state, full position ids)."""
    from pruning.strategies import get_strategy

    prepared = engine.prepare(image, question)
    n = prepared.n_image if n is None else n
    strategy = get_strategy("random", keep=n // 3, positions=positions, seed=seed)
    result = engine.run(image, question, strategy, max_new_tokens=6, warmup=0)
    kept = torch.tensor(result.kept)
    assert len(kept) == n // 3

    inputs = hf_inputs(engine, image, question)
    ids = inputs.input_ids[0]
    a = prepared.image_start
    short_ids = torch.cat([ids[:a], ids[a:a + len(kept)], ids[a + n:]])  # len(kept) placeholders
    model = engine.model
    with torch.no_grad():
        feats = image_rows(inputs)  # (N, D)
        embeds = model.get_input_embeddings()(short_ids[None])
        mask = (short_ids == engine.image_token_id)[None, :, None].expand_as(embeds)
        embeds = embeds.masked_scatter(mask, feats[kept].to(embeds.dtype))
        full = torch.arange(len(ids))[None] if full_positions is None else full_positions(inputs)
        if positions == "keep":
            pos = full[..., kept_rows(a, kept, n, len(ids))]
        else:
            pos = torch.arange(len(short_ids)).view(*[1] * (full.dim() - 1), -1).expand(*full.shape[:-1], -1)
        ref_logits, ref_tokens = reference_greedy(model, embeds, pos, steps=len(result.generated_tokens))

    state = engine.prefill(prepared, engine.vision_pass(prepared, seed=seed), strategy, keep_hidden=True)
    with torch.no_grad():
        torch.testing.assert_close(engine.lm_head(state.hidden_states), ref_logits, **tol)
    assert result.generated_tokens == ref_tokens[:len(result.generated_tokens)]
    return state, full


# ------------------------------------------------------------------ dropping rows inside the LLM
def mask_reference(engine, embeds, image_start, dropped_patches, k, steps, position_ids=None):
    """FastV's formulation: the full sequence (``embeds``, image rows in place) runs through every layer, and in
    layers >= k the dropped image rows are excluded by the attention mask (as keys, for every query; a dropped row
    still sees itself, which avoids an all-masked row); positions unchanged (``position_ids``: (1, S) or (3, 1, S);
    None: 0..S-1), decoding at the prompt's largest id + 1, + 2, ..."""
    from transformers import DynamicCache

    lm_model = engine.language_model
    s = embeds.shape[1]
    pos = torch.arange(s)[None] if position_ids is None else position_ids
    mrope = pos.dim() == 3
    with torch.no_grad():
        neg = torch.finfo(embeds.dtype).min
        causal = torch.full((s, s), neg).triu(1)
        dropped_cols = image_start + torch.tensor(dropped_patches, dtype=torch.long)
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
            cs = lm_model.rotary_emb(h, _decode_position(p, mrope))
            for i, layer in enumerate(lm_model.layers):
                m = torch.zeros(1, 1, 1, s + step + 1) if i < k else decode_mask_late[..., :s + step + 1]
                h = layer(h, attention_mask=m, position_embeddings=cs, past_key_values=cache, use_cache=True)
            last, p = engine.lm_head(lm_model.norm(h))[0, -1], p + 1
    return logits, tokens


def assert_drop_in_llm_matches_mask_reference(engine, image, question, image_rows, full_positions=None, n=None,
                                              layers=None, tol=TOL, k=2, seed=5):
    """Dropping rows at layer ``k`` (random, a quarter of the ``n`` image rows, ``seed``) = ``mask_reference`` on the
    stock model's embeddings with ``image_rows(inputs)`` in place (``full_positions(inputs)``: the prompt's position
    ids; None: 0..S-1): the prefill logits of the kept rows, and the greedy tokens. ``layers``: the LLM's depth."""
    from pruning.strategies import get_strategy

    prepared = engine.prepare(image, question)
    n = prepared.n_image if n is None else n
    layers = len(engine.layers) if layers is None else layers
    strategy = get_strategy("random", keep=n // 4, stage="llm", layer=k, seed=seed)
    result = engine.run(image, question, strategy, max_new_tokens=6, warmup=0)
    assert result.kept == list(range(n))  # nothing pruned before the LLM
    assert result.image_tokens_per_layer == [n] * k + [n // 4] * (layers - k)
    dropped = sorted(set(range(n)) - set(result.kept_final))

    inputs = hf_inputs(engine, image, question)
    ids = inputs.input_ids[0]
    a = prepared.image_start
    with torch.no_grad():
        embeds = engine.model.get_input_embeddings()(ids[None])
        feats = image_rows(inputs)
        embeds[0, a:a + feats.shape[0]] = feats.to(embeds.dtype)
        pos = None if full_positions is None else full_positions(inputs)
    ref_logits, ref_tokens = mask_reference(engine, embeds, a, dropped, k, len(result.generated_tokens), pos)

    state = engine.prefill(prepared, engine.vision_pass(prepared, seed=seed), strategy, keep_hidden=True)
    rows = kept_rows(a, torch.tensor(result.kept_final), n, prepared.input_ids.shape[0])
    with torch.no_grad():
        torch.testing.assert_close(engine.lm_head(state.hidden_states), ref_logits[rows], **tol)
    assert result.generated_tokens == ref_tokens


def assert_substitute_named_where_read(engine, image, question, note, unread="random"):
    """A strategy that reads the substitute score (vtc-cls) says so in its notes; one that does not (``unread``)
    does not."""
    from pruning.strategies import get_strategy

    read = engine.run(image, question, get_strategy("vtc-cls", keep=20), max_new_tokens=2, warmup=0)
    other = engine.run(image, question, get_strategy(unread, keep=20), max_new_tokens=2, warmup=0)
    assert any(note in n for n in read.notes)
    assert not any(note in n for n in other.notes)
