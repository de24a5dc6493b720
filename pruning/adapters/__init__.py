"""Model-family adapters: what differs between families, behind one small interface (``base.Adapter``).

``adapter_for(lm)`` picks the adapter by the loaded model's ``config.model_type``. The engine's loop
(``pruning.engine.Engine``) is the same for every family.
"""

from __future__ import annotations

from .base import Adapter, Prepared, check_indices


def adapter_for(lm) -> Adapter:
    """The adapter for ``lm`` (a ``pruning.model.LoadedModel``); ``ValueError`` for a family without one."""
    model_type = lm.model.config.model_type
    if model_type == "llava":
        from .llava import LlavaAdapter

        return LlavaAdapter(lm)
    if model_type == "qwen2_5_vl":
        from .qwen import Qwen25VLAdapter

        return Qwen25VLAdapter(lm)
    if model_type in ("llava_onevision", "llava_next", "internvl"):
        from .anyres import AnyresAdapter

        return AnyresAdapter(lm)
    raise ValueError(f"model_type={model_type!r}: no engine adapter for this family (supported: llava, qwen2_5_vl, "
                     "llava_onevision, llava_next, internvl)")


__all__ = ["Adapter", "Prepared", "adapter_for", "check_indices"]
