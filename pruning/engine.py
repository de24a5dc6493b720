"""The pruned-generation engine: vision pass, pruning stages, layer-by-layer prefill, decode loop.

This is the one file that knows transformers' internals. It drives a stock
``LlavaForConditionalGeneration`` module by module (vision tower, projector, embeddings, decoder
layers, norm, LM head) and never patches a class. Batch size 1.

Data flow for one request::

    image, question ── processor ──> pixel_values, input_ids (one <image> id per visual token)
    vision_pass:   vision tower -> patch features at vision_feature_layer (N, Dv)
                   + the [CLS] query's attention row at every ViT layer (L_v, H_v, N), from forward hooks
                     on q_proj / k_proj that detach themselves (no eager attention needed)
    stage before:  strategy.select_before_llm -> kept patch indices (or merged features), spatial order
    embeddings:    [prefix text | projector(kept features) | question text], position_ids
                   ("keep": original positions; "rearrange": contiguous)
    prefill:       decoder layers one by one with a DynamicCache; at layer k a stage-"llm" strategy drops
                   image rows (hidden states, positions and hence rotary cos/sin shrink; layers < k keep
                   their full cache). The last prompt token's attention row at layer k-1 is computed
                   from its query and the cached keys by a hook on that layer's self_attn.
    decode:        one token at a time over the per-layer cache (lengths differ per layer), greedy or
                   temperature/top-p with a seed, until EOS or max_new_tokens.
    trace:         optional; records per layer the attention of each generating query over
                   system / image / question / generated tokens and the attention each patch receives.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from . import cost
from .model import LoadedModel
from .strategies import LLMContext, Selection, Strategy, VisionContext, ViTContext
from .strategies.base import QuestionEmbeddings

SEGMENTS = ("system", "image", "question", "generated")


@dataclass
class Prepared:
    """Processor output for one (image, question)."""

    pixel_values: torch.Tensor  # (1, 3, H, W)
    input_ids: torch.Tensor  # (S_full,) with N image placeholder ids
    image_start: int  # index of the first image placeholder
    n_image: int  # N, placeholders = visual tokens before pruning
    question: str = ""
    prompt: str = ""  # the prompt text with one <image> placeholder
    notes: list | None = None  # what was changed in the input, in words (e.g. control characters removed)


@dataclass
class PrefillState:
    """Everything the decode loop needs, plus what the prefill did."""

    cache: object  # transformers DynamicCache, per-layer lengths may differ
    logits: torch.Tensor  # (V,) next-token logits after the prompt
    next_positions: list[int]  # per layer: position id of the next token
    layer_tokens: list[torch.Tensor]  # per layer: full-prompt index of every cached row
    kept_before: list[int]  # patch indices entering the LLM
    kept_final: list[int]  # patch indices still present in the last layer
    tokens_per_layer: list[int]
    image_tokens_per_layer: list[int]
    hidden_states: torch.Tensor | None = None  # (S_last, D) final-normed prefill hidden states
    notes: list | None = None  # what a strategy could not do as specified (e.g. a fallback it took)
    vit_tokens: list | None = None  # tokens entering each ViT layer (None: all, no pruning inside the ViT)
    kept_vit: list | None = None  # patches that left the ViT (None: all, no pruning inside the ViT)
    merge_groups: list | None = None  # per patch: the index into kept_before of the token it merged into, or -1
    projected_rows: int | None = None  # rows the projector ran on, when not the kept ones (needs_projected: all N)


@dataclass
class Result:
    """Plain values only: what the app, the CLI and the benchmark consume."""

    answer: str
    strategy: str
    params: dict
    visual_tokens: int  # before pruning
    visual_tokens_kept: int  # entering the LLM
    tokens_per_layer: list[int]  # prefill sequence length per LLM layer
    image_tokens_per_layer: list[int]
    kept: list[int]  # patch indices entering the LLM, row-major
    kept_final: list[int]  # patch indices present in the last LLM layer
    grid: list[int]  # [rows, cols]
    generated_tokens: list[int]
    timings: dict  # vision_ms (ViT + [CLS] rows), prefill_ms (selection, projector, LLM), decode_ms_per_token,
    #                total_ms: medians of untraced repeats
    tflops: dict  # vision (ViT), prefill (projector + LLM + LM head), decode_per_token, total (estimates)
    kv_cache_bytes: int  # after prefill + decode, from the cache's tensors
    kv_cache_bytes_per_layer: list[int]
    peak_memory_bytes: int | None  # CUDA: max allocated; CPU: None (not measured per run)
    device: str
    trace: dict | None = None
    notes: list | None = None  # fallbacks a strategy took, in words
    vit_tokens_per_layer: list | None = None  # tokens in each ViT layer (all N+1 unless pruned inside the ViT)
    kept_vit: list | None = None  # patches that left the ViT; None: all (only IVTP prunes inside the ViT)
    merge_groups: list | None = None  # merging strategies: per patch of the grid, the position in ``kept`` of
    #                                   the token whose feature absorbed it, -1 where none did; None: no merging

    def to_dict(self) -> dict:
        return asdict(self)


def _causal_mask(n: int, dtype, device) -> torch.Tensor:
    """Additive causal mask (1, 1, n, n) for eager attention, which applies none of its own."""
    m = torch.full((n, n), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return m[None, None]


def _attention_module_fns(attn):
    """``apply_rotary_pos_emb`` and ``repeat_kv`` from the module that defines the attention class."""
    mod = sys.modules[type(attn).__module__]
    return mod.apply_rotary_pos_emb, mod.repeat_kv


def last_query_attention(attn, hidden_states, position_embeddings, keys) -> torch.Tensor:
    """Attention probabilities (H, L) of the last row of ``hidden_states`` over ``keys`` (1, KV, L, hd).

    ``hidden_states`` is the (normed) input of ``attn``; keys are the cached, rotated keys of the
    layer including the row itself, so the last query sees every key (causality holds).
    """
    apply_rotary, repeat_kv = _attention_module_fns(attn)
    h = hidden_states[:, -1:]  # (1, 1, D)
    q = attn.q_proj(h).view(1, 1, -1, attn.head_dim).transpose(1, 2)  # (1, H, 1, hd)
    cos, sin = position_embeddings
    q, _ = apply_rotary(q, q, cos[:, -1:], sin[:, -1:])
    k = repeat_kv(keys, attn.num_key_value_groups)  # (1, H, L, hd)
    scores = (q.float() @ k.float().transpose(2, 3)) * attn.scaling  # (1, H, 1, L)
    return scores.softmax(-1)[0, :, 0]  # (H, L)


@contextlib.contextmanager
def record_last_query_attention(layers, indices, store: dict):
    """Forward hooks on ``layers[i].self_attn`` for i in ``indices`` that append the last query's
    attention row (H, L) to ``store[i]`` on every call; removed on exit."""
    handles = []

    def make_hook(i):
        def hook(module, args, kwargs, output):
            cache = kwargs.get("past_key_values")
            keys = cache.layers[module.layer_idx].keys
            store.setdefault(i, []).append(
                last_query_attention(module, kwargs["hidden_states"], kwargs["position_embeddings"], keys).detach()
            )
        return hook

    try:
        for i in indices:
            handles.append(layers[i].self_attn.register_forward_hook(make_hook(i), with_kwargs=True))
        yield store
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def record_cls_attention(vision_layers, store: list, keys_store: dict | None = None, query: int = 0):
    """Hooks on each ViT layer's q_proj / k_proj that compute the [CLS] query's attention row
    (H, T) from the projections the layer computes anyway; removed on exit. ``keys_store[i]`` receives
    layer i's keys (T, D) for the layers it lists. ``query``: the token whose row is computed (0: [CLS]; any other
    token's row the same way, e.g. a patch the app probes)."""
    handles = []
    qs: dict[int, torch.Tensor] = {}

    def q_hook(i):
        def hook(module, args, output):
            qs[i] = output[0, query]  # (D,) the [CLS] query (or token ``query``'s)
        return hook

    def k_hook(i, attn):
        def hook(module, args, output):
            keys = output[0]  # (T, D)
            if keys_store is not None and i in keys_store:
                keys_store[i] = keys.detach()
            heads = attn.num_heads
            q = qs.pop(i).view(heads, -1).float()  # (H, hd)
            k = keys.view(keys.shape[0], heads, -1).float()  # (T, H, hd)
            scores = torch.einsum("hd,thd->ht", q, k) * attn.scale
            store.append(scores.softmax(-1).detach())  # (H, T)
        return hook

    try:
        for i, layer in enumerate(vision_layers):
            attn = layer.self_attn
            handles.append(attn.q_proj.register_forward_hook(q_hook(i)))
            handles.append(attn.k_proj.register_forward_hook(k_hook(i, attn)))
        yield store
    finally:
        for h in handles:
            h.remove()


class Engine:
    """Runs one loaded LLaVA with pruning strategies. Stateless between requests."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.model = lm.model
        self.geometry = lm.geometry
        llava = self.model.model
        self.vision_tower = llava.vision_tower
        self.projector = llava.multi_modal_projector
        self.language_model = llava.language_model
        self.layers = self.language_model.layers
        self.embed_tokens = self.language_model.embed_tokens
        self.norm = self.language_model.norm
        self.rotary_emb = self.language_model.rotary_emb
        self.lm_head = self.model.lm_head
        self.image_token_id = self.model.config.image_token_id
        self.attn_impl = self.language_model.config._attn_implementation
        if self.attn_impl not in ("sdpa", "eager"):
            raise ValueError(f"attention implementation {self.attn_impl!r} is not supported: use 'sdpa' or 'eager'")
        self.llm_shape = cost.llm_shape(self.model.config.text_config)
        self.vision_shape = cost.vision_shape(self.model.config)
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = lm.processor.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        # CLIPVisionModel holds its encoder directly in transformers 5.x (older releases: .vision_model)
        tower = getattr(self.vision_tower, "vision_model", self.vision_tower)
        if not hasattr(tower, "encoder"):
            raise ValueError(f"vision tower {type(self.vision_tower).__name__} has no encoder layers")
        self.vision_layers = tower.encoder.layers
        self.vision_dtype = tower.embeddings.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def context(self) -> int | None:
        """The LLM's context in positions (None when the config does not say)."""
        return getattr(self.model.config.text_config, "max_position_embeddings", None)

    def check(self, strategy: Strategy, max_new_tokens: int | None = None, temperature: float = 0.0,
              top_p: float = 1.0) -> None:
        """What can be checked before anything runs: the strategy's LLM layers against this model's depth,
        its [CLS] layers (``k_layers``) against the ViT's, and the generation settings. A ``ValueError``
        names the value and the range expected."""
        n_layers = len(self.layers)
        for k in strategy.llm_drop_layers(n_layers):
            if not 1 <= k < n_layers:
                raise ValueError(f"{strategy.name} layer={k}: stage 'llm' needs 1 <= layer < {n_layers} (the model's "
                                 f"depth: {n_layers} LLM layers)")
        k_layers = getattr(strategy, "k_layers", None)
        top = self.geometry.feature_layer_index + 1
        if k_layers is not None and not 1 <= k_layers <= top:
            raise ValueError(f"{strategy.name} k_layers={k_layers}: expected 1..{top} (the ViT layers up to the one "
                             "that feeds the LLM)")
        if max_new_tokens is not None:
            check_generation(max_new_tokens, temperature, top_p, self.context)

    # ---------------------------------------------------------------- inputs
    def prepare(self, image, question: str) -> Prepared:
        """Run the processor; check the image placeholders form one contiguous span of N ids."""
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise ValueError(f"image must be a PIL image, got {type(image).__name__}")
        from .model import clean_question

        question, notes = clean_question(question, getattr(self.lm.processor, "image_token", "<image>"))
        prompt = self.lm.prompt(question)
        inputs = self.lm.processor(images=image.convert("RGB"), text=prompt, return_tensors="pt")
        ids = inputs["input_ids"][0]
        context = self.context
        if context is not None and ids.shape[0] >= context:
            n_question = len(self.lm.processor.tokenizer(question, add_special_tokens=False).input_ids)
            raise ValueError(f"question is too long: {n_question} tokens; with the image's {self.geometry.n_patches} "
                             f"tokens the prompt holds {ids.shape[0]}, beyond the model's context of {context}")
        where = (ids == self.image_token_id).nonzero().flatten()
        n = self.geometry.n_patches
        if where.numel() != n or (where.numel() and where[-1] - where[0] + 1 != n):
            raise ValueError(f"prompt holds {where.numel()} image placeholder ids, expected one span of {n}")
        return Prepared(
            pixel_values=inputs["pixel_values"].to(self.device, self.vision_dtype),
            input_ids=ids.to(self.device), image_start=int(where[0]), n_image=n, question=question, prompt=prompt,
            notes=notes,
        )

    # ---------------------------------------------------------------- vision
    @torch.no_grad()
    def vision_pass(self, prepared: Prepared, seed: int = 0, strategy: Strategy | None = None) -> VisionContext:
        """Patch features at vision_feature_layer and the [CLS] attention row at every ViT layer; a
        strategy that prunes inside the ViT (IVTP) gets the layer-by-layer path instead."""
        g = self.geometry
        if strategy is not None and strategy.vit_prune_layers(g.vision_layers, g.feature_layer_index):
            return self._vision_pass_pruned(prepared, seed, strategy)
        rows: list[torch.Tensor] = []
        keys = {g.feature_layer_index: None, g.feature_layer_index + 1: None}  # + the layer reading the features
        recorder = (record_cls_attention(self.vision_layers, rows, keys) if g.has_cls
                    else contextlib.nullcontext())
        with recorder:
            out = self.vision_tower(prepared.pixel_values, output_hidden_states=True, return_dict=True)
        feats = out.hidden_states[g.vision_feature_layer][0]  # (T, Dv)
        if g.has_cls:
            cls_feature, patches = feats[0], feats[1:]  # "default" drops [CLS]
            stacked = torch.stack(rows)  # (L_v, H, T)
            cls_attention, cls_self = stacked[:, :, 1:], stacked[:, :, 0]  # [CLS] row over patch keys; its own column
        else:
            cls_feature, patches, cls_attention, cls_self = None, feats, None, None
        patch_keys, reader_keys = keys[g.feature_layer_index], keys[g.feature_layer_index + 1]
        if g.has_cls:
            patch_keys, reader_keys = (k[1:] if k is not None else None for k in (patch_keys, reader_keys))
        return VisionContext(
            patch_features=patches, cls_attention=cls_attention, cls_feature=cls_feature,
            feature_layer=g.feature_layer_index, patch_keys=patch_keys, reader_keys=reader_keys,
            rows=g.rows, cols=g.cols, generator=torch.Generator().manual_seed(seed),
            cls_final=out.pooler_output[0] if g.has_cls else None, cls_self=cls_self,
        )

    @torch.no_grad()
    def token_attention(self, prepared: Prepared, token: int) -> torch.Tensor:
        """(L_v, H, T): ViT token ``token``'s attention row over all T tokens in every ViT layer (token 0 is [CLS]
        where the tower has one, so patch p is token p + 1), from the q/k projections as ``record_cls_attention``
        computes [CLS]'s. One unpruned pass of the vision tower."""
        n_tokens = self.geometry.n_patches + (1 if self.geometry.has_cls else 0)
        if not 0 <= token < n_tokens:
            raise ValueError(f"token={token}: expected 0..{n_tokens - 1}")
        rows: list[torch.Tensor] = []
        with record_cls_attention(self.vision_layers, rows, query=token):
            self.vision_tower(prepared.pixel_values, output_hidden_states=False, return_dict=True)
        return torch.stack(rows)

    def _vision_pass_pruned(self, prepared: Prepared, seed: int, strategy: Strategy) -> VisionContext:
        """The ViT layer by layer; after each of the strategy's pruning layers, ``select_in_vit`` picks
        the patch tokens that go on ([CLS] always stays). Attention maps come from the q/k projections
        the layers compute anyway (forward hooks, removed on exit)."""
        g = self.geometry
        if not g.has_cls:
            raise ValueError(f"strategy {strategy.name!r} prunes by [CLS] attention: the vision tower has no [CLS]")
        tower = getattr(self.vision_tower, "vision_model", self.vision_tower)
        prune_at = strategy.vit_prune_layers(g.vision_layers, g.feature_layer_index)
        captured: dict[str, torch.Tensor] = {}
        handles = []
        for layer in self.vision_layers:
            for name in ("q_proj", "k_proj", "v_proj"):
                handles.append(getattr(layer.self_attn, name).register_forward_hook(
                    lambda m, a, o, name=name: captured.__setitem__(name, o[0])))
        try:
            h = tower.pre_layrnorm(tower.embeddings(prepared.pixel_values))  # (1, T, D)
            token = torch.arange(h.shape[1], device=h.device)  # 0 = [CLS], p + 1 = patch p
            group, tokens_per_layer, feats = [], [], None
            for i, layer in enumerate(self.vision_layers):
                tokens_per_layer.append(h.shape[1])
                h = layer(h, attention_mask=None)
                attn = layer.self_attn
                t = h.shape[1]
                q = captured["q_proj"].view(t, attn.num_heads, -1).transpose(0, 1).float()  # (H, T, hd)
                k = captured["k_proj"].view(t, attn.num_heads, -1).transpose(0, 1).float()
                group.append(((q @ k.transpose(1, 2)) * attn.scale).softmax(-1).mean(0))  # (T, T)
                if i == g.feature_layer_index:
                    feats, feat_token = h[0], token
                if i in prune_at:
                    ctx = ViTContext(layer=i, attentions=group, value_norms=captured["v_proj"].float().norm(dim=-1),
                                     patch_indices=token[1:] - 1, n_patches=g.n_patches, step=prune_at.index(i),
                                     steps=len(prune_at) + len(strategy.llm_drop_layers(g.llm_layers)))
                    keep = strategy.select_in_vit(ctx)
                    _check_indices(keep, t - 1, strategy.name)
                    sel = torch.cat([torch.zeros(1, dtype=torch.long), 1 + keep.cpu()]).to(h.device)
                    h, token, group = h[:, sel], token[sel], []
            cls_final = tower.post_layernorm(h[:, 0])[0]
        finally:
            for handle in handles:
                handle.remove()
        return VisionContext(
            patch_features=feats[1:], cls_attention=None, cls_feature=feats[0], feature_layer=g.feature_layer_index,
            rows=g.rows, cols=g.cols, generator=torch.Generator().manual_seed(seed), cls_final=cls_final,
            patch_ids=(feat_token[1:] - 1).cpu(), vit_tokens=tokens_per_layer,
        )

    # ---------------------------------------------------------------- prefill
    def _rotary(self, h: torch.Tensor, positions: torch.Tensor):
        return self.rotary_emb(h, positions[None])

    @torch.no_grad()
    def prefill(self, prepared: Prepared, vision: VisionContext, strategy: Strategy,
                trace_store: dict | None = None, keep_hidden: bool = False) -> PrefillState:
        ids, a, n = prepared.input_ids, prepared.image_start, prepared.n_image
        dev = self.device
        # stage "before LLM"
        if strategy.stage == "before" and (strategy.needs_projected or strategy.question_inputs()):
            vision = self._strategy_inputs(prepared, vision, strategy)
        selection = strategy.select_before_llm(vision) if strategy.stage == "before" else None
        if selection is None:  # everything the vision pass kept (all patches unless pruned inside the ViT)
            selection = Selection(vision.patch_ids if vision.patch_ids is not None else torch.arange(n))
        idx = selection.indices
        _check_indices(idx, n, strategy.name)
        if selection.features is None and vision.projected is not None:  # projected once, all N (needs_projected)
            image_embeds = vision.projected[idx.to(dev)]
        else:
            if selection.features is not None:
                feats = selection.features
            elif vision.patch_ids is not None:  # features are stored for the surviving patches only
                feats = vision.patch_features
            else:
                feats = vision.patch_features[idx.to(dev)]
            image_embeds = self.projector(feats.to(dev))  # (U, D)
        text_embeds = self.embed_tokens(ids)  # (S_full, D)
        h = torch.cat([text_embeds[:a], image_embeds.to(text_embeds.dtype), text_embeds[a + n:]])[None]  # (1, S, D)
        full_index = torch.cat([torch.arange(a), a + idx, torch.arange(a + n, ids.shape[0])]).to(dev)  # (S,)
        positions = full_index.clone() if strategy.positions == "keep" else torch.arange(h.shape[1], device=dev)
        is_image = (full_index >= a) & (full_index < a + n)

        from transformers import DynamicCache

        cache = DynamicCache()
        n_layers = len(self.layers)
        drops = sorted(strategy.llm_drop_layers(n_layers))
        vit_points = len(strategy.vit_prune_layers(self.geometry.vision_layers, self.geometry.feature_layer_index))
        for k in drops:
            if not 1 <= k < n_layers:
                raise ValueError(f"layer={k}: stage 'llm' needs 1 <= layer < {n_layers} (the model's depth)")
        probe: dict = {}
        probe_layers = sorted({k - 1 for k in drops}) if strategy.needs_attention_row and trace_store is None else []
        group: dict = {}
        live: dict = {}  # what the group recorder needs to know about the current sequence
        if strategy.needs_group_attention and drops:
            size = getattr(strategy, "group", 3)
            group_layers = sorted({i for k in drops for i in range(max(0, k - size), k)})
            live.update(self._pseudo_setup(prepared, vision, strategy))
        else:
            group_layers = []
        cos_sin = self._rotary(h, positions)
        mask = _causal_mask(h.shape[1], h.dtype, dev) if self.attn_impl == "eager" else None
        layer_tokens, next_positions, tokens_per_layer, image_per_layer = [], [], [], []
        with contextlib.ExitStack() as stack:
            if trace_store is not None:
                stack.enter_context(record_last_query_attention(self.layers, range(n_layers), trace_store))
                probe = trace_store
            elif probe_layers:
                stack.enter_context(record_last_query_attention(self.layers, probe_layers, probe))
            if group_layers:
                stack.enter_context(self._record_group_attention(group_layers, live, group))
            for layer_idx, layer in enumerate(self.layers):
                if layer_idx in drops:
                    image_rows = is_image.nonzero().flatten()
                    row = probe[layer_idx - 1][-1] if (strategy.needs_attention_row and probe) else None
                    maps = ([group[i] for i in range(max(0, layer_idx - getattr(strategy, "group", 3)), layer_idx)]
                            if group_layers else None)
                    ctx = LLMContext(layer=layer_idx, hidden_states=h[0], attention_row=row, image_rows=image_rows,
                                     patch_indices=full_index[image_rows] - a, vision=vision,
                                     step=vit_points + drops.index(layer_idx), steps=vit_points + len(drops),
                                     group=maps)
                    if strategy.needs_keys:  # layer k-1's cached keys are rotated and hold exactly h's rows
                        k_prev = cache.layers[layer_idx - 1].keys[0]  # (KV, S, hd)
                        ctx.keys = k_prev.transpose(0, 1).reshape(k_prev.shape[1], -1)
                        ctx.normed_states = self.norm(h)[0]
                    keep_img = strategy.select_in_llm(ctx)
                    if keep_img is not None:
                        _check_indices(keep_img, image_rows.shape[0], strategy.name)
                        keep = torch.ones_like(is_image)
                        keep[image_rows] = False
                        keep[image_rows[keep_img.to(dev)]] = True
                        rows = keep.nonzero().flatten()
                        h, full_index, is_image = h[:, rows], full_index[rows], is_image[rows]
                        positions = (positions[rows] if strategy.positions == "keep"
                                     else torch.arange(rows.shape[0], device=dev))
                        cos_sin = self._rotary(h, positions)
                        if mask is not None:
                            mask = mask[:, :, rows][:, :, :, rows]
                if group_layers:
                    live.update(image_rows=is_image.nonzero().flatten(), positions=positions, full_index=full_index)
                h = layer(h, attention_mask=mask, position_embeddings=cos_sin, past_key_values=cache, use_cache=True)
                layer_tokens.append(full_index)
                next_positions.append(int(positions[-1]) + 1)
                tokens_per_layer.append(h.shape[1])
                image_per_layer.append(int(is_image.sum()))
            h = self.norm(h)
        logits = self.lm_head(h[:, -1])[0].float()  # (V,)
        kept_final = (full_index[is_image] - a).tolist()
        notes = [f"{strategy.name}: {live['note']}; the scoring query is the visual [CLS]"] if live.get("note") else []
        notes += [f"{strategy.name}: {note}" for note in (selection.notes or [])]
        return PrefillState(
            cache=cache, logits=logits, next_positions=next_positions, layer_tokens=layer_tokens,
            kept_before=idx.tolist(), kept_final=kept_final, tokens_per_layer=tokens_per_layer,
            image_tokens_per_layer=image_per_layer, hidden_states=h[0] if keep_hidden else None,
            notes=notes,
            vit_tokens=vision.vit_tokens,
            kept_vit=vision.patch_ids.tolist() if vision.patch_ids is not None else None,
            merge_groups=selection.groups.tolist() if selection.groups is not None else None,
            projected_rows=vision.projected.shape[0] if vision.projected is not None else None,
        )

    def _strategy_inputs(self, prepared: Prepared, vision: VisionContext, strategy: Strategy) -> VisionContext:
        """A copy of ``vision`` with what the strategy asks for before the LLM: the projector's output of every patch
        (``needs_projected``) and the question's embeddings (``question_inputs``)."""
        if vision.patch_ids is not None:
            raise ValueError(f"strategy {strategy.name!r} needs every patch's features (none pruned inside the ViT)")
        extra = {}
        if strategy.needs_projected:
            extra["projected"] = self.projector(vision.patch_features.to(self.device))  # (N, D)
        wanted = strategy.question_inputs()
        if wanted:
            extra["question"] = self.question_embeddings(prepared, vision, wanted, strategy.question_text)
        return replace(vision, **extra)

    def question_embeddings(self, prepared: Prepared, vision: VisionContext, wanted=("clip", "llm"),
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
            clip, note = load_clip(self.lm)
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
                tower = getattr(self.vision_tower, "vision_model", self.vision_tower)
                with torch.no_grad():
                    pooled = model.text_model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).pooler_output
                    out.clip_text = model.text_projection(pooled).float()  # (M, C)
                    patches = tower.post_layernorm(vision.patch_features)
                    out.clip_patches = model.visual_projection(patches.to(dev, pooled.dtype)).float()  # (N, C)
        if "llm" in wanted:
            ids = self.lm.processor.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
            with torch.no_grad():
                out.llm_tokens = self.embed_tokens(ids.to(self.device))  # (Q, D)
        return out

    # ---------------------------------------------------------------- IVTP's scoring query in the LLM
    def _pseudo_setup(self, prepared: Prepared, vision: VisionContext, strategy: Strategy) -> dict:
        """Relevance of each question token to the image (CLIP text half, IVTP eq. 5-7) and the
        fallback query (the visual [CLS] through the projector)."""
        relevance, question_index, note = self.text_relevance(prepared, vision)
        if vision.cls_feature is None:
            raise ValueError(f"strategy {strategy.name!r} needs a vision tower with a [CLS] token")
        fallback = self.projector(vision.cls_feature.to(self.device)[None])[0]
        return {"relevance": relevance, "question_index": question_index, "fallback": fallback,
                "strategy": strategy, "note": note}

    @contextlib.contextmanager
    def _record_group_attention(self, layer_indices, live: dict, out: dict):
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
            pos = live["positions"]
            pseudo_pos = (pos[img[-1]] + 1) if img.numel() else pos[0]
            q_pos = torch.cat([pos[img], pseudo_pos[None]])
            cos, sin = self.rotary_emb(normed[None], q_pos[None])
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
                handles.append(self.layers[i].register_forward_hook(hook, with_kwargs=True))
            yield out
        finally:
            for h in handles:
                h.remove()

    def text_relevance(self, prepared: Prepared, vision: VisionContext):
        """Relevance of each question token to the image (IVTP eq. 5-7): cosine between CLIP's image
        embedding and each CLIP text token, averaged over the CLIP tokens that overlap the LLM token's
        characters. Returns ((S_full,) relevance with NaN outside the question, (Q,) question token indices,
        None), or (None, None, reason) when no CLIP text encoder is available."""
        from .model import load_clip

        clip, note = load_clip(self.lm)
        if clip is None or vision.cls_final is None:
            return None, None, note or "no final [CLS] to compare with"
        model, clip_tok = clip
        question = prepared.question
        prompt = prepared.prompt.replace("<image>", "<image>" * prepared.n_image)
        start = prompt.rfind(question)
        llm_tok = self.lm.processor.tokenizer
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
        return relevance.to(self.device), torch.tensor(question_index, device=self.device), None

    # ---------------------------------------------------------------- decode
    @torch.no_grad()
    def decode(self, state: PrefillState, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               seed: int = 0, trace_store: dict | None = None,
               stop: Callable[[list[int]], bool] | None = None) -> list[int]:
        """Generate up to ``max_new_tokens`` tokens from the prefill state (the first comes from the
        prefill logits). Greedy when ``temperature == 0``. Stops at EOS, at ``max_new_tokens``, or as soon as
        ``stop(tokens so far)`` is true (e.g. a stop string appeared in their text)."""
        context = self.context
        check_generation(max_new_tokens, temperature, top_p, context)
        if context is not None and max(state.next_positions) + max_new_tokens - 1 > context:
            raise ValueError(f"max_new_tokens={max_new_tokens}: the prompt ends at position {max(state.next_positions)} "
                             f"and the model's context is {context} positions; ask for at most "
                             f"{context - max(state.next_positions) + 1}")
        pick = _sampler(temperature, top_p, seed)
        logits = state.logits
        tokens: list[int] = []
        positions = list(state.next_positions)
        recorder = (record_last_query_attention(self.layers, range(len(self.layers)), trace_store)
                    if trace_store is not None else contextlib.nullcontext())
        with recorder:
            while True:
                token = pick(logits)
                tokens.append(token)
                if token in self.eos_ids or len(tokens) >= max_new_tokens or (stop is not None and stop(tokens)):
                    break
                logits = self._step(token, positions, state.cache)
                positions = [p + 1 for p in positions]
        return tokens

    def _step(self, token: int, positions: list[int], cache) -> torch.Tensor:
        """One token through every layer over the per-layer cache (layer i at position ``positions[i]``; the
        cache grows by one per layer): the next token's logits (V,)."""
        dev = self.device
        h = self.embed_tokens(torch.tensor([[token]], device=dev))  # (1, 1, D)
        rotary: dict[int, tuple] = {}
        for layer_idx, layer in enumerate(self.layers):
            p = positions[layer_idx]
            if p not in rotary:
                rotary[p] = self._rotary(h, torch.tensor([p], device=dev))
            h = layer(h, attention_mask=None, position_embeddings=rotary[p], past_key_values=cache, use_cache=True)
        return self.lm_head(self.norm(h)[:, -1])[0].float()

    @torch.no_grad()
    def score(self, state: PrefillState, continuation: list[int]) -> tuple[list[float], bool]:
        """Teacher forcing after a (pruned) prefill of the context: the log-probability of each continuation token
        (the first from the prefill's logits, each next one after feeding the one before through the per-layer
        cache, as ``decode`` does), and whether greedy decoding would produce exactly these tokens. The context's
        pruning is the one generation has (FastV's attention row is the context's last token's). The state's
        cache grows by ``len(continuation) - 1`` tokens per layer: score a state once."""
        ids = [int(t) for t in continuation]
        if not ids:
            raise ValueError("continuation: expected at least one token id")
        context = self.context
        if context is not None and max(state.next_positions) + len(ids) - 1 > context:
            raise ValueError(f"continuation of {len(ids)} tokens: the prompt ends at position "
                             f"{max(state.next_positions)} and the model's context is {context} positions")
        logits, positions = state.logits, list(state.next_positions)
        logprobs, greedy = [], True
        for i, token in enumerate(ids):
            lp = logits.log_softmax(-1)
            logprobs.append(float(lp[token]))
            greedy = greedy and int(lp.argmax()) == token
            if i + 1 < len(ids):
                logits = self._step(token, positions, state.cache)
                positions = [p + 1 for p in positions]
        return logprobs, greedy

    # ---------------------------------------------------------------- one request
    def generate(self, image, question: str, strategy: Strategy, max_new_tokens: int = 16,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> tuple[str, PrefillState]:
        """Untimed: the decoded answer and the prefill state (for evaluations and sweeps)."""
        self.check(strategy, max_new_tokens, temperature, top_p)
        prepared = self.prepare(image, question)
        state = self.prefill(prepared, self.vision_pass(prepared, seed=strategy.seed, strategy=strategy), strategy)
        tokens = self.decode(state, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        return self.lm.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip(), state

    def timed_run(self, prepared: Prepared, strategy: Strategy, max_new_tokens: int, sampling: dict):
        """One untraced run of ``strategy`` on ``prepared``, each stage timed (``cost.Stopwatch``, synchronised
        on CUDA): returns ``({"vision_ms", "prefill_ms", "decode_ms_per_token", "total_ms"}, (state, tokens))``.
        ``sampling``: ``temperature``, ``top_p``, ``seed``. What ``run``, ``python -m pruning speed`` and the
        benchmarks time; ``make_result`` turns its output into a ``Result``."""
        dev = str(self.device)
        with cost.Stopwatch(dev) as sw_v:
            vision = self.vision_pass(prepared, seed=strategy.seed, strategy=strategy)
        with cost.Stopwatch(dev) as sw_p:
            state = self.prefill(prepared, vision, strategy)
        with cost.Stopwatch(dev) as sw_d:
            tokens = self.decode(state, max_new_tokens, **sampling)
        steps = max(len(tokens) - 1, 1)  # forward passes in the decode loop
        timings = {"vision_ms": sw_v.ms, "prefill_ms": sw_p.ms, "decode_ms_per_token": sw_d.ms / steps,
                   "total_ms": sw_v.ms + sw_p.ms + sw_d.ms}
        return timings, (state, tokens)

    def run(self, image, question: str, strategy: Strategy, max_new_tokens: int = 16, repeats: int = 1,
            warmup: int = 1, trace: bool = False, temperature: float = 0.0, top_p: float = 1.0,
            seed: int = 0) -> Result:
        """Answer ``question`` about ``image`` with ``strategy``; timings are the median of ``repeats``
        untraced runs after ``warmup`` runs. With ``trace``, one more (untimed) traced run fills
        ``Result.trace``."""
        self.check(strategy, max_new_tokens, temperature, top_p)
        prepared = self.prepare(image, question)
        sampling = dict(temperature=temperature, top_p=top_p, seed=seed)
        if str(self.device).startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        timings, (state, tokens) = cost.repeat_timed(
            lambda: self.timed_run(prepared, strategy, max_new_tokens, sampling), repeats, warmup)
        peak = torch.cuda.max_memory_allocated() if str(self.device).startswith("cuda") else None
        trace_dict = self.trace(prepared, strategy, max_new_tokens, sampling) if trace else None
        return self.make_result(prepared, strategy, state, tokens, timings, peak, trace_dict)

    def trace(self, prepared: Prepared, strategy: Strategy, max_new_tokens: int, sampling: dict) -> dict:
        """A traced run: per LLM layer, how the generating queries' attention splits over the segments,
        and the mean attention (over heads and generating queries) each patch receives."""
        vision = self.vision_pass(prepared, seed=strategy.seed, strategy=strategy)
        store: dict = {}
        state = self.prefill(prepared, vision, strategy, trace_store=store)
        tokens = self.decode(state, max_new_tokens, trace_store=store, **sampling)
        return summarize_trace(store, state.layer_tokens, prepared, self.geometry.n_patches, len(tokens))

    def prefill_tflops(self, state: PrefillState) -> float:
        """The prefill's TFLOPs estimate from the token counts it ran: projector on the kept rows, every LLM layer,
        the LM head on the last position (``Result.tflops["prefill"]``)."""
        return (cost.projector_flops(self.vision_shape, state.projected_rows or len(state.kept_before))
                + cost.prefill_flops(self.llm_shape, state.tokens_per_layer)) / 1e12

    def make_result(self, prepared, strategy, state: PrefillState, tokens, timings, peak, trace_dict) -> Result:
        """The ``Result`` of a run: the answer, token counts, ``timings`` as given, TFLOPs from the token counts the
        run had, KV-cache bytes, ``peak`` memory (or None) and ``trace_dict`` (or None)."""
        tokenizer = self.lm.processor.tokenizer
        answer = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        kv_layers = cost.kv_cache_bytes(state.cache)
        # decode FLOPs are reported for the first decoded token (cache = prompt + 1 per layer)
        kv_lengths = [n + 1 for n in state.tokens_per_layer]
        tf_vision = cost.vision_flops(self.vision_shape, state.vit_tokens) / 1e12
        tf_prefill = self.prefill_tflops(state)
        tf_decode = cost.decode_token_flops(self.llm_shape, kv_lengths) / 1e12
        steps = max(len(tokens) - 1, 0)
        return Result(
            answer=answer, strategy=strategy.name, params=strategy.params(),
            visual_tokens=prepared.n_image, visual_tokens_kept=len(state.kept_before),
            tokens_per_layer=state.tokens_per_layer, image_tokens_per_layer=state.image_tokens_per_layer,
            kept=state.kept_before, kept_final=state.kept_final, grid=[self.geometry.rows, self.geometry.cols],
            generated_tokens=tokens, timings=timings,
            tflops={"vision": tf_vision, "prefill": tf_prefill, "decode_per_token": tf_decode,
                    "total": tf_vision + tf_prefill + steps * tf_decode},
            kv_cache_bytes=sum(kv_layers), kv_cache_bytes_per_layer=kv_layers, peak_memory_bytes=peak,
            device=str(self.device), trace=trace_dict, notes=(prepared.notes or []) + (state.notes or []),
            vit_tokens_per_layer=state.vit_tokens or [self.vision_shape.n_tokens] * self.vision_shape.layers,
            kept_vit=state.kept_vit, merge_groups=state.merge_groups,
        )


def summarize_trace(store: dict, layer_tokens: list[torch.Tensor], prepared: Prepared, n_patches: int,
                    n_generated: int) -> dict:
    """Turn raw attention rows into plain per-layer summaries.

    A generating query is the last prompt token (it produces the first answer token) and each decode
    step's input. Its attention over cache rows is split by what each row holds: the prompt before the
    image ("system"), image tokens, the question after the image, generated tokens.
    """
    a, n, s_full = prepared.image_start, prepared.n_image, prepared.input_ids.shape[0]
    shares, patch_attention, present = [], [], []
    for layer_idx, index in enumerate(layer_tokens):
        rows = store.get(layer_idx, [])  # the last prompt row (prefill), then one row per decode step
        seg_sum = torch.zeros(4)
        patch_sum = torch.zeros(n_patches)
        index = index.cpu()
        in_image = (index >= a) & (index < a + n)
        alive = torch.zeros(n_patches, dtype=torch.bool)
        alive[index[in_image] - a] = True
        present.append(alive.tolist())
        for step, row in enumerate(rows):
            row = row.mean(0).cpu()  # (L,) mean over heads
            full = torch.cat([index, s_full + torch.arange(row.shape[0] - index.shape[0])])
            seg = torch.where(full < a, 0, torch.where(full < a + n, 1, torch.where(full < s_full, 2, 3)))
            seg_sum += torch.zeros(4).index_add_(0, seg, row)
            img = seg == 1
            patch_sum.index_add_(0, full[img] - a, row[img])
        count = max(len(rows), 1)
        shares.append(dict(zip(SEGMENTS, (seg_sum / count).tolist())))
        patch_attention.append((patch_sum / count).tolist())
    return {"segments": list(SEGMENTS), "attention_share": shares, "patch_attention": patch_attention,
            "patch_present": present, "queries": n_generated}


def _check_indices(idx: torch.Tensor, n: int, name: str) -> None:
    if idx.dim() != 1:
        raise ValueError(f"strategy {name!r} returned indices of shape {tuple(idx.shape)}, expected 1-D")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"strategy {name!r} returned indices outside [0, {n})")
    if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise ValueError(f"strategy {name!r} returned indices that are not unique and ascending (spatial order)")


def check_generation(max_new_tokens, temperature=0.0, top_p=1.0, context: int | None = None) -> None:
    """Generation settings: 1 <= max_new_tokens (<= the context when given), temperature >= 0 (0 = greedy),
    0 < top_p <= 1. A ``ValueError`` names the value and the range."""
    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected an integer >= 1")
    if context is not None and max_new_tokens > context:
        raise ValueError(f"max_new_tokens={max_new_tokens}: more than the model's context of {context} positions")
    if not number(temperature) or temperature < 0:
        raise ValueError(f"temperature={temperature!r}: expected a number >= 0 (0 = greedy)")
    if not number(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r}: expected a number with 0 < top_p <= 1")


def _sampler(temperature: float, top_p: float, seed: int):
    """Greedy argmax, or transformers' temperature / top-p warpers and a seeded multinomial draw."""
    if temperature == 0:
        return lambda logits: int(logits.argmax())
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    gen = torch.Generator().manual_seed(seed)

    def pick(logits):
        scores = warpers(None, logits[None].cpu())
        probs = scores.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=gen))

    return pick


__all__ = ["Engine", "Result", "Prepared", "PrefillState", "summarize_trace", "last_query_attention",
           "record_last_query_attention", "record_cls_attention", "check_generation"]
