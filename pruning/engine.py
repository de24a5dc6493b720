"""The pruned-generation engine: one loop over a model-family adapter (vision pass, pruning stages, layer-by-layer
prefill, decode).

The engine drives a stock transformers model module by module (embeddings, decoder layers, norm, LM head) and never
patches a class. What differs between families (the processor call and the image span, the vision pass and where
scores come from, the projector, the position ids incl. M-RoPE) sits in ``pruning.adapters`` (LLaVA-1.5:
``adapters/llava.py``; Qwen2.5-VL: ``adapters/qwen.py``); the question's embeddings and IVTP's scoring query, which
only text-conditioned strategies use, sit in ``pruning.text_inputs``. Batch size 1.

Data flow for one request::

    image, question ── adapter.prepare ──> pixel inputs, input_ids (one placeholder id per visual token),
                   the family's position ids of the full prompt (P, S): P = 1, or 3 for M-RoPE
    vision_pass:   adapter.vision_pass -> the features that become the LLM's image rows (N, D?)
                   + what strategies score with (LLaVA: the [CLS] query's attention row at every ViT layer,
                     from forward hooks on q_proj / k_proj that detach themselves; no eager attention needed)
    stage before:  strategy.select_before_llm -> kept token indices (or merged features), spatial order
    embeddings:    [prefix text | adapter.project(kept features) | question text], position ids
                   ("keep": each kept row's own ids; "rearrange": contiguous)
    prefill:       decoder layers one by one with a DynamicCache; at layer k a stage-"llm" strategy drops
                   image rows (hidden states, positions and hence rotary cos/sin shrink; layers < k keep
                   their full cache). The last prompt token's attention row at layer k-1 is computed
                   from its query and the cached keys by a hook on that layer's self_attn.
    decode:        one token at a time over the per-layer cache (lengths differ per layer), greedy or
                   temperature/top-p with a seed, until EOS or max_new_tokens.
    trace:         optional; records per layer the attention of each generating query over
                   system / image / question / generated tokens and the attention each patch receives.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from . import cost, text_inputs
from .adapters.base import Prepared, SubstituteScores, check_indices
from .adapters.base import attention_module_fns as _attention_module_fns
from .adapters.llava import record_cls_attention  # noqa: F401  (re-exported: benchmarks and tools import it here)
from .model import LoadedModel
from .strategies import LLMContext, Selection, Strategy, VisionContext
from .strategies.base import QuestionEmbeddings

SEGMENTS = ("system", "image", "question", "generated")


@dataclass
class PrefillState:
    """Everything the decode loop needs, plus what the prefill did."""

    cache: object  # transformers DynamicCache, per-layer lengths may differ
    logits: torch.Tensor  # (V,) next-token logits after the prompt
    next_positions: list[int]  # per layer: position id of the next token
    layer_tokens: list[torch.Tensor]  # per layer: full-prompt index of every cached row
    kept_before: list[int]  # patch indices entering the LLM
    kept_final: list[int]  # patch indices still present in the last layer
    tokens_per_layer: list[int]
    image_tokens_per_layer: list[int]
    hidden_states: torch.Tensor | None = None  # (S_last, D) final-normed prefill hidden states
    notes: list | None = None  # what a strategy could not do as specified (e.g. a fallback it took)
    vit_tokens: list | None = None  # tokens entering each ViT layer (None: all, no pruning inside the ViT)
    kept_vit: list | None = None  # patches that left the ViT (None: all, no pruning inside the ViT)
    merge_groups: list | None = None  # per patch: the index into kept_before of the token it merged into, or -1
    projected_rows: int | None = None  # rows the projector ran on, when not the kept ones (needs_projected: all N)
    image_cost: cost.ImageCost | None = None  # the image's vision-side shapes for FLOPs (``Adapter.image_cost``)


@dataclass
class Result:
    """Plain values only: what the app, the CLI and the benchmark consume."""

    answer: str
    strategy: str
    params: dict
    visual_tokens: int  # before pruning
    visual_tokens_kept: int  # entering the LLM
    tokens_per_layer: list[int]  # prefill sequence length per LLM layer
    image_tokens_per_layer: list[int]
    kept: list[int]  # patch indices entering the LLM, row-major
    kept_final: list[int]  # patch indices present in the last LLM layer
    grid: list[int]  # [rows, cols]
    generated_tokens: list[int]
    timings: dict  # vision_ms (ViT + [CLS] rows), prefill_ms (selection, projector, LLM), decode_ms_per_token,
    #                total_ms: medians of untraced repeats
    tflops: dict  # vision (ViT over every crop or tile; the later families' projector, which runs there), prefill
    #               (LLaVA-1.5's projector + LLM + LM head), decode_per_token, total (estimates)
    kv_cache_bytes: int  # after prefill + decode, from the cache's tensors
    kv_cache_bytes_per_layer: list[int]
    peak_memory_bytes: int | None  # CUDA: max allocated; CPU: None (not measured per run)
    device: str
    trace: dict | None = None
    notes: list | None = None  # fallbacks a strategy took, in words
    vit_tokens_per_layer: list | None = None  # tokens in each ViT layer, per crop or tile (all N+1 unless pruned
    #                                             inside the ViT)
    kept_vit: list | None = None  # patches that left the ViT; None: all (only IVTP prunes inside the ViT)
    merge_groups: list | None = None  # merging strategies: per patch of the grid, the position in ``kept`` of
    #                                   the token whose feature absorbed it, -1 where none did; None: no merging

    def to_dict(self) -> dict:
        return asdict(self)


def _causal_mask(n: int, dtype, device) -> torch.Tensor:
    """Additive causal mask (1, 1, n, n) for eager attention, which applies none of its own."""
    m = torch.full((n, n), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return m[None, None]


def last_query_attention(attn, hidden_states, position_embeddings, keys) -> torch.Tensor:
    """Attention probabilities (H, L) of the last row of ``hidden_states`` over ``keys`` (1, KV, L, hd).

    ``hidden_states`` is the (normed) input of ``attn``; keys are the cached, rotated keys of the
    layer including the row itself, so the last query sees every key (causality holds).
    """
    apply_rotary, repeat_kv = _attention_module_fns(attn)
    h = hidden_states[:, -1:]  # (1, 1, D)
    q = attn.q_proj(h).view(1, 1, -1, attn.head_dim).transpose(1, 2)  # (1, H, 1, hd)
    cos, sin = position_embeddings
    q, _ = apply_rotary(q, q, cos[:, -1:], sin[:, -1:])
    k = repeat_kv(keys, attn.num_key_value_groups)  # (1, H, L, hd)
    scores = (q.float() @ k.float().transpose(2, 3)) * attn.scaling  # (1, H, 1, L)
    return scores.softmax(-1)[0, :, 0]  # (H, L)


@contextlib.contextmanager
def record_last_query_attention(layers, indices, store: dict):
    """Forward hooks on ``layers[i].self_attn`` for i in ``indices`` that append the last query's
    attention row (H, L) to ``store[i]`` on every call; removed on exit."""
    handles = []

    def make_hook(i):
        def hook(module, args, kwargs, output):
            cache = kwargs.get("past_key_values")
            keys = cache.layers[module.layer_idx].keys
            store.setdefault(i, []).append(
                last_query_attention(module, kwargs["hidden_states"], kwargs["position_embeddings"], keys).detach()
            )
        return hook

    try:
        for i in indices:
            handles.append(layers[i].self_attn.register_forward_hook(make_hook(i), with_kwargs=True))
        yield store
    finally:
        for h in handles:
            h.remove()


class Engine:
    """Runs one loaded model with pruning strategies: the one loop (prefill layer by layer, dropping rows, per-layer
    cache, decode, trace) over a family adapter (``pruning.adapters``). Stateless between requests.

    The adapter's modules are also attributes here (``layers``, ``embed_tokens``, ``norm``, ``rotary_emb``,
    ``lm_head``, ``language_model``, ``image_token_id``; for LLaVA also ``vision_tower``, ``projector``,
    ``vision_layers``, ``vision_dtype``), which the tools and tests read."""

    def __init__(self, lm: LoadedModel):
        from .adapters import adapter_for

        self.lm = lm
        self.model = lm.model
        self.geometry = lm.geometry
        self.adapter = adapter = adapter_for(lm)
        for name in ("language_model", "layers", "embed_tokens", "norm", "rotary_emb", "lm_head", "image_token_id",
                     "vision_tower", "projector", "vision_layers", "vision_dtype"):
            if hasattr(adapter, name):
                setattr(self, name, getattr(adapter, name))
        self.attn_impl = self.language_model.config._attn_implementation
        if self.attn_impl not in ("sdpa", "eager"):
            raise ValueError(f"attention implementation {self.attn_impl!r} is not supported: use 'sdpa' or 'eager'")
        self.llm_shape = cost.llm_shape(adapter.text_config)
        self.vision_shape = adapter.vision_shape()
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = lm.processor.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def context(self) -> int | None:
        """The LLM's context in positions (None when the config does not say)."""
        return getattr(self.adapter.text_config, "max_position_embeddings", None)

    def check(self, strategy: Strategy, max_new_tokens: int | None = None, temperature: float = 0.0,
              top_p: float = 1.0) -> None:
        """What can be checked before anything runs: the strategy's LLM layers against this model's depth,
        its [CLS] layers (``k_layers``) against the ViT's, and the generation settings. A ``ValueError``
        names the value and the range expected."""
        n_layers = len(self.layers)
        for k in strategy.llm_drop_layers(n_layers):
            if not 1 <= k < n_layers:
                raise ValueError(f"{strategy.name} layer={k}: stage 'llm' needs 1 <= layer < {n_layers} (the model's "
                                 f"depth: {n_layers} LLM layers)")
        k_layers = getattr(strategy, "k_layers", None)
        top = self.geometry.feature_layer_index + 1
        if k_layers is not None and not 1 <= k_layers <= top:
            raise ValueError(f"{strategy.name} k_layers={k_layers}: expected 1..{top} (the ViT layers up to the one "
                             "that feeds the LLM)")
        if max_new_tokens is not None:
            check_generation(max_new_tokens, temperature, top_p, self.context)

    # ---------------------------------------------------------------- inputs and vision (the adapter's)
    def prepare(self, image, question: str) -> Prepared:
        """Run the processor; check the image placeholders form one contiguous span of N ids."""
        return self.adapter.prepare(image, question)

    def vision_pass(self, prepared: Prepared, seed: int = 0, strategy: Strategy | None = None) -> VisionContext:
        """The family's vision pass: the features the LLM's image rows come from, and what strategies score with."""
        return self.adapter.vision_pass(prepared, seed=seed, strategy=strategy)

    def token_attention(self, prepared: Prepared, token: int) -> torch.Tensor:
        """(L_v, H, T): ViT token ``token``'s attention row in every ViT layer (LLaVA: token 0 is [CLS])."""
        return self.adapter.token_attention(prepared, token)

    # ---------------------------------------------------------------- prefill
    @torch.no_grad()
    def prefill(self, prepared: Prepared, vision: VisionContext, strategy: Strategy,
                trace_store: dict | None = None, keep_hidden: bool = False) -> PrefillState:
        ids, a, n = prepared.input_ids, prepared.image_start, prepared.n_image
        dev = self.device
        # stage "before LLM"
        if strategy.stage == "before" and (strategy.needs_projected or strategy.question_inputs()):
            vision = self._strategy_inputs(prepared, vision, strategy)
        selection = strategy.select_before_llm(vision) if strategy.stage == "before" else None
        if selection is None:  # everything the vision pass kept (all patches unless pruned inside the ViT)
            selection = Selection(vision.patch_ids if vision.patch_ids is not None else torch.arange(n))
        idx = selection.indices
        check_indices(idx, n, strategy.name)
        if selection.features is None and vision.projected is not None:  # projected once, all N (needs_projected)
            image_embeds = vision.projected[idx.to(dev)]
        else:
            if selection.features is not None:
                feats = selection.features
            elif vision.patch_ids is not None:  # features are stored for the surviving patches only
                feats = vision.patch_features
            else:
                feats = vision.patch_features[idx.to(dev)]
            image_embeds = self.adapter.project(feats)  # (U, D)
        text_embeds = self.embed_tokens(ids)  # (S_full, D)
        h = torch.cat([text_embeds[:a], image_embeds.to(text_embeds.dtype), text_embeds[a + n:]])[None]  # (1, S, D)
        full_index = torch.cat([torch.arange(a), a + idx, torch.arange(a + n, ids.shape[0])]).to(dev)  # (S,)
        # (P, S): the family's own position ids of the kept rows ("keep"), or 0..S-1 ("rearrange")
        positions = (prepared.position_ids[:, full_index] if strategy.positions == "keep"
                     else self.adapter.contiguous_positions(h.shape[1]))
        is_image = (full_index >= a) & (full_index < a + n)

        from transformers import DynamicCache

        cache = DynamicCache()
        n_layers = len(self.layers)
        drops = sorted(strategy.llm_drop_layers(n_layers))
        vit_points = len(strategy.vit_prune_layers(self.geometry.vision_layers, self.geometry.feature_layer_index))
        for k in drops:
            if not 1 <= k < n_layers:
                raise ValueError(f"layer={k}: stage 'llm' needs 1 <= layer < {n_layers} (the model's depth)")
        probe: dict = {}
        probe_layers = sorted({k - 1 for k in drops}) if strategy.needs_attention_row and trace_store is None else []
        group: dict = {}
        live: dict = {}  # what the group recorder needs to know about the current sequence
        if strategy.needs_group_attention and drops:
            size = getattr(strategy, "group", 3)
            group_layers = sorted({i for k in drops for i in range(max(0, k - size), k)})
            live.update(text_inputs.pseudo_setup(self, prepared, vision, strategy))
        else:
            group_layers = []
        cos_sin = self.adapter.rotary(h, positions)
        mask = _causal_mask(h.shape[1], h.dtype, dev) if self.attn_impl == "eager" else None
        layer_tokens, next_positions, tokens_per_layer, image_per_layer = [], [], [], []
        with contextlib.ExitStack() as stack:
            if trace_store is not None:
                stack.enter_context(record_last_query_attention(self.layers, range(n_layers), trace_store))
                probe = trace_store
            elif probe_layers:
                stack.enter_context(record_last_query_attention(self.layers, probe_layers, probe))
            if group_layers:
                stack.enter_context(text_inputs.record_group_attention(self, group_layers, live, group))
            for layer_idx, layer in enumerate(self.layers):
                if layer_idx in drops:
                    image_rows = is_image.nonzero().flatten()
                    row = probe[layer_idx - 1][-1] if (strategy.needs_attention_row and probe) else None
                    maps = ([group[i] for i in range(max(0, layer_idx - getattr(strategy, "group", 3)), layer_idx)]
                            if group_layers else None)
                    ctx = LLMContext(layer=layer_idx, hidden_states=h[0], attention_row=row, image_rows=image_rows,
                                     patch_indices=full_index[image_rows] - a, vision=vision,
                                     step=vit_points + drops.index(layer_idx), steps=vit_points + len(drops),
                                     group=maps)
                    if strategy.needs_keys:  # layer k-1's cached keys are rotated and hold exactly h's rows
                        k_prev = cache.layers[layer_idx - 1].keys[0]  # (KV, S, hd)
                        ctx.keys = k_prev.transpose(0, 1).reshape(k_prev.shape[1], -1)
                        ctx.normed_states = self.norm(h)[0]
                    keep_img = strategy.select_in_llm(ctx)
                    if keep_img is not None:
                        check_indices(keep_img, image_rows.shape[0], strategy.name)
                        keep = torch.ones_like(is_image)
                        keep[image_rows] = False
                        keep[image_rows[keep_img.to(dev)]] = True
                        rows = keep.nonzero().flatten()
                        h, full_index, is_image = h[:, rows], full_index[rows], is_image[rows]
                        positions = (positions[:, rows] if strategy.positions == "keep"
                                     else self.adapter.contiguous_positions(rows.shape[0]))
                        cos_sin = self.adapter.rotary(h, positions)
                        if mask is not None:
                            mask = mask[:, :, rows][:, :, :, rows]
                if group_layers:
                    live.update(image_rows=is_image.nonzero().flatten(), positions=positions, full_index=full_index)
                h = layer(h, attention_mask=mask, position_embeddings=cos_sin, past_key_values=cache, use_cache=True)
                layer_tokens.append(full_index)
                next_positions.append(int(positions[:, -1].max()) + 1)  # M-RoPE: text after the image, t = h = w
                tokens_per_layer.append(h.shape[1])
                image_per_layer.append(int(is_image.sum()))
            h = self.norm(h)
        logits = self.lm_head(h[:, -1])[0].float()  # (V,)
        kept_final = (full_index[is_image] - a).tolist()
        notes = [f"{strategy.name}: {live['note']}; the scoring query is the visual [CLS]"] if live.get("note") else []
        notes += [f"{strategy.name}: {note}" for note in (selection.notes or [])]
        if isinstance(vision, SubstituteScores) and vision.substitute_used():  # named where a strategy read it
            notes.append(f"{strategy.name}: {vision.score_note}")
        return PrefillState(
            cache=cache, logits=logits, next_positions=next_positions, layer_tokens=layer_tokens,
            kept_before=idx.tolist(), kept_final=kept_final, tokens_per_layer=tokens_per_layer,
            image_tokens_per_layer=image_per_layer, hidden_states=h[0] if keep_hidden else None,
            notes=notes,
            vit_tokens=vision.vit_tokens,
            kept_vit=vision.patch_ids.tolist() if vision.patch_ids is not None else None,
            merge_groups=selection.groups.tolist() if selection.groups is not None else None,
            projected_rows=vision.projected.shape[0] if vision.projected is not None else None,
            image_cost=prepared.image_cost,
        )

    def _strategy_inputs(self, prepared: Prepared, vision: VisionContext, strategy: Strategy) -> VisionContext:
        """A copy of ``vision`` with what the strategy asks for before the LLM: the projector's output of every patch
        (``needs_projected``) and the question's embeddings (``question_inputs``)."""
        if vision.patch_ids is not None:
            raise ValueError(f"strategy {strategy.name!r} needs every patch's features (none pruned inside the ViT)")
        extra = {}
        if strategy.needs_projected:
            extra["projected"] = self.adapter.project(vision.patch_features)  # (N, D)
        wanted = strategy.question_inputs()
        if wanted:
            extra["question"] = text_inputs.question_embeddings(self, prepared, vision, wanted, strategy.question_text)
        return replace(vision, **extra)

    def question_embeddings(self, prepared: Prepared, vision: VisionContext, wanted=("clip", "llm"),
                            text_of=lambda q: q) -> QuestionEmbeddings:
        """``pruning.text_inputs.question_embeddings`` for this engine (CDPruner's inputs)."""
        return text_inputs.question_embeddings(self, prepared, vision, wanted, text_of)

    def text_relevance(self, prepared: Prepared, vision: VisionContext):
        """``pruning.text_inputs.text_relevance`` for this engine (IVTP eq. 5-7)."""
        return text_inputs.text_relevance(self, prepared, vision)

    # ---------------------------------------------------------------- decode
    @torch.no_grad()
    def decode(self, state: PrefillState, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               seed: int = 0, trace_store: dict | None = None,
               stop: Callable[[list[int]], bool] | None = None) -> list[int]:
        """Generate up to ``max_new_tokens`` tokens from the prefill state (the first comes from the
        prefill logits). Greedy when ``temperature == 0``. Stops at EOS, at ``max_new_tokens``, or as soon as
        ``stop(tokens so far)`` is true (e.g. a stop string appeared in their text)."""
        context = self.context
        check_generation(max_new_tokens, temperature, top_p, context)
        if context is not None and max(state.next_positions) + max_new_tokens - 1 > context:
            raise ValueError(f"max_new_tokens={max_new_tokens}: the prompt ends at position {max(state.next_positions)} "
                             f"and the model's context is {context} positions; ask for at most "
                             f"{context - max(state.next_positions) + 1}")
        pick = _sampler(temperature, top_p, seed)
        logits = state.logits
        tokens: list[int] = []
        positions = list(state.next_positions)
        recorder = (record_last_query_attention(self.layers, range(len(self.layers)), trace_store)
                    if trace_store is not None else contextlib.nullcontext())
        with recorder:
            while True:
                token = pick(logits)
                tokens.append(token)
                if token in self.eos_ids or len(tokens) >= max_new_tokens or (stop is not None and stop(tokens)):
                    break
                logits = self._step(token, positions, state.cache)
                positions = [p + 1 for p in positions]
        return tokens

    def _step(self, token: int, positions: list[int], cache) -> torch.Tensor:
        """One token through every layer over the per-layer cache (layer i at position ``positions[i]``; the
        cache grows by one per layer): the next token's logits (V,)."""
        dev = self.device
        h = self.embed_tokens(torch.tensor([[token]], device=dev))  # (1, 1, D)
        rotary: dict[int, tuple] = {}
        for layer_idx, layer in enumerate(self.layers):
            p = positions[layer_idx]
            if p not in rotary:
                rotary[p] = self.adapter.rotary(h, self.adapter.decode_positions(p))
            h = layer(h, attention_mask=None, position_embeddings=rotary[p], past_key_values=cache, use_cache=True)
        return self.lm_head(self.norm(h)[:, -1])[0].float()

    @torch.no_grad()
    def score(self, state: PrefillState, continuation: list[int]) -> tuple[list[float], bool]:
        """Teacher forcing after a (pruned) prefill of the context: the log-probability of each continuation token
        (the first from the prefill's logits, each next one after feeding the one before through the per-layer
        cache, as ``decode`` does), and whether greedy decoding would produce exactly these tokens. The context's
        pruning is the one generation has (FastV's attention row is the context's last token's). The state's
        cache grows by ``len(continuation) - 1`` tokens per layer: score a state once."""
        ids = [int(t) for t in continuation]
        if not ids:
            raise ValueError("continuation: expected at least one token id")
        context = self.context
        if context is not None and max(state.next_positions) + len(ids) - 1 > context:
            raise ValueError(f"continuation of {len(ids)} tokens: the prompt ends at position "
                             f"{max(state.next_positions)} and the model's context is {context} positions")
        logits, positions = state.logits, list(state.next_positions)
        logprobs, greedy = [], True
        for i, token in enumerate(ids):
            lp = logits.log_softmax(-1)
            logprobs.append(float(lp[token]))
            greedy = greedy and int(lp.argmax()) == token
            if i + 1 < len(ids):
                logits = self._step(token, positions, state.cache)
                positions = [p + 1 for p in positions]
        return logprobs, greedy

    # ---------------------------------------------------------------- one request
    def generate(self, image, question: str, strategy: Strategy, max_new_tokens: int = 16,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> tuple[str, PrefillState]:
        """Untimed: the decoded answer and the prefill state (for evaluations and sweeps)."""
        self.check(strategy, max_new_tokens, temperature, top_p)
        prepared = self.prepare(image, question)
        state = self.prefill(prepared, self.vision_pass(prepared, seed=strategy.seed, strategy=strategy), strategy)
        tokens = self.decode(state, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        return self.lm.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip(), state

    def timed_run(self, prepared: Prepared, strategy: Strategy, max_new_tokens: int, sampling: dict):
        """One untraced run of ``strategy`` on ``prepared``, each stage timed (``cost.Stopwatch``, synchronised
        on CUDA): returns ``({"vision_ms", "prefill_ms", "decode_ms_per_token", "total_ms"}, (state, tokens))``.
        ``sampling``: ``temperature``, ``top_p``, ``seed``. What ``run``, ``python -m pruning speed`` and the
        benchmarks time; ``make_result`` turns its output into a ``Result``."""
        dev = str(self.device)
        with cost.Stopwatch(dev) as sw_v:
            vision = self.vision_pass(prepared, seed=strategy.seed, strategy=strategy)
        with cost.Stopwatch(dev) as sw_p:
            state = self.prefill(prepared, vision, strategy)
        with cost.Stopwatch(dev) as sw_d:
            tokens = self.decode(state, max_new_tokens, **sampling)
        steps = max(len(tokens) - 1, 1)  # forward passes in the decode loop
        timings = {"vision_ms": sw_v.ms, "prefill_ms": sw_p.ms, "decode_ms_per_token": sw_d.ms / steps,
                   "total_ms": sw_v.ms + sw_p.ms + sw_d.ms}
        return timings, (state, tokens)

    def run(self, image, question: str, strategy: Strategy, max_new_tokens: int = 16, repeats: int = 1,
            warmup: int = 1, trace: bool = False, temperature: float = 0.0, top_p: float = 1.0,
            seed: int = 0) -> Result:
        """Answer ``question`` about ``image`` with ``strategy``; timings are the median of ``repeats``
        untraced runs after ``warmup`` runs. With ``trace``, one more (untimed) traced run fills
        ``Result.trace``."""
        self.check(strategy, max_new_tokens, temperature, top_p)
        prepared = self.prepare(image, question)
        sampling = dict(temperature=temperature, top_p=top_p, seed=seed)
        if str(self.device).startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        timings, (state, tokens) = cost.repeat_timed(
            lambda: self.timed_run(prepared, strategy, max_new_tokens, sampling), repeats, warmup)
        peak = torch.cuda.max_memory_allocated() if str(self.device).startswith("cuda") else None
        trace_dict = self.trace(prepared, strategy, max_new_tokens, sampling) if trace else None
        return self.make_result(prepared, strategy, state, tokens, timings, peak, trace_dict)

    def trace(self, prepared: Prepared, strategy: Strategy, max_new_tokens: int, sampling: dict) -> dict:
        """A traced run: per LLM layer, how the generating queries' attention splits over the segments,
        and the mean attention (over heads and generating queries) each patch receives."""
        vision = self.vision_pass(prepared, seed=strategy.seed, strategy=strategy)
        store: dict = {}
        state = self.prefill(prepared, vision, strategy, trace_store=store)
        tokens = self.decode(state, max_new_tokens, trace_store=store, **sampling)
        return summarize_trace(store, state.layer_tokens, prepared, prepared.n_image, len(tokens))

    def prefill_tflops(self, state: PrefillState) -> float:
        """The prefill's TFLOPs estimate from the token counts it ran: LLaVA-1.5's projector on the kept rows (the
        later families project in the vision pass, counted there), every LLM layer, the LM head on the last
        position (``Result.tflops["prefill"]``)."""
        projector = state.image_cost.prefill_projector_flops(state.projected_rows or len(state.kept_before))
        return (projector + cost.prefill_flops(self.llm_shape, state.tokens_per_layer)) / 1e12

    def vision_flops(self, state: PrefillState) -> int:
        """The vision pass's FLOPs estimate: the tower over every crop or tile of this image (over the token counts
        it ran), plus the projector where the family runs it there (``Result.tflops["vision"]`` x 1e12)."""
        return state.image_cost.vision_flops(state.vit_tokens)

    def make_result(self, prepared, strategy, state: PrefillState, tokens, timings, peak, trace_dict) -> Result:
        """The ``Result`` of a run: the answer, token counts, ``timings`` as given, TFLOPs from the token counts the
        run had, KV-cache bytes, ``peak`` memory (or None) and ``trace_dict`` (or None)."""
        tokenizer = self.lm.processor.tokenizer
        answer = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        kv_layers = cost.kv_cache_bytes(state.cache)
        # decode FLOPs are reported for the first decoded token (cache = prompt + 1 per layer)
        kv_lengths = [n + 1 for n in state.tokens_per_layer]
        tf_vision = self.vision_flops(state) / 1e12
        tf_prefill = self.prefill_tflops(state)
        tf_decode = cost.decode_token_flops(self.llm_shape, kv_lengths) / 1e12
        steps = max(len(tokens) - 1, 0)
        return Result(
            answer=answer, strategy=strategy.name, params=strategy.params(),
            visual_tokens=prepared.n_image, visual_tokens_kept=len(state.kept_before),
            tokens_per_layer=state.tokens_per_layer, image_tokens_per_layer=state.image_tokens_per_layer,
            kept=state.kept_before, kept_final=state.kept_final, grid=[prepared.rows or self.geometry.rows, prepared.cols or self.geometry.cols],
            generated_tokens=tokens, timings=timings,
            tflops={"vision": tf_vision, "prefill": tf_prefill, "decode_per_token": tf_decode,
                    "total": tf_vision + tf_prefill + steps * tf_decode},
            kv_cache_bytes=sum(kv_layers), kv_cache_bytes_per_layer=kv_layers, peak_memory_bytes=peak,
            device=str(self.device), trace=trace_dict, notes=(prepared.notes or []) + (state.notes or []),
            vit_tokens_per_layer=state.vit_tokens or [state.image_cost.vision.n_tokens] * state.image_cost.vision.layers,
            kept_vit=state.kept_vit, merge_groups=state.merge_groups,
        )


def summarize_trace(store: dict, layer_tokens: list[torch.Tensor], prepared: Prepared, n_patches: int,
                    n_generated: int) -> dict:
    """Turn raw attention rows into plain per-layer summaries.

    A generating query is the last prompt token (it produces the first answer token) and each decode
    step's input. Its attention over cache rows is split by what each row holds: the prompt before the
    image ("system"), image tokens, the question after the image, generated tokens.
    """
    a, n, s_full = prepared.image_start, prepared.n_image, prepared.input_ids.shape[0]
    shares, patch_attention, present = [], [], []
    for layer_idx, index in enumerate(layer_tokens):
        rows = store.get(layer_idx, [])  # the last prompt row (prefill), then one row per decode step
        seg_sum = torch.zeros(4)
        patch_sum = torch.zeros(n_patches)
        index = index.cpu()
        in_image = (index >= a) & (index < a + n)
        alive = torch.zeros(n_patches, dtype=torch.bool)
        alive[index[in_image] - a] = True
        present.append(alive.tolist())
        for step, row in enumerate(rows):
            row = row.mean(0).cpu()  # (L,) mean over heads
            full = torch.cat([index, s_full + torch.arange(row.shape[0] - index.shape[0])])
            seg = torch.where(full < a, 0, torch.where(full < a + n, 1, torch.where(full < s_full, 2, 3)))
            seg_sum += torch.zeros(4).index_add_(0, seg, row)
            img = seg == 1
            patch_sum.index_add_(0, full[img] - a, row[img])
        count = max(len(rows), 1)
        shares.append(dict(zip(SEGMENTS, (seg_sum / count).tolist())))
        patch_attention.append((patch_sum / count).tolist())
    return {"segments": list(SEGMENTS), "attention_share": shares, "patch_attention": patch_attention,
            "patch_present": present, "queries": n_generated}


def check_generation(max_new_tokens, temperature=0.0, top_p=1.0, context: int | None = None) -> None:
    """Generation settings: 1 <= max_new_tokens (<= the context when given), temperature >= 0 (0 = greedy),
    0 < top_p <= 1. A ``ValueError`` names the value and the range."""
    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected an integer >= 1")
    if context is not None and max_new_tokens > context:
        raise ValueError(f"max_new_tokens={max_new_tokens}: more than the model's context of {context} positions")
    if not number(temperature) or temperature < 0:
        raise ValueError(f"temperature={temperature!r}: expected a number >= 0 (0 = greedy)")
    if not number(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r}: expected a number with 0 < top_p <= 1")


def _sampler(temperature: float, top_p: float, seed: int):
    """Greedy argmax, or transformers' temperature / top-p warpers and a seeded multinomial draw."""
    if temperature == 0:
        return lambda logits: int(logits.argmax())
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    gen = torch.Generator().manual_seed(seed)

    def pick(logits):
        scores = warpers(None, logits[None].cpu())
        probs = scores.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=gen))

    return pick


__all__ = ["Engine", "Result", "Prepared", "PrefillState", "summarize_trace", "last_query_attention",
           "record_last_query_attention", "record_cls_attention", "check_generation"]
