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
- Scores: the ViT has no [CLS], and its attention is windowed (full in ``fullatt_block_indexes`` only). In place of
  the [CLS] query's attention row, ``cls_attention`` holds a named substitute, **mean attention received** (the
  rule VisionZip's code uses for SigLIP, which has no [CLS] either): per ViT block and head, the attention each patch
  receives summed over the queries that see it (its window, or every patch in a full-attention block), divided by
  the patch count (so patches in windows of different sizes compare), summed over the 2x2 patches of each merged
  token, in row-major order of the merged grid. It is computed from each block's own q/k projections and rotary
  embedding by forward hooks (removed on exit), like LLaVA's [CLS] rows. Strategies that read it run and their
  result's notes name the substitute (``SubstituteScores``); strategies that need a [CLS] *feature* (topk-sim) or
  per-patch keys still refuse or fall back as docs/strategies.md says.
"""

from __future__ import annotations

import torch

import contextlib
import sys

from .base import Adapter, Prepared, SubstituteScores, forward_hooks

SCORE_NOTE = ("scores are the mean attention each merged token's patches receive in the ViT (a substitute: "
              "Qwen2.5-VL's vision tower has no [CLS])")


@contextlib.contextmanager
def record_attention_received(blocks, store: list):
    """Forward hooks on each ViT block's attention: per block, a callable appended to ``store`` that gives (H, T),
    the attention received per patch (window order), recomputing q and k from the block's ``qkv`` and its rotary
    embedding (the stock ``apply_rotary_pos_emb_vision``) over each window of ``cu_seqlens``. The hooks keep the
    block's input only; the scores are computed when called. Removed on exit."""

    def hook(module, args, kwargs, output):
        x = (args[0] if args else kwargs["hidden_states"]).detach()  # (T, D), window order
        cos, sin = kwargs["position_embeddings"]
        bounds = kwargs["cu_seqlens"].tolist()

        def received():
            t = x.shape[0]
            q, k, _ = module.qkv(x).reshape(t, 3, module.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
            q, k = sys.modules[type(module).__module__].apply_rotary_pos_emb_vision(q, k, cos, sin)
            out = torch.zeros(module.num_heads, t, device=x.device)
            for s0, s1 in zip(bounds[:-1], bounds[1:]):
                qs, ks = q[s0:s1].transpose(0, 1).float(), k[s0:s1].transpose(0, 1).float()  # (H, w, hd)
                probs = ((qs @ ks.transpose(1, 2)) * module.scaling).softmax(-1)  # (H, w, w)
                out[:, s0:s1] = probs.sum(1) / t
            return out
        store.append(received)

    with forward_hooks([(block.attn, hook, True) for block in blocks]):
        yield store


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

    def image_cost(self, prepared: Prepared):
        """This image's ViT: its T x H x W patches (the temporal patch folds the two frames into the channels), its
        real attention windows (``get_vision_window_index``, the stock tower's own; smaller at the grid's edges)
        in every block but ``fullatt_block_indexes``, the gated MLP, and the PatchMerger (Qwen's projector, inside
        the tower) on every merged token."""
        import dataclasses

        from transformers.vision_utils import get_vision_window_index

        from .. import cost

        vc = self.model.config.vision_config
        grid = prepared.vision_inputs["image_grid_thw"]
        n = int(grid[0].prod())
        _, bounds = get_vision_window_index(grid.cpu(), spatial_merge_size=self.merge, window_size=vc.window_size,
                                            patch_size=vc.patch_size)
        windows = tuple(int(b - a) for a, b in zip(bounds[:-1], bounds[1:]) if b > a)  # patches per window
        shape = dataclasses.replace(
            self.vision_shape(), n_tokens=n, cls_token=False, gated_mlp=True, windows=windows,
            window=(vc.window_size // vc.patch_size) ** 2, full_attention_layers=tuple(vc.fullatt_block_indexes))
        return cost.ImageCost(shape, projector_dims=self.projector_dims(self.visual.merger),
                              projector_rows=n // self.merge ** 2)

    def stock_vision_forward(self, prepared: Prepared):
        return self.visual(prepared.pixel_values, grid_thw=prepared.vision_inputs["image_grid_thw"])

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

    def token_layout(self, prepared: Prepared) -> dict:
        """One row-major grid of merged tokens over the resized picture (``image_grid_thw`` patches of
        ``patch_size`` px)."""
        from ..layout import check_layout, grid_layout

        _, gh, gw = (int(x) for x in prepared.vision_inputs["image_grid_thw"][0])
        ps = self.model.config.vision_config.patch_size
        return check_layout(grid_layout(prepared.rows, prepared.cols, gh * ps, gw * ps, self.family),
                            prepared.n_image, self.family)

    # ---------------------------------------------------------------- vision (project: the identity, the
    # PatchMerger, Qwen's projector, already ran inside the tower)
    @torch.no_grad()
    def vision_pass(self, prepared: Prepared, seed: int = 0, strategy=None) -> VisionContext:
        """The stock vision tower once: the merged tokens (N, D) in row-major order of the (rows x cols) grid."""
        g = self.geometry
        if strategy is not None and strategy.vit_prune_layers(g.vision_layers, g.feature_layer_index):
            raise ValueError(f"strategy {strategy.name!r} prunes inside the ViT by [CLS] attention: Qwen2.5-VL's "
                             "vision tower has no [CLS] (and windowed attention)")
        from transformers.vision_utils import get_vision_window_index

        grid = prepared.vision_inputs["image_grid_thw"]
        received: list = []
        with record_attention_received(self.visual.blocks, received):
            out = self.visual(prepared.pixel_values, grid_thw=grid)
        merged = out.pooler_output  # (N, D) after the PatchMerger, row-major
        vc = self.model.config.vision_config
        window_index, _ = get_vision_window_index(grid, spatial_merge_size=self.merge, window_size=vc.window_size,
                                                  patch_size=vc.patch_size)  # the order the blocks saw
        unit = self.merge ** 2  # patches per merged token, consecutive in window order

        def scores():  # on first read of cls_attention
            per_block = [block() for block in received]
            s = torch.stack([r.view(r.shape[0], -1, unit).sum(-1) for r in per_block])  # (L_v, H, N) window order
            return s[:, :, torch.argsort(window_index.to(s.device))]  # row-major, as ``merged``

        return SubstituteScores(
            patch_features=merged, cls_attention=None, cls_feature=None, feature_layer=g.feature_layer_index,
            rows=prepared.rows, cols=prepared.cols, generator=torch.Generator().manual_seed(seed),
            score_note=SCORE_NOTE, score_fn=scores,
        )
