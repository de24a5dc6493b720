"""Tiny random-init checkpoints of the families beyond LLaVA-1.5, built offline in seconds (issue 27).

``build_family(out_dir, family)`` writes what the real checkpoint holds: safetensors weights of the stock model
class, its config, a tokenizer with the family's special tokens, the family's image processor and processor
config, and a chat template of the family's form. The processor is the family's stock class saved by
``pruning.processors.make_image_only`` (no video processor, see that module), so ``processor_config.json`` names
the stock class and ``pruning.processors.load_processor`` (or, where torchvision is installed, ``AutoProcessor``)
loads it.

Families (``FAMILIES``):
- ``qwen2.5-vl``: ``Qwen2_5_VLForConditionalGeneration``. Patch 4, 2x2 PatchMerger, temporal patch 2 (an image is
  two identical frames, as the stock processor makes it), windowed ViT attention (window 24 px = 3x3 merged units,
  so windows are padded on grids not a multiple of 3) with full attention in blocks 1 and 3, M-RoPE sections
  (2, 3, 3) over a head of 16. Dynamic resolution: a 64x80 image becomes 8x10 = 80 tokens, 48x48 becomes 36.
- ``llava-onevision``: ``LlavaOnevisionForConditionalGeneration``. SigLIP (no [CLS]) at 32 px, patch 8
  (4x4 = 16 tokens per crop), anyres crops from pinpoints up to 64x96 plus the base image, image-newline tokens,
  ``vision_feature_select_strategy="full"``, feature layer -1, Qwen2 LLM.
- ``llava-next``: ``LlavaNextForConditionalGeneration``. CLIP with [CLS] at 32 px, patch 8, the same pinpoints,
  ``vision_feature_select_strategy="default"`` ([CLS] dropped), feature layer -2, a Llama LLM, LLaVA-1.5's tokenizer
  conventions and chat template. Its stock processor has no video part, so it is saved and loaded with
  ``AutoProcessor`` as it is.

Widths are small (64) and depths 4, as in ``pruning.toy``; the LM head is scaled by 8 so that greedy decoding
makes decisive choices (parity tests compare real choices, not near-ties).
"""

from __future__ import annotations

from pathlib import Path

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

VOCAB = 320
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096)


def _text_ids(tok) -> dict:
    return dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)


def _qwen25vl(tok, vision_width: int = 32):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    patch, merge = 4, 2
    image_processor = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=merge, temporal_patch_size=2,
                                               min_pixels=(patch * merge) ** 2 * 4, max_pixels=128 * 128)
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=4, hidden_size=vision_width, intermediate_size=2 * vision_width, num_heads=2, patch_size=patch,
                           spatial_merge_size=merge, temporal_patch_size=2, window_size=24,
                           fullatt_block_indexes=[1, 3], out_hidden_size=TEXT["hidden_size"]),
        text_config=dict(**TEXT, **_text_ids(tok),
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        tie_word_embeddings=False, **ids,
    )
    return Qwen2_5_VLForConditionalGeneration, config, image_processor, {}, QWEN_CHAT_TEMPLATE


ONEVISION_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64], [32, 96], [96, 32], [64, 96], [96, 64]]


def _onevision(tok):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    size, patch = 32, 8
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": size, "width": size},
                                                      image_grid_pinpoints=ONEVISION_PINPOINTS)
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=64, intermediate_size=128,
                           num_hidden_layers=4, num_attention_heads=4, image_size=size, patch_size=patch),
        text_config=dict(model_type="qwen2", **TEXT, **_text_ids(tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full", vision_feature_layer=-1, image_grid_pinpoints=ONEVISION_PINPOINTS,
        tie_word_embeddings=False,
    )
    processor_kwargs = dict(num_image_tokens=(size // patch) ** 2, vision_feature_select_strategy="full",
                            vision_aspect_ratio="anyres_max_9")
    return LlavaOnevisionForConditionalGeneration, config, image_processor, processor_kwargs, ONEVISION_CHAT_TEMPLATE


def _next(tok):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from .toy import LLAVA15_CHAT_TEMPLATE

    size, patch = 32, 8
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                                 image_grid_pinpoints=ONEVISION_PINPOINTS)
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, image_size=size, patch_size=patch, projection_dim=64),
        text_config=dict(model_type="llama", **TEXT, **_text_ids(tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-2, image_grid_pinpoints=ONEVISION_PINPOINTS, tie_word_embeddings=False,
    )
    processor_kwargs = dict(patch_size=patch, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return LlavaNextForConditionalGeneration, config, image_processor, processor_kwargs, LLAVA15_CHAT_TEMPLATE


INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _internvl(tok):
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    size, patch = 32, 4  # 8x8 patches + [CLS] per tile; pixel shuffle 0.5 -> 4x4 = 16 tokens per tile
    image_processor = GotOcr2ImageProcessorPil(size={"height": size, "width": size}, crop_to_patches=True,
                                               min_patches=1, max_patches=6)
    per_tile = (size // patch // 2) ** 2
    config = InternVLConfig(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                           image_size=[size, size], patch_size=[patch, patch]),
        text_config=dict(model_type="qwen2", **TEXT, **_text_ids(tok)),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=per_tile, downsample_ratio=0.5,
        vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=False,
    )
    return InternVLForConditionalGeneration, config, image_processor, {"image_seq_length": per_tile}, INTERNVL_CHAT_TEMPLATE


# CLI name -> (model_type, builder)
FAMILIES = {"qwen2.5-vl": ("qwen2_5_vl", _qwen25vl), "llava-onevision": ("llava_onevision", _onevision),
            "llava-next": ("llava_next", _next), "internvl": ("internvl", _internvl)}


def build_family(out_dir: str | Path, family: str, seed: int = 0, vision_width: int | None = None) -> Path:
    """Write a tiny random-init checkpoint of ``family`` (a key of ``FAMILIES``) to ``out_dir``; return the path.
    ``vision_width``: Qwen2.5-VL's ViT width (default 32; 64 makes every linear layer's input a multiple of 64, as
    bitsandbytes' CPU 4-bit kernels need)."""
    import torch

    from .processors import STOCK_PROCESSORS, VIDEO_FAMILIES, make_image_only
    from .toy import build_tokenizer

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    model_type, builder = FAMILIES[family]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(VOCAB, family="llava" if model_type == "llava_next" else model_type)
    if vision_width is not None and family != "qwen2.5-vl":
        raise ValueError(f"vision_width is a Qwen2.5-VL option; {family}'s widths are fixed")
    extra = {"vision_width": vision_width} if vision_width is not None else {}
    model_cls, config, image_processor, processor_kwargs, template = builder(tok, **extra)
    if model_type in VIDEO_FAMILIES:
        processor = make_image_only(model_type, image_processor, tok, chat_template=template, **processor_kwargs)
    else:
        import transformers

        stock = getattr(transformers, STOCK_PROCESSORS[model_type])
        processor = stock(image_processor=image_processor, tokenizer=tok, chat_template=template, **processor_kwargs)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


__all__ = ["FAMILIES", "build_family"]
