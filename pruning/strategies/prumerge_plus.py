"""PruMerge+ (Shang et al., "LLaVA-PruMerge: Adaptive Token Reduction"), training-free variant, following the
authors' code (``token_prune_merge_advanced_plus`` in 42Shawn/LLaVA-PruMerge).

Rule:
1. Attention (PruMerge Sec. 3.2 and the authors' code): the [CLS] query's attention over all tokens in ViT layer
   ``qk_layer``. Default "reader": the layer after the feature layer, the one whose q/k read the features fed
   to the LLM (layer 23 of CLIP-L when LLaVA feeds the output of layer 22, as the authors hook it); "feature":
   the feature layer itself (what VTC-CLS and EViT use here). Default ``attention="concat"``: one head over
   the concatenated q/k of all heads, scaled by 1/sqrt(D), as the authors' code computes it; "mean": the mean
   of the per-head attention rows. The [CLS] column is dropped without renormalising (as in their code).
2. Keep the IQR outliers of that score (score > Q3 + 1.5 IQR), and add spatially uniform samples until U
   tokens are kept (only the top-U outliers when there are more than U): ``uniform_samples`` lays exactly
   as many samples as needed on a 2-D lattice over the grid, at every budget; lattice points that fall on an
   outlier are replaced by taking a denser lattice, and any surplus drops the lowest-scored samples.
3. Merge (the authors' code): each kept token i takes its k = ``neighbours`` (32) nearest tokens by cosine
   similarity of the ``qk_layer`` keys, searched among *all* other tokens (kept or pruned), and becomes
   ``y_i = x_i + sum_j a_j x_j``: its own feature with weight 1 plus the neighbours' features weighted by
   their raw attention a_j (the normalisation by sum a_j is commented out in their code).
4. ``extra`` (default True, as the authors): one more token ``sum_j a_j x_j`` over all pruned tokens. It counts
   in the budget (U-1 kept tokens + the extra one, so U tokens enter the LLM) and stands at the position of
   the highest-scoring pruned patch (as EViT's fused token here), which is its index in ``indices``.

``Selection.groups``: a kept patch points at itself; a pruned patch at the kept token that absorbed it. A
pruned patch absorbed by several kept tokens goes to the one where its weight is largest; under the authors'
raw weights that weight, a_j, is the same in every kept token, so the tie is broken by key similarity (the
most similar kept token). With ``extra``, the extra token's anchor patch and every pruned patch no kept token
took point at the extra token (it absorbs every pruned patch, but ``groups`` holds one token per patch);
without it those patches are -1.

Deviations from the authors' code: the budget U is given (``keep``) where their count is adaptive (the
outliers plus every int(step/3)-th index of the flattened grid, step = N / outliers, about four times the
outliers); their uniform samples are that 1-D stride over the row-major index (a few columns only when the
stride divides the grid width), here a 2-D lattice of exactly the count needed; their tokens enter the LLM
in score order (outliers by attention, then samples, then the extra token) with contiguous positions, here
in spatial order with original positions by default (``positions="rearrange"`` gives contiguous ids in
spatial order). When the ``qk_layer`` is "reader" but the tower has no layer after the feature layer, the
feature layer is used; without recorded keys the features are matched. "concat" attention is not computed
from the concatenated q/k as the authors do but from the per-head softmax rows the engine records, through an
exact identity (see ``concat_head_attention``), with each head's [CLS]-to-[CLS] entry taken from the recorded
softmax itself (``VisionContext.cls_self``); what differs from a direct softmax is the float32 arithmetic of
the recorded rows, at most 1.9e-6 relative on the embedded model (before issue 25 the [CLS] entry was rebuilt
as 1 - the row sum, which erred by up to 3.2e-4 relative there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import MAX_TOKENS, Selection, Strategy, VisionContext, hyper, register, top_indices


def iqr_outliers(scores: torch.Tensor) -> torch.Tensor:
    q1, q3 = torch.quantile(scores.float(), torch.tensor([0.25, 0.75]))
    return (scores > q3 + 1.5 * (q3 - q1)).nonzero().flatten()


def uniform_samples(rows: int, cols: int, count: int) -> torch.Tensor:
    """Exactly ``count`` patch indices (row-major, ascending) spread over the grid at every count: h sample
    rows evenly spaced (h about sqrt(count * rows / cols)), the count split evenly over them, each row's
    samples evenly spaced at the centres of equal column spans."""
    count = max(0, min(count, rows * cols))
    if count == 0:
        return torch.zeros(0, dtype=torch.long)
    h = min(rows, max(round(math.sqrt(count * rows / cols)), math.ceil(count / cols), 1))
    out = []
    for i in range(h):
        r = math.floor((i + 0.5) * rows / h)
        n_i = (i + 1) * count // h - i * count // h
        out.extend(r * cols + math.floor((j + 0.5) * cols / n_i) for j in range(n_i))
    return torch.tensor(out, dtype=torch.long)


def concat_head_attention(per_head: torch.Tensor, cls_self: torch.Tensor | None = None) -> torch.Tensor:
    """The [CLS] attention of one head over the concatenated q/k of all heads, scale 1/sqrt(H * hd) (PruMerge's
    code), from the per-head softmax rows ``per_head`` (H, N) over the patches and ``cls_self`` (H,), each head's
    [CLS]-to-[CLS] entry of the same softmax. The identity is exact: that head's logit is sum_h logit_h / sqrt(H),
    and logit_h = log p_h + a constant per head; the result carries only the float32 arithmetic of the recorded
    rows (at most 1.9e-6 relative against a float64 softmax over the concatenated q/k, on the embedded model's
    reader layer over 20 held-out scenes). Without ``cls_self`` the [CLS] column is rebuilt as 1 - the row sum,
    whose float32 cancellation erred by up to 3.2e-4 relative there. Returns (N,), the [CLS] column again
    dropped without renormalising."""
    h = per_head.shape[0]
    p = per_head.double()
    tiny = torch.finfo(per_head.dtype).tiny  # an underflowed probability is at most this
    own = (1 - p.sum(-1, keepdim=True)) if cls_self is None else cls_self.double().reshape(h, 1)
    full = torch.cat([own, p], dim=-1).clamp_min(tiny)  # (H, 1 + N)
    return (full.log().sum(0) / math.sqrt(h)).softmax(-1)[1:].to(per_head.dtype)


@register
@dataclass
class PruMergePlus(Strategy):
    name = "prumerge+"
    # k: nearest tokens (by key similarity, among all others) merged into each kept token; more than the grid's
    # other tokens takes them all
    neighbours: int = hyper(32, low=0, high=MAX_TOKENS)
    # "reader": the layer after the feature layer (authors); "feature": the feature layer
    qk_layer: str = hyper("reader", choices=("reader", "feature"))
    # "concat": one head over the concatenated q/k (authors); "mean": mean over heads
    attention: str = hyper("concat", choices=("concat", "mean"))
    extra: bool = hyper(True)  # append one token summarising the pruned ones (authors); it counts in the budget

    def layer_and_keys(self, ctx: VisionContext) -> tuple[int, torch.Tensor]:
        """The ViT layer whose [CLS] attention scores the patches, and the keys that match them."""
        if ctx.cls_attention is None:
            raise ValueError("this vision tower has no [CLS] token: prumerge+ cannot run")
        reader = ctx.feature_layer + 1
        if self.qk_layer == "reader" and reader < ctx.cls_attention.shape[0]:
            keys = ctx.reader_keys if ctx.reader_keys is not None else ctx.patch_keys
            return reader, keys if keys is not None else ctx.patch_features
        return ctx.feature_layer, ctx.patch_keys if ctx.patch_keys is not None else ctx.patch_features

    def scores(self, ctx: VisionContext) -> torch.Tensor:
        layer, _ = self.layer_and_keys(ctx)
        rows = ctx.cls_attention[layer].float()  # (H, N)
        if self.attention == "mean":
            return rows.mean(0)
        return concat_head_attention(rows, ctx.cls_self[layer] if ctx.cls_self is not None else None)

    def kept_patches(self, scores: torch.Tensor, rows: int, cols: int, budget: int) -> torch.Tensor:
        """Step 2: the IQR outliers plus spatially uniform samples, ``budget`` patches in ascending order."""
        outliers = iqr_outliers(scores)
        if len(outliers) >= budget:
            return outliers[top_indices(scores[outliers], budget)].sort().values
        is_outlier = torch.zeros(scores.shape[0], dtype=torch.bool)
        is_outlier[outliers] = True
        need = budget - len(outliers)
        for count in range(need, scores.shape[0] + 1):  # a denser lattice when samples fall on outliers
            samples = uniform_samples(rows, cols, count)
            samples = samples[~is_outlier[samples]]
            if len(samples) >= need:
                break
        samples = samples[top_indices(scores[samples], need)]  # surplus: the lowest-scored samples go
        return torch.cat([outliers, samples]).sort().values

    def select_before_llm(self, ctx: VisionContext) -> Selection:
        n, budget = ctx.n_patches, self.budget(ctx.n_patches)
        if budget >= n:
            return Selection(torch.arange(n), groups=torch.arange(n))
        if budget == 0:
            return Selection(torch.zeros(0, dtype=torch.long), groups=torch.full((n,), -1))
        _, keys = self.layer_and_keys(ctx)
        a = self.scores(ctx).float()  # (N,)
        extra = self.extra
        kept = self.kept_patches(a, ctx.rows, ctx.cols, budget - 1 if extra else budget)
        feats = ctx.patch_features.float()
        pruned = torch.ones(n, dtype=torch.bool)
        pruned[kept] = False
        pruned_idx = pruned.nonzero().flatten()

        # step 3: each kept token + its nearest tokens (all others), weighted by raw attention
        keys = F.normalize(keys.float(), dim=-1)
        sim = keys[kept] @ keys.T  # (U', N)
        sim[torch.arange(len(kept)), kept] = -math.inf  # not itself
        k = min(self.neighbours, n - 1)
        near = sim.topk(k, dim=1).indices  # (U', k)
        merged = feats[kept] + (a[near][..., None] * feats[near]).sum(1)  # y_i = x_i + sum_j a_j x_j

        indices, features = kept, merged
        if extra:  # step 4: sum_j a_j x_j over the pruned tokens, at the best pruned patch
            anchor = pruned_idx[a[pruned_idx].argmax()]
            fused = (a[pruned_idx, None] * feats[pruned_idx]).sum(0, keepdim=True)
            indices = torch.cat([kept, anchor[None]])
            order = indices.argsort()
            indices, features = indices[order], torch.cat([merged, fused])[order]
        position = torch.full((n,), -1, dtype=torch.long)
        position[indices] = torch.arange(len(indices))

        groups = torch.full((n,), -1, dtype=torch.long)
        if extra:
            groups[pruned_idx] = position[anchor]
        if len(kept):
            joined = torch.zeros_like(sim, dtype=torch.bool)
            joined[torch.arange(len(kept))[:, None], near] = True
            best = sim.masked_fill(~joined, -math.inf).argmax(0)  # (N,) the most similar kept token that took it
            took = joined.any(0) & pruned
            groups[took] = position[kept[best[took]]]
        groups[indices] = torch.arange(len(indices))  # every token's own patch points at itself
        return Selection(indices, features=features.to(ctx.patch_features.dtype), groups=groups)
