"""Budgets on dynamic grids (issue 27): a count of visual tokens, or a ratio of *this image's* tokens.

On LLaVA-1.5 every image has 576 tokens, so a count and a ratio say the same. On Qwen2.5-VL, LLaVA-OneVision /
LLaVA-NeXT and InternVL the token count depends on the image (its size, its crops or tiles), so "keep 64" and "keep
25%" differ from image to image. Strategies take a count (``keep``); ``keep_tokens`` turns either form into the count
for one prepared image, which is what ``python -m pruning ask --keep`` does with a ratio.
"""

from __future__ import annotations

import math


def parse_budget(text: str) -> int | float:
    """``"64"`` -> 64 (a count, >= 0: whether 0 is allowed is the strategy's business, VTW keeps none);
    ``"0.25"`` -> 0.25 (a ratio, 0 < r <= 1, written with a decimal point). ``ValueError`` says which form failed."""
    text = str(text).strip()
    either = "a whole number >= 0, or a ratio of the image's tokens in (0, 1]"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer (a count) nor a ratio (expected {either})") from None
    if value < 0:
        raise ValueError(f"{text!r} is negative (expected {either})")
    if "." in text or "e" in text.lower():
        if not (math.isfinite(value) and 0 < value <= 1):
            raise ValueError(f"{text!r} is not an integer (a count) nor a ratio in (0, 1] (expected {either})")
        return value
    return int(value)


def keep_tokens(budget: int | float, n_image: int) -> int:
    """The count a budget means for an image of ``n_image`` visual tokens: a count is clamped to ``n_image``; a ratio
    is ``round(ratio * n_image)``, at least 1."""
    if isinstance(budget, float):
        return max(1, min(n_image, round(budget * n_image)))
    return min(int(budget), n_image)


__all__ = ["parse_budget", "keep_tokens"]
