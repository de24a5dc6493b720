"""EViT (Liang et al., "Not All Patches are What You Need"), as a one-shot baseline before the LLM.

Rule: keep the U-1 patches with the highest [CLS] attention (penultimate layer, mean over heads, as EViT's
attentiveness) and fuse all the others, the inattentive ones, into one token: EViT eq. 2,
``x_fused = sum_j a_j x_j`` with the raw attention a_j as weights (EViT's code:
``sum(non_topk * non_topk_attn)``), so the weights sum to the inattentive tokens' share of the attention,
not to 1. ``fuse="mean"`` renormalises them to sum 1 (an attention-weighted mean, what this project did
before following the paper).

Deviations: EViT reorganises tokens inside several ViT layers (after a layer's attention, before its MLP,
with that layer's attention) and appends the fused token at the end; here it runs once on the features the
LLM receives, with the feature layer's attention, and the fused token stands at the position of the
highest-scoring inattentive patch (so the kept rows keep a spatial order and one position each).
``Selection.groups``: every kept patch points at itself, every inattentive patch at the fused token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Selection, Strategy, VisionContext, hyper, register, top_indices


@register
@dataclass
class EViT(Strategy):
    name = "evit"
    # "raw": EViT eq. 2, raw attention weights; "mean": weights renormalised to sum 1
    fuse: str = hyper("raw", choices=("raw", "mean"))

    def select_before_llm(self, ctx: VisionContext) -> Selection:
        n, budget = ctx.n_patches, self.budget(ctx.n_patches)
        scores = ctx.cls_scores(1)  # (N,)
        if budget >= n or budget == 0:
            kept = top_indices(scores, budget)
            groups = torch.full((n,), -1, dtype=torch.long)
            groups[kept] = torch.arange(len(kept))
            return Selection(kept, groups=groups)
        kept = top_indices(scores, budget - 1)
        rest = torch.ones(n, dtype=torch.bool)
        rest[kept] = False
        rest_idx = rest.nonzero().flatten()
        w = scores[rest_idx].float()
        if self.fuse == "mean":
            w = w / w.sum().clamp_min(1e-12)
        fused = (w[:, None] * ctx.patch_features[rest_idx].float()).sum(0, keepdim=True)  # (1, D)
        anchor = rest_idx[scores[rest_idx].argmax()]
        indices = torch.cat([kept, anchor[None]])
        order = indices.argsort()
        features = torch.cat([ctx.patch_features[kept], fused.to(ctx.patch_features.dtype)])[order]
        indices = indices[order]
        groups = torch.empty(n, dtype=torch.long)
        groups[rest_idx] = int((indices == anchor).nonzero())
        groups[indices] = torch.arange(len(indices))
        return Selection(indices, features=features, groups=groups)
