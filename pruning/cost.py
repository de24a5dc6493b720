"""Cost accounting: FLOPs estimates from real token counts, KV-cache bytes, timing helpers.

FLOPs are counted as 2 per multiply-accumulate, the convention of ``torch.utils.flop_counter``.
VTW's eq. 1 (``2 s^2 h + 12 s h^2`` per layer) is the same count in multiply-accumulates for a
model with MLP width 4h and no grouped-query attention; here every term uses the model's real widths
(query heads, key/value heads, head dim, MLP width, gated MLP for Llama). Prefill attention is
counted over the full square ``s x s`` score matrix (as FlopCounterMode counts SDPA and as eq. 1
does), not the causal half. Norms, softmax, rotary and activation functions are not counted.
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
        projector_out=config.text_config.hidden_size,
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
    ViT); the projector is counted in the prefill."""
    n_patch = v.n_tokens - 1 if v.n_tokens > 1 else v.n_tokens
    embed = 2 * n_patch * v.channels * v.patch_size ** 2 * v.hidden
    d = v.hidden
    counts = tokens_per_layer if tokens_per_layer is not None else [v.n_tokens] * v.layers
    return embed + sum(2 * t * d * d * 4 + 2 * 2 * t * t * d + 2 * 2 * t * d * v.intermediate for t in counts)


def projector_flops(v: VisionShape, projected_tokens: int) -> int:
    """LLaVA's 2-layer MLP projector on the tokens that enter the LLM."""
    return 2 * projected_tokens * (v.hidden * v.projector_out + v.projector_out * v.projector_out)


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


def flop_check(engine, image, question: str, strategy) -> list[tuple[str, int, int]]:
    """(stage, estimated FLOPs, FlopCounterMode FLOPs) for vision, prefill and one decode step.

    Run it on a model loaded with eager attention: FlopCounterMode does not count CPU SDPA kernels.
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
        ("vision", vision_flops(engine.vision_shape, vision.vit_tokens), vision_counted),
        ("prefill", projector_flops(engine.vision_shape, len(state.kept_before))
         + prefill_flops(engine.llm_shape, state.tokens_per_layer), prefill_counted),
    ]
    if decode_counted is not None:
        rows.append(("decode", decode_token_flops(engine.llm_shape, [n + 1 for n in state.tokens_per_layer]),
                     decode_counted))
    return rows
