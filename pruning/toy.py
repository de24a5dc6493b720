"""Build small random-init LLaVA checkpoints on disk, offline.

Tests (and, later, the embedded-model trainer) need a directory that
``LlavaForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained`` load exactly
like ``llava-hf/llava-1.5-7b-hf``: safetensors weights, a config, a BPE tokenizer with an ``<image>``
token, a CLIP image processor and a chat template. Nothing here touches a model hub.

Two geometries are predefined:
- ``tiny``: 30 px images, patch 6 (5x5 = 25 visual tokens), the size transformers' own LLaVA tests use;
- ``llava15``: LLaVA-1.5's geometry (336 px, patch 14, 24x24 = 576 visual tokens, [CLS] token,
  ``vision_feature_layer=-2``, ``vision_feature_select_strategy="default"``) with narrow widths.

``real_width_geometry("llava-1.5-7b" | "llava-1.5-13b", llm_layers, vit_layers)`` gives LLaVA-1.5's real
widths (Vicuna's width, heads and MLP, CLIP ViT-L/14-336's, the 32064-token vocabulary of the LM head and the
embeddings), from ``pruning.geometries``, with as few layers as asked: a model whose per-layer cost is the
real one, for timing on a CPU (``python -m pruning speed --geometry``). ``allow_eos=False`` in
``build_random_llava`` zeroes the EOS row of the LM head so that greedy decoding never stops early (timing
runs decode exactly the tokens asked for).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

LLAVA15_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# "</s>" is not id 2: CLIP's text model treats eos_token_id == 2 as its legacy "highest id is EOS" rule.
SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "<image>", "</s>"]

# Per family: extra special tokens, EOS, whether a BOS is prepended, and the named tokens the family's stock
# processor reads from the tokenizer (``tokenizer.image_token`` etc.).
FAMILY_TOKENS = {
    "llava": {"extra": [], "eos": "</s>", "bos": True, "named": {"image_token": "<image>"}},
    "qwen2_5_vl": {
        "extra": ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
        "eos": "<|im_end|>", "bos": False,
        "named": {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    },
    "llava_onevision": {
        "extra": ["<|im_start|>", "<|im_end|>", "<video>"], "eos": "<|im_end|>", "bos": False,
        "named": {"image_token": "<image>", "video_token": "<video>"},
    },
    "internvl": {
        "extra": ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"], "eos": "<|im_end|>",
        "bos": False,
        "named": {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                  "video_token": "<video>"},
    },
}

# A small corpus so the BPE merges cover ordinary English; the model is random, so any text works.
_CORPUS = (
    "user assistant what is the colour of the circle square triangle star red green blue yellow "
    "purple orange how many objects are there is there a left right above below of in on yes no "
    "describe this image picture photo one two three four five the a an and or which shape where"
).split()


@dataclass(frozen=True)
class ToyGeometry:
    """Shape of a random LLaVA; widths are small so CPU tests run in seconds."""

    image_size: int = 30  # pixels, square
    patch_size: int = 6  # ViT patch size
    vision_hidden: int = 64  # ViT width (bitsandbytes 4-bit on CPU needs in_features % 64 == 0)
    vision_layers: int = 4  # ViT depth (vision_feature_layer=-2 needs at least 2)
    vision_heads: int = 4
    text_hidden: int = 64  # Llama width (a multiple of 64, like vision_hidden)
    text_layers: int = 4  # Llama depth
    text_heads: int = 4
    text_kv_heads: int = 2  # < text_heads exercises grouped-query attention
    text_intermediate: int = 128  # Llama MLP width
    vocab_size: int = 320  # BPE vocabulary incl. special tokens
    vision_intermediate: int | None = None  # ViT MLP width; None: 4 x vision_hidden (CLIP's ratio)
    model_vocab: int | None = None  # rows of the LM head and the embeddings; None: the tokenizer's size (ids
    #                                 beyond the tokenizer exist in the model and decode to nothing)


GEOMETRIES = {
    "tiny": ToyGeometry(),
    "llava15": ToyGeometry(
        image_size=336, patch_size=14, vision_hidden=64, vision_layers=4, vision_heads=2,
        text_hidden=64, text_layers=6, text_heads=4, text_kv_heads=4, text_intermediate=128,
    ),
    # deep enough for IVTP's groups of three: a ViT pruning point (after layer 2) before the feature
    # layer (5), and LLM pruning points at layers 3 and 6
    "deep": ToyGeometry(image_size=48, patch_size=6, vision_layers=7, text_layers=16),
}

CLIP_L_HEADS = 16  # CLIP ViT-L/14-336 (pruning.geometries holds its widths, not its heads)


def real_width_geometry(name: str, llm_layers: int = 2, vit_layers: int = 4,
                        vocab: int | None = None) -> ToyGeometry:
    """LLaVA-1.5-7B's or -13B's real widths, heads, MLP sizes, vocabulary and token geometry (336 px, patch 14,
    576 patches + [CLS], feature layer -2) with ``llm_layers`` decoder layers and ``vit_layers`` ViT layers.
    ``vocab`` (default: the real 32064) changes only the LM head's and the embeddings' size."""
    from .geometries import BUILT_IN

    if name not in BUILT_IN:
        raise ValueError(f"unknown geometry {name!r}: expected one of {', '.join(BUILT_IN)}")
    for what, n, low in (("llm_layers", llm_layers, 1), ("vit_layers", vit_layers, 2)):
        if isinstance(n, bool) or not isinstance(n, int) or n < low:
            raise ValueError(f"{what}={n!r}: expected an integer >= {low}"
                             + (" (the feature layer -2 needs two ViT layers)" if what == "vit_layers" else ""))
    g = BUILT_IN[name]
    vocab = g.llm.vocab if vocab is None else vocab
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 320:
        raise ValueError(f"vocab={vocab!r}: expected an integer >= 320 (the tokenizer's ids)")
    return ToyGeometry(
        image_size=g.rows * g.vision.patch_size, patch_size=g.vision.patch_size, vision_hidden=g.vision.hidden,
        vision_layers=vit_layers, vision_heads=CLIP_L_HEADS, vision_intermediate=g.vision.intermediate,
        text_hidden=g.llm.hidden, text_layers=llm_layers, text_heads=g.llm.heads, text_kv_heads=g.llm.kv_heads,
        text_intermediate=g.llm.intermediate, model_vocab=vocab,
    )


def build_tokenizer(vocab_size: int, corpus: list[str] | None = None, family: str = "llava"):
    """A byte-level BPE tokenizer trained on ``corpus`` (default: a few English words), wrapped as a
    transformers fast tokenizer. ``family="llava"``: ``<s>`` prepended, ``</s>`` as EOS, ``<image>`` as image
    token (LLaVA-1.5's conventions). Other families (``FAMILY_TOKENS``): no BOS, the family's special tokens
    (Qwen's ``<|im_end|>`` as EOS, ``<|image_pad|>``, InternVL's ``<IMG_CONTEXT>`` ...), named as the family's
    stock processor looks them up on the tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = FAMILY_TOKENS[family]
    special = SPECIAL_TOKENS + [t for t in spec["extra"] if t not in SPECIAL_TOKENS]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus if corpus is not None else [" ".join(_CORPUS)] * 4, trainer=trainer)
    if spec["bos"]:
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>" if spec["bos"] else None, eos_token=spec["eos"], unk_token="<unk>",
        pad_token="<pad>", extra_special_tokens=spec["named"],
    )


def build_processor(geometry: ToyGeometry, tokenizer, chat_template: str | None = LLAVA15_CHAT_TEMPLATE):
    """CLIP image processor + tokenizer, expanding ``<image>`` to one id per visual token."""
    return make_llava_processor(geometry.image_size, geometry.patch_size, tokenizer, chat_template)


def make_llava_processor(size: int, patch_size: int, tokenizer, chat_template: str | None = LLAVA15_CHAT_TEMPLATE):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        do_center_crop=True, do_resize=True,
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=chat_template,
    )


def build_config(geometry: ToyGeometry, tokenizer):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    g = geometry
    vision = CLIPVisionConfig(
        hidden_size=g.vision_hidden, intermediate_size=g.vision_intermediate or 4 * g.vision_hidden,
        num_hidden_layers=g.vision_layers,
        num_attention_heads=g.vision_heads, image_size=g.image_size, patch_size=g.patch_size,
        projection_dim=g.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=g.model_vocab or len(tokenizer), hidden_size=g.text_hidden, intermediate_size=g.text_intermediate,
        num_hidden_layers=g.text_layers, num_attention_heads=g.text_heads, num_key_value_heads=g.text_kv_heads,
        max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_seq_length=(g.image_size // g.patch_size) ** 2, tie_word_embeddings=False,
    )
    return config


def build_random_llava(out_dir: str | Path, geometry: ToyGeometry | str = "tiny", seed: int = 0,
                       chat_template: str | None = LLAVA15_CHAT_TEMPLATE, with_clip: bool = False,
                       allow_eos: bool = True) -> Path:
    """Write a random-init LLaVA (weights, config, tokenizer, processor) to ``out_dir``; return the path.
    ``with_clip`` also writes ``clip/``: a CLIP model whose vision half is the LLaVA's vision tower and
    whose text half is random (what IVTP's relevance needs), with the same tokenizer. ``allow_eos=False``
    zeroes the LM head's EOS row: its logit is 0 where the others spread widely, so greedy decoding never
    picks it and always runs ``max_new_tokens`` (for timing)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    if isinstance(geometry, str):
        if geometry not in GEOMETRIES:
            raise ValueError(f"unknown geometry {geometry!r}; choose one of {sorted(GEOMETRIES)}")
        geometry = GEOMETRIES[geometry]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(geometry.vocab_size)
    processor = build_processor(geometry, tokenizer, chat_template)
    config = build_config(geometry, tokenizer)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    # Random init gives near-uniform logits; a larger lm_head spread makes greedy decoding decisive,
    # so parity tests compare real choices rather than near-ties.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
        if not allow_eos:
            model.lm_head.weight[tokenizer.eos_token_id] = 0.0
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    if with_clip:
        from transformers import CLIPConfig, CLIPModel, CLIPTextConfig

        text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, max_position_embeddings=64, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
        clip = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=config.vision_config.to_dict(),
                                    projection_dim=32))
        clip.vision_model.load_state_dict(model.model.vision_tower.state_dict())
        clip.save_pretrained(out / "clip", safe_serialization=True)
        tokenizer.save_pretrained(out / "clip")
    (out / "toy_geometry.json").write_text(json.dumps(geometry.__dict__, indent=1))
    return out
