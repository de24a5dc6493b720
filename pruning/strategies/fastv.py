"""FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2"), as described by VTC-CLS Sec. 1-2
and VTW Sec. 2.

Rule: at LLM layer K, rank the image tokens by the attention the last prompt token pays them in layer
K-1 (mean over heads) and drop the share R (default 50%), keeping round(M * (1 - R)) of the M image tokens
as the authors' code does (pkunlp-icler/FastV at d1659729b5bf1be225e99ee15783deeea80f63b1,
``src/FastV/llava-hf/transformers/src/transformers/models/llama/modeling_llama.py``, ``LlamaModel.fastv_forward``:
``topk(round(FASTV_image_token_length * (1 - FASTV_r)))``; Python's ``round`` rounds halves to even, so 25
tokens keep 12 and 27 keep 14), or ``keep`` tokens when it is given; layers >= K never see the rest.
Original position ids are kept. (Before issue 25 the default kept M - floor(M * R): 13 of 25.)

Deviation from the original code, stated by VTW: FastV re-selects at every decoding step, which invalidates
the KV cache; here the selection is made once, at prefill, so the cache stays valid (the way FastV is usually
benchmarked with a cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import LLMContext, Strategy, hyper, register, top_indices


@register
@dataclass
class FastV(Strategy):
    name = "fastv"
    stages = ("llm",)
    needs_attention_row = True

    stage: str = "llm"
    layer: int = 2  # K
    ratio: float = hyper(0.5, low=0, high=1, what="a share")  # R: share of image tokens dropped (no ``keep`` given)

    def select_in_llm(self, ctx: LLMContext) -> torch.Tensor:
        if ctx.attention_row is None:
            raise ValueError("fastv needs the attention row of layer K-1")
        m = ctx.image_rows.shape[0]
        scores = ctx.attention_row.mean(0)[ctx.image_rows]  # (M,) mean over heads
        budget = self.budget(m) if self.keep is not None else self.default_budget(m)
        return top_indices(scores, budget)

    def default_budget(self, m: int) -> int:
        """Image tokens kept of ``m`` when no ``keep`` is given: the authors' ``round(M * (1 - R))``."""
        return round(m * (1 - self.ratio))
