"""EViT (Liang et al., "Not All Patches are What You Need"), as a one-shot baseline before the LLM.

Rule: keep the U-1 patches with the highest [CLS] attention (penultimate layer, mean over heads) and
fuse all the others into one token, their features averaged with the attention as weights (EViT eq. 2).
Deviations: EViT reorganises tokens inside several ViT layers and appends the fused token at the end;
here it runs once on the features the LLM receives, and the fused token stands at the position of the
highest-scoring discarded patch (so the kept rows keep a spatial order and one position each).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Selection, Strategy, VisionContext, register, top_indices


@register
@dataclass
class EViT(Strategy):
    name = "evit"

    def select_before_llm(self, ctx: VisionContext) -> Selection:
        n, budget = ctx.n_patches, self.budget(ctx.n_patches)
        scores = ctx.cls_scores(1)  # (N,)
        if budget >= n or budget == 0:
            return Selection(top_indices(scores, budget))
        kept = top_indices(scores, budget - 1)
        rest = torch.ones(n, dtype=torch.bool)
        rest[kept] = False
        rest_idx = rest.nonzero().flatten()
        w = scores[rest_idx] / scores[rest_idx].sum().clamp_min(1e-12)
        fused = (w[:, None] * ctx.patch_features[rest_idx]).sum(0, keepdim=True)  # (1, D)
        anchor = rest_idx[scores[rest_idx].argmax()]
        indices = torch.cat([kept, anchor[None]])
        order = indices.argsort()
        features = torch.cat([ctx.patch_features[kept], fused])[order]
        return Selection(indices[order], features=features)
