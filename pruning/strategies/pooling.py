"""Spatial pooling (the "Spatial pooling" baseline of IVTP, Table 5).

Rule: 2-D average pooling of the patch-feature grid to an h x w grid with h*w close to U (h = w =
round(sqrt(U)) for square grids, capped at the grid), with adaptive windows. Each pooled token stands
at the patch nearest its window's centre (for the overlay and for "keep" position ids).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Selection, Strategy, VisionContext, register


def pooled_shape(rows: int, cols: int, budget: int) -> tuple[int, int]:
    scale = math.sqrt(max(budget, 1) / (rows * cols))
    return max(1, min(rows, round(rows * scale))), max(1, min(cols, round(cols * scale)))


@register
@dataclass
class SpatialPooling(Strategy):
    name = "pooling"

    def select_before_llm(self, ctx: VisionContext) -> Selection:
        h, w = pooled_shape(ctx.rows, ctx.cols, self.budget(ctx.n_patches))
        grid = ctx.patch_features.T.reshape(1, -1, ctx.rows, ctx.cols)  # (1, D, R, C)
        pooled = F.adaptive_avg_pool2d(grid, (h, w))[0].reshape(grid.shape[1], -1).T  # (h*w, D)
        # window i spans [floor(i*R/h), ceil((i+1)*R/h)); its centre patch represents it
        r_idx = [(math.floor(i * ctx.rows / h) + math.ceil((i + 1) * ctx.rows / h) - 1) // 2 for i in range(h)]
        c_idx = [(math.floor(j * ctx.cols / w) + math.ceil((j + 1) * ctx.cols / w) - 1) // 2 for j in range(w)]
        indices = torch.tensor([r * ctx.cols + c for r in r_idx for c in c_idx])
        return Selection(indices, features=pooled)
