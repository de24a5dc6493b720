"""TopK similarity to [CLS] (the "TopK" baseline of IVTP, Sec. 4.3 / Table 5).

Rule: keep the U patches whose features at the LLM's vision feature layer have the highest cosine
similarity with the [CLS] feature of that layer. The paper gives no more detail; the feature layer
(not the last layer) is our choice, because those are the features the LLM receives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from .base import Selection, Strategy, VisionContext, register, top_indices


@register
@dataclass
class TopKSimilarity(Strategy):
    name = "topk-sim"

    def select_before_llm(self, ctx: VisionContext) -> Selection:
        if ctx.cls_feature is None:
            raise ValueError("topk-sim needs a [CLS] token in the vision tower")
        sim = F.cosine_similarity(ctx.patch_features, ctx.cls_feature[None], dim=-1)  # (N,)
        return Selection(top_indices(sim, self.budget(ctx.n_patches)))
