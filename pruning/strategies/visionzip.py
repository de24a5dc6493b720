"""VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025).

Followed: dvlab-research/VisionZip at commit 3151f6df4fca36a4cd1c985e5956e725b1f9ad02,
``visionzip/clip_encoder.py`` (``CLIPVisionTower_VisionZip.forward``), with ``visionzip/utils.py``
(``CLIPAttention_forward``: the merge metric is layer -2's raw keys averaged over heads, ``k.mean(1)``) and
``visionzip/main.py`` (``visionzip(model, dominant, contextual)``: the [CLS] token counts as one of ``dominant``).

Rule: keep the dominant tokens (the [CLS] token and the patches the [CLS] query attends to most at the feature
layer, attention summed over heads), and merge all the others into contextual tokens: evenly spaced targets
among the remaining patches each take the remaining patches whose head-averaged key is most similar (cosine),
and a contextual token is its target's own state *plus* the mean of the states assigned to it.

In detail, as the authors' code does it, for a budget of U tokens:
1. D = U - C dominant tokens, C contextual (``contextual``; None: round(U * 10 / 64)). The authors' README
   gives 54:10 at 64 tokens, the only budget their repository states (``visionzip()``'s defaults, 191 and 30,
   make 221 tokens); other budgets keep that share, 10/64 of the budget contextual (108:20 at 128, 162:30 at
   192): an extrapolation, since the paper's own splits for 128 and 192 could not be read here. With
   ``cls_token`` (default, as the authors), D counts the [CLS] token: D - 1 patches are dominant.
2. Dominant patches: the top D - 1 patches by the [CLS] row of the feature layer's attention summed over
   heads ([CLS] column dropped, as their ``attn_weights[:, :, 0, 1:]``). Their states enter the LLM as they are.
3. The M remaining patches, in row-major order: targets at positions 0, s, 2s, ... (s = max(1, M // C), the
   first C of them); every other remaining patch goes to the target whose head-averaged key (of the feature
   layer) is most cosine-similar (the first on ties, as ``argmax``); contextual token = target state + mean
   of its group's states (a target with an empty group: its own state; the sum is not renormalised).

Where this differs from the authors' code, and why:
- Order: the authors feed [CLS], the dominant patches in row-major order, then the contextual tokens in
  target order; here ``Selection`` holds every token at a patch, in row-major order (dominant patches at
  themselves, each contextual token at its target patch). Position ids are contiguous by default
  (``positions="rearrange"``, what the authors' concatenation gives); ``positions="keep"`` gives each token its
  anchor patch's original id.
- The [CLS] token: this engine's patch features exclude [CLS] (LLaVA's ``feature_select`` "patch"), but the
  vision pass keeps its state (``VisionContext.cls_feature``, the same feature layer), so ``cls_token=True``
  passes it to the LLM as the authors do. It needs a patch to stand at: the first patch in row-major order that
  is neither dominant nor a target (so, under contiguous ids, it comes early, near where the authors put it
  first). That patch's own state still goes into its target's contextual token; ``groups`` marks the patch as
  the [CLS] token's (one patch), since ``groups`` holds one token per patch. ``cls_token=False`` gives the
  [CLS] slot to one more dominant patch instead (what LLaVA-1.5 was trained on: patch tokens only).
- Layer: the authors hard-code layer -2 (``attentions[-2]``, ``hidden_states[-2]``, ``layers[-2].metric``),
  LLaVA-1.5's feature layer; here the model's feature layer (``vision_feature_layer``), the same for LLaVA-1.5,
  so the dominant tokens are always the features the LLM is fed.
- Arithmetic: float32 (the authors' in the model's dtype, fp16 on GPU), cast back to the features' dtype.
- Fallbacks: without recorded keys the features are matched (as ``tome``); a tower without [CLS] is refused.
- Budget: the authors fix D and C; here ``keep`` is U and C follows it (or ``contextual``); ``keep`` unset or
  >= the grid keeps every patch (no [CLS] added).

``Selection.groups``: a dominant patch points at itself; a target and the patches merged into it at its
contextual token; the [CLS] anchor patch at the [CLS] token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import MAX_TOKENS, Selection, Strategy, VisionContext, hyper, register

CONTEXTUAL_SHARE = (10, 64)  # the authors' 54 dominant + 10 contextual of 64, kept at every budget


def contextual_count(budget: int) -> int:
    """The authors' contextual share of a budget: round(U * 10 / 64) (10 of 64, 20 of 128, 30 of 192)."""
    return round(budget * CONTEXTUAL_SHARE[0] / CONTEXTUAL_SHARE[1])


def head_mean_keys(ctx: VisionContext) -> torch.Tensor:
    """The feature layer's patch keys averaged over heads (VisionZip's and ToMe's ``k.mean(1)``), (N, hd);
    the features themselves when no keys were recorded."""
    if ctx.patch_keys is None:
        return ctx.patch_features.float()
    keys = ctx.patch_keys.float()
    heads = ctx.cls_attention.shape[1]
    return keys.view(keys.shape[0], heads, -1).mean(1)


def contextual_merge(states: torch.Tensor, metric: torch.Tensor, count: int):
    """Step 3 on the remaining tokens (rows in row-major order): returns (targets (C,) row indices, contextual
    states (C, D), assignment (M,) the target position 0..C-1 each row went into)."""
    m = states.shape[0]
    step = max(1, m // count)
    targets = torch.arange(0, m, step)[:count]
    is_target = torch.zeros(m, dtype=torch.bool)
    is_target[targets] = True
    others = (~is_target).nonzero().flatten()
    unit = F.normalize(metric, dim=-1)
    assign = (unit[others] @ unit[targets].T).argmax(1)  # (M - C,) first maximum on ties
    total = torch.zeros(len(targets), states.shape[1], dtype=states.dtype).index_add_(0, assign, states[others])
    counts = torch.bincount(assign, minlength=len(targets)).clamp_min(1).to(states.dtype)
    contextual = states[targets] + total / counts[:, None]
    where = torch.empty(m, dtype=torch.long)
    where[targets] = torch.arange(len(targets))
    where[others] = assign
    return targets, contextual, where


@register
@dataclass
class VisionZip(Strategy):
    name = "visionzip"

    positions: str = "rearrange"  # contiguous ids, what the authors' concatenation gives
    # C: contextual tokens (at most the budget); None: round(U * 10/64) (authors: 10 of 64)
    contextual: int | None = hyper(None, "int", 0, MAX_TOKENS, what="a whole number of tokens")
    # the [CLS] state is one of the dominant tokens and enters the LLM (authors)
    cls_token: bool = hyper(True)

    def split(self, budget: int) -> tuple[int, int]:
        """(dominant tokens, contextual tokens) for a budget below the grid; dominant counts the [CLS]."""
        c = contextual_count(budget) if self.contextual is None else self.contextual
        c = min(c, budget - (1 if self.cls_token else 0)) if budget else 0
        return budget - c, max(c, 0)

    def select_before_llm(self, ctx: VisionContext) -> Selection:
        n, budget = ctx.n_patches, self.budget(ctx.n_patches)
        if ctx.cls_attention is None or (self.cls_token and ctx.cls_feature is None):
            raise ValueError("this vision tower has no [CLS] token: visionzip cannot run")
        if budget >= n:
            return Selection(torch.arange(n), groups=torch.arange(n))
        if budget == 0:
            return Selection(torch.zeros(0, dtype=torch.long), groups=torch.full((n,), -1))
        n_dominant, n_contextual = self.split(budget)
        n_patches = n_dominant - (1 if self.cls_token else 0)
        feats = ctx.patch_features.float()
        scores = ctx.cls_attention[ctx.feature_layer].float().sum(0)  # (N,) summed over heads
        dominant = scores.topk(n_patches).indices.sort().values
        rest = torch.ones(n, dtype=torch.bool)
        rest[dominant] = False
        rest_idx = rest.nonzero().flatten()  # row-major, as the authors' masked_select keeps them

        tokens = [(int(p), feats[p]) for p in dominant]  # (anchor patch, state)
        groups = torch.full((n,), -1, dtype=torch.long)
        members: dict[int, torch.Tensor] = {int(p): torch.tensor([int(p)]) for p in dominant}
        free = rest_idx
        if n_contextual > 0:
            targets, contextual, where = contextual_merge(feats[rest_idx], head_mean_keys(ctx)[rest_idx],
                                                          n_contextual)
            for j, t in enumerate(targets.tolist()):
                anchor = int(rest_idx[t])
                tokens.append((anchor, contextual[j]))
                members[anchor] = rest_idx[where == j]
            is_target = torch.zeros(len(rest_idx), dtype=torch.bool)
            is_target[targets] = True
            free = rest_idx[~is_target]
        cls_anchor = None
        if self.cls_token:
            cls_anchor = int(free[0])  # the first patch neither dominant nor a target
            tokens.append((cls_anchor, ctx.cls_feature.float()))
        tokens.sort(key=lambda t: t[0])
        indices = torch.tensor([a for a, _ in tokens], dtype=torch.long)
        features = torch.stack([s for _, s in tokens]).to(ctx.patch_features.dtype)
        position = {a: i for i, (a, _) in enumerate(tokens)}
        for anchor, patches in members.items():
            groups[patches] = position[anchor]
        if cls_anchor is not None:
            groups[cls_anchor] = position[cls_anchor]
        return Selection(indices, features=features, groups=groups)
