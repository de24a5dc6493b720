"""Cost accounting: FLOPs estimates from real token counts, KV-cache bytes, timing helpers.

FLOPs are counted as 2 per multiply-accumulate, the convention of ``torch.utils.flop_counter``.
VTW's eq. 1 (``2 s^2 h + 12 s h^2`` per layer) is the same count in multiply-accumulates for a
model with MLP width 4h and no grouped-query attention; here every term uses the model's real widths
(query heads, key/value heads, head dim, MLP width, gated MLP for Llama). Prefill attention is
counted over the full square ``s x s`` score matrix (as FlopCounterMode counts SDPA and as eq. 1
does), not the causal half. Norms, softmax, rotary and activation functions are not counted.

The families beyond LLaVA-1.5 (``pruning.geometries.FAMILY_GEOMETRIES``) add what their towers do differently:
the ViT once per crop or tile, no [CLS] in SigLIP and Qwen's ViT, Qwen's windowed attention and gated ViT MLP, and
the family's projector on every row (it runs before any pruning there); see ``vision_flops`` and
``geometry_projector_flops``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class LLMShape:
    hidden: int  # D
    heads: int  # H (query heads)
    kv_heads: int  # key/value heads
    head_dim: int
    intermediate: int  # MLP width
    vocab: int
    layers: int
    gated_mlp: bool = True  # Llama: gate, up, down projections


@dataclass(frozen=True)
class VisionShape:
    hidden: int
    intermediate: int
    layers: int  # layers actually run (all of them: transformers computes the full tower)
    patch_size: int
    channels: int
    n_tokens: int  # patches (+1 with [CLS])
    projector_out: int  # LLM width the projector maps to
    # The families beyond LLaVA-1.5 (issue 27); the defaults are CLIP's, so LLaVA-1.5's counts do not change.
    cls_token: bool = True  # CLIP and InternViT prepend [CLS]; SigLIP and Qwen's ViT do not
    gated_mlp: bool = False  # Qwen2.5-VL's ViT MLP is gated (gate, up, down): 3 matrices, not 2
    window: int = 0  # tokens per attention window (Qwen2.5-VL: 8 x 8 patches); 0: full attention in every layer
    full_attention_layers: tuple[int, ...] = ()  # 0-based layers with full attention despite ``window``
    windows: tuple[int, ...] = ()  # one image's real window sizes in tokens (Qwen: smaller at the grid's edges);
    #                                 () : every window counted as ``min(window, tokens)``


@dataclass(frozen=True)
class ImageCost:
    """What one image costs on the vision side, as its family runs it (``Adapter.image_cost``): the tower's
    shape for one pass, how many passes (crops, tiles), and the projector. ``projector_dims`` () means LLaVA-1.5's
    MLP on the rows that enter the LLM (it runs after pruning); otherwise those matrices on all
    ``projector_rows`` (the later families project every row before a strategy sees them)."""

    vision: VisionShape
    crops: int = 1
    projector_dims: tuple[tuple[int, int], ...] = ()
    projector_rows: int | None = None

    def vision_flops(self, tokens_per_layer: list[int] | None = None) -> int:
        """The tower over every crop or tile, plus the projector where the family runs it inside the vision pass
        (``projector_dims`` given): ``Result.tflops["vision"]``."""
        tower = self.crops * vision_flops(self.vision, tokens_per_layer)
        return tower + (matrices_flops(self.projector_dims, self.projector_rows) if self.projector_dims else 0)

    def prefill_projector_flops(self, projected: int) -> int:
        """LLaVA-1.5's projector on the ``projected`` rows (it runs in the prefill, after pruning); 0 where the
        family projected every row in the vision pass."""
        return 0 if self.projector_dims else projector_flops(self.vision, projected)


def llm_shape(text_config) -> LLMShape:
    heads = text_config.num_attention_heads
    return LLMShape(
        hidden=text_config.hidden_size, heads=heads,
        kv_heads=getattr(text_config, "num_key_value_heads", None) or heads,
        head_dim=getattr(text_config, "head_dim", None) or text_config.hidden_size // heads,
        intermediate=text_config.intermediate_size, vocab=text_config.vocab_size,
        layers=text_config.num_hidden_layers,
    )


def vision_shape(config) -> VisionShape:
    vc = config.vision_config
    side = vc.image_size // vc.patch_size
    has_cls = vc.model_type == "clip_vision_model"
    return VisionShape(
        hidden=vc.hidden_size, intermediate=vc.intermediate_size, layers=vc.num_hidden_layers,
        patch_size=vc.patch_size, channels=getattr(vc, "num_channels", 3), n_tokens=side * side + int(has_cls),
        projector_out=config.text_config.hidden_size, cls_token=has_cls,
    )


def llm_layer_flops(s: LLMShape, n_query: int, n_key: int) -> int:
    """One decoder layer: ``n_query`` new tokens attending to ``n_key`` keys (cache included)."""
    d, hd = s.hidden, s.head_dim
    proj = 2 * n_query * d * (s.heads * hd + 2 * s.kv_heads * hd) + 2 * n_query * s.heads * hd * d
    attn = 2 * 2 * n_query * n_key * s.heads * hd  # scores q k^T and the weighted sum over v
    mlp = 2 * n_query * d * s.intermediate * (3 if s.gated_mlp else 2)
    return proj + attn + mlp


def prefill_flops(s: LLMShape, tokens_per_layer: list[int], logits_rows: int = 1) -> int:
    """Prefill over the real per-layer sequence lengths, plus the LM head on ``logits_rows`` rows."""
    return sum(llm_layer_flops(s, n, n) for n in tokens_per_layer) + 2 * logits_rows * s.hidden * s.vocab


def decode_token_flops(s: LLMShape, kv_lengths: list[int]) -> int:
    """One decoded token; ``kv_lengths[l]`` is layer l's cache length including the new token."""
    return sum(llm_layer_flops(s, 1, n) for n in kv_lengths) + 2 * s.hidden * s.vocab


def vision_flops(v: VisionShape, tokens_per_layer: list[int] | None = None) -> int:
    """Patch embedding and every ViT layer over its real token count (all tokens unless pruned inside the
    ViT); the projector is counted in the prefill. One image, crop or tile: a geometry with several multiplies
    (``schedule_flops``). A windowed layer (``v.window``, not in ``v.full_attention_layers``) attends within
    windows of ``v.window`` tokens, so its score and weighted-sum terms are ``t x window`` rather than ``t x t``
    (exact when ``t`` is a multiple of the window, as on grids of whole windows; Qwen2.5-VL's edge windows are
    smaller: given ``v.windows``, the real sizes, the term is their sum of squares)."""
    n_patch = v.n_tokens - 1 if (v.cls_token and v.n_tokens > 1) else v.n_tokens
    embed = 2 * n_patch * v.channels * v.patch_size ** 2 * v.hidden
    d = v.hidden
    counts = tokens_per_layer if tokens_per_layer is not None else [v.n_tokens] * v.layers
    mlp_matrices = 3 if v.gated_mlp else 2
    total = embed
    for i, t in enumerate(counts):
        if not v.window or i in v.full_attention_layers:
            scores = t * t
        elif v.windows and sum(v.windows) == t:  # the image's real windows
            scores = sum(w * w for w in v.windows)
        else:
            scores = t * min(v.window, t)
        total += 2 * t * d * d * 4 + 2 * 2 * scores * d + 2 * mlp_matrices * t * d * v.intermediate
    return total


def projector_flops(v: VisionShape, projected_tokens: int) -> int:
    """LLaVA's 2-layer MLP projector on the tokens that enter the LLM."""
    return 2 * projected_tokens * (v.hidden * v.projector_out + v.projector_out * v.projector_out)


def matrices_flops(dims, rows: int) -> int:
    """Matrices (in, out) applied one after another to ``rows`` rows."""
    return 2 * rows * sum(a * b for a, b in dims)


def kv_cache_bytes(cache) -> list[int]:
    """Bytes held by each layer of a transformers ``Cache`` (keys + values), read from its tensors."""
    out = []
    for layer in cache.layers:
        k, v = layer.keys, layer.values
        out.append(k.numel() * k.element_size() + v.numel() * v.element_size())
    return out


def kv_cache_bytes_estimate(s: LLMShape, lengths: list[int], bytes_per_value: int) -> list[int]:
    return [2 * n * s.kv_heads * s.head_dim * bytes_per_value for n in lengths]


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class Stopwatch:
    """``with Stopwatch(device) as sw: ...`` then ``sw.ms``; synchronizes CUDA on entry and exit."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.ms = 0.0

    def __enter__(self):
        synchronize(self.device)
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.ms = (time.perf_counter() - self._t) * 1000.0
        return False


def median_of(runs: list[dict]) -> dict:
    """Median of each numeric key over several timing dicts."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def repeat_timed(fn: Callable[[], dict], repeats: int, warmup: int = 1) -> tuple[dict, object]:
    """Call ``fn`` (returning ``(timings, value)``) ``warmup`` times untimed, then ``repeats`` times;
    return the median timings and the last value."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: expected >= 1")
    for _ in range(warmup):
        fn()
    runs, value = [], None
    for _ in range(repeats):
        timings, value = fn()
        runs.append(timings)
    return median_of(runs), value


def vision_forward_flops(engine, image, question: str) -> tuple[int, int]:
    """(estimated, FlopCounterMode) FLOPs of the family's stock vision forward alone (tower over every crop or
    tile, and the projector where the family runs it there), without the engine's score hooks."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    prepared = engine.prepare(image, question)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        engine.adapter.stock_vision_forward(prepared)
    return engine.adapter.image_cost(prepared).vision_flops(), counter.get_total_flops()


def flop_check(engine, image, question: str, strategy) -> list[tuple[str, int, int]]:
    """(stage, estimated FLOPs, FlopCounterMode FLOPs) for vision, prefill and one decode step.

    Run it on a model loaded with eager attention: FlopCounterMode does not count CPU SDPA kernels. On the families
    whose scores are a substitute for [CLS] attention (Qwen2.5-VL, LLaVA-OneVision, LLaVA-NeXT, InternVL), a strategy
    that reads the score makes the engine recompute each ViT block's attention when it first reads it, in the
    prefill's selection: counted there, not in the estimate, which is the model's own forward
    (``vision_forward_flops`` counts the vision forward alone).
    """
    from torch.utils.flop_counter import FlopCounterMode

    def counted(fn):
        with FlopCounterMode(display=False) as counter:
            out = fn()
        return counter.get_total_flops(), out

    prepared = engine.prepare(image, question)
    vision_counted, vision = counted(lambda: engine.vision_pass(prepared, strategy=strategy))
    prefill_counted, state = counted(lambda: engine.prefill(prepared, vision, strategy))
    decode_counted, tokens = counted(lambda: engine.decode(state, max_new_tokens=2))
    if len(tokens) != 2:  # EOS first: no decode forward pass happened
        decode_counted = None
    rows = [
        ("vision", engine.vision_flops(state), vision_counted),
        ("prefill", round(engine.prefill_tflops(state) * 1e12), prefill_counted),
    ]
    if decode_counted is not None:
        rows.append(("decode", decode_token_flops(engine.llm_shape, [n + 1 for n in state.tokens_per_layer]),
                     decode_counted))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The FLOPs estimate alone, from a geometry (no weights): ``python -m pruning cost``.
#
# Token counts come from the strategy object (its budget, layers and schedule), not from running it; FLOPs follow
# one of four conventions, ours and the three the papers use (docs/performance.md reproduces their tables):
#
# - "prunescope": what the engine reports (``Result.tflops`` vision + prefill): 2 FLOPs per multiply-accumulate,
#   the real widths (gated MLP, grouped-query attention), the full s x s attention square, every ViT layer the
#   model runs (transformers computes all 24 though LLaVA reads the 23rd), the projector, the LM head on the last
#   position only (all that generation needs).
# - "ivtp" (IVTP Tables 1-3, 9): the same per-layer count, but the LM head on every position, the ViT counted
#   through the feature layer (23 of 24 layers) and the projector not counted (Table 9 has no projector term).
# - "vtw" (VTW Tables 2 and 4): 2 x eq. 1, i.e. 2 (2 s^2 h + 12 s h^2) per decoder layer (eq. 1 counts
#   multiply-accumulates with an MLP of width 4h), decoder layers only: no ViT, projector or LM head.
# - "fastv" (FastV's formula, quoted by VTW as eq. 1): 4 n d^2 + 2 n^2 d + 2 n d m per decoder layer with the
#   model's MLP width m, as written (one per multiply-accumulate), decoder layers only. Meant for ratios.


@dataclass(frozen=True)
class Convention:
    name: str
    layer: str  # per-layer formula: "exact" (llm_layer_flops), "vtw" (2 x eq. 1) or "fastv"
    vit: str  # "all" layers, "feature" (through the feature layer) or "none"
    projector: bool
    logits: str  # LM head rows: "last", "all" or "none"
    description: str


CONVENTIONS = {
    "prunescope": Convention(
        "prunescope", "exact", "all", True, "last",
        "FLOPs = 2 x multiply-accumulates; real widths (gated MLP, GQA); full s x s attention; every ViT layer run; "
        "projector; LM head on the last position (what the engine reports)"),
    "ivtp": Convention(
        "ivtp", "exact", "feature", False, "all",
        "IVTP's tables: FLOPs = 2 x multiply-accumulates, real widths, full s x s attention; LM head on every "
        "position; ViT through the feature layer (23 of 24 layers); no projector"),
    "vtw": Convention(
        "vtw", "vtw", "none", False, "none",
        "VTW's tables: 2 x eq. 1 = 2 (2 s^2 h + 12 s h^2) per decoder layer (eq. 1 counts multiply-accumulates, "
        "MLP width 4h); decoder layers only: no ViT, projector or LM head"),
    "fastv": Convention(
        "fastv", "fastv", "none", False, "none",
        "FastV's formula as written: 4 n d^2 + 2 n^2 d + 2 n d m per decoder layer (m = the model's MLP width); "
        "decoder layers only; one FLOP per multiply-accumulate, meant for ratios"),
}


def convention_layer_flops(convention: Convention, s: LLMShape, n: int) -> int:
    """One decoder layer over ``n`` tokens (prefill: ``n`` queries, ``n`` keys) under ``convention``."""
    if convention.layer == "vtw":
        h = s.hidden
        return 2 * (2 * n * n * h + 12 * n * h * h)
    if convention.layer == "fastv":
        d = s.hidden
        return 4 * n * d * d + 2 * n * n * d + 2 * n * d * s.intermediate
    return llm_layer_flops(s, n, n)


@dataclass
class TokenSchedule:
    """Tokens per layer for one strategy, derived from its parameters without running it."""

    vit: list[int]  # tokens entering each ViT layer ([CLS] included), every layer of the tower
    projected: int  # visual tokens through the projector (= entering the LLM; all N for PROJECT_ALL_BEFORE)
    visual: list[int]  # visual tokens in each LLM layer
    text: int
    notes: list[str]

    @property
    def llm(self) -> list[int]:
        return [self.text + v for v in self.visual]


# Strategies whose stage "before" hands the LLM exactly ``budget(N)`` tokens (merging ones included: EViT's fused
# token, PruMerge+'s extra token and k-means' centres count in the budget; ToMe merges until the budget is met;
# VisionZip's [CLS] and contextual tokens count in it too).
EXACT_BUDGET_BEFORE = {"random", "topk-sim", "vtc-cls", "evit", "kmeans", "tome", "prumerge+", "visionzip",
                       "vispruner"}
# Strategies that select on the projector's output: it runs on all N patches, ``budget(N)`` of them enter the LLM.
PROJECT_ALL_BEFORE = {"cdpruner", "divprune"}
# Strategies whose stage "llm" keeps ``budget(M)`` of the M image rows at their layer (FastV, DART: or their ratios).
EXACT_BUDGET_LLM = {"random", "vtc-cls", "fastv", "dart"}


def _grid(geometry, visual_tokens: int, what: str) -> tuple[int, int]:
    if visual_tokens == geometry.n_patches:
        return geometry.rows, geometry.cols
    side = int(round(visual_tokens ** 0.5))
    if side * side != visual_tokens:
        raise ValueError(f"{what} needs a patch grid: --visual-tokens {visual_tokens} is not the geometry's "
                         f"{geometry.n_patches} nor a square")
    return side, side


def token_schedule(strategy, geometry, visual_tokens: int, text_tokens: int) -> TokenSchedule:
    """Per-layer token counts of ``strategy`` on ``geometry`` for ``visual_tokens`` image and ``text_tokens``
    text tokens, from the strategy object alone. Raises ValueError for a strategy whose counts depend on the
    model's activations (no rule here) and for inconsistent inputs."""
    n, L = visual_tokens, geometry.llm.layers
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"visual tokens = {n!r}: expected a non-negative integer")
    if not isinstance(text_tokens, int) or text_tokens < 1:
        raise ValueError(f"text tokens = {text_tokens!r}: expected an integer >= 1 (the prompt's last token at least)")
    keep = getattr(strategy, "keep", None)
    if keep is not None and keep > n:
        raise ValueError(f"keep={keep} is more than the {n} visual tokens")
    name, notes = strategy.name, []
    vit = [geometry.vision.n_tokens] * geometry.vision.layers
    if n != geometry.n_patches:
        crops = getattr(geometry, "crops", 1)
        notes.append(f"{n} visual tokens where one image of this geometry gives {geometry.n_patches}: the ViT is "
                     f"counted over one image ({crops} x {geometry.vision.n_tokens} tokens)" if crops > 1 else
                     f"{n} visual tokens where one image of this geometry gives {geometry.n_patches}: the ViT is "
                     f"counted once, over one image ({geometry.vision.n_tokens} tokens)")
    visual = [n] * L
    projected = n
    if name == "ivtp" and getattr(geometry, "family", "llava") != "llava":
        raise ValueError(f"ivtp prunes inside the ViT by [CLS] attention, layer by layer: only on LLaVA-1.5 "
                         f"geometries (not {geometry.name}, family {geometry.family})")
    if name == "ivtp":
        vit, projected, visual = _ivtp_schedule(strategy, geometry, n)
    elif name == "none":
        pass
    elif strategy.stage == "before":
        entering = None
        if name == "pooling":
            from .strategies.pooling import pooled_shape

            h, w = pooled_shape(*_grid(geometry, n, "pooling"), strategy.budget(n))
            projected = h * w
            if keep is not None and projected != keep:
                notes.append(f"pooling: keep={keep} pools the grid to {h} x {w} = {projected} tokens"
                             + (" (this geometry's rows are the engine's 1 x N strip of packed crops or tiles, "
                                "not a grid: 1-D pooling keeps about sqrt(keep x N))" if geometry.rows == 1 else ""))
        elif name in EXACT_BUDGET_BEFORE:
            projected = strategy.budget(n)
        elif name in PROJECT_ALL_BEFORE:
            entering = strategy.budget(n)
        else:
            raise ValueError(f"strategy {name!r}: its token counts cannot be derived without running the model "
                             "(pruning.cost has no counting rule for it)")
        visual = [projected if entering is None else entering] * L
    elif strategy.stage == "llm":
        layers = sorted(strategy.llm_drop_layers(L))
        for k in layers:
            if not 1 <= k < L:
                raise ValueError(f"layer={k}: stage 'llm' needs 1 <= layer < {L} (the model's depth)")
        if name == "vtw":
            after = 0
        elif name == "fastv" and keep is None:
            after = strategy.default_budget(n)  # the authors' round(M * (1 - R))
        elif name == "dart" and keep is None:
            after = round(n * (1 - strategy.reduction_ratio))
        elif name in EXACT_BUDGET_LLM:
            after = strategy.budget(n)
        else:
            raise ValueError(f"strategy {name!r} at stage 'llm': its token counts cannot be derived without running "
                             "the model (pruning.cost has no counting rule for it)")
        if len(layers) != 1:
            raise ValueError(f"strategy {name!r} drops at {len(layers)} layers: no counting rule for that")
        visual = [n if i < layers[0] else after for i in range(L)]
    return TokenSchedule(vit=vit, projected=projected, visual=visual, text=text_tokens, notes=notes)


def _ivtp_schedule(strategy, geometry, n: int) -> tuple[list[int], int, list[int]]:
    """IVTP's pruning points and budgets as the engine runs them: ``vit_prune_layers`` / ``llm_drop_layers`` and
    the strategy's schedule ``_target`` (tokens left after point ``step`` of ``steps``, over the full grid)."""
    grid = geometry.n_patches
    vit_at = strategy.vit_prune_layers(geometry.vision.layers, geometry.feature_layer_index)
    llm_at = sorted(strategy.llm_drop_layers(geometry.llm.layers))
    if not vit_at and not llm_at:  # keep unset (or both stages off): nothing pruned
        return [geometry.vision.n_tokens] * geometry.vision.layers, n, [n] * geometry.llm.layers
    if n != grid:
        raise ValueError(f"ivtp prunes the {grid}-patch grid from the ViT on: --visual-tokens must be {grid}")
    steps = len(vit_at) + len(llm_at)
    has_cls = geometry.vision.n_tokens > grid
    vit, patches = [], grid
    for i in range(geometry.vision.layers):
        vit.append(patches + int(has_cls))
        if i in vit_at:
            patches = min(patches, strategy._target(grid, vit_at.index(i), steps))
        if i == geometry.feature_layer_index:
            projected = patches
    for k in llm_at:
        if not 1 <= k < geometry.llm.layers:
            raise ValueError(f"layer={k}: stage 'llm' needs 1 <= layer < {geometry.llm.layers} (the model's depth)")
    visual, m = [], projected
    for layer in range(geometry.llm.layers):
        if layer in llm_at:
            m = min(m, strategy._target(grid, len(vit_at) + llm_at.index(layer), steps))
        visual.append(m)
    return vit, projected, visual


def schedule_flops(geometry, schedule: TokenSchedule, convention: str | Convention = "prunescope") -> dict:
    """FLOPs of one prefill under ``convention``: ``vit``, ``projector``, ``llm_per_layer`` (decoder layers),
    ``layers`` (their sum), ``lm_head``, ``llm`` (= layers + lm_head) and ``total``; all integers."""
    conv = CONVENTIONS[convention] if isinstance(convention, str) else convention
    v, s = geometry.vision, geometry.llm
    crops = getattr(geometry, "crops", 1)  # the ViT runs once per crop or tile, each over ``schedule.vit``
    if conv.vit == "all":
        vit = crops * vision_flops(v, schedule.vit)
    elif conv.vit == "feature":
        vit = crops * vision_flops(v, schedule.vit[:geometry.feature_layer_index + 1])
    else:
        vit = 0
    projector = geometry_projector_flops(geometry, schedule.projected) if conv.projector else 0
    per_layer = [convention_layer_flops(conv, s, t) for t in schedule.llm]
    rows = {"last": 1, "all": schedule.llm[-1], "none": 0}[conv.logits]
    lm_head = 2 * rows * s.hidden * s.vocab
    layers = sum(per_layer)
    return {"vit": vit, "projector": projector, "llm_per_layer": per_layer, "layers": layers, "lm_head": lm_head,
            "llm": layers + lm_head, "total": vit + projector + layers + lm_head}


def geometry_projector_flops(geometry, projected: int) -> int:
    """The projector of ``geometry``: LLaVA-1.5's MLP on the ``projected`` rows (it runs after pruning), or, for a
    geometry naming its matrices (``projector_dims``), those matrices on all its ``projector_rows``: the later
    families project every row inside the stock ``get_image_features`` (Qwen2.5-VL: the PatchMerger inside the
    tower) before a strategy sees them. Norms and activations are not counted, as elsewhere."""
    dims = getattr(geometry, "projector_dims", ())
    if not dims:
        return projector_flops(geometry.vision, projected)
    return matrices_flops(dims, geometry.projector_rows)


def estimate(geometry, text_tokens: int, visual_tokens: int | None = None, strategy=None,
             convention: str = "prunescope") -> dict:
    """The FLOPs estimate of one prefill (ViT, projector, LLM per layer, LM head, total) for ``strategy`` (default:
    none) on ``geometry`` (a ``ModelGeometry`` or a name/directory for ``pruning.geometries.load_geometry``), with
    the unpruned baseline under the same convention and their ratio. JSON-ready."""
    from .geometries import load_geometry
    from .strategies import get_strategy

    if isinstance(geometry, str):
        geometry = load_geometry(geometry)
    if convention not in CONVENTIONS:
        raise ValueError(f"convention={convention!r}: expected one of {', '.join(CONVENTIONS)}")
    if visual_tokens is None:
        visual_tokens = geometry.n_patches
    strategy = strategy if strategy is not None else get_strategy("none")
    schedule = token_schedule(strategy, geometry, visual_tokens, text_tokens)
    flops = schedule_flops(geometry, schedule, convention)
    base = schedule_flops(geometry, token_schedule(get_strategy("none"), geometry, visual_tokens, text_tokens),
                          convention)
    tera = {k: flops[k] / 1e12 for k in ("vit", "projector", "layers", "lm_head", "llm", "total")}
    return {
        "geometry": geometry.to_json(),
        "convention": {"name": convention, "description": CONVENTIONS[convention].description},
        "strategy": {"name": strategy.name, "params": strategy.params()},
        "visual_tokens": visual_tokens,
        "text_tokens": text_tokens,
        "tokens": {"vit_per_layer": schedule.vit, "vit_crops": getattr(geometry, "crops", 1),
                   "projected": schedule.projected,
                   "projector_rows": (geometry.projector_rows if getattr(geometry, "projector_dims", ())
                                      else schedule.projected),
                   "visual_per_layer": schedule.visual, "llm_per_layer": schedule.llm},
        "flops": flops,
        "tflops": tera,
        "baseline_tflops": base["total"] / 1e12,
        "ratio": flops["total"] / base["total"],
        "speedup": base["total"] / flops["total"] if flops["total"] else None,
        "notes": schedule.notes,
    }


def in_vit_schedule(geometry, keep: int, text_tokens: int, merge_layers: int | None = None) -> TokenSchedule:
    """The vision-only baselines as IVTP's tables count them (Random, TopK, EViT, ToMe: pruned *inside* the ViT,
    their ViT column 0.190 TFLOPs against 0.361 unpruned), modelled as ToMe does it: the same number r of tokens
    merged after each of the first ``merge_layers`` ViT layers (default: every layer before the feature layer),
    so that ``keep`` patches reach the feature layer. No strategy here prunes that way (they prune after the ViT);
    this is for comparing with those tables."""
    n = geometry.n_patches
    if not 0 <= keep <= n:
        raise ValueError(f"keep={keep}: expected 0..{n}")
    m = geometry.feature_layer_index if merge_layers is None else merge_layers
    if not 1 <= m <= geometry.feature_layer_index:
        raise ValueError(f"merge_layers={m}: expected 1..{geometry.feature_layer_index}")
    extra = geometry.vision.n_tokens - n  # [CLS]
    r = (n - keep) / m
    vit = [extra + round(n - r * min(i, m)) for i in range(geometry.vision.layers)]
    return TokenSchedule(vit=vit, projected=keep, visual=[keep] * geometry.llm.layers, text=text_tokens,
                         notes=[f"pruned inside the ViT: {r:.1f} tokens merged after each of ViT layers 0-{m - 1}"])
