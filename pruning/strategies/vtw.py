"""VTW (Lin et al., "Boosting Multimodal Large Language Models with Visual Tokens Withdrawal").

Sec. 3, eq. 5: every vision token is withdrawn at LLM layer K; layers < K run as usual, layers >= K see
text only. Eq. 6 / Algorithm 1 choose K: the first K >= 5 whose mean KL divergence between the output
distributions with and without withdrawal falls below eta on a small sample (``pruning.calibrate``).

Defaults: K = half the LLM depth when not given (the paper's chatbot setting uses layer 16 of 32),
positions "keep" (Table 6: keep beats rearrange). ``keep`` must be 0 or unset: VTW withdraws all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import LLMContext, Strategy, register


@register
@dataclass
class VTW(Strategy):
    name = "vtw"
    stages = ("llm",)

    stage: str = "llm"
    layer: int | None = None  # K; None: half the LLM depth

    def __post_init__(self):
        if self.keep not in (None, 0):
            raise ValueError(f"vtw withdraws every vision token: keep must be 0 or unset, not {self.keep}")
        super().__post_init__()

    def llm_layer(self, n_layers: int) -> int:
        return self.layer if self.layer is not None else n_layers // 2

    def select_in_llm(self, ctx: LLMContext) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.long)
