"""Load a LLaVA model (local directory or hub id), optionally in 4-bit, with its processor and geometry.

The same code path loads ``llava-hf/llava-1.5-7b-hf`` by name (where a hub is reachable) and a local
directory such as the embedded model or a test fixture: ``LlavaForConditionalGeneration.from_pretrained``
and ``AutoProcessor.from_pretrained``, safetensors only, never ``trust_remote_code``.
"""

from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

# The embedded default model, trained by `python -m pruning.shapes.train` and shipped with the project.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "model"

# LLaVA-1.5's conversation format, used when the processor ships no chat template.
DEFAULT_PROMPT = "USER: <image>\n{question} ASSISTANT:"


# model_type -> the stock class that loads it (issue 27: families beyond LLaVA-1.5 with an engine adapter)
MODEL_CLASSES = {"llava": "LlavaForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                 "llava_onevision": "LlavaOnevisionForConditionalGeneration",
                 "llava_next": "LlavaNextForConditionalGeneration", "internvl": "InternVLForConditionalGeneration"}


class ModelLoadError(ValueError):
    """The model directory / id cannot be loaded as a LLaVA model; the message names the problem."""


@dataclass(frozen=True)
class Geometry:
    """Where visual tokens come from: the patch grid and the vision layers that score it."""

    image_size: int  # square input side in pixels
    patch_size: int  # ViT patch side in pixels
    rows: int  # patch grid rows
    cols: int  # patch grid cols
    has_cls: bool  # the vision tower prepends a [CLS] token
    vision_feature_layer: int  # hidden_states index that feeds the projector (-2 for LLaVA-1.5)
    select_strategy: str  # "default" drops [CLS] from the features, "full" keeps all
    vision_layers: int  # ViT depth
    llm_layers: int  # LLM depth

    @property
    def n_patches(self) -> int:
        return self.rows * self.cols

    @property
    def feature_layer_index(self) -> int:
        """0-based index of the ViT layer whose output feeds the LLM (hidden_states[0] are embeddings)."""
        n = self.vision_layers + 1
        return (self.vision_feature_layer % n) - 1


@dataclass
class LoadedModel:
    """A loaded LLaVA: model, processor, geometry and how it was loaded."""

    model: object  # LlavaForConditionalGeneration
    processor: object  # LlavaProcessor
    geometry: Geometry
    device: str
    dtype: object  # torch dtype of activations
    load_in_4bit: bool
    source: str  # directory or hub id

    def prompt(self, question: str) -> str:
        """The full prompt string (with one ``<image>`` placeholder) for a single-turn question."""
        return build_prompt(self.processor, question)


# The longest question accepted, in characters, counted before anything reads the text (a tokenizer takes
# seconds over megabytes, and the app's queue would wait for it). LLaVA-1.5's context of 4,096 tokens, less its
# 576 image tokens, holds about 3,500 question tokens: about 14,000 characters of English at ~4 characters a token.
# A question under this bound may still be refused by the model's context, in tokens (``Engine.prepare``).
MAX_QUESTION_CHARS = 16_000


def check_question(question, image_token: str | None = "<image>") -> None:
    """What a question must be before anything reads it, in the order that costs least: text, at most
    ``MAX_QUESTION_CHARS`` characters (its length, never its tokens), without the image placeholder (which would
    add a second image span). Every library entry point that takes a question calls this (``clean_question`` too)
    before loading an image or taking the model's lock."""
    if not isinstance(question, str):
        raise ValueError(f"question must be text, got {type(question).__name__}")
    if len(question) > MAX_QUESTION_CHARS:
        raise ValueError(f"question is too long: {len(question):,} characters, more than the {MAX_QUESTION_CHARS:,} "
                         "accepted (refused before reading it); ask a shorter question")
    if image_token and image_token in question:
        raise ValueError(f"question contains the image placeholder {image_token!r}: the image is added by "
                         "PruneScope, remove the placeholder from the question")


def clean_question(question, image_token: str = "<image>") -> tuple[str, list[str]]:
    """The question as the model will read it, and what was changed, in words. Refused (ValueError): what
    ``check_question`` refuses, and empty or whitespace only. Lone surrogates (half of a UTF-16 pair: what a JSON
    "\\ud800" decodes to; not text, and a tokenizer raises on them) are removed and a well-formed pair becomes its
    character; control characters other than newline and tab are removed; the notes say what was removed."""
    check_question(question, image_token)
    notes = []
    surrogates = sum(1 for ch in question if "\ud800" <= ch <= "\udfff")
    if surrogates:
        joined = question.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "ignore")
        lone = 2 * (len(question) - len(joined)) - surrogates  # each pair joined shortens it by 1, each lone by 1
        if lone:
            notes.append(f"removed {lone} lone surrogate(s) (half of a UTF-16 pair, not text) from the question")
        question = joined
    cleaned = "".join(ch for ch in question if ch in "\n\t" or unicodedata.category(ch) != "Cc")
    if len(cleaned) != len(question):
        notes.append(f"removed {len(question) - len(cleaned)} control character(s) from the question")
    if not cleaned.strip():
        raise ValueError("question is empty: give a non-empty text question")
    if image_token and image_token in cleaned:  # control characters could have split it
        raise ValueError(f"question contains the image placeholder {image_token!r}: the image is added by "
                         "PruneScope, remove the placeholder from the question")
    return cleaned.strip(), notes


def build_prompt(processor, question: str) -> str:
    question, _ = clean_question(question, getattr(processor, "image_token", "<image>"))
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    return DEFAULT_PROMPT.format(question=question)


def geometry_from_config(config) -> Geometry:
    """Read the patch grid geometry from a ``LlavaConfig`` (or a Qwen2.5-VL / LLaVA-OneVision config: no fixed grid,
    ``rows = cols = 0``, the grid of each image is ``Prepared.rows``/``cols``); raise for layouts the engine cannot
    prune."""
    if config.model_type == "qwen2_5_vl":
        vc = config.vision_config
        return Geometry(image_size=0, patch_size=vc.patch_size * vc.spatial_merge_size, rows=0, cols=0, has_cls=False,
                        vision_feature_layer=-1, select_strategy="full", vision_layers=vc.depth,
                        llm_layers=config.text_config.num_hidden_layers)
    vc = config.vision_config
    if config.model_type in ("llava_onevision", "llava_next", "internvl"):  # crops / tiles: N is per image
        # has_cls=False: no [CLS] row reaches the packed rows the strategies see (pruning/adapters/anyres.py)
        side = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
        patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
        return Geometry(image_size=side, patch_size=patch, rows=0, cols=0, has_cls=False,
                        vision_feature_layer=config.vision_feature_layer,
                        select_strategy=config.vision_feature_select_strategy, vision_layers=vc.num_hidden_layers,
                        llm_layers=config.text_config.num_hidden_layers)
    if not isinstance(config.vision_feature_layer, int):
        raise ModelLoadError(
            f"vision_feature_layer={config.vision_feature_layer!r}: only a single int feature layer is supported"
        )
    has_cls = vc.model_type in ("clip_vision_model",)
    strategy = config.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise ModelLoadError(f"vision_feature_select_strategy={strategy!r}: expected 'default' or 'full'")
    if has_cls and strategy != "default":
        raise ModelLoadError("a [CLS] vision tower with vision_feature_select_strategy='full' is not supported")
    side = vc.image_size // vc.patch_size
    return Geometry(
        image_size=vc.image_size, patch_size=vc.patch_size, rows=side, cols=side, has_cls=has_cls,
        vision_feature_layer=config.vision_feature_layer, select_strategy=strategy,
        vision_layers=vc.num_hidden_layers, llm_layers=config.text_config.num_hidden_layers,
    )


def _check_local_dir(path: Path) -> None:
    if not path.is_dir():
        raise ModelLoadError(f"model directory {str(path)!r} is not a directory")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ModelLoadError(f"model directory {str(path)!r} has no config.json")
    try:
        model_type = json.loads(cfg.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{cfg} is not valid JSON: {e}") from e
    if model_type not in MODEL_CLASSES:
        raise ModelLoadError(f"{cfg} has model_type={model_type!r}, not a LLaVA config ('llava') nor another "
                             f"family the engine drives ({', '.join(t for t in MODEL_CLASSES if t != 'llava')})")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for ext in ("bin", "pt", "pth", "ckpt", "pkl") for p in path.glob(f"*.{ext}"))
        said = f" ({', '.join(pickles)}: pickle checkpoints are never loaded, convert to safetensors)" if pickles else ""
        raise ModelLoadError(f"model directory {str(path)!r} holds no .safetensors weights{said}")


def _model_type(source: str, is_local: bool) -> str:
    """The config's model_type (a hub id: read through ``AutoConfig``); one with an engine adapter, else refused."""
    if is_local:
        return json.loads((Path(source) / "config.json").read_text())["model_type"]
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(source, trust_remote_code=False).model_type
    if model_type not in MODEL_CLASSES:
        raise ModelLoadError(f"{source!r} has model_type={model_type!r}: the engine drives {', '.join(MODEL_CLASSES)}")
    return model_type


def load_model(name_or_path: str, load_in_4bit: bool = False, device: str | None = None,
               attn_implementation: str = "sdpa") -> LoadedModel:
    """Load model + processor from a local directory or a hub id.

    ``load_in_4bit`` quantizes the linear layers with bitsandbytes nf4 + double quantization
    (compute dtype bf16 on CUDA, fp32 on CPU). ``device`` defaults to CUDA when available.
    """
    import torch
    import transformers
    from transformers import BitsAndBytesConfig

    from .processors import load_processor

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ModelLoadError(f"device={device!r}: expected 'cpu' or 'cuda[:N]'")
    if attn_implementation not in ("sdpa", "eager"):
        raise ModelLoadError(f"attn_implementation={attn_implementation!r}: expected 'sdpa' or 'eager'")
    path = Path(name_or_path).expanduser()
    is_local = path.exists() or name_or_path.startswith((".", "/", "~"))
    if is_local:
        _check_local_dir(path)
        source = str(path)
    else:
        if name_or_path.count("/") != 1:
            raise ModelLoadError(
                f"{name_or_path!r} is neither an existing directory nor a hub id of the form 'owner/name'"
            )
        source = name_or_path
    on_cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if on_cuda else torch.float32
    kwargs = dict(use_safetensors=True, trust_remote_code=False, attn_implementation=attn_implementation)
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device}
        kwargs["dtype"] = dtype
    else:
        kwargs["dtype"] = torch.float16 if on_cuda else torch.float32
        dtype = kwargs["dtype"]
    try:
        model_type = _model_type(source, is_local)
        model_cls = getattr(transformers, MODEL_CLASSES[model_type])
        model = model_cls.from_pretrained(source, **kwargs)
        processor = load_processor(source, model_type)
    except OSError as e:
        raise ModelLoadError(f"cannot load {source!r}: {str(e).splitlines()[0]}") from e
    if not load_in_4bit:
        model = model.to(device)
    elif not on_cuda:
        _check_cpu_4bit(model, source)
    model.eval()
    geometry = geometry_from_config(model.config)
    return LoadedModel(model=model, processor=processor, geometry=geometry, device=device, dtype=dtype,
                       load_in_4bit=load_in_4bit, source=source)


def _check_cpu_4bit(model, source: str) -> None:
    """bitsandbytes' CPU nf4 path repacks each quantised weight as (out, in / blocksize) blocks at its first forward,
    so a linear layer whose input width is not a multiple of the block size (64) fails there with a reshape error.
    Refuse such a model at load time instead, naming the first such layer (real checkpoints' widths are multiples
    of 64; tiny test models may not be: the tiny Qwen2.5-VL's vision blocks are 32 wide)."""
    import bitsandbytes as bnb

    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = getattr(module.weight, "quant_state", None)
            block = state.blocksize if state is not None else 64
            if module.in_features % block:
                raise ModelLoadError(
                    f"{source!r} cannot run in 4-bit on the CPU: bitsandbytes' CPU nf4 kernels need every quantised "
                    f"linear layer's input width to be a multiple of {block}, and {name} takes {module.in_features} "
                    "(load it without 4-bit, or on CUDA)")


# LLaVA-1.5's vision tower is this CLIP model; IVTP uses its text half.
LLAVA15_CLIP_ID = "openai/clip-vit-large-patch14-336"


def load_clip(lm: LoadedModel):
    """The CLIP model (vision + text halves) aligned with ``lm``'s vision tower, and its tokenizer:
    ``<dir>/clip`` for a local model, ``openai/clip-vit-large-patch14-336`` for a hub model. Returns
    ((model, tokenizer), None), or (None, reason) when it cannot be loaded. Cached on ``lm``."""
    cached = getattr(lm, "_clip", None)
    if cached is not None:
        return cached
    import torch
    from transformers import AutoTokenizer, CLIPModel

    local = Path(lm.source) / "clip"
    source = str(local) if local.is_dir() else (LLAVA15_CLIP_ID if not Path(lm.source).exists() else None)
    if source is None:
        result = (None, f"no CLIP text encoder: {local} does not exist")
    else:
        try:
            dtype = torch.float32 if lm.device == "cpu" else torch.float16
            model = CLIPModel.from_pretrained(source, dtype=dtype, use_safetensors=True,
                                              trust_remote_code=False).to(lm.device).eval()
            result = ((model, AutoTokenizer.from_pretrained(source, trust_remote_code=False)), None)
        except OSError as e:
            result = (None, f"no CLIP text encoder: cannot load {source!r} ({str(e).splitlines()[0]})")
    lm._clip = result
    return result
