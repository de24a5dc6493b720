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


def _text_ids(tok, real=None) -> dict:
    vocab = len(tok) if real is None else real["vocab"]
    return dict(vocab_size=vocab, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)


def _real_text(g, real) -> dict:
    """The LLM of geometry ``g`` (``pruning.geometries.FAMILY_GEOMETRIES``) at ``real["llm_layers"]`` layers."""
    s = g.llm
    return dict(hidden_size=s.hidden, intermediate_size=s.intermediate, num_hidden_layers=real["llm_layers"],
                num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, max_position_embeddings=32768)


def _qwen25vl(tok, real=None, vision_width: int = 32):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if real is None:
        patch, merge, pixels = 4, 2, dict(min_pixels=(4 * 2) ** 2 * 4, max_pixels=128 * 128)
        vision = dict(depth=4, hidden_size=vision_width, intermediate_size=2 * vision_width, num_heads=2,
                      window_size=24, fullatt_block_indexes=[1, 3])
        text, mrope = dict(TEXT), [2, 3, 3]
    else:  # Qwen2.5-VL-7B's widths (pruning.geometries), the stock processor's pixel range
        g, vit_layers = real["geometry"], real["vit_layers"]
        patch, merge, pixels = g.vision.patch_size, 2, dict(min_pixels=56 * 56, max_pixels=28 * 28 * 16384)
        full = [i for i in range(vit_layers) if i % 8 == 7] or [vit_layers - 1]  # real: 7, 15, 23, 31
        vision = dict(depth=vit_layers, hidden_size=g.vision.hidden, intermediate_size=g.vision.intermediate,
                      num_heads=16, window_size=112, fullatt_block_indexes=full)
        text, mrope = _real_text(g, real), [16, 24, 24]
    image_processor = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=merge, temporal_patch_size=2, **pixels)
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    config = Qwen2_5_VLConfig(
        vision_config=dict(patch_size=patch, spatial_merge_size=merge, temporal_patch_size=2,
                           out_hidden_size=text["hidden_size"], **vision),
        text_config=dict(**text, **_text_ids(tok, real),
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0 if real is None else 1e6,
                                          "mrope_section": mrope}),
        tie_word_embeddings=False, **ids,
    )
    return Qwen2_5_VLForConditionalGeneration, config, image_processor, {}, QWEN_CHAT_TEMPLATE


ONEVISION_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64], [32, 96], [96, 32], [64, 96], [96, 64]]


def _onevision(tok, real=None):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    if real is None:
        size, patch, pinpoints, text = 32, 8, ONEVISION_PINPOINTS, dict(TEXT)
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4)
    else:  # LLaVA-OneVision-7B: SigLIP-so400m at 384 px, its pinpoints 384 x (1..6) squared
        g = real["geometry"]
        size, patch, text = 384, g.vision.patch_size, _real_text(g, real)
        pinpoints = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
        vision = dict(hidden_size=g.vision.hidden, intermediate_size=g.vision.intermediate,
                      num_hidden_layers=real["vit_layers"], num_attention_heads=16)
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": size, "width": size},
                                                      image_grid_pinpoints=pinpoints)
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", image_size=size, patch_size=patch,
                           vision_use_head=False, **vision),  # no head, as the real checkpoints (the stock default)
        text_config=dict(model_type="qwen2", **text, **_text_ids(tok, real)),
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full", vision_feature_layer=-1, image_grid_pinpoints=pinpoints,
        tie_word_embeddings=False,
    )
    processor_kwargs = dict(num_image_tokens=(size // patch) ** 2, vision_feature_select_strategy="full",
                            vision_aspect_ratio="anyres_max_9")
    return LlavaOnevisionForConditionalGeneration, config, image_processor, processor_kwargs, ONEVISION_CHAT_TEMPLATE


def _next(tok, real=None):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from .toy import LLAVA15_CHAT_TEMPLATE

    if real is None:
        size, patch, pinpoints, text = 32, 8, ONEVISION_PINPOINTS, dict(TEXT)
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      projection_dim=64)
    else:  # LLaVA-NeXT-7B (v1.6 Vicuna): CLIP ViT-L/14-336, its five pinpoints
        g = real["geometry"]
        size, patch, text = 336, g.vision.patch_size, _real_text(g, real)
        pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
        vision = dict(hidden_size=g.vision.hidden, intermediate_size=g.vision.intermediate,
                      num_hidden_layers=real["vit_layers"], num_attention_heads=16, projection_dim=768)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                                 image_grid_pinpoints=pinpoints)
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=size, patch_size=patch, **vision),
        text_config=dict(model_type="llama", **text, **_text_ids(tok, real)),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-2, image_grid_pinpoints=pinpoints, tie_word_embeddings=False,
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


def _internvl(tok, real=None):
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    if real is None:  # 8x8 patches + [CLS] per tile; pixel shuffle 0.5 -> 4x4 = 16 tokens per tile
        size, patch, max_tiles, text = 32, 4, 6, dict(TEXT)
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4)
    else:  # InternVL3-8B: InternViT-300M at 448 px, up to 12 tiles
        g = real["geometry"]
        size, patch, max_tiles, text = 448, g.vision.patch_size, 12, _real_text(g, real)
        vision = dict(hidden_size=g.vision.hidden, intermediate_size=g.vision.intermediate,
                      num_hidden_layers=real["vit_layers"], num_attention_heads=16)
    image_processor = GotOcr2ImageProcessorPil(size={"height": size, "width": size}, crop_to_patches=True,
                                               min_patches=1, max_patches=max_tiles)
    per_tile = (size // patch // 2) ** 2
    config = InternVLConfig(
        vision_config=dict(image_size=[size, size], patch_size=[patch, patch], **vision),
        text_config=dict(model_type="qwen2", **text, **_text_ids(tok, real)),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=per_tile, downsample_ratio=0.5,
        vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=False,
    )
    return InternVLForConditionalGeneration, config, image_processor, {"image_seq_length": per_tile}, INTERNVL_CHAT_TEMPLATE


# CLI name -> (model_type, builder)
FAMILIES = {"qwen2.5-vl": ("qwen2_5_vl", _qwen25vl), "llava-onevision": ("llava_onevision", _onevision),
            "llava-next": ("llava_next", _next), "internvl": ("internvl", _internvl)}


def build_family(out_dir: str | Path, family: str, seed: int = 0, real: dict | None = None,
                 allow_eos: bool = True, vision_width: int | None = None) -> Path:
    """Write a tiny random-init checkpoint of ``family`` (a key of ``FAMILIES``) to ``out_dir``; return the path.
    ``real`` (see ``build_real_width``) gives the real model's widths instead of the tiny ones. ``allow_eos=False``
    zeroes the LM head's EOS row, so that greedy decoding runs every token asked for (timing). ``vision_width``:
    the tiny Qwen2.5-VL's ViT width (default 32; 64 makes every linear layer's input a multiple of 64, as
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
    if vision_width is not None and (family != "qwen2.5-vl" or real is not None):
        raise ValueError(f"vision_width is an option of the tiny Qwen2.5-VL; {family}'s widths are fixed")
    extra = {"vision_width": vision_width} if vision_width is not None else {}
    model_cls, config, image_processor, processor_kwargs, template = builder(tok, real, **extra)
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
        if not allow_eos:
            eos = tok.eos_token_id
            model.lm_head.weight[eos] = 0.0
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def build_real_width(out_dir: str | Path, geometry: str, llm_layers: int = 2, vit_layers: int = 4,
                     vocab: int = 32064, seed: int = 0) -> Path:
    """A random-init checkpoint of a later family at its real widths (``pruning.geometries.FAMILY_GEOMETRIES``:
    ``llava-onevision-7b``, ``llava-next-7b``, ``qwen2.5-vl-7b``, ``internvl3-8b``) with ``llm_layers`` decoder and
    ``vit_layers`` ViT layers, the real image processor settings (crop size, pinpoints, patch, merge, window), a
    ``vocab``-row LM head, and EOS never chosen: for timing per layer on a CPU (``python -m pruning speed``).
    Qwen2.5-VL's full-attention blocks are every eighth (7, 15, ... as the real 7, 15, 23, 31), or the last block
    when the tower is shallower than 8."""
    from .geometries import FAMILY_GEOMETRIES

    if geometry not in FAMILY_GEOMETRIES:
        raise ValueError(f"unknown family geometry {geometry!r}: expected one of {', '.join(FAMILY_GEOMETRIES)}")
    g = FAMILY_GEOMETRIES[geometry]
    for what, n, low in (("llm_layers", llm_layers, 1), ("vit_layers", vit_layers, 2), ("vocab", vocab, VOCAB)):
        if isinstance(n, bool) or not isinstance(n, int) or n < low:
            raise ValueError(f"{what}={n!r}: expected an integer >= {low}")
    family = next(k for k, (model_type, _) in FAMILIES.items() if model_type == g.family)
    real = {"geometry": g, "llm_layers": llm_layers, "vit_layers": vit_layers, "vocab": vocab}
    return build_family(out_dir, family, seed=seed, real=real, allow_eos=False)


__all__ = ["FAMILIES", "build_family", "build_real_width"]
