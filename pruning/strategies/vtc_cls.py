"""VTC-CLS (Wang et al., "[CLS] Token Tells Everything Needed for Training-free Efficient MLLMs").

Sec. 3.1 eq. 1-2: the [CLS] query's attention over the patches, averaged over heads; Sec. 3.3 eq. 9: an
ensemble E (avg by default, max, min) of that score over the K layers ending at the penultimate one
(the layer whose output LLaVA feeds the LLM). Rule: keep the top-U patches by the ensembled score, in
spatial order. Stage "before" (default) prunes before the LLM; stage "llm" drops the same patches'
rows inside the LLM before layer ``layer`` (Table 6 follows FastV and prunes after the 2nd layer).

Position ids: the default depends on the stage. Before the LLM it is "rearrange" (contiguous ids, what the
authors' code does when it feeds the kept tokens); at ``stage="llm"`` it is "keep" (original ids), since
Table 6 follows FastV there and FastV's code keeps the kept tokens' original position ids. An explicit
``positions`` overrides either.

Choice the paper leaves open: the score is the softmax row over all keys restricted to the patches (the
[CLS]-to-[CLS] weight is dropped, not renormalised; renormalising would not change the ranking).

Against the authors' code (THU-MIG/VTC-CLS at e41ac9b4c0db235b3f68a84dbd6bd35f24156a7c,
``llava/model/multimodal_encoder/clip_encoder.py``, ``cls_token_only``): they *sum* the per-layer scores over
``attentions[start_layer:-1]`` where E = avg here averages them (the same ranking); K = 3 is the paper's, while
their eval loaders' ``--layer`` defaults to 16, i.e. 7 layers (16-22) of LLaVA-1.5's 24-layer CLIP
(``k_layers=7`` reproduces it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import (MAX_VIT_LAYERS, POSITIONS, LLMContext, Selection, Strategy, VisionContext, hyper, register,
                   top_indices)


@register
@dataclass
class VTCCLS(Strategy):
    name = "vtc-cls"
    stages = ("before", "llm")

    # None: "rearrange" before the LLM (authors' code), "keep" in it (FastV)
    positions: str | None = hyper(None, "choice", choices=POSITIONS)
    # K in eq. 9: the [CLS] layers ensembled, ending at the feature layer (Engine.check: at most the feature layer's
    # number, 1-based)
    k_layers: int = hyper(3, low=1, high=MAX_VIT_LAYERS, what="a whole number of ViT layers", depth="vit")
    ensemble: str = hyper("avg", choices=("avg", "max", "min"))  # E in eq. 9

    def __post_init__(self):
        super().__post_init__()  # positions checked (None allowed) before it is derived from the stage
        if self.positions is None:
            self.positions = "keep" if self.stage == "llm" else "rearrange"

    def select_before_llm(self, ctx: VisionContext) -> Selection:
        scores = ctx.cls_scores(self.k_layers, self.ensemble)  # (N,)
        return Selection(top_indices(scores, self.budget(ctx.n_patches)))

    def select_in_llm(self, ctx: LLMContext) -> torch.Tensor:
        scores = ctx.vision.cls_scores(self.k_layers, self.ensemble)[ctx.patch_indices]  # (M,)
        return top_indices(scores, self.budget(scores.shape[0]))
