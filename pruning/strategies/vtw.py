"""VTW (Lin et al., "Boosting Multimodal Large Language Models with Visual Tokens Withdrawal").

Sec. 3, eq. 5: every vision token is withdrawn at the K-th LLM layer: ``X_K = D_{1:K-1}(X_1)`` runs layers
1..K-1 (1-based) with them, layers K..N see text only. Eq. 6 / Algorithm 1 choose K: the first K >= 5 whose
mean KL divergence between the output distributions with and without withdrawal falls below eta on a small
sample (``python -m pruning calibrate``).

Numbering: ``layer`` is the engine's, as for every strategy: the 0-based LLM layer before which the tokens
are dropped, so ``layer = K - 1`` for the paper's 1-based K (the paper's K = 16 is ``layer=15``: 0-based
layers 0..14, fifteen layers, see the image; the authors' code drops at 0-based index ``k = 15`` too).

Defaults: ``layer = depth // 2 - 1`` when not given, i.e. the paper's K = depth / 2 (the chatbot setting
withdraws at the 16th of 32 layers; on the embedded 8-layer model ``layer=3``, K = 4); positions "keep"
(Table 6: keep beats rearrange). ``keep`` must be 0 or unset: VTW withdraws all.
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
    layer: int | None = None  # 0-based layer before which all image rows go (the paper's K - 1); None: depth//2 - 1

    def __post_init__(self):
        if self.keep not in (None, 0):
            raise ValueError(f"vtw withdraws every vision token: keep must be 0 or unset, not {self.keep}")
        super().__post_init__()

    def llm_layer(self, n_layers: int) -> int:
        return self.layer if self.layer is not None else max(1, n_layers // 2 - 1)

    @staticmethod
    def paper_k(layer: int) -> int:
        """The paper's 1-based K (eq. 5) for the engine's 0-based ``layer``."""
        return layer + 1

    def select_in_llm(self, ctx: LLMContext) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.long)
