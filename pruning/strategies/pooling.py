"""Spatial pooling (the "Spatial pooling" baseline of IVTP, Table 5).

Rule: 2-D average pooling of the patch-feature grid to an h x w grid with h*w close to U (h = w =
round(sqrt(U)) for square grids, capped at the grid), with adaptive windows. Each pooled token stands
at the patch nearest its window's centre (for the overlay and for "keep" position ids).

``Selection.groups``: every patch points at the pooled token of its window. Adaptive windows overlap when the
grid is not a multiple of the pooled size (a patch then feeds two windows); such a patch points at the
window whose centre patch is nearest to it (the first on a tie), and a centre patch always at its own window.
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
        win_r = [nearest_window(r, ctx.rows, h, r_idx) for r in range(ctx.rows)]
        win_c = [nearest_window(c, ctx.cols, w, c_idx) for c in range(ctx.cols)]
        groups = torch.tensor([i * w + j for i in win_r for j in win_c])
        return Selection(indices, features=pooled, groups=groups)


def nearest_window(p: int, length: int, windows: int, centres: list[int]) -> int:
    """Of the adaptive windows (along one axis) that contain ``p``, the one whose centre is nearest."""
    holding = [i for i in range(windows)
               if math.floor(i * length / windows) <= p < math.ceil((i + 1) * length / windows)]
    return min(holding, key=lambda i: (abs(centres[i] - p), i))
