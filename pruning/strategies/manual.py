"""Manual: the patches a person chose (the app's "Keep the patches you choose"; no paper).

Rule: exactly the patch indices given in ``patches`` (row-major, 0..N-1) enter the LLM, in spatial order; the
budget (``keep``) does not apply when patches are given. With no patches given it keeps the first ``keep``
patches in reading order (row by row from the top left), and the result's notes say so: a deterministic
stand-in that lets ``manual`` run wherever every strategy is run with only a budget (the app's strategy list,
``bench --strategies all``).

``patches`` is a string, ``"3, 4, 17"`` (what a text box holds and what the results' params show), or a list of
integers, which is written back as that string. Duplicates are dropped; an index outside the grid, a negative
or a non-integer is refused with a ``ValueError`` that names it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import MAX_PATCHES, MAX_PATCHES_TEXT, Selection, Strategy, VisionContext, hyper, register


def parse_patches(patches) -> list[int]:
    """``"3, 4, 17"`` / ``[3, 4, 17]`` / ``"3 4 17"`` -> ``[3, 4, 17]`` (sorted, unique); ``""`` / None -> ``[]``."""
    if patches is None:
        return []
    if isinstance(patches, str):
        parts = [p for p in patches.replace(",", " ").replace(";", " ").split() if p]
    elif isinstance(patches, (list, tuple, set, frozenset)):
        parts = list(patches)
    else:
        raise ValueError(f"patches={patches!r}: expected patch indices, e.g. '3, 4, 17' or [3, 4, 17]")
    out = set()
    for p in parts:
        if isinstance(p, bool):
            raise ValueError(f"patches: {p!r} is not a patch index (a whole number)")
        if isinstance(p, float) and p.is_integer():
            p = int(p)
        if isinstance(p, str):
            try:
                p = int(p)
            except ValueError:
                raise ValueError(f"patches: {p!r} is not a patch index (a whole number)") from None
        if not isinstance(p, int):
            raise ValueError(f"patches: {p!r} is not a patch index (a whole number)")
        if p < 0:
            raise ValueError(f"patches: {p} is negative; patch indices count from 0 (row-major)")
        out.add(p)
    return sorted(out)


@register
@dataclass
class Manual(Strategy):
    name = "manual"
    stages = ("before",)

    # the patch indices to keep, row-major, e.g. "3, 4, 17"; empty: the first `keep` patches
    patches: str = hyper("", "patches", high=MAX_PATCHES, max_chars=MAX_PATCHES_TEXT)

    def __post_init__(self):
        super().__post_init__()
        self.patches = ", ".join(str(p) for p in parse_patches(self.patches))

    def select_before_llm(self, ctx: VisionContext) -> Selection:
        n = ctx.n_patches
        chosen = parse_patches(self.patches)
        if chosen:
            outside = [p for p in chosen if p >= n]
            if outside:
                raise ValueError(f"patches: {outside[0]} is outside the grid ({ctx.rows}x{ctx.cols}: patches 0..{n - 1})")
            notes = ([f"the {len(chosen)} patches given; the budget ({self.keep}) does not apply"]
                     if self.keep is not None and self.keep != len(chosen) else None)
            return Selection(torch.tensor(chosen, dtype=torch.long), notes=notes)
        k = self.budget(n)
        return Selection(torch.arange(k), notes=[f"no patches given: kept the first {k} in reading order (row by row "
                                                 "from the top left)"])
