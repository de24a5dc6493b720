"""VisPruner (Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in
VLMs", ICCV 2025).

Followed: Theia-4869/VisPruner at commit aefa01adc7c7ce6334e880c88225e90cede760d1, ``llava/model/llava_arch.py``
(``LlavaMetaForCausalLM.encode_images``: the split, the important tokens, the iterative duplicate removal;
``prepare_inputs_labels_for_multimodal``: the kept tokens in row-major order), ``llava/model/multimodal_encoder/
clip_encoder.py`` (``feature_select``: the [CLS] row of the feature layer's attention over the patches) and
``llava/eval/model_vqa_loader.py`` (``--important_ratio`` 0.5 by default).

Rule: keep the important tokens (the top int(U * r) patches by the [CLS] query's attention at the feature layer,
mean over heads), then from the rest remove near-duplicates until U tokens are left: each round splits the
remaining tokens alternately into A and B, and drops the (at most 8) A tokens whose best cosine match in B
(pre-projector features of the feature layer) is highest.

In detail, as the authors' code does it:
1. Important: the patches sorted by attention, descending; the first T_imp = int(U * r) are kept
   (``important_ratio`` r, 0.5 by default; the authors' README also runs 64 tokens at r = 0.75, 48 + 16).
2. Diverse, T_div = U - T_imp: the remaining patches in that same descending-attention order; while more than
   T_div remain, a round takes r' = min(8, R - T_div) (``per_round`` = 8), A = the tokens at even places of
   the current order, B = the odd ones, scores each A token by its highest cosine similarity to any B token,
   drops the r' highest-scored A tokens, and continues with [the other A tokens in descending-score order,
   then B in its order] (the order decides the next round's A/B split, so it is kept exactly).
3. The kept patches enter the LLM in row-major order with contiguous position ids (``positions="rearrange"``,
   default, as the authors' mask-select; ``keep`` gives each its original id).

Where this differs from the authors' code, and why:
- Their loop breaks for many budgets: it indexes A with the size of B (``R // 2``), so it raises when a round
  starts with an odd number R of remaining tokens (whenever N - T_imp is odd: on 576 patches an odd T_imp, e.g.
  63 or 62 tokens at r = 0.5), and it drops 8 tokens from A even when A holds fewer than 8 + what must stay,
  so it raises (or, at 14 tokens and r = 0.75, returns 13) when fewer than 8 diverse tokens are kept and a round
  reaches R < 16. Here A is ceil(R/2) tokens when R is odd, and a round drops r' = min(8, R - T_div, |A|):
  wherever their code runs it makes the same rounds in the same order (the same tokens as their loop run in
  float64 with stable sorts, in every such case of a scratch run of their code on random 576-patch inputs, not
  kept in this repository; in float32 their loop differed in some, by rounding near-ties), and it returns exactly U tokens at every budget.
- Sorting: stable sorts (``argsort(stable=True)``), so equal scores keep their order; the authors' unstable
  ``argsort`` may order ties either way on a GPU (only exact ties differ).
- Arithmetic: the cosine similarities are computed once, in float64, for every pair of the remaining tokens, and
  each round reads its A x B block (the authors compute each round's block in the model's dtype, fp16 on a GPU):
  the same values up to rounding, at a fraction of the cost, and the rounds' near-ties do not hang on rounding.
- Layer: the model's feature layer (``vision_feature_layer``, -2 for LLaVA-1.5, as their ``select_layer``).
- ``keep`` unset or >= the grid keeps every patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import MAX_TOKENS, Selection, Strategy, VisionContext, hyper, register


def remove_duplicates(features: torch.Tensor, order: torch.Tensor, keep: int, per_round: int = 8) -> torch.Tensor:
    """Step 2: from the tokens ``order`` (rows of ``features``, in their current order), drop near-duplicates
    round by round until ``keep`` remain; returns the survivors in the order the rounds leave them."""
    unit = F.normalize(features[order].double(), dim=-1)
    sim = unit @ unit.T  # every pair once, float64; rounds read their A x B block
    place = torch.full((int(order.max()) + 1 if order.numel() else 0,), -1, dtype=torch.long)
    place[order] = torch.arange(order.numel())
    order = order.clone()
    while order.numel() > keep and keep > 0:
        a, b = order[0::2], order[1::2]  # |A| = ceil(R/2), |B| = floor(R/2) >= 1 since R > keep >= 1
        r = min(per_round, order.numel() - keep, a.numel())
        best = sim[place[a]][:, place[b]].max(1).values  # (|A|,) each A token's closest B token
        ranked = best.argsort(descending=True, stable=True)
        order = torch.cat([a[ranked[r:]], b])
    return order if keep > 0 else order[:0]


@register
@dataclass
class VisPruner(Strategy):
    name = "vispruner"

    positions: str = "rearrange"  # contiguous ids, what the authors' mask-select gives
    # r: int(U * r) important tokens, the rest diverse (authors' default)
    important_ratio: float = hyper(0.5, low=0, high=1, what="a share")
    # duplicates removed per round at most (the authors' constant 8; more than the grid is one round)
    per_round: int = hyper(8, low=1, high=MAX_TOKENS)

    def split(self, budget: int) -> tuple[int, int]:
        """(important, diverse) token counts, as the authors' ``int(T * r)`` and ``T - int(T * r)``."""
        important = int(budget * self.important_ratio)
        return important, budget - important

    def select_before_llm(self, ctx: VisionContext) -> Selection:
        if ctx.cls_attention is None:
            raise ValueError("this vision tower has no [CLS] token: vispruner cannot run")
        n, budget = ctx.n_patches, self.budget(ctx.n_patches)
        if budget >= n:
            return Selection(torch.arange(n))
        n_important, n_diverse = self.split(budget)
        scores = ctx.cls_attention[ctx.feature_layer].float().mean(0)  # (N,) mean over heads
        ranked = scores.argsort(descending=True, stable=True)
        important, residual = ranked[:n_important], ranked[n_important:]
        diverse = remove_duplicates(ctx.patch_features, residual, n_diverse, self.per_round)
        return Selection(torch.cat([important, diverse]).sort().values)
