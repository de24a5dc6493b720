"""ToMe (Bolya et al., "Token Merging: Your ViT But Faster"), the "ToMe" baseline of VTC-CLS Table 3.

Rule (bipartite soft matching, ToMe Sec. 3): split the tokens alternately into sets A and B, link each
A token to its most similar B token (cosine similarity of the feature layer's attention keys averaged over
heads, as ToMe's code does: ``k.mean(1)``), merge the r most similar A tokens into their B partners by a
size-weighted average, and repeat until U tokens remain. Merged tokens stand at their B token's position.
Schedule: ToMe merges a constant r per layer; here as many rounds as the ViT has layers up to the feature
layer, r = ceil((N - U) / rounds) each (capped at |A|, with extra rounds if the cap bites), so each round
keeps part of A and similarity decides which tokens survive. (Merging all of A in one round, r = |A|, would
leave exactly the B tokens, the odd positions, whatever the image.) ``head_keys="concat"`` matches the keys of all heads concatenated instead
(what this project did before following the code).

Deviations: ToMe merges a few tokens in every ViT layer, each layer matching on its own fresh keys; here,
like VTC-CLS's baseline, it runs once on the visual tokens handed to the LLM, in as many rounds as needed,
and a merged token's key for the next round is the size-weighted mean of its members' keys. With no keys
available (or no [CLS] attention to tell the number of heads) the features are matched as they are.
``Selection.groups``: every patch points at the token its merges ended in (a surviving token at itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .base import Selection, Strategy, VisionContext, register


def bipartite_merge(x: torch.Tensor, keys: torch.Tensor, size: torch.Tensor, index: torch.Tensor, r: int,
                    return_dest: bool = False):
    """One round: merge the r best-matched tokens of A (even positions) into B (odd positions). With
    ``return_dest``, also the row each input row ends in among the survivors."""
    a, b = torch.arange(0, x.shape[0], 2), torch.arange(1, x.shape[0], 2)
    sim = F.normalize(keys[a], dim=-1) @ F.normalize(keys[b], dim=-1).T  # (|A|, |B|)
    best, partner = sim.max(1)
    merged_a = best.argsort(descending=True)[:r]  # A tokens to merge
    keep_a = torch.ones(len(a), dtype=torch.bool)
    keep_a[merged_a] = False
    x, keys, size = x.clone(), keys.clone(), size.clone()
    target = torch.arange(x.shape[0])
    for i in merged_a.tolist():  # size-weighted average into the partner
        src, dst = a[i], b[partner[i]]
        total = size[src] + size[dst]
        x[dst] = (x[dst] * size[dst] + x[src] * size[src]) / total
        keys[dst] = (keys[dst] * size[dst] + keys[src] * size[src]) / total
        size[dst] = total
        target[src] = dst
    survivors = torch.cat([a[keep_a], b]).sort().values
    out = x[survivors], keys[survivors], size[survivors], index[survivors]
    if not return_dest:
        return out
    row = torch.full((x.shape[0],), -1, dtype=torch.long)
    row[survivors] = torch.arange(len(survivors))
    return (*out, row[target])


@register
@dataclass
class ToMe(Strategy):
    name = "tome"
    choices: ClassVar[dict] = {"head_keys": ("mean", "concat")}  # for the app
    head_keys: str = "mean"  # "mean": keys averaged over heads (ToMe's code); "concat": all heads concatenated

    def __post_init__(self):
        super().__post_init__()
        if self.head_keys not in ("mean", "concat"):
            raise ValueError(f"head_keys={self.head_keys!r}: expected 'mean' or 'concat'")

    def metric(self, ctx: VisionContext) -> torch.Tensor:
        """What tokens are matched on: the feature layer's keys, averaged over heads by default."""
        if ctx.patch_keys is None:
            return ctx.patch_features.float()
        keys = ctx.patch_keys.float()
        if self.head_keys == "mean" and ctx.cls_attention is not None:
            heads = ctx.cls_attention.shape[1]
            keys = keys.view(keys.shape[0], heads, -1).mean(1)  # (N, hd)
        return keys

    def select_before_llm(self, ctx: VisionContext) -> Selection:
        n, budget = ctx.n_patches, self.budget(ctx.n_patches)
        x = ctx.patch_features.float()
        keys = self.metric(ctx)
        size, index = torch.ones(n), torch.arange(n)
        if budget == 0:
            return Selection(index[:0], groups=torch.full((n,), -1))
        groups = torch.arange(n)  # the current row of each patch's token
        rounds = max(1, ctx.feature_layer + 1)  # ToMe's per-layer schedule over the ViT's layers
        per_round = -(-(n - budget) // rounds)
        while x.shape[0] > budget:
            r = min(x.shape[0] - budget, per_round, (x.shape[0] + 1) // 2)
            x, keys, size, index, dest = bipartite_merge(x, keys, size, index, r, return_dest=True)
            groups = dest[groups]
        return Selection(index, features=x.to(ctx.patch_features.dtype), groups=groups)
