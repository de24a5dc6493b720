"""KMeans (the "KMeans" baseline of VTC-CLS, Sec. 4.3 / Table 3; Lloyd's algorithm).

Rule: cluster the patch features into U clusters; the U centres are the visual tokens. Initialisation:
k-means++ with a seeded generator; ``iterations`` Lloyd steps. Each centre stands at the position of its
nearest patch (distinct patches; ties go to the next nearest), ordered spatially by that patch.

``Selection.groups``: every patch points at the cluster whose centre it went into (the assignment of the
last Lloyd step, whose means are the centres; with 0 iterations, the nearest initial centre); a centre's
anchor patch points at that centre even where the last step put it in another cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Selection, Strategy, VisionContext, hyper, register


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 20,
           return_assign: bool = False):
    """Centres (k, D) of ``x`` (N, D): k-means++ initialisation, then Lloyd iterations. With
    ``return_assign``, also the cluster (N,) each point was averaged into."""
    n = x.shape[0]
    centres = [x[torch.randint(n, (1,), generator=generator)].squeeze(0)]
    d2 = ((x - centres[0]) ** 2).sum(-1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full((n,), 1.0 / n)
        nxt = x[torch.multinomial(probs, 1, generator=generator)].squeeze(0)
        centres.append(nxt)
        d2 = torch.minimum(d2, ((x - nxt) ** 2).sum(-1))
    c = torch.stack(centres)  # (k, D)
    assign = torch.cdist(x, c).argmin(1)
    for _ in range(iterations):
        assign = torch.cdist(x, c).argmin(1)  # (N,)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
    return (c, assign) if return_assign else c


def nearest_distinct(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """For each centre, the nearest patch not already taken by an earlier centre."""
    dist = torch.cdist(c, x)  # (k, N)
    taken = torch.zeros(x.shape[0], dtype=torch.bool)
    out = []
    for row in dist:
        row = row.masked_fill(taken, float("inf"))
        j = int(row.argmin())
        taken[j] = True
        out.append(j)
    return torch.tensor(out)


@register
@dataclass
class KMeansMerge(Strategy):
    name = "kmeans"
    # Lloyd steps (0: the k-means++ centres); the cost grows with it, and 20 converge on LLaVA's grids
    iterations: int = hyper(20, low=0, high=1000)

    def select_before_llm(self, ctx: VisionContext) -> Selection:
        n, k = ctx.n_patches, self.budget(ctx.n_patches)
        if k >= n or k == 0:
            return Selection(torch.arange(n)[:k], groups=torch.where(torch.arange(n) < k, torch.arange(n), -1))
        x = ctx.patch_features.float()
        centres, assign = kmeans(x, k, ctx.generator, self.iterations, return_assign=True)
        anchors = nearest_distinct(x, centres)
        order = anchors.argsort()
        rank = torch.empty(k, dtype=torch.long)
        rank[order] = torch.arange(k)  # cluster -> its position in the spatial order
        groups = rank[assign]
        groups[anchors] = rank
        return Selection(anchors[order], features=centres[order].to(ctx.patch_features.dtype), groups=groups)
