"""Model geometries for FLOPs estimates without weights: LLaVA-1.5-7B and -13B built in, or a local config.json.

The built-in shapes are those of the public configs (``llava-hf/llava-1.5-7b-hf``, ``llava-hf/llava-1.5-13b-hf``):
the LLM is Vicuna-v1.5 (Llama: gated MLP, no grouped-query attention, vocabulary 32064 with the image and pad
tokens), the vision tower CLIP ViT-L/14 at 336 px (24 layers, width 1024, MLP 4096, 16 heads, 24 x 24 = 576
patches + [CLS] = 577 tokens), the feature layer -2 (the output of the 23rd layer feeds the projector), and the
projector a 2-layer MLP 1024 -> D -> D. Nothing here reads weights or reaches a hub.
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

    @property
    def n_patches(self) -> int:
        return self.rows * self.cols

    @property
    def feature_layer_index(self) -> int:
        """0-based ViT layer whose output feeds the LLM (22 of 0..23 for LLaVA-1.5)."""
        return self.vision_feature_layer % (self.vision.layers + 1) - 1

    def to_json(self) -> dict:
        return {"name": self.name, "source": self.source, "llm": asdict(self.llm), "vision": asdict(self.vision),
                "grid": [self.rows, self.cols], "vision_feature_layer": self.vision_feature_layer,
                "feature_layer_index": self.feature_layer_index}


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
    """``llava-1.5-7b``, ``llava-1.5-13b``, or a local LLaVA directory whose config.json is read (weights are not
    needed and never loaded)."""
    if name_or_dir in BUILT_IN:
        return BUILT_IN[name_or_dir]
    path = Path(name_or_dir)
    cfg = path / "config.json"
    if not path.is_dir() or not cfg.is_file():
        raise ValueError(f"unknown geometry {name_or_dir!r}: expected {', '.join(BUILT_IN)} or a local model "
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
