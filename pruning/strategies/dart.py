"""DART (Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More",
EMNLP 2025), following the authors' code: ZichenWen1/DART at commit 5a19452fc173017191c247848673e0bde755695a (the last
of the authors' commits, read from the fork xqy1111111/DART; ZichenWen1/DART itself could not be fetched here),
``llava/model/language_model/modeling_llama_self.py``, ``DART.forward`` (where it prunes) and
``DART.get_retained_image_token`` (which tokens), with ``scripts/v1_5/eval/*.sh`` for the defaults; the port in
ModelTC/llmc at commit 05eedff08c58ce5a3a4e2e879133bc922dff6ff5, ``llmc/compression/token_reduction/dart.py``,
``get_retained_image_token``, is the same rule.

Rule: before LLM layer K (``layer``, default 2, the scripts' ``--pruned_layer 2``), take layer K-1's key states
after rotary embedding, pick as pivots the 4 image tokens and the 4 text tokens (the tokens after the image: the
question and the answer template) with the largest L1 norm of their keys (heads concatenated), and let each pivot
in turn claim its share of the image tokens least similar to it, by cosine of the hidden states entering layer K
after the LLM's final norm; the image pivots and the claimed tokens survive into layers >= K, the rest are dropped.

Followed: the keys are layer K-1's cached (rotated) keys; the hidden states are ``norm(output of layer K-1)`` with
the model's final RMSNorm, as their code applies ``self.norm``; each pivot claims among the image tokens no earlier
pivot claimed and that are not image pivots; text pivots are never dropped (all text is kept); the pivots are
visited in their code's order, iterating a Python set of the pivots' sequence indices (deterministic: an int hashes
to itself); positions keep (original ids, their ``position_ids = keep_indexs``); works with SDPA and 4-bit (no
attention map is read).

The budget: their kept count is ``4 + 8 * floor(B / 8)`` for their budget B (``max_num_trunction``, 128 by
default): 4 image pivots plus B // 8 tokens per pivot (4 + 128 = 132 at B = 128, 68 at 64). Here ``keep`` = U is
the number kept: the 4 image pivots plus U - 4 claimed tokens, split over the 8 pivots as evenly as it goes (the
first (U - 4) mod 8 pivots in visiting order claim one more). ``keep`` = 4 + 8m reproduces their B = 8m exactly
(68 for their 64, 132 for their 128). With ``keep`` unset, U = round(M * (1 - reduction_ratio)), their default
0.778 (128 of 576); the app always sets a budget, so there it does not apply.

Deviations, each with its reason:
- the split of U - 4 above (theirs keeps 4 + 8 floor(B / 8): B + 4 when B is a multiple of 8, B - 3 to B + 3
  otherwise).
- fewer than 4 text tokens after the image, or U < 4: as many pivots as there are, the top-U image pivots.
- grouped-query attention: the L1 norm over the key-value heads, not repeated to every query head as their code's
  ``repeat_kv`` does (the same ranking: each key-value head counts equally often).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import LLMContext, Strategy, hyper, register


def dart_select(keys: torch.Tensor, states: torch.Tensor, image_rows: torch.Tensor, text_rows: torch.Tensor,
                budget: int, image_pivots: int = 4, text_pivots: int = 4) -> torch.Tensor:
    """DART's kept image tokens: positions (ascending) into ``image_rows``. ``keys`` (S, K) rotated keys, ``states``
    (S, D) normed hidden states, ``image_rows`` / ``text_rows`` the sequence rows of the image and of the text after
    it. ``budget`` U: the image pivots plus U minus them claimed tokens, split over the pivots."""
    m = image_rows.shape[0]
    if budget >= m:
        return torch.arange(m)
    if budget == 0:
        return torch.zeros(0, dtype=torch.long)
    norms = keys.float().abs().sum(-1)  # (S,) L1 norm of each row's key
    p_img = min(image_pivots, budget, m)
    img_piv = image_rows[norms[image_rows].topk(p_img).indices]
    p_txt = min(text_pivots, text_rows.shape[0]) if budget > p_img else 0
    txt_piv = text_rows[norms[text_rows].topk(p_txt).indices] if p_txt else text_rows[:0]
    order = list(set(img_piv.tolist() + txt_piv.tolist()))  # the authors' visiting order (a set of row indices)
    if not order:
        raise ValueError("dart: no pivot (image_pivots = 0 and no text after the image)")
    claim = budget - p_img
    shares = [claim // len(order) + (i < claim % len(order)) for i in range(len(order))]
    x = F.normalize(states.float(), dim=-1)
    free = torch.zeros(states.shape[0], dtype=torch.bool, device=states.device)
    free[image_rows] = True
    free[img_piv] = False
    kept = [int(r) for r in img_piv]
    for pivot, share in zip(order, shares):
        pool = free.nonzero().flatten()
        if share == 0 or pool.numel() == 0:
            continue
        sim = x[pool] @ x[pivot]  # cosine to the pivot
        take = pool[(-sim).topk(min(share, pool.numel())).indices]  # the least similar
        kept.extend(take.tolist())
        free[take] = False
    where = torch.full((states.shape[0],), -1, dtype=torch.long, device=states.device)
    where[image_rows] = torch.arange(m, device=states.device)
    return where[torch.tensor(kept, dtype=torch.long, device=states.device)].sort().values.cpu()


@register
@dataclass
class DART(Strategy):
    name = "dart"
    stages = ("llm",)
    needs_keys = True

    stage: str = "llm"
    layer: int = 2  # K: rows are dropped before layer K, the keys are layer K-1's (the scripts' --pruned_layer 2)
    # share of image tokens dropped when ``keep`` is not given (their default)
    reduction_ratio: float = hyper(0.778, low=0, high=1, what="a share")
    image_pivots: int = hyper(4, low=0, high=64)  # their pivot_image_token (the paper tries up to 16 pivots)
    text_pivots: int = hyper(4, low=0, high=64)  # their pivot_text_token

    def __post_init__(self):
        super().__post_init__()
        if self.image_pivots + self.text_pivots == 0:
            raise ValueError("dart image_pivots=0, text_pivots=0: DART needs at least one pivot")

    def select_in_llm(self, ctx: LLMContext) -> torch.Tensor:
        if ctx.keys is None or ctx.normed_states is None:
            raise ValueError("dart needs layer K-1's keys and the normed hidden states (the engine's)")
        m = ctx.image_rows.shape[0]
        budget = self.budget(m) if self.keep is not None else round(m * (1 - self.reduction_ratio))
        s = ctx.hidden_states.shape[0]
        after = int(ctx.image_rows.max()) + 1 if m else s
        text_rows = torch.arange(after, s, device=ctx.image_rows.device)
        return dart_select(ctx.keys, ctx.normed_states, ctx.image_rows, text_rows, budget, self.image_pivots,
                           self.text_pivots)
