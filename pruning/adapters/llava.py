"""LLaVA-1.5 (``LlavaForConditionalGeneration``): a CLIP vision tower with [CLS], a fixed patch grid, an MLP projector.

Vision pass: the vision tower once, patch features at ``vision_feature_layer`` ([CLS] dropped, the "default" select
strategy), and the [CLS] query's attention row at every ViT layer from forward hooks on q_proj / k_proj that
detach themselves (no eager attention needed). A strategy that prunes inside the ViT (IVTP) gets a layer-by-layer
pass over the stock ``CLIPEncoderLayer``s instead. Position ids: one row, 0..S-1.
"""

from __future__ import annotations

import contextlib

import torch

from ..strategies import VisionContext, ViTContext
from .base import Adapter, Prepared, check_indices, forward_hooks, query_key_hooks


@contextlib.contextmanager
def record_cls_attention(vision_layers, store: list, keys_store: dict | None = None, query: int = 0):
    """Hooks on each ViT layer's q_proj / k_proj that compute the [CLS] query's attention row
    (H, T) from the projections the layer computes anyway; removed on exit. ``keys_store[i]`` receives
    layer i's keys (T, D) for the layers it lists. ``query``: the token whose row is computed (0: [CLS]; any other
    token's row the same way, e.g. a patch the app probes)."""
    def on_pair(i, attn, queries, keys):
        keys = keys[0]  # (T, D)
        if keys_store is not None and i in keys_store:
            keys_store[i] = keys.detach()
        heads = attn.num_heads
        q = queries[0, query].view(heads, -1).float()  # (H, hd) the [CLS] query (or token ``query``'s)
        k = keys.view(keys.shape[0], heads, -1).float()  # (T, H, hd)
        scores = torch.einsum("hd,thd->ht", q, k) * attn.scale
        store.append(scores.softmax(-1).detach())  # (H, T)

    with query_key_hooks([layer.self_attn for layer in vision_layers], on_pair):
        yield store


class LlavaAdapter(Adapter):
    family = "llava"

    def __init__(self, lm):
        llava = lm.model.model
        super().__init__(lm, llava.language_model, lm.model.lm_head, lm.model.config.image_token_id,
                         lm.model.config.text_config)
        self.vision_tower = llava.vision_tower
        self.projector = llava.multi_modal_projector
        # CLIPVisionModel holds its encoder directly in transformers 5.x (older releases: .vision_model)
        tower = getattr(self.vision_tower, "vision_model", self.vision_tower)
        if not hasattr(tower, "encoder"):
            raise ValueError(f"vision tower {type(self.vision_tower).__name__} has no encoder layers")
        self.tower = tower
        self.vision_layers = tower.encoder.layers
        self.vision_dtype = tower.embeddings.patch_embedding.weight.dtype

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.projector(features.to(self.device))

    def stock_vision_forward(self, prepared: Prepared):
        return self.vision_tower(prepared.pixel_values, output_hidden_states=True, return_dict=True)

    @torch.no_grad()
    def vision_pass(self, prepared: Prepared, seed: int = 0, strategy=None) -> VisionContext:
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

    def _vision_pass_pruned(self, prepared: Prepared, seed: int, strategy) -> VisionContext:
        """The ViT layer by layer; after each of the strategy's pruning layers, ``select_in_vit`` picks
        the patch tokens that go on ([CLS] always stays). Attention maps come from the q/k projections
        the layers compute anyway (forward hooks, removed on exit)."""
        g = self.geometry
        if not g.has_cls:
            raise ValueError(f"strategy {strategy.name!r} prunes by [CLS] attention: the vision tower has no [CLS]")
        tower = self.tower
        prune_at = strategy.vit_prune_layers(g.vision_layers, g.feature_layer_index)
        captured: dict[str, torch.Tensor] = {}
        hooks = [(getattr(layer.self_attn, name), lambda m, a, o, name=name: captured.__setitem__(name, o[0]))
                 for layer in self.vision_layers for name in ("q_proj", "k_proj", "v_proj")]
        with forward_hooks(hooks):
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
                    check_indices(keep, t - 1, strategy.name)
                    sel = torch.cat([torch.zeros(1, dtype=torch.long), 1 + keep.cpu()]).to(h.device)
                    h, token, group = h[:, sel], token[sel], []
            cls_final = tower.post_layernorm(h[:, 0])[0]
        return VisionContext(
            patch_features=feats[1:], cls_attention=None, cls_feature=feats[0], feature_layer=g.feature_layer_index,
            rows=g.rows, cols=g.cols, generator=torch.Generator().manual_seed(seed), cls_final=cls_final,
            patch_ids=(feat_token[1:] - 1).cpu(), vit_tokens=tokens_per_layer,
        )
