"""IVTP (Huang et al., "Instruction-guided Visual Token Pruning for Large Vision-Language Models").

Stage 1, in the ViT (Sec. 3.2): layers are grouped in threes; within a group, attention rollout with the
residual (eq. 3: A~ = (A^l + I) A~^(l-1), rows renormalised, heads averaged) gives the [CLS] row; a
patch's score is that row times the norm of its value vector (eq. 4); at the top of each group the
lowest-scored patches are dropped. Stage 2, in the LLM (Sec. 3.3): the same group-wise rule over the first
12 of 32 layers (3/8 of the depth on other models), with a textual pseudo-[CLS] as the scoring query:
the mean of the question tokens whose CLIP-text relevance to the visual [CLS] is >= tau (eq. 5-8), or the
visual [CLS] (through the projector) when none is; the pseudo token sits between the image and the text
for scoring only and never enters the sequence.

Choices the paper leaves open: the per-group budget schedule is geometric (the same keep ratio at every
pruning point, ViT and LLM together, so the last point reaches ``keep``); ViT groups end before the
layer that feeds the LLM (later pruning would not change the LLM's input); the LLM rollout runs over the
image tokens and the pseudo token only (attention renormalised over them); value norms are taken over all
heads; positions keep (original ids). Without a CLIP text encoder the visual-[CLS] rule is used and the
result says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import MAX_LLM_LAYER, LLMContext, Strategy, ViTContext, hyper, register, top_indices


def rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 3 with row renormalisation: A~ = A_1, then A~ = norm(A_l + I) A~ for the following layers."""
    out = attentions[0]
    eye = torch.eye(out.shape[0], dtype=out.dtype, device=out.device)
    for a in attentions[1:]:
        a = a + eye
        out = (a / a.sum(-1, keepdim=True)) @ out
    return out


def group_scores(attentions: list[torch.Tensor], query_row: int, value_norms: torch.Tensor,
                 tokens: slice) -> torch.Tensor:
    """Eq. 4: rollout row of the query times each token's value norm, normalised to sum 1."""
    s = rollout(attentions)[query_row, tokens] * value_norms
    return s / s.sum().clamp_min(1e-12)


@register
@dataclass
class IVTP(Strategy):
    name = "ivtp"
    stages = ("llm",)
    needs_group_attention = True

    stage: str = "llm"
    layer: int | None = None  # unused: IVTP prunes at the end of every group
    tau: float = hyper(0.2, low=0, high=1, what="a relevance threshold")  # for the pseudo-[CLS] (eq. 8)
    # layers per group (a group longer than the model prunes nowhere)
    group: int = hyper(3, low=1, high=MAX_LLM_LAYER, what="a whole number of layers")
    # share of the LLM's layers that prune (12 of 32)
    llm_fraction: float = hyper(0.375, low=0, high=1, above=True, what="a share")
    vit: bool = hyper(True)  # stage 1 on/off (ablation)
    llm: bool = hyper(True)  # stage 2 on/off (ablation)

    def vit_prune_layers(self, n_vit_layers: int, feature_layer: int) -> list[int]:
        if not self.vit or self.keep is None:
            return []
        return [i for i in range(self.group - 1, feature_layer, self.group)]

    def llm_drop_layers(self, n_layers: int) -> list[int]:
        if not self.llm or self.keep is None:
            return []
        depth = max(self.group, round(n_layers * self.llm_fraction))
        return [k for k in range(self.group, min(depth, n_layers - 1) + 1, self.group)]

    def _target(self, n: int, step: int, steps: int) -> int:
        """Tokens left after pruning point ``step`` of ``steps`` (geometric schedule down to ``keep``)."""
        keep = min(self.keep, n)
        return max(keep, round(n * (keep / n) ** ((step + 1) / steps))) if n else 0

    def select_in_vit(self, ctx: ViTContext) -> torch.Tensor:
        scores = group_scores(ctx.attentions, 0, ctx.value_norms[1:], slice(1, None))  # [CLS] row over patches
        target = self._target(ctx.n_patches, ctx.step, ctx.steps)
        return top_indices(scores, min(target, scores.shape[0]))

    def select_in_llm(self, ctx: LLMContext) -> torch.Tensor:
        _, norms = ctx.group[-1]
        m = ctx.image_rows.shape[0]
        scores = group_scores([p for p, _ in ctx.group], m, norms, slice(0, m))  # pseudo-[CLS] row over images
        target = self._target(ctx.vision.rows * ctx.vision.cols, ctx.step, ctx.steps)
        return top_indices(scores, min(target, m))

    def pseudo_rows(self, relevance: torch.Tensor | None, text_rows: torch.Tensor) -> torch.Tensor | None:
        if relevance is None:
            return None
        chosen = text_rows[relevance >= self.tau]
        return chosen if chosen.numel() else None
