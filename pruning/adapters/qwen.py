"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): dynamic resolution, a 2x2 PatchMerger, M-RoPE, windowed ViT.

- Tokens: the processor resizes each image to multiples of patch x merge (``smart_resize``), so the token grid is
  per image: ``image_grid_thw`` = (1, H, W) patches, and the LLM gets (H/2) x (W/2) tokens, one per 2x2 block of
  patches merged by the PatchMerger. ``Prepared.rows``/``cols`` hold that grid.
- Pruning happens **after the PatchMerger**: a "patch" for the strategies is one merged token, the unit that
  becomes one LLM row. The merger is Qwen's projector, and it runs inside the stock vision tower's forward (its
  output is the tower's ``pooler_output``, restored to row-major order from the window order), so the vision pass
  hands the strategies the merged features already in the LLM's space and ``project`` is the identity. A
  strategy that merges features (pooling, k-means, ToMe, EViT) therefore averages LLM-space rows, where on LLaVA it
  averages the vision features before the MLP projector (a deviation to name, not hidden).
- Positions: M-RoPE. ``get_rope_index`` (stock) gives each row 3 ids (temporal, height, width): text rows t = h = w
  counting on, image rows (start, start + row, start + col), and the text after the image continues from
  ``start + max(rows, cols)``. ``positions="keep"`` keeps every kept row's 3 ids (the 2-D layout survives
  pruning); ``"rearrange"`` numbers the kept rows 0..S-1 with t = h = w, as 1-D RoPE would (the 2-D layout is
  lost: the "contiguous" of LLaVA's rule, on the one index every row then shares). The next token's position is the
  prompt's largest id + 1, as transformers' ``rope_deltas`` give it.
- Scores: the ViT has no [CLS], and its attention is windowed (full in ``fullatt_block_indexes`` only). Strategies
  that need [CLS] attention or a [CLS] feature refuse (``VisionContext.cls_scores`` says why); no substitute score
  is computed yet.
"""

from __future__ import annotations

import torch

from ..strategies import VisionContext
from .base import Adapter, Prepared


class Qwen25VLAdapter(Adapter):
    family = "qwen2_5_vl"
    position_dims = 3

    def __init__(self, lm):
        qwen = lm.model.model
        super().__init__(lm, qwen.language_model, lm.model.lm_head, lm.model.config.image_token_id,
                         lm.model.config.text_config)
        self.visual = qwen.visual
        self.merge = self.visual.spatial_merge_size
        self.vision_dtype = self.visual.patch_embed.proj.weight.dtype

    def rotary(self, h: torch.Tensor, positions: torch.Tensor):
        return self.rotary_emb(h, positions[:, None, :])  # (3, batch 1, S)

    def vision_shape(self):
        """Qwen's ViT for FLOPs estimates: width, MLP, depth, patch (temporal frames folded into the channels).
        ``n_tokens`` is nominal (the grid is per image) and windowed attention is counted as full: approximate."""
        from .. import cost

        vc = self.model.config.vision_config
        return cost.VisionShape(hidden=vc.hidden_size, intermediate=vc.intermediate_size, layers=vc.depth,
                                patch_size=vc.patch_size, channels=vc.in_channels * vc.temporal_patch_size,
                                n_tokens=1, projector_out=vc.out_hidden_size)

    # ---------------------------------------------------------------- inputs
    def image_tokens(self, inputs) -> tuple[int, int, int]:
        t, h, w = (int(x) for x in inputs["image_grid_thw"][0])
        rows, cols = h // self.merge, w // self.merge
        return t * rows * cols, rows, cols

    def finish_prepare(self, prepared: Prepared, inputs) -> None:
        """The stock ``get_rope_index``'s M-RoPE ids of the full prompt, and ``image_grid_thw`` for the vision pass."""
        grid = inputs["image_grid_thw"].to(self.device)
        ids = prepared.input_ids[None]
        kinds = inputs["mm_token_type_ids"].to(self.device)
        position_ids, _ = self.model.model.get_rope_index(ids, mm_token_type_ids=kinds, image_grid_thw=grid)
        prepared.position_ids = position_ids[:, 0]  # (3, S)
        prepared.vision_inputs = {"image_grid_thw": grid}

    # ---------------------------------------------------------------- vision
    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The identity: the PatchMerger (Qwen's projector) already ran inside the vision tower."""
        return features.to(self.device)

    @torch.no_grad()
    def vision_pass(self, prepared: Prepared, seed: int = 0, strategy=None) -> VisionContext:
        """The stock vision tower once: the merged tokens (N, D) in row-major order of the (rows x cols) grid."""
        g = self.geometry
        if strategy is not None and strategy.vit_prune_layers(g.vision_layers, g.feature_layer_index):
            raise ValueError(f"strategy {strategy.name!r} prunes inside the ViT by [CLS] attention: Qwen2.5-VL's "
                             "vision tower has no [CLS] (and windowed attention)")
        out = self.visual(prepared.pixel_values, grid_thw=prepared.vision_inputs["image_grid_thw"])
        merged = out.pooler_output  # (N, D) after the PatchMerger, row-major
        return VisionContext(
            patch_features=merged, cls_attention=None, cls_feature=None, feature_layer=g.feature_layer_index,
            rows=prepared.rows, cols=prepared.cols, generator=torch.Generator().manual_seed(seed),
        )
