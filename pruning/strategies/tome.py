"""ToMe (Bolya et al., "Token Merging: Your ViT But Faster"), the "ToMe" baseline of VTC-CLS Table 3.

Rule (bipartite soft matching, ToMe Sec. 3): split the tokens alternately into sets A and B, link each
A token to its most similar B token (cosine similarity of the feature layer's attention keys, as ToMe
uses keys), merge the r most similar A tokens into their B partners by a size-weighted average, and
repeat until U tokens remain (r = min(tokens - U, |A|) per round). Merged tokens stand at their B
token's position. Deviation: ToMe merges a few tokens in every ViT layer; here, like VTC-CLS's baseline,
it runs once on the visual tokens handed to the LLM. With no keys available the features are matched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Selection, Strategy, VisionContext, register


def bipartite_merge(x: torch.Tensor, keys: torch.Tensor, size: torch.Tensor, index: torch.Tensor, r: int):
    """One round: merge the r best-matched tokens of A (even positions) into B (odd positions)."""
    a, b = torch.arange(0, x.shape[0], 2), torch.arange(1, x.shape[0], 2)
    sim = F.normalize(keys[a], dim=-1) @ F.normalize(keys[b], dim=-1).T  # (|A|, |B|)
    best, partner = sim.max(1)
    merged_a = best.argsort(descending=True)[:r]  # A tokens to merge
    keep_a = torch.ones(len(a), dtype=torch.bool)
    keep_a[merged_a] = False
    x, keys, size = x.clone(), keys.clone(), size.clone()
    for i in merged_a.tolist():  # size-weighted average into the partner
        src, dst = a[i], b[partner[i]]
        total = size[src] + size[dst]
        x[dst] = (x[dst] * size[dst] + x[src] * size[src]) / total
        keys[dst] = (keys[dst] * size[dst] + keys[src] * size[src]) / total
        size[dst] = total
    survivors = torch.cat([a[keep_a], b]).sort().values
    return x[survivors], keys[survivors], size[survivors], index[survivors]


@register
@dataclass
class ToMe(Strategy):
    name = "tome"

    def select_before_llm(self, ctx: VisionContext) -> Selection:
        n, budget = ctx.n_patches, self.budget(ctx.n_patches)
        x = ctx.patch_features.float()
        keys = (ctx.patch_keys if ctx.patch_keys is not None else ctx.patch_features).float()
        size, index = torch.ones(n), torch.arange(n)
        if budget == 0:
            return Selection(index[:0])
        while x.shape[0] > budget:
            r = min(x.shape[0] - budget, (x.shape[0] + 1) // 2)
            x, keys, size, index = bipartite_merge(x, keys, size, index, r)
        return Selection(index, features=x.to(ctx.patch_features.dtype))
