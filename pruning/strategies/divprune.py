"""DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", CVPR 2025),
following the authors' code: vbdi/divprune at commit 799e2d950aa01ba7860907f5a6d86061f885dca6,
``LLaVA/llava/model/llava_arch.py``, ``LlavaMetaForCausalLM.DivPrune`` (and ``pairwise_cosine_similarity``), called
from ``prepare_inputs_labels_for_multimodal``; the port in ModelTC/llmc at commit
05eedff08c58ce5a3a4e2e879133bc922dff6ff5, ``llmc/compression/token_reduction/divprune.py``, ``divprune``, is the
same rule.

Rule: greedy max-min (farthest point) selection under the cosine distance ``1 - cos(x_i, x_j)`` of the patches'
features after LLaVA's projector: the first pick is the patch whose nearest other patch is farthest, each next pick
the patch farthest from its nearest already-picked patch, until U are picked; the kept patches in spatial order.

Followed: the features are the image rows of the LLM's input embeddings (the projector's output); the first pick's
score is each patch's distance to its nearest *other* patch (their code takes the second smallest of its column, the
smallest being the patch itself); ties go to the lowest index (``argmax``).

Deviations, each with its reason:
- float32: the distances are computed in float32 (their run is float16 on a GPU), so near-ties may break otherwise.
- a picked patch is never picked again: their ``argmax`` runs over every patch, and when every unpicked patch is an
  exact duplicate of a picked one (all scores ~0, a picked patch's self-distance being ~0 up to rounding) it can
  return a patch already picked, leaving fewer than U distinct tokens; here picked patches are masked out.
- the budget: ``keep`` gives U; their run script gives a share (``SUBSET_RATIO=0.098``, ``round(0.098 * 576)`` = 56
  tokens for LLaVA-1.5). ``keep`` unset keeps every patch.
- ``positions`` "rearrange" (default): contiguous position ids, as their LLaVA code gives the kept tokens (it drops
  the position ids, so the model counts 0..L-1).
- the projector runs once on all N patches (the engine feeds the kept rows of its output, as their code indexes
  its ``new_input_embeds``), and the TFLOPs estimate counts it on N rows; the distance matrix is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Selection, Strategy, VisionContext, register


def cosine_distance(features: torch.Tensor) -> torch.Tensor:
    """(N, N) ``1 - cos(x_i, x_j)`` of ``features`` (N, D), in float32."""
    x = F.normalize(features.float(), dim=-1)
    return 1.0 - x @ x.T


def max_min_select(distance: torch.Tensor, k: int) -> torch.Tensor:
    """DivPrune's greedy max-min selection on a distance matrix (N, N): ``k`` indices in the order picked."""
    n = distance.shape[0]
    k = min(k, n)
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    eye = torch.eye(n, dtype=torch.bool, device=distance.device)
    nearest_other = distance.masked_fill(eye, torch.inf).min(0).values if n > 1 else distance.new_zeros(1)
    picks = [int(nearest_other.argmax())]
    to_picked = distance[picks[0]].clone()  # each patch's distance to its nearest picked patch
    free = torch.ones(n, dtype=torch.bool, device=distance.device)
    free[picks[0]] = False
    for _ in range(k - 1):
        j = int(to_picked.masked_fill(~free, -torch.inf).argmax())
        picks.append(j)
        free[j] = False
        to_picked = torch.minimum(to_picked, distance[j])
    return torch.tensor(picks, dtype=torch.long)


@register
@dataclass
class DivPrune(Strategy):
    name = "divprune"
    needs_projected = True

    positions: str = "rearrange"  # contiguous ids, as the authors' LLaVA code

    def select_before_llm(self, ctx: VisionContext) -> Selection:
        n = ctx.n_patches
        budget = self.budget(n)
        if budget >= n:
            return Selection(torch.arange(n))
        if ctx.projected is None:
            raise ValueError("divprune needs the projector's output of every patch (the engine's)")
        return Selection(max_min_select(cosine_distance(ctx.projected), budget).sort().values)
