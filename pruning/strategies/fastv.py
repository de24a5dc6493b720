"""FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2"), as described by VTC-CLS Sec. 1-2
and VTW Sec. 2.

Rule: at LLM layer K, rank the image tokens by the attention the last prompt token pays them in layer
K-1 (mean over heads) and keep the top R (default 50%, or ``keep``); layers >= K never see the rest.
Original position ids are kept. Deviation from the original code, stated by VTW: FastV re-selects at
every decoding step, which invalidates the KV cache; here the selection is made once, at prefill, so the
cache stays valid (the way FastV is usually benchmarked with a cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import LLMContext, Strategy, register, top_indices


@register
@dataclass
class FastV(Strategy):
    name = "fastv"
    stages = ("llm",)
    needs_attention_row = True

    stage: str = "llm"
    layer: int = 2  # K
    ratio: float = 0.5  # R: share of image tokens dropped when ``keep`` is not given

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.ratio <= 1:
            raise ValueError(f"ratio={self.ratio}: expected 0..1")

    def select_in_llm(self, ctx: LLMContext) -> torch.Tensor:
        if ctx.attention_row is None:
            raise ValueError("fastv needs the attention row of layer K-1")
        m = ctx.image_rows.shape[0]
        scores = ctx.attention_row.mean(0)[ctx.image_rows]  # (M,) mean over heads
        budget = self.budget(m) if self.keep is not None else m - math.floor(m * self.ratio)
        return top_indices(scores, budget)
