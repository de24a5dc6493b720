"""PruMerge+ (Shang et al., "LLaVA-PruMerge: Adaptive Token Reduction"), training-free variant.

Rule (PruMerge Sec. 3.2-3.3 and the "+" extension): score patches by [CLS] attention (penultimate layer,
mean over heads); keep the IQR outliers (score > Q3 + 1.5 IQR); add spatially uniform samples (a regular
stride over the grid, in order of score) until U tokens are kept (only the top-U outliers when there are
more than U); then each kept token absorbs its k nearest pruned tokens by key similarity, averaged with
the [CLS] attention as weights. Choices: k = 32 as in the authors' code (capped by the pruned count);
when the score has no outliers, the uniform samples fill the whole budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Selection, Strategy, VisionContext, register, top_indices


def iqr_outliers(scores: torch.Tensor) -> torch.Tensor:
    q1, q3 = torch.quantile(scores.float(), torch.tensor([0.25, 0.75]))
    return (scores > q3 + 1.5 * (q3 - q1)).nonzero().flatten()


def uniform_samples(rows: int, cols: int, count: int) -> torch.Tensor:
    """About ``count`` patch indices on a regular stride over the grid (row-major)."""
    stride = max(1, math.floor(math.sqrt(rows * cols / max(count, 1))))
    return torch.tensor([r * cols + c for r in range(stride // 2, rows, stride) for c in range(stride // 2, cols, stride)])


@register
@dataclass
class PruMergePlus(Strategy):
    name = "prumerge+"
    neighbours: int = 32  # k: pruned tokens merged into each kept token

    def select_before_llm(self, ctx: VisionContext) -> Selection:
        n, budget = ctx.n_patches, self.budget(ctx.n_patches)
        scores = ctx.cls_scores(1)
        outliers = iqr_outliers(scores)
        if len(outliers) >= budget:
            kept = top_indices(scores[outliers], budget)
            kept = outliers[kept].sort().values
        else:
            extra = [int(i) for i in uniform_samples(ctx.rows, ctx.cols, budget - len(outliers))
                     if int(i) not in set(outliers.tolist())]
            extra = sorted(extra, key=lambda i: -float(scores[i]))[:budget - len(outliers)]
            kept = torch.cat([outliers, torch.tensor(extra, dtype=torch.long)]).unique()
            if len(kept) < budget:  # fill from the score ranking
                rest = torch.ones(n, dtype=torch.bool)
                rest[kept] = False
                more = rest.nonzero().flatten()
                kept = torch.cat([kept, more[scores[more].topk(budget - len(kept)).indices]]).sort().values
        if len(kept) in (0, n):
            return Selection(kept)
        keys = F.normalize((ctx.patch_keys if ctx.patch_keys is not None else ctx.patch_features).float(), dim=-1)
        pruned = torch.ones(n, dtype=torch.bool)
        pruned[kept] = False
        pruned_idx = pruned.nonzero().flatten()
        sim = keys[kept] @ keys[pruned_idx].T  # (U, P)
        k = min(self.neighbours, len(pruned_idx))
        near = sim.topk(k, dim=1).indices  # (U, k)
        feats = ctx.patch_features.float()
        merged = []
        for u, idx in enumerate(kept.tolist()):
            group = torch.cat([torch.tensor([idx]), pruned_idx[near[u]]])
            w = scores[group] / scores[group].sum().clamp_min(1e-12)
            merged.append((w[:, None] * feats[group]).sum(0))
        return Selection(kept, features=torch.stack(merged).to(ctx.patch_features.dtype))
