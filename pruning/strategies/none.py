"""No pruning: every visual token enters the LLM and stays in every layer (the reference)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Strategy, register


@register
@dataclass
class NoPruning(Strategy):
    name = "none"
    stages = ("before",)
