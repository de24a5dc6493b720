"""KMeans (the "KMeans" baseline of VTC-CLS, Sec. 4.3 / Table 3; Lloyd's algorithm).

Rule: cluster the patch features into U clusters; the U centres are the visual tokens. Initialisation:
k-means++ with a seeded generator; ``iterations`` Lloyd steps. Each centre stands at the position of its
nearest patch (distinct patches; ties go to the next nearest), ordered spatially by that patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Selection, Strategy, VisionContext, register


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 20) -> torch.Tensor:
    """Centres (k, D) of ``x`` (N, D): k-means++ initialisation, then Lloyd iterations."""
    n = x.shape[0]
    centres = [x[torch.randint(n, (1,), generator=generator)].squeeze(0)]
    d2 = ((x - centres[0]) ** 2).sum(-1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full((n,), 1.0 / n)
        nxt = x[torch.multinomial(probs, 1, generator=generator)].squeeze(0)
        centres.append(nxt)
        d2 = torch.minimum(d2, ((x - nxt) ** 2).sum(-1))
    c = torch.stack(centres)  # (k, D)
    for _ in range(iterations):
        assign = torch.cdist(x, c).argmin(1)  # (N,)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
    return c


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
    iterations: int = 20

    def select_before_llm(self, ctx: VisionContext) -> Selection:
        n, k = ctx.n_patches, self.budget(ctx.n_patches)
        if k >= n or k == 0:
            return Selection(torch.arange(n)[:k])
        x = ctx.patch_features.float()
        centres = kmeans(x, k, ctx.generator, self.iterations)
        anchors = nearest_distinct(x, centres)
        order = anchors.argsort()
        return Selection(anchors[order], features=centres[order].to(ctx.patch_features.dtype))
