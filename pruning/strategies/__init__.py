"""Pruning strategies, one per file, all registered in one registry (see base.py)."""

from .base import (POSITIONS, STAGES, LLMContext, Selection, Strategy, VisionContext, available, get_strategy,
                   register)
from . import none, random  # noqa: F401  (registers the strategies)

__all__ = ["Strategy", "Selection", "VisionContext", "LLMContext", "register", "get_strategy", "available",
           "STAGES", "POSITIONS"]
