"""Load a model family's processor for images only: no video processor, hence no torchvision.

Why this exists. With transformers 5.23, ``AutoProcessor.from_pretrained`` for Qwen2-VL, Qwen2.5-VL,
LLaVA-OneVision and InternVL also builds the family's video processor, and every video processor needs
torchvision, which has no build beside the project's torch 2.13 CPU wheel in the lock. PruneScope only ever
sends images, so it loads the image half of the stock processor instead:

- the family's **stock** processor class (``Qwen2_5_VLProcessor``, ``LlavaOnevisionProcessor``,
  ``InternVLProcessor``, ...), so the prompt expansion (how many image placeholder ids an image becomes) is
  transformers' own code, not a copy;
- declared with two sub-processors only (image processor and tokenizer) by a one-method subclass that
  overrides ``get_attributes``; ``ProcessorMixin`` itself skips the video path when the attribute is absent
  (``if videos is not None and hasattr(self, "video_processor")``);
- the image processor, tokenizer and chat template as ``ProcessorMixin.from_pretrained`` reads them: its
  ``AutoImageProcessor`` falls back from the torchvision class a config names (``Qwen2VLImageProcessor``) to
  the PIL class of the same family (``Qwen2VLImageProcessorPil``, ``LlavaOnevisionImageProcessorPil``,
  ``GotOcr2ImageProcessorPil``) when torchvision is missing; where it is installed the torchvision class is
  used, with the same output sizes and so the same token counts.

Nothing is patched: the subclass is local, the stock classes are untouched. ``save_pretrained`` writes the stock
class name as ``processor_class``, so a directory written here loads with ``AutoProcessor`` wherever torchvision
is installed. The decision and its alternatives are in docs/install.md ("Processors without torchvision").
"""

from __future__ import annotations

import functools

# model_type -> the stock processor class that builds the prompt for one image
STOCK_PROCESSORS = {
    "llava": "LlavaProcessor",
    "llava_next": "LlavaNextProcessor",
    "llava_onevision": "LlavaOnevisionProcessor",
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "internvl": "InternVLProcessor",
}
# the families whose stock processor holds a video processor (torchvision); the others load with AutoProcessor
VIDEO_FAMILIES = frozenset({"llava_onevision", "qwen2_vl", "qwen2_5_vl", "internvl"})


@functools.cache
def image_only_class(stock_name: str) -> type:
    """The stock processor class ``stock_name`` with sub-processors image processor + tokenizer only (cached, so
    one class per family per process). Its ``to_dict`` names the stock class, so saved files are the stock ones."""
    import transformers

    stock = getattr(transformers, stock_name)

    def get_attributes(cls):
        return ["image_processor", "tokenizer"]

    def to_dict(self):
        out = stock.to_dict(self)
        out["processor_class"] = stock_name
        return out

    return type(f"{stock_name}ImageOnly", (stock,), {
        "get_attributes": classmethod(get_attributes), "to_dict": to_dict,
        "__doc__": f"transformers' {stock_name} for images only (no video processor; see pruning/processors.py)",
    })


def make_image_only(model_type: str, image_processor, tokenizer, **kwargs):
    """A new image-only processor of the family ``model_type`` from its parts (what ``pruning.toy`` saves)."""
    return image_only_class(STOCK_PROCESSORS[model_type])(image_processor=image_processor, tokenizer=tokenizer,
                                                          **kwargs)


def load_processor(source: str, model_type: str):
    """The processor for ``source`` (a local directory or hub id): ``AutoProcessor`` for families without a video
    processor, the image-only stock class for the others."""
    from transformers import AutoProcessor

    if model_type not in VIDEO_FAMILIES:
        return AutoProcessor.from_pretrained(source, trust_remote_code=False)
    return image_only_class(STOCK_PROCESSORS[model_type]).from_pretrained(source, trust_remote_code=False)


__all__ = ["STOCK_PROCESSORS", "VIDEO_FAMILIES", "image_only_class", "make_image_only", "load_processor"]
