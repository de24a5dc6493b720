"""Pruning strategies, one per file, all registered in one registry (see base.py)."""

from .base import (POSITIONS, STAGES, LLMContext, Selection, Strategy, VisionContext, ViTContext, available,
                   get_strategy, register, top_indices)
from . import cdpruner, dart, divprune, evit, fastv, ivtp, kmeans, manual, none, pooling, prumerge_plus, random, tome, topk_sim, vispruner, visionzip, vtc_cls, vtw  # noqa: F401,E501

__all__ = ["ViTContext", "Strategy", "Selection", "VisionContext", "LLMContext", "register", "get_strategy", "available",
           "STAGES", "POSITIONS", "top_indices"]
