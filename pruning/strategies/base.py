"""The strategy interface: a dataclass of hyper-parameters with up to two pure hooks.

A strategy never holds the model. The engine hands each hook the tensors it needs and applies what
the hook returns:

- ``select_before_llm(ctx: VisionContext) -> Selection | None``: which patches (or merged features)
  enter the LLM; ``None`` keeps all.
- ``select_in_llm(ctx: LLMContext) -> Tensor | None``: at LLM layer ``layer``, which of the image rows
  still present survive into layers ``>= layer``; ``None`` keeps all.

``stage`` says which hook the engine calls ("before" or "llm"); ``positions`` says how position ids
are assigned after pruning ("keep": each token keeps its original position, "rearrange": contiguous).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import ClassVar

import torch

STAGES = ("before", "llm")
POSITIONS = ("keep", "rearrange")
MAX_TOKENS = 100_000  # a count of visual tokens (a budget, VisionZip's C): more than any LLaVA's grid, so a bound
#                       that never refuses a real request and keeps a request's numbers small
MAX_LLM_LAYER = 255  # an LLM layer (K): deeper than any LLaVA's LLM; Engine.check bounds it by the model's depth
MAX_VIT_LAYERS = 255  # ViT layers (VTC-CLS's K): Engine.check bounds it by the model's feature layer
MAX_SEED = 2**32 - 1  # what every RNG takes
MAX_PATCHES = 10_000  # indices in manual's patch list (LLaVA-1.5's grid has 576 patches)
MAX_PATCHES_TEXT = 100_000  # characters of manual's patch list as text (10,000 indices of 5 digits and ", ": 70,000)


@dataclass(frozen=True)
class Spec:
    """What one hyper-parameter accepts: the one source of its type and range, read by the validation
    (``Strategy.__post_init__``, ``check_params``) and by the app's controls (``pruning.compare.strategy_controls``:
    min, max, choices). ``kind``: "int" (a whole number in ``low``..``high``), "float" (a finite number in
    [``low``, ``high``], (``low``, ``high``] when ``above``), "bool", "choice" (one of ``choices``; ``choices_from``
    names a class attribute that holds them instead, as ``stages``), "patches" (text of patch indices, at most
    ``max_chars`` characters, or a list of at most ``high`` indices). ``what`` names the value in refusals ("a
    relevance threshold"). ``depth``: the bound a model sets further ("llm": below its LLM depth, "vit": up to its
    feature layer), checked by ``Engine.check`` and given to the app's controls by ``strategy_controls``. A field
    whose default is None also takes None (the strategy then derives the value)."""

    kind: str
    low: float | None = None
    high: float | None = None
    above: bool = False
    choices: tuple = ()
    choices_from: str | None = None
    what: str | None = None
    depth: str | None = None
    max_chars: int | None = None

    def allowed(self, cls=None, optional: bool = False) -> str:
        """The values accepted, in words (the end of a refusal)."""
        if self.kind == "int":
            text = f"{self.what or 'a whole number'} in {self.low}..{self.high}"
        elif self.kind == "float":
            text = f"{self.what or 'a number'} in {'(' if self.above else '['}{self.low:g}, {self.high:g}]"
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "choice":
            values = self.values(cls)
            text = ("one of " + ", ".join(repr(v) for v in values)) if len(values) > 1 else repr(values[0])
            text = f"{self.what}: {text}" if self.what else text
        else:  # patches
            text = (f"patch indices, as text ('3, 4, 17', at most {self.max_chars:,} characters) or a list of at most "
                    f"{self.high:,} whole numbers")
        return text + (" or None (the strategy's own default)" if optional else "")

    def values(self, cls=None) -> tuple:
        return tuple(getattr(cls, self.choices_from)) if self.choices_from and cls is not None else self.choices

    def check(self, strategy: str, name: str, value, cls=None, optional: bool = False):
        """``value`` as this parameter holds it (a whole float as an int, an int as a float), or a ``ValueError``
        that starts with the strategy, the parameter and the value given, and says what is allowed."""
        if value is None and optional:
            return None

        def refuse():
            return ValueError(f"{strategy} {name}={shown(value)}: expected {self.allowed(cls, optional)}")

        if self.kind == "int":
            if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) \
                    and math.isfinite(value) and float(value).is_integer():
                value_ = int(value)
            elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
                value_ = int(value)
            else:
                raise refuse()
            if not self.low <= value_ <= self.high:
                raise refuse()
            return value_
        if self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise refuse()
            try:
                value_ = float(value)
            except OverflowError:  # an integer beyond any float (10**400)
                raise refuse() from None
            inside = (self.low < value_ if self.above else self.low <= value_) and value_ <= self.high
            if not math.isfinite(value_) or not inside:
                raise refuse()
            return value_
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise refuse()
            return value
        if self.kind == "choice":
            if not isinstance(value, str) or value not in self.values(cls):
                raise refuse()
            return value
        if isinstance(value, str) and len(value) <= self.max_chars:  # patches; each index checked by the strategy
            return value
        if isinstance(value, (list, tuple)) and len(value) <= self.high:
            return value
        raise refuse()


def shown(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a refusal quotes what was given, never megabytes of it)."""
    try:
        text = repr(value)
    except ValueError:  # an integer of more digits than Python writes out (sys.get_int_max_str_digits)
        return f"<a whole number of {value.bit_length():,} bits>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def hyper(default, kind: str | None = None, low=None, high=None, **spec):
    """A strategy's hyper-parameter: a dataclass field whose metadata holds its ``Spec`` (``kind`` defaults to the
    default value's type). Bounds live here and nowhere else."""
    if kind is None:
        kind = {bool: "bool", int: "int", float: "float"}.get(type(default), "choice")
    return field(default=default, metadata={"spec": Spec(kind, low, high, **spec)})


def spec_of(cls, name: str) -> Spec | None:
    """The ``Spec`` of ``cls``'s parameter ``name``: its own field's, or, where a subclass only changes the default
    (``layer: int = 2``), the nearest base class's."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and "spec" in f.metadata:
            return f.metadata["spec"]
    return None


def parameter_specs(cls) -> dict[str, tuple[Spec, object]]:
    """Every parameter of strategy class ``cls``: name -> (its ``Spec``, its default)."""
    out = {}
    for f in fields(cls):
        default = f.default if f.default is not MISSING else None
        out[f.name] = (spec_of(cls, f.name), default)
    return out


@dataclass
class VisionContext:
    """What the vision pass produced for one image (batch size 1)."""

    patch_features: torch.Tensor  # (N, Dv) vision features at vision_feature_layer, [CLS] removed
    cls_attention: torch.Tensor | None  # (L_v, H_v, N) [CLS] query's attention to each patch, every ViT layer
    cls_feature: torch.Tensor | None  # (Dv,) [CLS] hidden state at vision_feature_layer
    rows: int  # patch grid rows
    cols: int  # patch grid cols
    generator: torch.Generator  # seeded by the strategy's seed, for reproducible randomness
    feature_layer: int = -1  # 0-based ViT layer whose output feeds the LLM (the penultimate for LLaVA-1.5)
    patch_keys: torch.Tensor | None = None  # (N, Dv) the feature layer's attention keys of the patches
    reader_keys: torch.Tensor | None = None  # (N, Dv) keys of the layer after it, the one that reads the fed
    #                                          features (PruMerge's code takes its q/k); None: no such layer
    cls_final: torch.Tensor | None = None  # (Dv,) post-layernorm [CLS] of the last ViT layer (CLIP's image token)
    patch_ids: torch.Tensor | None = None  # (N',) patches still present after pruning inside the ViT (None: all)
    vit_tokens: list | None = None  # tokens entering each ViT layer when pruned inside the ViT (None: all)
    projected: torch.Tensor | None = None  # needs_projected: (N, D) the projector's output of every patch
    question: QuestionEmbeddings | None = None  # question_inputs(): the question's embeddings (stage "before")
    cls_self: torch.Tensor | None = None  # (L_v, H_v) the [CLS] query's attention to [CLS] itself, every ViT layer
    #                                     (the column ``cls_attention`` drops; the same softmax's own entry)

    def cls_scores(self, k_layers: int = 1, ensemble: str = "avg") -> torch.Tensor:
        """VTC-CLS eq. 2 and 9: [CLS] attention averaged over heads, in the ``k_layers`` layers ending at the
        feature layer, combined by ``ensemble`` (avg, max, min). Shape (N,)."""
        if self.cls_attention is None:
            raise ValueError("this vision tower has no [CLS] token: [CLS]-attention strategies cannot run")
        if not 1 <= k_layers <= self.feature_layer + 1:
            raise ValueError(f"k_layers={k_layers}: expected 1..{self.feature_layer + 1}")
        per_layer = self.cls_attention[self.feature_layer - k_layers + 1: self.feature_layer + 1].mean(1)  # (K, N)
        if ensemble == "avg":
            return per_layer.mean(0)
        if ensemble == "max":
            return per_layer.max(0).values
        if ensemble == "min":
            return per_layer.min(0).values
        raise ValueError(f"ensemble={ensemble!r}: expected 'avg', 'max' or 'min'")

    @property
    def n_patches(self) -> int:
        return self.patch_features.shape[0]


@dataclass
class LLMContext:
    """The state at LLM layer ``layer`` just before it runs (batch size 1)."""

    layer: int  # k: rows dropped here are absent from layers >= k
    hidden_states: torch.Tensor  # (S, D) input of layer k (output of layer k-1)
    attention_row: torch.Tensor | None  # (H, S) last prompt token's attention at layer k-1, if requested
    image_rows: torch.Tensor  # (M,) sequence rows that hold image tokens
    patch_indices: torch.Tensor  # (M,) the patch each of those rows came from
    vision: VisionContext
    step: int = 0  # index of this pruning point among all of the strategy's (ViT points first)
    steps: int = 1  # the strategy's pruning points, ViT and LLM together
    group: list | None = None  # needs_group_attention: per layer of the group, (A (M+1, M+1), value norms (M,))
    keys: torch.Tensor | None = None  # needs_keys: (S, KV*hd) layer k-1's keys after rotary (its cache), heads
    #                                    concatenated
    normed_states: torch.Tensor | None = None  # needs_keys: (S, D) the LLM's final norm of hidden_states


@dataclass
class QuestionEmbeddings:
    """The question in embedding spaces (what ``Strategy.question_inputs`` asks for; batch size 1)."""

    clip_text: torch.Tensor | None = None  # (M, C) CLIP text tower's projected embedding, one per chunk of its context
    clip_patches: torch.Tensor | None = None  # (N, C) CLIP image embedding of each patch: visual_projection of the
    #                                           vision tower's post_layernorm of the patch features
    llm_tokens: torch.Tensor | None = None  # (Q, D) the LLM's input embeddings of the question's tokens
    clip_note: str | None = None  # why clip_text is None (no CLIP text encoder), when it was asked for


@dataclass
class ViTContext:
    """Inside the vision tower, after ViT layer ``layer`` (pruning between layers, batch size 1)."""

    layer: int
    attentions: list  # per layer of the group: (T, T) attention, mean over heads, token 0 = [CLS]
    value_norms: torch.Tensor  # (T,) norm of each token's value vector in the group's last layer
    patch_indices: torch.Tensor  # (T-1,) the patch of tokens 1..T-1
    n_patches: int  # N, the full grid
    step: int  # index of this pruning point among all of the strategy's (ViT points first)
    steps: int  # the strategy's pruning points, ViT and LLM together


@dataclass
class Selection:
    """Patches that enter the LLM, in spatial (row-major) order."""

    indices: torch.Tensor  # (U,) patch indices, unique, ascending; a merged token's representative patch
    features: torch.Tensor | None = None  # (U, Dv) merged features replacing patch_features[indices]
    groups: torch.Tensor | None = None  # (N,) merging strategies: for every patch of the grid, the position
    #                                     (0..U-1) in ``indices`` of the kept token whose feature it went into,
    #                                     -1 where it went into none (what the app tints as a merged group)
    notes: list | None = None  # what the strategy wants the result to say (e.g. which input it used)

    def __post_init__(self):
        self.indices = torch.as_tensor(self.indices, dtype=torch.long)
        if self.features is not None and self.features.shape[0] != self.indices.shape[0]:
            raise ValueError(f"Selection has {self.indices.shape[0]} indices but {self.features.shape[0]} features")
        if self.groups is not None:
            self.groups = torch.as_tensor(self.groups, dtype=torch.long).flatten()
            u = self.indices.shape[0]
            if self.groups.numel() and (int(self.groups.min()) < -1 or int(self.groups.max()) >= u):
                raise ValueError(f"Selection groups must lie in -1..{u - 1}")


@dataclass
class Strategy:
    """Base class. Subclasses set ``name`` and implement the hook(s) of the stages they support."""

    name: ClassVar[str] = ""
    stages: ClassVar[tuple[str, ...]] = ("before",)  # stages this strategy implements
    needs_attention_row: ClassVar[bool] = False  # stage "llm": wants the attention row at layer k-1
    needs_group_attention: ClassVar[bool] = False  # stage "llm": wants attention maps of a scoring query (IVTP)
    needs_projected: ClassVar[bool] = False  # stage "before": wants VisionContext.projected (the engine then feeds
    #                                          the kept rows of it to the LLM: the projector runs once, on all N)
    needs_keys: ClassVar[bool] = False  # stage "llm": wants LLMContext.keys and normed_states

    # visual tokens to keep; None: all (or the strategy's own default)
    keep: int | None = hyper(None, "int", 0, MAX_TOKENS, what="a whole number of visual tokens")
    # "before" the LLM or inside it ("llm"): one of the class's ``stages``
    stage: str = hyper("before", choices_from="stages", what="a stage this strategy has")
    # k for stage "llm": rows dropped before layer k runs (k >= 1: the scores are layer k-1's)
    layer: int | None = hyper(2, "int", 1, MAX_LLM_LAYER, what="an LLM layer", depth="llm")
    # position ids after pruning: "keep" (original) or "rearrange" (contiguous)
    positions: str = hyper("keep", choices=POSITIONS)
    seed: int = hyper(0, "int", 0, MAX_SEED)  # for strategies with randomness

    def __post_init__(self):
        """Every parameter checked against its ``Spec`` (type and range; a whole float becomes an int); a
        subclass adds only the rules that tie parameters together."""
        for name, (spec, default) in parameter_specs(type(self)).items():
            if spec is None:
                raise TypeError(f"strategy {self.name!r}: parameter {name!r} has no Spec (declare it with hyper())")
            setattr(self, name, spec.check(self.name, name, getattr(self, name), type(self), default is None))

    def params(self) -> dict:
        """Hyper-parameters as plain values (for results and JSON)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def budget(self, available: int) -> int:
        """Number of tokens to keep out of ``available``; ``keep`` larger than available keeps all."""
        return available if self.keep is None else min(self.keep, available)

    def llm_layer(self, n_layers: int) -> int:
        """The LLM layer k where stage "llm" drops rows (a strategy may derive it from the depth)."""
        return self.layer

    def llm_drop_layers(self, n_layers: int) -> list[int]:
        """Every LLM layer where stage "llm" drops rows (one by default)."""
        return [self.llm_layer(n_layers)] if self.stage == "llm" else []

    def vit_prune_layers(self, n_vit_layers: int, feature_layer: int) -> list[int]:
        """ViT layers after which ``select_in_vit`` prunes tokens (none by default)."""
        return []

    def select_in_vit(self, ctx: "ViTContext") -> torch.Tensor:
        raise NotImplementedError(f"strategy {self.name!r} does not prune inside the ViT")

    def question_inputs(self) -> tuple[str, ...]:
        """Stage "before": the question embeddings the engine puts in ``VisionContext.question``: "clip" (CLIP's
        text tower and patch embeddings), "llm" (the LLM's input embeddings of the question); none by default."""
        return ()

    def question_text(self, question: str) -> str:
        """The text ``question_inputs`` embeds (the question as asked by default)."""
        return question

    def pseudo_rows(self, relevance: torch.Tensor | None, text_rows: torch.Tensor) -> torch.Tensor | None:
        """needs_group_attention: text rows whose mean hidden state is the scoring query (None: visual [CLS])."""
        return None

    def select_before_llm(self, ctx: VisionContext) -> Selection | None:
        return None

    def select_in_llm(self, ctx: LLMContext) -> torch.Tensor | None:
        return None


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, in ascending (spatial) order."""
    k = min(k, scores.shape[0])
    return scores.topk(k).indices.sort().values


_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add ``cls`` under ``cls.name``; a second class with the same name is refused."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY:
        raise ValueError(f"a strategy named {cls.name!r} is already registered ({_REGISTRY[cls.name].__name__})")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_strategy(name: str, **params) -> Strategy:
    """Instantiate the strategy ``name``; parameters left as None take the strategy's defaults."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown strategy {shown(name)}; valid strategies: {', '.join(available())}")
    cls = _REGISTRY[name]
    valid = {f.name for f in fields(cls)}
    unknown = set(params) - valid
    if unknown:
        raise ValueError(f"strategy {name!r} has no parameter(s) {sorted(unknown)}; valid: {sorted(valid)}")
    return cls(**{k: v for k, v in params.items() if v is not None})


def check_params(params) -> dict[str, dict]:
    """A request's per-strategy parameters, checked as a whole before any work: a mapping of registered strategy
    names to mappings of their parameters to values, each value of its parameter's type and in its range
    (``Spec``), and the strategy buildable with them (the rules that tie parameters together). Returns the
    values as the strategies hold them; None or {} is no parameters. A ``ValueError`` says which strategy, which
    parameter, what was given and what is allowed."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ValueError(f"params={shown(params)}: expected a mapping of strategy names to mappings of their "
                         'parameters, e.g. {"fastv": {"ratio": 0.75}}')
    out = {}
    for name, given in params.items():
        if not isinstance(name, str) or name not in _REGISTRY:
            raise ValueError(f"unknown strategy {shown(name)} in params; valid strategies: {', '.join(available())}")
        cls = _REGISTRY[name]
        specs = parameter_specs(cls)
        if given is None:
            given = {}
        if not isinstance(given, Mapping):
            raise ValueError(f"{name} params={shown(given)}: expected a mapping of {name}'s parameters to values; "
                             f"its parameters: {', '.join(specs)}")
        unknown = [k for k in given if not isinstance(k, str) or k not in specs]
        if unknown:
            raise ValueError(f"strategy {name!r} has no parameter(s) [{', '.join(shown(k) for k in unknown)}]; valid: "
                             f"{sorted(specs)}")
        checked = {k: spec.check(name, k, given[k], cls, default is None)
                   for k, (spec, default) in specs.items() if k in given and given[k] is not None}
        get_strategy(name, **checked)  # the rules that tie parameters together (e.g. DART's pivots)
        out[name] = checked
    return out


__all__ = ["ViTContext", "Strategy", "Selection", "VisionContext", "LLMContext", "QuestionEmbeddings", "register",
           "get_strategy", "available", "check_params", "hyper", "parameter_specs", "spec_of", "Spec", "STAGES",
           "POSITIONS"]
