"""The anyres families: LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``: SigLIP without [CLS], a Qwen2
LLM) and LLaVA-NeXT (``LlavaNextForConditionalGeneration``: CLIP with [CLS], dropped by the "default" select
strategy, a Llama/Vicuna LLM). Both cut the image into crops from ``image_grid_pinpoints`` plus a base image and
feed them with image-newline tokens; both use 1-D RoPE.

- Tokens: the stock ``get_image_features`` runs the vision tower on the base image and every crop, projects them,
  and packs them as the model feeds them: the base image's side x side tokens first, then the crops' joint grid,
  unpadded (OneVision: bilinearly shrunk past ``anyres_max_9``) with one image-newline token closing each of its
  rows. Those N rows, in that order, are the "patches" the strategies see: one LLM row each, newline tokens
  included (a strategy may drop one). ``Prepared.rows`` x ``cols`` is 1 x N: the rows are two grids and a newline
  column, not one grid, so grid-based rules (pooling, the app's overlay) see a strip. Budgets are global over the
  N rows, not per crop.
- Pruning happens after the projector (the stock call projects every crop), so ``project`` is the identity and
  feature-merging strategies average LLM-space rows (on LLaVA-1.5 they average vision features before the MLP).
- Positions: 0..S-1, one row, as LLaVA-1.5.
- Scores: SigLIP has no [CLS]. LLaVA-NeXT's CLIP has one per crop, but its rows are not yet carried through the
  packing (unpadding, newlines) to the N rows, so on both families the strategies that need [CLS] attention or a
  [CLS] feature refuse (``VisionContext.cls_scores`` says why): a deviation on NeXT, named in docs/strategies.md.

InternVL (``InternVLForConditionalGeneration``) takes the same road with tiles instead of crops: the processor cuts
the image into up to ``max_patches`` square tiles plus a thumbnail, the stock ``get_image_features`` runs InternViT
on each (its [CLS] dropped, "default"), pixel-shuffles every tile's patch grid by 0.5 (2x2 patches -> one token of 4x
the width) and projects: ``image_seq_length`` rows per tile, tile after tile, between ``<img>`` and ``</img>``.
Those rows are the N prunable rows (1 x N, budgets global over all tiles); the per-tile [CLS] is not carried to
them, so [CLS] strategies refuse here too.
"""

from __future__ import annotations

import torch

from ..strategies import VisionContext
from .base import Adapter, Prepared


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
                                n_tokens=side * side + int(has_cls), projector_out=self.text_config.hidden_size)

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

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The identity: the stock ``get_image_features`` already projected (and packed) the rows."""
        return features.to(self.device)

    @torch.no_grad()
    def vision_pass(self, prepared: Prepared, seed: int = 0, strategy=None) -> VisionContext:
        """The stock ``get_image_features``: the N packed, projected rows in the order the prompt holds them."""
        g = self.geometry
        if strategy is not None and strategy.vit_prune_layers(g.vision_layers, g.feature_layer_index):
            raise ValueError(f"strategy {strategy.name!r} prunes inside the ViT by [CLS] attention: no [CLS] rows "
                             f"are carried to the packed rows of {self.family} (see pruning/adapters/anyres.py)")
        out = self.model.model.get_image_features(pixel_values=prepared.pixel_values, **prepared.vision_inputs)
        rows = torch.cat([r.reshape(-1, r.shape[-1]) for r in out.pooler_output])  # (N, D); InternVL: tile by tile
        return VisionContext(
            patch_features=rows, cls_attention=None, cls_feature=None, feature_layer=g.feature_layer_index,
            rows=prepared.rows, cols=prepared.cols, generator=torch.Generator().manual_seed(seed),
        )
