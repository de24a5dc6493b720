"""Random pruning: keep ``keep`` visual tokens drawn uniformly without replacement (seeded).

The "Random" baseline of VTC-CLS (Table 3) and IVTP. Rule: a seeded uniform permutation, first
``keep`` entries, restored to spatial order. Usable before the LLM or at LLM layer ``layer``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import LLMContext, Selection, Strategy, VisionContext, register


def random_subset(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct indices of ``range(n)``, ascending."""
    return torch.randperm(n, generator=generator)[:k].sort().values


@register
@dataclass
class RandomPruning(Strategy):
    name = "random"
    stages = ("before", "llm")

    def select_before_llm(self, ctx: VisionContext) -> Selection:
        return Selection(random_subset(ctx.n_patches, self.budget(ctx.n_patches), ctx.generator))

    def select_in_llm(self, ctx: LLMContext) -> torch.Tensor:
        m = ctx.image_rows.shape[0]
        return random_subset(m, self.budget(m), ctx.vision.generator)
