"""What the engine's loop asks of a model family, and the LLM-side parts every family shares.

The engine (``pruning.engine.Engine``) owns one loop: prefill decoder layer by decoder layer with a
``DynamicCache``, dropping image rows at a strategy's layers, decode over the per-layer cache, trace. Everything
that differs between families sits behind an ``Adapter``:

- ``prepare``: the processor call and where the image's placeholder ids sit in the prompt (one contiguous span
  of ``n_image`` ids), the family's own position ids of the full prompt (``Prepared.position_ids``, shape
  (P, S): P = 1 for 1-D RoPE, 3 for Qwen's M-RoPE), the token grid of this image (rows x cols; dynamic families
  have one per image);
- ``vision_pass``: the vision tower once, the features that the projector turns into the LLM's image rows, and
  the scores strategies read ([CLS] attention where the tower has a [CLS]); ``project``: features -> LLM rows;
- the LLM's modules (``layers``, ``embed_tokens``, ``norm``, ``rotary_emb``, ``lm_head``) and ``rotary``, which
  turns (P, S) position ids into the (cos, sin) pair the family's decoder layers take.

An adapter never patches a module: it calls the stock ones (forward hooks, removed on exit, where a score is
read from inside a module).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..strategies import VisionContext


@dataclass
class Prepared:
    """Processor output for one (image, question)."""

    pixel_values: torch.Tensor  # the image tensor the family's vision tower takes (LLaVA: (1, 3, H, W))
    input_ids: torch.Tensor  # (S_full,) with N image placeholder ids
    image_start: int  # index of the first image placeholder
    n_image: int  # N, placeholders = visual tokens before pruning
    question: str = ""
    prompt: str = ""  # the prompt text with one image placeholder
    notes: list | None = None  # what was changed in the input, in words (e.g. control characters removed)
    rows: int | None = None  # the visual tokens' grid (None: the model's fixed grid, ``Geometry.rows``)
    cols: int | None = None
    position_ids: torch.Tensor | None = None  # (P, S_full) the family's position ids of the full prompt
    #                                            (None: 0..S_full-1, one row)
    vision_inputs: dict | None = None  # other processor tensors the vision pass takes (Qwen: image_grid_thw)
    image_cost: object = None  # this image's vision-side shapes for FLOPs (``Adapter.image_cost``, ``cost.ImageCost``)
    image_hw: tuple | None = None  # (height, width) px of the image handed to the processor


@dataclass
class SubstituteScores(VisionContext):
    """A ``VisionContext`` whose ``cls_attention`` holds a substitute score, named in ``score_note``, for a vision
    tower without [CLS] (Qwen2.5-VL). It records whether a strategy read ``cls_attention`` (directly or through
    ``cls_scores``), so that the engine names the substitute in the result's notes exactly when a strategy used it,
    and never otherwise. ``dataclasses.replace`` (the engine's ``_strategy_inputs``) keeps the class and the note.

    The score is computed on first read: the vision pass's hooks keep only what it needs (``score_fn`` computes it
    from them), so a strategy that never reads it (none, random, pooling ...) does not pay for it in time."""

    score_note: str = ""
    score_fn: object = None  # () -> (L_v, H, N) ``cls_attention``, called on its first read (then dropped)

    def __getattribute__(self, name):
        if name == "cls_attention":
            state = object.__getattribute__(self, "__dict__")
            state["_read_cls_attention"] = True
            if state.get("cls_attention") is None and state.get("score_fn") is not None:
                with torch.no_grad():
                    state["cls_attention"] = state["score_fn"]()
                state["score_fn"] = None
        return super().__getattribute__(name)

    def substitute_used(self) -> bool:
        return self.__dict__.get("_read_cls_attention", False)


@contextlib.contextmanager
def forward_hooks(hooks):
    """Register forward hooks, given as (module, hook) or (module, hook, with_kwargs); remove every one on exit, also
    when the body raises (no module keeps a hook past the call that needed it)."""
    handles = []
    try:
        for module, hook, *kw in hooks:
            handles.append(module.register_forward_hook(hook, with_kwargs=bool(kw and kw[0])))
        yield handles
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def query_key_hooks(attentions, on_pair, names=lambda attn: ("q_proj", "k_proj")):
    """Per attention module i: forward hooks on its query and key projections (``names(attn)``); once the keys are
    computed, ``on_pair(i, attn, queries, keys)`` gets both outputs (what the layer computes anyway). Removed on
    exit (``forward_hooks``)."""
    queries = {}

    def q_hook(i):
        def hook(module, args, output):
            queries[i] = output
        return hook

    def k_hook(i, attn):
        def hook(module, args, output):
            on_pair(i, attn, queries.pop(i), output)
        return hook

    hooks = []
    for i, attn in enumerate(attentions):
        q_name, k_name = names(attn)
        hooks += [(getattr(attn, q_name), q_hook(i)), (getattr(attn, k_name), k_hook(i, attn))]
    with forward_hooks(hooks):
        yield


def check_indices(idx: torch.Tensor, n: int, name: str) -> None:
    """A strategy's kept indices: 1-D, inside [0, n), unique and ascending (spatial order)."""
    if idx.dim() != 1:
        raise ValueError(f"strategy {name!r} returned indices of shape {tuple(idx.shape)}, expected 1-D")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"strategy {name!r} returned indices outside [0, {n})")
    if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise ValueError(f"strategy {name!r} returned indices that are not unique and ascending (spatial order)")


def attention_module_fns(attn):
    """``apply_rotary_pos_emb`` and ``repeat_kv`` from the module that defines the attention class (each family's
    modeling file defines both; Qwen2.5-VL's rotary embedding already folds the M-RoPE sections into cos/sin)."""
    import sys

    mod = sys.modules[type(attn).__module__]
    return mod.apply_rotary_pos_emb, mod.repeat_kv


class Adapter:
    """One model family. Subclasses set the vision side; the LLM side is read from ``language_model``/``lm_head``.

    Attributes the engine and tools read: ``model``, ``geometry``, ``language_model``, ``layers``, ``embed_tokens``,
    ``norm``, ``rotary_emb``, ``lm_head``, ``image_token_id``, ``text_config``, ``position_dims``.
    """

    family = ""
    position_dims = 1  # rows of the position ids: 1 (RoPE over one index) or 3 (M-RoPE: temporal, height, width)

    def __init__(self, lm, language_model, lm_head, image_token_id: int, text_config):
        self.lm = lm
        self.model = lm.model
        self.geometry = lm.geometry
        self.language_model = language_model
        self.layers = language_model.layers
        self.embed_tokens = language_model.embed_tokens
        self.norm = language_model.norm
        self.rotary_emb = language_model.rotary_emb
        self.lm_head = lm_head
        self.image_token_id = image_token_id
        self.text_config = text_config

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    # ---------------------------------------------------------------- positions
    def rotary(self, h: torch.Tensor, positions: torch.Tensor):
        """(cos, sin) for position ids ``positions`` (P, S) of the rows of ``h`` (1, S, D)."""
        return self.rotary_emb(h, positions)  # (1, S): batch of one

    def contiguous_positions(self, n: int) -> torch.Tensor:
        """Position ids 0..n-1 (``positions="rearrange"``), shape (P, n)."""
        return torch.arange(n, device=self.device)[None].expand(self.position_dims, n)

    def decode_positions(self, p: int) -> torch.Tensor:
        """The position ids (P, 1) of a generated token at text position ``p``."""
        return torch.full((self.position_dims, 1), p, dtype=torch.long, device=self.device)

    # ---------------------------------------------------------------- inputs
    def prepare(self, image, question: str) -> Prepared:
        """Run the processor; check the image placeholders form one contiguous span; the family's position ids."""
        from PIL import Image

        from ..model import clean_question

        if not isinstance(image, Image.Image):
            raise ValueError(f"image must be a PIL image, got {type(image).__name__}")
        processor = self.lm.processor
        question, notes = clean_question(question, getattr(processor, "image_token", "<image>"))
        prompt = self.lm.prompt(question)
        inputs = processor(images=image.convert("RGB"), text=prompt, return_tensors="pt")
        ids = inputs["input_ids"][0]
        where = (ids == self.image_token_id).nonzero().flatten()
        n, rows, cols = self.image_tokens(inputs)
        context = getattr(self.text_config, "max_position_embeddings", None)
        if context is not None and ids.shape[0] >= context:
            n_question = len(processor.tokenizer(question, add_special_tokens=False).input_ids)
            raise ValueError(f"question is too long: {n_question} tokens; with the image's {n} "
                             f"tokens the prompt holds {ids.shape[0]}, beyond the model's context of {context}")
        if where.numel() != n or (where.numel() and where[-1] - where[0] + 1 != n):
            raise ValueError(f"prompt holds {where.numel()} image placeholder ids, expected one span of {n}")
        prepared = Prepared(
            pixel_values=inputs["pixel_values"].to(self.device, self.vision_dtype), input_ids=ids.to(self.device),
            image_start=int(where[0]), n_image=n, question=question, prompt=prompt, notes=notes, rows=rows, cols=cols,
            image_hw=(image.height, image.width),
        )
        self.finish_prepare(prepared, inputs)
        prepared.image_cost = self.image_cost(prepared)  # once per image, outside the timed passes
        return prepared

    def image_tokens(self, inputs) -> tuple[int, int, int]:
        """(N, rows, cols): the visual tokens the processor made room for, as a grid."""
        g = self.geometry
        return g.n_patches, g.rows, g.cols

    def finish_prepare(self, prepared: Prepared, inputs) -> None:
        """Family-specific fields of ``prepared`` (position ids, extra vision inputs); default: none."""
        s = prepared.input_ids.shape[0]
        prepared.position_ids = torch.arange(s, device=self.device)[None]

    def token_layout(self, prepared: Prepared) -> dict:
        """Where each of the N image rows lies (``pruning.layout``): one row-major grid over the picture the model
        sees (``geometry.image_size`` square); families with several grids override it."""
        from ..layout import check_layout, grid_layout

        g = self.geometry
        rows, cols = prepared.rows or g.rows, prepared.cols or g.cols
        return check_layout(grid_layout(rows, cols, g.image_size, g.image_size, self.family), prepared.n_image,
                            self.family)

    # ---------------------------------------------------------------- vision
    def vision_shape(self):
        """The vision tower's shape for FLOPs estimates (``pruning.cost.VisionShape``)."""
        from .. import cost

        return cost.vision_shape(self.model.config)

    def image_cost(self, prepared: Prepared):
        """This image's vision-side shapes for FLOPs (``pruning.cost.ImageCost``); LLaVA-1.5: one pass of the
        tower, its MLP projector on the rows that enter the LLM."""
        from .. import cost

        return cost.ImageCost(self.vision_shape())

    def stock_vision_forward(self, prepared: Prepared):
        """The family's own vision forward on ``prepared`` (no hooks): what ``image_cost`` estimates."""
        raise NotImplementedError

    def projector_dims(self, module) -> tuple[tuple[int, int], ...]:
        """(in, out) of ``module``'s linear layers in the order they run (read from the loaded modules)."""
        return tuple((m.in_features, m.out_features) for m in module.modules() if isinstance(m, torch.nn.Linear))

    def vision_pass(self, prepared: Prepared, seed: int = 0, strategy=None):
        raise NotImplementedError

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Vision features (U, Dv) -> the LLM's image rows (U, D). Default: the identity, for the families whose
        stock vision pass already projected the rows (Qwen's PatchMerger inside the tower, the anyres families' and
        InternVL's ``get_image_features``); LLaVA-1.5 projects after pruning."""
        return features.to(self.device)

    def token_attention(self, prepared: Prepared, token: int) -> torch.Tensor:
        raise ValueError(f"{self.family}: a ViT token's attention row is not available for this family")
