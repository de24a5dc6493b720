"""The question's embeddings and IVTP's textual scoring query: what text-conditioned strategies need from the model.

Moved out of ``Engine`` (issue 27): the engine's loop only asks for them when a strategy does
(``Strategy.question_inputs``: CDPruner; ``needs_group_attention``: IVTP). They read CLIP's text half
(``pruning.model.load_clip``), which pairs with LLaVA-1.5's CLIP vision tower; families without one get the
reason in a note (``clip_note``) or the visual-[CLS] fallback, as before. Each function takes the ``Engine``
(its adapter's modules, its loaded model) as first argument.
"""

from __future__ import annotations

import contextlib

import torch

from .adapters.base import attention_module_fns as _attention_module_fns
from .strategies import VisionContext
from .strategies.base import QuestionEmbeddings


def question_embeddings(engine, prepared, vision: VisionContext, wanted=("clip", "llm"),
                        text_of=lambda q: q) -> QuestionEmbeddings:
    """The question (``text_of(prepared.question)``) embedded as ``wanted`` says. "clip": CLIP's text tower over
    the question cut into chunks of its context (zero-padded, as CDPruner's code feeds it; ended with </s> where
    the tokenizer does not add it, as CLIP pools there), one projected embedding per chunk, and each patch's CLIP
    image embedding (the vision tower's post_layernorm of the patch features, through CLIP's visual_projection);
    ``clip_note`` says why not when no CLIP text encoder loads. "llm": the LLM's input embeddings of the
    question's tokens (tokenised alone, no special tokens)."""
    from .model import load_clip

    text = text_of(prepared.question)
    out = QuestionEmbeddings()
    if "clip" in wanted:
        clip, note = load_clip(engine.lm)
        if clip is None:
            out.clip_note = note
        else:
            model, clip_tok = clip
            dev = next(model.parameters()).device
            width = model.config.text_config.max_position_embeddings
            enc = clip_tok(text, return_tensors="pt")
            ids, mask = enc.input_ids[0], enc.attention_mask[0]
            eos = clip_tok.eos_token_id
            if eos is not None and (ids.numel() == 0 or int(ids[-1]) != eos):  # CLIP pools at the first </s>
                ids, mask = torch.cat([ids, ids.new_tensor([eos])]), torch.cat([mask, mask.new_ones(1)])
            pad = -ids.shape[0] % width
            ids = torch.cat([ids, ids.new_zeros(pad)]).view(-1, width)
            mask = torch.cat([mask, mask.new_zeros(pad)]).view(-1, width)
            tower = engine.adapter.tower  # CLIP's vision half: its post_layernorm maps patches to CLIP's space
            with torch.no_grad():
                pooled = model.text_model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).pooler_output
                out.clip_text = model.text_projection(pooled).float()  # (M, C)
                patches = tower.post_layernorm(vision.patch_features)
                out.clip_patches = model.visual_projection(patches.to(dev, pooled.dtype)).float()  # (N, C)
    if "llm" in wanted:
        ids = engine.lm.processor.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
        with torch.no_grad():
            out.llm_tokens = engine.embed_tokens(ids.to(engine.device))  # (Q, D)
    return out

def pseudo_setup(engine, prepared, vision: VisionContext, strategy) -> dict:
    """Relevance of each question token to the image (CLIP text half, IVTP eq. 5-7) and the
    fallback query (the visual [CLS] through the projector)."""
    relevance, question_index, note = text_relevance(engine, prepared, vision)
    if vision.cls_feature is None:
        raise ValueError(f"strategy {strategy.name!r} needs a vision tower with a [CLS] token")
    fallback = engine.adapter.project(vision.cls_feature[None])[0]
    return {"relevance": relevance, "question_index": question_index, "fallback": fallback,
            "strategy": strategy, "note": note}

@contextlib.contextmanager
def record_group_attention(engine, layer_indices, live: dict, out: dict):
    """Forward hooks on decoder layers: the attention among [image rows + the scoring query] (mean over
    heads, renormalised over those keys, causal) and the image rows' value norms, into ``out[layer]``."""
    handles = []

    def hook(module, args, kwargs, output):
        h_in = args[0] if args else kwargs["hidden_states"]  # (1, S, D) input of the layer
        attn = module.self_attn
        apply_rotary, repeat_kv = _attention_module_fns(attn)
        img, full_index = live["image_rows"], live["full_index"]
        strategy, relevance = live["strategy"], live["relevance"]
        rows = None
        if relevance is not None:
            text = torch.isin(full_index, live["question_index"]).nonzero().flatten()  # question rows
            rows = strategy.pseudo_rows(relevance[full_index[text]], text)
        pseudo = h_in[0, rows].mean(0) if rows is not None and rows.numel() else live["fallback"]
        normed = module.input_layernorm(torch.cat([h_in[0, img], pseudo[None].to(h_in.dtype)]))  # (M+1, D)
        pos = live["positions"]  # (P, S)
        pseudo_pos = (pos[:, img[-1]] + 1) if img.numel() else pos[:, 0]  # (P,)
        q_pos = torch.cat([pos[:, img], pseudo_pos[:, None]], dim=1)
        cos, sin = engine.adapter.rotary(normed[None], q_pos)
        q = attn.q_proj(normed).view(1, -1, attn.config.num_attention_heads, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(normed).view(1, -1, attn.config.num_key_value_heads, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(normed[:-1]).view(-1, attn.config.num_key_value_heads * attn.head_dim)
        q, k = apply_rotary(q, k, cos, sin)
        k = repeat_kv(k, attn.num_key_value_groups)
        scores = (q.float() @ k.float().transpose(2, 3)) * attn.scaling  # (1, H, M+1, M+1)
        m = scores.shape[-1]
        causal = torch.ones(m, m, dtype=torch.bool, device=scores.device).tril()
        probs = scores.masked_fill(~causal, float("-inf")).softmax(-1).mean(1)[0]  # (M+1, M+1)
        out[module.self_attn.layer_idx] = (probs.detach(), v.float().norm(dim=-1).detach())

    try:
        for i in layer_indices:
            handles.append(engine.layers[i].register_forward_hook(hook, with_kwargs=True))
        yield out
    finally:
        for h in handles:
            h.remove()

def text_relevance(engine, prepared, vision: VisionContext):
    """Relevance of each question token to the image (IVTP eq. 5-7): cosine between CLIP's image
    embedding and each CLIP text token, averaged over the CLIP tokens that overlap the LLM token's
    characters. Returns ((S_full,) relevance with NaN outside the question, (Q,) question token indices,
    None), or (None, None, reason) when no CLIP text encoder is available."""
    from .model import load_clip

    clip, note = load_clip(engine.lm)
    if clip is None or vision.cls_final is None:
        return None, None, note or "no final [CLS] to compare with"
    model, clip_tok = clip
    question = prepared.question
    prompt = prepared.prompt.replace("<image>", "<image>" * prepared.n_image)
    start = prompt.rfind(question)
    llm_tok = engine.lm.processor.tokenizer
    enc = llm_tok(prompt, return_offsets_mapping=True, add_special_tokens=True)
    if len(enc.input_ids) != prepared.input_ids.shape[0] or start < 0:
        return None, None, "the prompt's character offsets do not line up with the processor's tokens"
    cenc = clip_tok(question, return_offsets_mapping=True, truncation=True,
                    max_length=model.config.text_config.max_position_embeddings, return_tensors="pt")
    with torch.no_grad():
        dev = next(model.parameters()).device
        tokens = model.text_model(input_ids=cenc.input_ids.to(dev)).last_hidden_state[0]  # (Tc, Dt)
        text_emb = torch.nn.functional.normalize(model.text_projection(tokens).float(), dim=-1)
        img_emb = torch.nn.functional.normalize(
            model.visual_projection(vision.cls_final.to(dev, tokens.dtype)).float(), dim=-1)
    c = text_emb @ img_emb  # (Tc,) eq. 6
    spans = cenc.offset_mapping[0].tolist()
    relevance = torch.full((prepared.input_ids.shape[0],), float("nan"))
    question_index = []
    for i, (s0, s1) in enumerate(enc.offset_mapping):
        if s1 <= start or s0 >= start + len(question) or s1 == s0:
            continue
        a0, a1 = s0 - start, s1 - start
        over = [j for j, (b0, b1) in enumerate(spans) if b1 > a0 and b0 < a1 and b1 > b0]
        if over:
            relevance[i] = c[over].mean()  # eq. 7
            question_index.append(i)
    return relevance.to(engine.device), torch.tensor(question_index, device=engine.device), None
