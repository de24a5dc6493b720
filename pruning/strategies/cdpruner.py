"""CDPruner (Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in
MLLMs", arXiv 2506.10967), following the authors' code: Theia-4869/CDPruner at commit
9541616c40fcd5625de1cdb8ea6c33c129eb7864, ``llava/model/llava_arch.py``, ``LlavaMetaForCausalLM.encode_images``
(the kernel and the greedy MAP loop), and ``llava/model/multimodal_encoder/clip_encoder.py``,
``CLIPVisionTower.forward`` / ``load_text_tower`` (the question's and the patches' CLIP embeddings).

Rule: keep the U patches a conditional DPP picks by greedy MAP inference, with the kernel
``L_ij = r_i * cos(x_i, x_j) * r_j``: x_i is patch i's feature after LLaVA's projector (cosine in float32), r_i its
relevance to the question, the *negative* cosine between the patch's CLIP image embedding and the question's CLIP
text embedding (mean over the text's chunks), min-max normalised over the patches; so the kept set is diverse in what
the LLM sees and leans to the patches the relevance favours.

Details as the authors' code has them, all followed:
- the relevance's sign: patches *least* similar to the question's CLIP embedding weigh most (the authors say the sign
  is intended); normalisation ``(r - min + 1e-6) / (max - min)``;
- the patch embeddings: CLIP's ``visual_projection`` of the vision tower's ``post_layernorm`` applied to the patch
  features LLaVA feeds (the penultimate layer's, [CLS] dropped); the text: CLIP's text tower
  (``text_embeds``: pooled, projected) over the question cut into chunks of the text context, zero-padded;
- the question is the question alone; their VQA loaders strip LLaVA's "Answer the question using a single word or
  phrase." instruction first, and ``question_text`` does the same; the engine ends the CLIP text with </s> where the
  tokenizer does not add it (the embedded model's does not, and CLIP pools at the first </s>; OpenAI's CLIP
  tokenizer, theirs, always adds it);
- ``theta`` = 1 (default) uses r as it is, as their code does; ``theta`` < 1 applies the relevance weighting their
  code leaves commented out, ``r = exp(theta / (2 (1 - theta)) r)`` (OpenVINO's port uses 0.5);
- greedy MAP: the fast incremental Cholesky update (Chen et al. 2018): pick the largest remaining marginal gain
  d_j^2, store ``e = (L_j - sum_t c_tj c_t) / d_j``, subtract e^2 from every gain; the kept patches in spatial order.

Deviations, each with its reason:
- ``text_encoder``: "clip" is the authors' (CLIP's text tower, shipped with the embedded model in ``<model>/clip``;
  ``openai/clip-vit-large-patch14-336`` for hub models, as for IVTP); "llm" takes the LLM's own input embeddings of the
  question's tokens as the text and the projector's output as the patch embeddings (the variant of OpenVINO's port,
  openvinotoolkit/openvino_contrib ``modules/genai_optimizations/genai_opt/visual_token_pruning.py``
  ``get_inputs_embeds``, which embeds every non-image prompt token and measures similarity on the features before the
  projector; here only the question, and similarity stays on the projector's output, as the authors); "auto"
  (default) runs "clip" when a CLIP text encoder loads and "llm" otherwise. The result's notes say when "llm" ran
  and why; no note means CLIP's text tower gave the relevance.
- a spent kernel: when every remaining gain is ~0 (<= 1e-6 of the largest relevance^2: the kept features already span
  the rest, e.g. duplicate patches) the authors' loop takes the square root of a gain <= 0 and continues on NaN
  (repeating patches); here the remaining picks go by relevance (the kernel's diagonal), in order.
- relevance all equal (max = min): the authors divide by zero; here r = 1 for every patch (a plain DPP).
- ``keep`` unset keeps every patch (the authors' ``visual_token_num`` defaults to all 576).
- ``positions`` "rearrange" (default): contiguous position ids, as the authors' LLaVA code feeds the kept tokens.
- the projector runs once on all N patches (the engine feeds the kept rows of its output, as the authors index
  theirs), and the TFLOPs estimate counts it on N rows; the CLIP text tower and the kernel are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Selection, Strategy, VisionContext, hyper, register

LLAVA_SHORT_ANSWER = "\nAnswer the question using a single word or phrase."  # stripped by the authors' loaders
SPENT = 1e-6  # a remaining gain at most this share of the largest r^2 counts as zero


def relevance(patches: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The authors' relevance (N,): minus the mean cosine of each patch embedding (N, C) to the text's (M, C),
    min-max normalised as ``(r - min + 1e-6) / (max - min)``; all ones when every patch scores the same (or there is
    no text)."""
    if text.shape[0] == 0:
        return torch.ones(patches.shape[0], device=patches.device)
    r = -(F.normalize(patches.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T).mean(-1)
    span = r.max() - r.min()
    if span <= 0:
        return torch.ones_like(r)
    return (r - r.min() + 1e-6) / span


def conditional_kernel(features: torch.Tensor, r: torch.Tensor, theta: float = 1.0) -> torch.Tensor:
    """``L = diag(q) S diag(q)`` with S the cosine similarity of ``features`` (N, D) in float32 and q = r
    (theta = 1) or exp(theta / (2 (1 - theta)) r)."""
    x = F.normalize(features.float(), dim=-1)
    q = r if theta == 1 else torch.exp(theta / (2 * (1 - theta)) * r)
    return q[:, None] * (x @ x.T) * q[None, :]


def dpp_greedy(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy MAP of a DPP with kernel (N, N), ``k`` picks in the order chosen (fast incremental Cholesky, Chen et
    al. 2018, as CDPruner's code). Once every remaining gain is spent, the rest go by the kernel's diagonal."""
    n = kernel.shape[0]
    k = min(k, n)
    diag = kernel.diagonal().clone()
    gains = diag.clone()  # d_j^2: the squared volume a pick of j adds
    rows = kernel.new_zeros(k, n)  # c_t: the orthogonalised rows of the picks so far
    free = torch.ones(n, dtype=torch.bool, device=kernel.device)
    picks = []
    floor = SPENT * float(diag.max()) if n else 0.0
    for i in range(k):
        best = gains.masked_fill(~free, -torch.inf)
        j = int(best.argmax())
        if float(best[j]) <= floor:  # spent: no remaining patch adds volume; take the most relevant left
            rest = diag.masked_fill(~free, -torch.inf).argsort(descending=True, stable=True)
            picks.extend(rest[: k - i].tolist())
            break
        e = (kernel[j] - rows[:i, j] @ rows[:i]) / gains[j].sqrt()
        rows[i] = e
        gains = gains - e * e
        free[j] = False
        picks.append(j)
    return torch.tensor(picks, dtype=torch.long)


@register
@dataclass
class CDPruner(Strategy):
    name = "cdpruner"
    needs_projected = True

    positions: str = "rearrange"  # contiguous ids, as the authors' LLaVA code
    # "clip" (authors), "llm" (the LLM's input embeddings), "auto": clip when it loads
    text_encoder: str = hyper("auto", choices=("auto", "clip", "llm"))
    # 1: the relevance as it is (authors); < 1: exp(theta / (2 (1 - theta)) r)
    theta: float = hyper(1.0, low=0, high=1, what="a relevance weighting")

    def question_inputs(self) -> tuple[str, ...]:
        return {"auto": ("clip", "llm"), "clip": ("clip",), "llm": ("llm",)}[self.text_encoder]

    def question_text(self, question: str) -> str:
        return question.replace(LLAVA_SHORT_ANSWER, "")

    def select_before_llm(self, ctx: VisionContext) -> Selection:
        n = ctx.n_patches
        budget = self.budget(n)
        if budget >= n:
            return Selection(torch.arange(n))
        if ctx.projected is None or ctx.question is None:
            raise ValueError("cdpruner needs the projector's output and the question's embeddings (the engine's)")
        q, notes = ctx.question, []
        if q.clip_text is not None and self.text_encoder != "llm":
            r = relevance(q.clip_patches, q.clip_text)
        elif self.text_encoder == "clip":
            raise ValueError(f"cdpruner text_encoder='clip': {q.clip_note or 'no CLIP text encoder'}")
        else:
            r = relevance(ctx.projected, q.llm_tokens)
            why = f" ({q.clip_note})" if q.clip_note else ""
            notes.append(f"relevance from the LLM's input embeddings of the question, not CLIP's text tower{why}")
        picks = dpp_greedy(conditional_kernel(ctx.projected, r.to(ctx.projected.device), self.theta), budget)
        return Selection(picks.sort().values, notes=notes)
