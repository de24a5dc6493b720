"""Model geometries for FLOPs estimates without weights: LLaVA-1.5-7B and -13B and four later families built in,
or a local LLaVA config.json.

The LLaVA-1.5 shapes are those of the public configs (``llava-hf/llava-1.5-7b-hf``, ``llava-hf/llava-1.5-13b-hf``):
the LLM is Vicuna-v1.5 (Llama: gated MLP, no grouped-query attention, vocabulary 32064 with the image and pad
tokens), the vision tower CLIP ViT-L/14 at 336 px (24 layers, width 1024, MLP 4096, 16 heads, 24 x 24 = 576
patches + [CLS] = 577 tokens), the feature layer -2 (the output of the 23rd layer feeds the projector), and the
projector a 2-layer MLP 1024 -> D -> D. Nothing here reads weights or reaches a hub.

The four later families (issue 27, ``FAMILY_GEOMETRIES``) are written from their public configs as this module's
author knows them (no config could be downloaded here); each number names its source config:

- ``llava-onevision-7b`` (``llava-hf/llava-onevision-qwen2-7b-ov-hf``): SigLIP-so400m at 384 px, patch 14 ->
  27 x 27 = 729 patches per crop, **no [CLS]** (``vision_feature_select_strategy="full"``), width 1152, MLP 4304,
  26 layers (the checkpoint keeps 26 of SigLIP's 27), feature layer -1; projector Linear 1152 -> 3584, GELU, Linear
  3584 -> 3584; LLM Qwen2-7B: width 3584, MLP 18944, 28 layers, 28 query / 4 key-value heads of 128. Vocabulary
  152128 (**unsure**: Qwen2's 152064 plus added tokens; it sizes only the LM head's one row).
- ``llava-next-7b`` (``llava-hf/llava-v1.6-vicuna-7b-hf``): CLIP ViT-L/14-336 as LLaVA-1.5 (577 tokens per crop,
  [CLS] dropped: 576 rows), feature layer -2, projector 1024 -> 4096 -> 4096, LLM Vicuna-7B (4096, 11008, 32
  layers, 32 heads, vocabulary 32064; **unsure** of the vocabulary, as above).
- ``qwen2.5-vl-7b`` (``Qwen/Qwen2.5-VL-7B-Instruct``): ViT of 32 blocks, width 1280, gated MLP 3420 (SiLU), patch
  14 with temporal patch 2 (an image is two identical frames: the patch embedding sees 3 x 2 channels), windowed
  attention over 112 px windows (8 x 8 = 64 patches) with full attention in blocks 7, 15, 23 and 31
  (``fullatt_block_indexes``), PatchMerger 2 x 2: RMSNorm, Linear 5120 -> 5120, GELU, Linear 5120 -> 3584; LLM
  Qwen2.5-7B: 3584, MLP 18944, 28 layers, 28 query / 4 key-value heads of 128, vocabulary 152064. The resolution
  is dynamic; the geometry fixes one image of 672 x 672 px: 48 x 48 = 2304 patches (6 x 6 whole windows), 24 x 24
  = 576 merged tokens (as many as LLaVA-1.5 has).
- ``internvl3-8b`` (``OpenGVLab/InternVL3-8B-hf``): InternViT-300M at 448 px, patch 14 -> 32 x 32 = 1024 patches +
  [CLS] = 1025 tokens per tile, width 1024, MLP 4096, 24 layers, feature layer -1, [CLS] dropped; pixel shuffle 0.5
  -> 16 x 16 = 256 rows of width 4096 per tile; projector LayerNorm, Linear 4096 -> 3584, GELU, Linear 3584 ->
  3584; LLM Qwen2.5-7B as above, vocabulary 151674 (**unsure**, as above).

The crops or tiles an image gets depend on its size; each family's geometry fixes one, a square image that needs
2 x 2 crops or tiles (``layout`` says which):

- LLaVA-NeXT, 672 x 672 px: the base image + 2 x 2 crops = 5 ViT passes; the LLM gets the base image's 576 rows,
  then the crops' 48 x 48 grid with a newline row after each of its 48 rows (``pack_image_features``: no newline
  after the base image when there are crops): 576 + 48 x 49 = 2928 rows. The projector runs on 5 x 576 = 2880.
- LLaVA-OneVision, 768 x 768 px: base + 2 x 2 crops = 5 passes; 729 + 54 x 55 = 3699 rows (``anyres_max_9``
  shrinks the crops' grid only above 9 x 729 x 1.1^2 patches, not here); the projector runs on 5 x 729 = 3645.
- InternVL3, 896 x 896 px: 2 x 2 tiles + the thumbnail (added when there is more than one tile) = 5 passes,
  5 x 256 = 1280 rows, all through the projector.

The packed rows of the anyres families and InternVL are the engine's 1 x N strip (``pruning.adapters.anyres``),
so the geometry's grid is 1 x N too; Qwen2.5-VL's is its merged grid. In every new family the stock
``get_image_features`` (or Qwen's PatchMerger inside the tower) projects all rows before a strategy prunes, so the
projector is counted on all of them whatever the strategy (``projector_rows``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .cost import LLMShape, VisionShape


@dataclass(frozen=True)
class ModelGeometry:
    """What a FLOPs estimate needs to know about a LLaVA: its shapes, patch grid and feature layer."""

    name: str
    llm: LLMShape
    vision: VisionShape
    rows: int  # patch grid
    cols: int
    vision_feature_layer: int  # hidden_states index feeding the projector (-2 for LLaVA-1.5)
    source: str  # where the shapes come from
    # The families beyond LLaVA-1.5 (defaults: LLaVA-1.5's one image, its MLP projector on the kept rows only).
    family: str = "llava"
    crops: int = 1  # ViT passes per image: anyres base + crops, InternVL tiles + thumbnail
    projector_dims: tuple[tuple[int, int], ...] = ()  # the projector's matrices (in, out); () = LLaVA's MLP
    projector_rows: int | None = None  # rows the projector runs on before any pruning (None: only the kept ones)
    layout: str = ""  # how an image becomes the visual tokens, in words
    image_px: int = 336  # the side of the square image the geometry's token counts are for

    @property
    def n_patches(self) -> int:
        """Visual tokens in the LLM for one image (the packed rows for the multi-crop families)."""
        return self.rows * self.cols

    @property
    def feature_layer_index(self) -> int:
        """0-based ViT layer whose output feeds the LLM (22 of 0..23 for LLaVA-1.5)."""
        return self.vision_feature_layer % (self.vision.layers + 1) - 1

    def to_json(self) -> dict:
        return {"name": self.name, "source": self.source, "llm": asdict(self.llm), "vision": asdict(self.vision),
                "grid": [self.rows, self.cols], "vision_feature_layer": self.vision_feature_layer,
                "feature_layer_index": self.feature_layer_index, "family": self.family, "crops": self.crops,
                "vit_tokens_per_crop": self.vision.n_tokens, "visual_tokens": self.n_patches,
                "projector_rows": self.projector_rows, "projector_dims": [list(d) for d in self.projector_dims],
                "layout": self.layout, "image_px": self.image_px}


_CLIP_L_336 = dict(hidden=1024, intermediate=4096, layers=24, patch_size=14, channels=3, n_tokens=24 * 24 + 1)


def _llava15(name: str, hidden: int, intermediate: int, layers: int, heads: int) -> ModelGeometry:
    return ModelGeometry(
        name=name,
        llm=LLMShape(hidden=hidden, heads=heads, kv_heads=heads, head_dim=hidden // heads, intermediate=intermediate,
                     vocab=32064, layers=layers),
        vision=VisionShape(projector_out=hidden, **_CLIP_L_336),
        rows=24, cols=24, vision_feature_layer=-2,
        source=f"built in: the public config of llava-hf/{name}-hf (no weights)",
    )


BUILT_IN = {
    "llava-1.5-7b": _llava15("llava-1.5-7b", hidden=4096, intermediate=11008, layers=32, heads=32),
    "llava-1.5-13b": _llava15("llava-1.5-13b", hidden=5120, intermediate=13824, layers=40, heads=40),
}



_QWEN_7B = dict(hidden=3584, heads=28, kv_heads=4, head_dim=128, intermediate=18944, layers=28)  # Qwen2(.5)-7B


def _family_geometries() -> dict[str, ModelGeometry]:
    """The four later families at one square image each (module docstring: sources, crops, row counts)."""
    # LLaVA-OneVision-7B: SigLIP 27 x 27 per crop, base + 2 x 2 crops; the crops' 54 x 54 grid + a newline per row
    ov_side, ov_crops = 384 // 14, 2
    ov_rows = ov_side ** 2 + (ov_crops * ov_side) * (ov_crops * ov_side + 1)
    onevision = ModelGeometry(
        name="llava-onevision-7b", family="llava_onevision",
        llm=LLMShape(vocab=152128, **_QWEN_7B),
        vision=VisionShape(hidden=1152, intermediate=4304, layers=26, patch_size=14, channels=3, n_tokens=ov_side ** 2,
                           projector_out=3584, cls_token=False),
        rows=1, cols=ov_rows, vision_feature_layer=-1, crops=1 + ov_crops ** 2, image_px=768,
        projector_dims=((1152, 3584), (3584, 3584)), projector_rows=(1 + ov_crops ** 2) * ov_side ** 2,
        layout=f"768 x 768 px: base + 2 x 2 crops of {ov_side} x {ov_side} SigLIP patches (no [CLS]); LLM rows = "
               f"base {ov_side ** 2} + crops {2 * ov_side} x {2 * ov_side} + {2 * ov_side} newlines = {ov_rows}",
        source="built in: the public config of llava-hf/llava-onevision-qwen2-7b-ov-hf (no weights; vocabulary unsure)")
    # LLaVA-NeXT-7B (v1.6 Vicuna): CLIP 24 x 24 (+ [CLS]) per crop, base + 2 x 2 crops, newline per crop-grid row
    nx_side, nx_crops = 336 // 14, 2
    nx_rows = nx_side ** 2 + (nx_crops * nx_side) * (nx_crops * nx_side + 1)
    nxt = ModelGeometry(
        name="llava-next-7b", family="llava_next",
        llm=LLMShape(hidden=4096, heads=32, kv_heads=32, head_dim=128, intermediate=11008, vocab=32064, layers=32),
        vision=VisionShape(projector_out=4096, **_CLIP_L_336),
        rows=1, cols=nx_rows, vision_feature_layer=-2, crops=1 + nx_crops ** 2, image_px=672,
        projector_dims=((1024, 4096), (4096, 4096)), projector_rows=(1 + nx_crops ** 2) * nx_side ** 2,
        layout=f"672 x 672 px: base + 2 x 2 crops of {nx_side} x {nx_side} CLIP patches (+ [CLS], dropped); LLM rows = "
               f"base {nx_side ** 2} + crops {2 * nx_side} x {2 * nx_side} + {2 * nx_side} newlines = {nx_rows}",
        source="built in: the public config of llava-hf/llava-v1.6-vicuna-7b-hf (no weights; vocabulary unsure)")
    # Qwen2.5-VL-7B at 672 x 672 px: 48 x 48 patches, windows of 8 x 8, 2 x 2 merge -> 24 x 24
    q_side, merge, window = 672 // 14, 2, 112 // 14
    qwen = ModelGeometry(
        name="qwen2.5-vl-7b", family="qwen2_5_vl",
        llm=LLMShape(vocab=152064, **_QWEN_7B),
        vision=VisionShape(hidden=1280, intermediate=3420, layers=32, patch_size=14, channels=3 * 2,
                           n_tokens=q_side ** 2, projector_out=3584, cls_token=False, gated_mlp=True,
                           window=window ** 2, full_attention_layers=(7, 15, 23, 31)),
        rows=q_side // merge, cols=q_side // merge, vision_feature_layer=-1, image_px=672,
        projector_dims=((1280 * merge ** 2, 1280 * merge ** 2), (1280 * merge ** 2, 3584)),
        projector_rows=(q_side // merge) ** 2,
        layout=f"672 x 672 px (dynamic resolution; this size fixed): {q_side} x {q_side} patches of 14 px (2 frames), "
               f"attention in {(q_side // window) ** 2} windows of {window} x {window} patches except blocks 7, 15, 23, "
               f"31; 2 x 2 PatchMerger -> {q_side // merge} x {q_side // merge} = {(q_side // merge) ** 2} tokens",
        source="built in: the public config of Qwen/Qwen2.5-VL-7B-Instruct (no weights)")
    # InternVL3-8B: InternViT 32 x 32 (+ [CLS]) per 448 px tile, pixel shuffle 0.5 -> 16 x 16; 2 x 2 tiles + thumbnail
    iv_side, iv_tiles = 448 // 14, 2 ** 2 + 1
    iv_per_tile = (iv_side // 2) ** 2
    internvl = ModelGeometry(
        name="internvl3-8b", family="internvl",
        llm=LLMShape(vocab=151674, **_QWEN_7B),
        vision=VisionShape(hidden=1024, intermediate=4096, layers=24, patch_size=14, channels=3,
                           n_tokens=iv_side ** 2 + 1, projector_out=3584),
        rows=1, cols=iv_tiles * iv_per_tile, vision_feature_layer=-1, crops=iv_tiles, image_px=896,
        projector_dims=((1024 * 4, 3584), (3584, 3584)), projector_rows=iv_tiles * iv_per_tile,
        layout=f"896 x 896 px: 2 x 2 tiles of 448 px + the thumbnail = {iv_tiles} tiles of {iv_side} x {iv_side} "
               f"patches (+ [CLS], dropped); pixel shuffle 0.5 -> {iv_per_tile} rows per tile, "
               f"{iv_tiles * iv_per_tile} in all",
        source="built in: the public config of OpenGVLab/InternVL3-8B-hf (no weights; vocabulary unsure)")
    return {g.name: g for g in (onevision, nxt, qwen, internvl)}


FAMILY_GEOMETRIES = _family_geometries()
ALL_GEOMETRIES = {**BUILT_IN, **FAMILY_GEOMETRIES}


def from_config(config, name: str, source: str) -> ModelGeometry:
    """A geometry from a transformers ``LlavaConfig``."""
    from .cost import llm_shape, vision_shape

    vc = config.vision_config
    side = vc.image_size // vc.patch_size
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"vision_feature_layer={layer!r}: only a single int feature layer is supported")
    return ModelGeometry(name=name, llm=llm_shape(config.text_config), vision=vision_shape(config), rows=side,
                         cols=side, vision_feature_layer=layer, source=source)


def load_geometry(name_or_dir: str) -> ModelGeometry:
    """A built-in geometry (``ALL_GEOMETRIES``: LLaVA-1.5-7B/13B and the four later families), or a local LLaVA
    directory whose config.json is read (weights are not needed and never loaded)."""
    if name_or_dir in ALL_GEOMETRIES:
        return ALL_GEOMETRIES[name_or_dir]
    path = Path(name_or_dir)
    cfg = path / "config.json"
    if not path.is_dir() or not cfg.is_file():
        raise ValueError(f"unknown geometry {name_or_dir!r}: expected {', '.join(ALL_GEOMETRIES)} or a local model "
                         "directory holding a config.json")
    try:
        model_type = json.loads(cfg.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg} is not valid JSON: {e}") from e
    if model_type != "llava":
        raise ValueError(f"{cfg} has model_type={model_type!r}, not a LLaVA config ('llava')")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)  # fills the defaults a config leaves out
    return from_config(config, name=path.name, source=f"{cfg}")
