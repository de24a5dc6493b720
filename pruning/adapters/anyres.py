"""The anyres families: LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``: SigLIP without [CLS], a Qwen2
LLM) and LLaVA-NeXT (``LlavaNextForConditionalGeneration``: CLIP with [CLS], dropped by the "default" select
strategy, a Llama/Vicuna LLM). Both cut the image into crops from ``image_grid_pinpoints`` plus a base image and
feed them with image-newline tokens; both use 1-D RoPE.

- Tokens: the stock ``get_image_features`` runs the vision tower on the base image and every crop, projects them,
  and packs them as the model feeds them: the base image's side x side tokens first, then the crops' joint grid,
  unpadded (OneVision: bilinearly shrunk past ``anyres_max_9``) with one image-newline token closing each of its
  rows. Those N rows, in that order, are the "patches" the strategies see: one LLM row each, newline tokens
  included (a strategy may drop one). ``Prepared.rows`` x ``cols`` is 1 x N: the rows are two grids and a newline
  column, not one grid, so grid-based rules (pooling) see a strip; ``token_layout`` (``pruning.layout``) says where
  each row lies, for the app's overlay. Budgets are global over the N rows, not per crop.
- Pruning happens after the projector (the stock call projects every crop), so ``project`` is the identity and
  feature-merging strategies average LLM-space rows (on LLaVA-1.5 they average vision features before the MLP).
- Positions: 0..S-1, one row, as LLaVA-1.5.
- Scores: SigLIP has no [CLS]; LLaVA-NeXT's CLIP has one per crop, but no single [CLS] row covers the N rows (each
  crop has its own), so both families get the substitute Qwen2.5-VL has, **mean attention received**: per ViT layer,
  head and crop, the attention each patch receives summed over the crop's queries / the crop's token count,
  computed from the layer's own q/k projections by forward hooks during the stock ``get_image_features`` call (so
  exactly the crops it uses), [CLS] dropped where the select strategy drops it, then packed into the N rows by the
  stock ``pack_image_features`` itself (unpadding, OneVision's bilinear shrink) with a score of 0 for each newline
  token. Strategies that read it run and name it in their notes (``SubstituteScores``); those that need a [CLS]
  feature still refuse. On NeXT this replaces the per-crop [CLS] attention: a deviation, named in
  docs/strategies.md.

InternVL (``InternVLForConditionalGeneration``) takes the same road with tiles instead of crops: the processor cuts
the image into up to ``max_patches`` square tiles plus a thumbnail, the stock ``get_image_features`` runs InternViT
on each (its [CLS] dropped, "default"), pixel-shuffles every tile's patch grid by 0.5 (2x2 patches -> one token of 4x
the width) and projects: ``image_seq_length`` rows per tile, tile after tile, between ``<img>`` and ``</img>``.
Those rows are the N prunable rows (1 x N, budgets global over all tiles). Scores: mean attention received per tile
as above (from each layer's q_norm / k_norm outputs, i.e. after the optional q/k norm), [CLS] dropped, and each head's
scores pixel-shuffled by the stock ``pixel_shuffle`` as the features are, the 4 patches of a token summed.
"""

from __future__ import annotations

import contextlib

import torch

from .base import Adapter, Prepared, SubstituteScores, query_key_hooks

SCORE_NOTE = ("scores are the mean attention each row's patches receive in the ViT, per crop or tile (a substitute: "
              "no [CLS] attention row covers the packed rows of {family})")


@contextlib.contextmanager
def record_attention_received(attentions, store: list):
    """Forward hooks on each ViT attention module's query / key projections (InternVL: its q_norm / k_norm, after
    the optional norm): per layer, a callable appended to ``store`` that gives (B, H, T), the attention each token
    receives, summed over the B crops' own queries and divided by T (each crop's scores of a head sum to 1). The
    hooks keep the queries and keys only; the scores are computed when called. Removed on exit."""
    def names(attn):
        return ("q_norm", "k_norm") if hasattr(attn, "q_norm") else ("q_proj", "k_proj")

    def on_pair(i, attn, queries, keys):
        q, k = queries.detach(), keys.detach()

        def received():
            b, t, _ = k.shape
            heads = attn.num_heads
            qh = q.view(b, t, heads, -1).transpose(1, 2).float()  # (B, H, T, hd)
            kh = k.view(b, t, heads, -1).transpose(1, 2).float()
            probs = ((qh @ kh.transpose(2, 3)) * attn.scale).softmax(-1)  # (B, H, T, T)
            return probs.sum(2) / t  # (B, H, T)
        store.append(received)

    with query_key_hooks(attentions, on_pair, names):
        yield store


class AnyresAdapter(Adapter):
    family = "anyres"

    def __init__(self, lm):
        inner = lm.model.model
        super().__init__(lm, inner.language_model, lm.model.lm_head, lm.model.config.image_token_id,
                         lm.model.config.text_config)
        self.family = lm.model.config.model_type
        self.vision_tower = inner.vision_tower
        self.projector = inner.multi_modal_projector
        self.vision_dtype = next(self.vision_tower.parameters()).dtype

    def vision_shape(self):
        """One crop / tile of the vision tower, for FLOPs estimates; nominal: the crops or tiles an image has are not
        counted (the estimate is per crop)."""
        from .. import cost

        vc, g = self.model.config.vision_config, self.geometry
        side = g.image_size // g.patch_size
        has_cls = vc.model_type != "siglip_vision_model"
        return cost.VisionShape(hidden=vc.hidden_size, intermediate=vc.intermediate_size, layers=vc.num_hidden_layers,
                                patch_size=g.patch_size, channels=getattr(vc, "num_channels", 3),
                                n_tokens=side * side + int(has_cls), projector_out=self.text_config.hidden_size,
                                cls_token=has_cls)

    def image_cost(self, prepared: Prepared):
        """The tower once per crop (anyres: the base image and its crops) or tile (InternVL: the tiles and the
        thumbnail), as many as the processor made for this image, and the projector, which the stock
        ``get_image_features`` runs on every row of every crop before a strategy sees them."""
        from .. import cost

        config = self.model.config
        shape = self.vision_shape()
        side = self.geometry.image_size // self.geometry.patch_size
        if self.family == "internvl":  # pixel_values (tiles, C, H, W); pixel shuffle: side^2 patches -> fewer rows
            crops = int(prepared.pixel_values.shape[0])
            per_crop = round(side * config.downsample_ratio) ** 2
        else:  # pixel_values (1 image, crops, C, H, W); the [CLS] column is dropped before the projector
            crops = int(prepared.pixel_values.shape[1])
            per_crop = side * side + (1 if config.vision_feature_select_strategy == "full" and shape.cls_token else 0)
        return cost.ImageCost(shape, crops=crops, projector_dims=self.projector_dims(self.projector),
                              projector_rows=crops * per_crop)

    def stock_vision_forward(self, prepared: Prepared):
        return self.model.model.get_image_features(pixel_values=prepared.pixel_values, **prepared.vision_inputs)

    def image_tokens(self, inputs) -> tuple[int, int, int]:
        n = int((inputs["input_ids"][0] == self.image_token_id).sum())
        return n, 1, n

    def finish_prepare(self, prepared: Prepared, inputs) -> None:
        super().finish_prepare(prepared, inputs)
        prepared.vision_inputs = {}
        if "image_sizes" in inputs:  # anyres (InternVL's tiles need no sizes: each tile is square)
            prepared.vision_inputs["image_sizes"] = inputs["image_sizes"].to(self.device)
        if "batch_num_images" in inputs:  # OneVision: one image, so the crops are used (NeXT always uses them)
            prepared.vision_inputs["batch_num_images"] = inputs["batch_num_images"]

    def token_layout(self, prepared: Prepared) -> dict:
        """Where each packed row lies (``pruning.layout``): the base image's grid, then the crops' joint grid with
        its newline tokens (anyres), or the tiles' grids then the thumbnail's (InternVL); checked against N."""
        from ..layout import anyres_layout, check_layout, internvl_layout

        config = self.model.config
        if self.family == "internvl":
            layout = internvl_layout(config, self.lm.processor.image_processor, prepared.image_hw,
                                     prepared.pixel_values.shape[0])
        else:
            layout = anyres_layout(config, prepared.vision_inputs["image_sizes"][0].tolist(), self.family)
        return check_layout(layout, prepared.n_image, self.family)

    @torch.no_grad()
    def vision_pass(self, prepared: Prepared, seed: int = 0, strategy=None) -> VisionContext:
        """The stock ``get_image_features``: the N packed, projected rows in the order the prompt holds them."""
        g = self.geometry
        if strategy is not None and strategy.vit_prune_layers(g.vision_layers, g.feature_layer_index):
            raise ValueError(f"strategy {strategy.name!r} prunes inside the ViT by [CLS] attention: no [CLS] rows "
                             f"are carried to the packed rows of {self.family} (see pruning/adapters/anyres.py)")
        received: list = []
        with record_attention_received(self.attentions(), received):
            out = self.model.model.get_image_features(pixel_values=prepared.pixel_values, **prepared.vision_inputs)
        rows = torch.cat([r.reshape(-1, r.shape[-1]) for r in out.pooler_output])  # (N, D); InternVL: tile by tile

        def scores():  # on first read of cls_attention
            packed = torch.stack([self.pack_scores(layer(), prepared) for layer in received])  # (L_v, H, N)
            if packed.shape[-1] != rows.shape[0]:
                raise ValueError(f"{self.family}: {packed.shape[-1]} packed scores for {rows.shape[0]} rows")
            return packed

        return SubstituteScores(
            patch_features=rows, cls_attention=None, cls_feature=None, feature_layer=g.feature_layer_index,
            rows=prepared.rows, cols=prepared.cols, generator=torch.Generator().manual_seed(seed),
            score_note=SCORE_NOTE.format(family=self.family), score_fn=scores,
        )

    def attentions(self) -> list:
        """The vision tower's attention modules, layer by layer."""
        encoder = getattr(self.vision_tower, "vision_model", self.vision_tower).encoder
        layers = encoder.layer if hasattr(encoder, "layer") else encoder.layers  # InternViT: .layer
        return [getattr(layer, "attention", None) or layer.self_attn for layer in layers]

    def pack_scores(self, received: torch.Tensor, prepared: Prepared) -> torch.Tensor:
        """(B, H, T) per-crop scores -> (H, N), laid out as the packed rows: through the stock packing itself."""
        config = self.model.config
        if config.vision_feature_select_strategy == "default":  # the [CLS] column goes, as the features' does
            received = received[:, :, 1:]
        heads = received.shape[1]
        inner = self.model.model
        if self.family == "internvl":
            side = int(received.shape[-1] ** 0.5)
            per_head = []
            for h in range(heads):  # one channel at a time: the shuffle's channel order cannot mix heads
                x = inner.pixel_shuffle(received[:, h].reshape(-1, side, side, 1), scale_factor=config.downsample_ratio)
                per_head.append(x.sum(-1).reshape(-1))  # the patches of one token, summed; tile after tile
            return torch.stack(per_head)
        feats = [received.transpose(1, 2)]  # one image: (B crops, T', H), heads as channels
        sizes = prepared.vision_inputs["image_sizes"]
        newline = torch.zeros(heads, dtype=received.dtype, device=received.device)  # a newline row scores 0
        if self.family == "llava_onevision":
            packed, _ = inner.pack_image_features(feats, sizes, image_newline=newline,
                                                  vision_aspect_ratio=getattr(config, "vision_aspect_ratio",
                                                                              "anyres_max_9"))
        else:
            packed, _ = inner.pack_image_features(feats, sizes, config.vision_feature_select_strategy,
                                                  image_newline=newline)
        return packed[0].transpose(0, 1)  # (H, N)
