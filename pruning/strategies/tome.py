"""ToMe (Bolya et al., "Token Merging: Your ViT But Faster"), the "ToMe" baseline of VTC-CLS Table 3.

Followed: facebookresearch/ToMe at commit af95e4b1befa172dadccd8c81e223b10090f9579, ``tome/merge.py``
(``bipartite_soft_matching``, ``merge_wavg``) and ``tome/patch/timm.py`` (``ToMeAttention``: the metric is the
keys averaged over heads, ``k.mean(1)``).

Rule (bipartite soft matching, ToMe Sec. 3), one round on t tokens: A = the tokens at even places of the current
order, B = the odd ones; each A token is linked to its most similar B token (cosine similarity of the metric);
the r A tokens with the most similar links are merged into their B partners by a size-weighted average
(``merge_wavg``: sum of size * x over sum of sizes, all merges of a round at once), with r capped at
(t - protected) // 2 (no protected token here: the [CLS] token is not among the patches, so t // 2). The
survivors leave the round in ToMe's order, ``cat([unmerged A tokens, B tokens])``: the unmerged A tokens in
descending order of their best similarity (ToMe's ``argsort`` of ``node_max``; it re-sorts them by position only
when a class token is protected), then B in its order. That order is the next round's input, so it decides the
next round's alternating A/B split. ``order="spatial"`` instead re-sorts the survivors into row-major order
after each round, as this project did before issue 25 (then with the cap (t + 1) // 2, which let a round merge
every A token when t is odd; its kept sets agreed with ToMe's at Jaccard 0.24-0.46); the cap is ToMe's in both.
Merged tokens stand at their B token's patch; the tokens enter the LLM in row-major order of those patches.

Schedule: ToMe merges a constant r per layer; here as many rounds as the ViT has layers up to the feature
layer, r = ceil((N - U) / rounds) each (capped at t // 2 as above, with extra rounds if the cap bites), so each
round keeps part of A and similarity decides which tokens survive. ``head_keys="concat"`` matches the keys of
all heads concatenated instead (what this project did before following the code).

Deviations: ToMe merges a few tokens in every ViT layer, each layer matching on its own fresh keys; here,
like VTC-CLS's baseline, it runs once on the visual tokens handed to the LLM, in as many rounds as needed,
and a merged token's key for the next round is the size-weighted mean of its members' keys. No proportional
attention (ToMe's log-size bias) in the LLM. Sorting is stable (ToMe's ``argsort`` is not: exact ties may
order either way there). With no keys available (or no [CLS] attention to tell the number of heads) the
features are matched as they are. ``Selection.groups``: every patch points at the token its merges ended in (a
surviving token at itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Selection, Strategy, VisionContext, hyper, register


def bipartite_merge(x: torch.Tensor, keys: torch.Tensor, size: torch.Tensor, index: torch.Tensor, r: int,
                    return_dest: bool = False, spatial: bool = False):
    """One round of ToMe's ``bipartite_soft_matching`` + ``merge_wavg`` on the rows of ``x`` in their current
    order: merge the r best-matched tokens of A (even places) into B (odd places), r capped at t // 2. Returns the
    survivors' (x, keys, size, index) in ToMe's order, ``cat([unmerged A, B])`` (with ``spatial``: sorted by
    ``index``); with ``return_dest``, also the row each input row ends in among the survivors."""
    t = x.shape[0]
    r = min(r, t // 2)
    a, b = torch.arange(0, t, 2), torch.arange(1, t, 2)
    if r <= 0:
        out = x, keys, size, index
        return (*out, torch.arange(t)) if return_dest else out
    sim = F.normalize(keys[a], dim=-1) @ F.normalize(keys[b], dim=-1).T  # (|A|, |B|)
    best, partner = sim.max(1)
    edge = best.argsort(descending=True, stable=True)
    src, unm = edge[:r], edge[r:]  # A tokens merged / kept, the kept ones in descending similarity
    dst = partner[src]
    w = size[a[src]]
    total = size[b].clone().index_add_(0, dst, w)
    x_b = (x[b] * size[b, None]).index_add_(0, dst, x[a[src]] * w[:, None]) / total[:, None]
    k_b = (keys[b] * size[b, None]).index_add_(0, dst, keys[a[src]] * w[:, None]) / total[:, None]
    rows = torch.cat([a[unm], b])  # the input row each survivor continues
    x, keys, index = torch.cat([x[a[unm]], x_b]), torch.cat([keys[a[unm]], k_b]), index[rows]
    size = torch.cat([size[a[unm]], total])
    dest = torch.empty(t, dtype=torch.long)
    dest[rows] = torch.arange(len(rows))
    dest[a[src]] = len(unm) + dst
    if spatial:
        order = index.argsort()
        x, keys, size, index = x[order], keys[order], size[order], index[order]
        dest = order.argsort()[dest]
    out = x, keys, size, index
    return (*out, dest) if return_dest else out


@register
@dataclass
class ToMe(Strategy):
    name = "tome"
    # "mean": keys averaged over heads (ToMe's code); "concat": all heads concatenated
    head_keys: str = hyper("mean", choices=("mean", "concat"))
    # survivors' order between rounds: "tome" cat([unmerged A, B]); "spatial": row-major
    order: str = hyper("tome", choices=("tome", "spatial"))

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
            r = min(x.shape[0] - budget, per_round)  # bipartite_merge caps it at t // 2, as ToMe
            x, keys, size, index, dest = bipartite_merge(x, keys, size, index, r, return_dest=True,
                                                         spatial=self.order == "spatial")
            groups = dest[groups]
        order = index.argsort()  # the tokens enter the LLM in row-major order of their patches
        return Selection(index[order], features=x[order].to(ctx.patch_features.dtype), groups=order.argsort()[groups])
