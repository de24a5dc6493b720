"""The ``prunescope`` model of lmms-eval 0.7: every PruneScope strategy through the engine, one request at a time.

Registered through the entry-point group ``lmms_eval.models`` (pyproject.toml), lmms-eval 0.7's plugin route, so
once the project is installed::

    python -m lmms_eval --model prunescope \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,strategy=vtc-cls,keep=64,load_in_4bit=True --tasks gqa

``model_args``: ``pretrained`` (a local directory or hub id of LLaVA-1.5, Qwen2.5-VL, LLaVA-OneVision, LLaVA-NeXT
or InternVL, loaded by the same ``load_model``; default: the embedded model), ``strategy`` (default ``none``),
``load_in_4bit``, ``device``, ``threads`` (CPU threads per process), ``attn_implementation``, and every parameter
of the strategy (``keep``, ``layer``, ``stage``, ``positions``, ``seed``, ``k_layers``, ``tau``, ...: the fields of
its dataclass). Everything is checked when the model is built, before any request runs: an unknown strategy or
parameter, a budget outside 1..the model's visual tokens (on a family whose token count is per image, only >= 1: a
count above an image's tokens keeps them all), a layer beyond its depth.

- ``generate_until``: the engine's prefill (pruned) and decode, greedy unless the task samples (temperature /
  top-p, seeded per document), ``max_new_tokens`` from the task's ``gen_kwargs`` (capped to what the context holds,
  with a warning); decoding stops at EOS, at ``max_new_tokens`` or as soon as one of the task's ``until`` strings
  appears in the text (``Engine.decode``'s ``stop``), and the answer is cut before it.
- ``loglikelihood``: the context is prefilled and pruned as for generation (FastV's attention row and IVTP's
  question relevance are the context's), then the continuation's tokens are teacher-forced through the per-layer
  cache (``Engine.score``), every strategy alike. The value returned is the continuation's mean negative log-likelihood per token, as lmms-eval's own LLaVA models
  return (lmms-eval's multiple-choice scoring takes the choice with the smallest value).
- Per request, the result carries PruneScope's cost in its ``token_counts`` (lmms-eval writes them into every
  logged sample): visual tokens before pruning, entering the LLM and in its last layer, prompt tokens entering
  the LLM, prefill ms and prefill TFLOPs. Their means over all processes go into the results file's
  ``throughput`` (``avg_visual_tokens_kept``, ``avg_prefill_tflops``, ...), next to the accuracy.
- Data-parallel: lmms-eval gives process r of N the documents r, r + N, ...; each process loads the model on its
  own GPU (``cuda:LOCAL_RANK``, modulo the GPUs) or the CPU. Batch size 1 (the engine's).

Unsupported, with an error naming it: batch sizes above 1, beam search, ``top_k`` / repetition penalties, more or
fewer than one image per question (video, multi-image, text-only), multi-round generation.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from dataclasses import dataclass

import torch
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from loguru import logger
from tqdm import tqdm

MODEL_ID = "prunescope"
MODEL_OPTIONS = ("pretrained", "strategy", "load_in_4bit", "device", "threads", "attn_implementation", "batch_size",
                 "max_batch_size")
BUDGET_FREE = ("none", "vtw")  # strategies that keep no budget: keep is refused for them
DEFAULT_MAX_NEW_TOKENS = 1024  # what lmms-eval's llava_hf uses when a task names none
COST_FIELDS = ("visual_tokens", "visual_tokens_kept", "visual_tokens_last_layer", "prompt_tokens", "prefill_ms",
               "prefill_tflops")


def manifests() -> list:
    """The entry point's payload (group ``lmms_eval.models``): lmms-eval's registry imports the class on use.
    ``lmms_eval.models`` is imported here, not with this module: importing it builds the registry, which loads this
    entry point, so a module-level import would find this module half-initialised when it is imported first."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.PruneScopeLMM")]


@dataclass
class PruneScopeCounts(TokenCounts):
    """lmms-eval's per-request token counts (prompt tokens entering the LLM, generated tokens) plus what PruneScope
    measures; ``to_dict`` is what lmms-eval writes into the logged sample."""

    visual_tokens: int | None = None  # before pruning
    visual_tokens_kept: int | None = None  # entering the LLM
    visual_tokens_last_layer: int | None = None
    prompt_tokens: int | None = None  # prompt tokens entering the LLM (text + kept visual tokens)
    prefill_ms: float | None = None
    prefill_tflops: float | None = None

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.update({k: getattr(self, k) for k in COST_FIELDS if getattr(self, k) is not None})
        return out


def _whole(value, name: str, where: str = "prunescope model_args"):
    """An integer argument (lmms-eval parses ``64`` as int and ``64.0`` as float)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: {name}={value!r}: expected a whole number")
    return value


def check_keep(keep, n_patches: int | None = None):
    """``keep`` as a whole number of visual tokens, 1..n_patches (unknown before the model loads: >= 1 then).
    ``n_patches`` None also on a family whose token count is per image (Qwen2.5-VL, LLaVA-OneVision / NeXT,
    InternVL: ``geometry.n_patches`` is 0): no bound holds for every image, and a count above an image's tokens
    keeps them all (``Strategy.budget``), as ``python -m pruning ask`` clamps it."""
    if keep is None:
        return None
    keep = _whole(keep, "keep")
    top = n_patches if n_patches is not None else "N"
    if keep < 1 or (n_patches is not None and keep > n_patches):
        raise ValueError(f"prunescope model_args: keep={keep} is out of range: expected 1..{top} (the model's visual "
                         "tokens per image)")
    return keep


def build_strategy(name, params: dict):
    """The strategy from model_args, or a ValueError that names the bad argument and lists the valid ones."""
    from pruning.strategies import available, get_strategy

    if not isinstance(name, str) or name not in available():
        raise ValueError(f"prunescope model_args: unknown strategy {name!r}; valid strategies: {', '.join(available())}")
    fields = {f.name for f in dataclasses.fields(get_strategy(name))}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ValueError(f"prunescope model_args: {', '.join(unknown)}: neither a model option "
                         f"({', '.join(MODEL_OPTIONS)}) nor a parameter of strategy {name!r} "
                         f"({', '.join(sorted(fields))})")
    if name in BUDGET_FREE and params.get("keep") is not None:
        raise ValueError(f"prunescope model_args: keep={params['keep']!r} with strategy {name!r}, which keeps no "
                         "budget (none keeps every visual token, vtw withdraws them all at one layer): drop keep")
    params = dict(params)
    if "keep" in params:
        params["keep"] = check_keep(params["keep"])
    try:
        return get_strategy(name, **params)
    except (ValueError, TypeError) as e:
        raise ValueError(f"prunescope model_args: {e}") from None


def _one_image(visuals, where: str):
    """The single PIL image of a document (lmms-eval hands a list), or a ValueError saying what came instead."""
    from PIL import Image

    from pruning.images import load_image

    items = visuals if isinstance(visuals, (list, tuple)) else [visuals]
    flat = []
    for v in items:
        flat.extend(v if isinstance(v, (list, tuple)) else [v])
    if len(flat) != 1 or not isinstance(flat[0], Image.Image):
        kinds = ", ".join(type(v).__name__ for v in flat) or "nothing"
        raise ValueError(f"prunescope: {where} gives {len(flat)} visual(s) ({kinds}); the engine answers about exactly "
                         "one image per question (video, multi-image and text-only documents are not supported)")
    return load_image(flat[0])


def _generation_settings(gen_kwargs: dict, where: str) -> dict:
    """The engine's decoding settings from a task's ``gen_kwargs``; what it cannot do is refused by name."""
    g = dict(gen_kwargs or {})
    until = g.pop("until", None)
    if until is None:
        until = []
    elif isinstance(until, str):
        until = [until]
    elif not isinstance(until, (list, tuple)) or not all(isinstance(u, str) for u in until):
        raise ValueError(f"prunescope: {where}: gen_kwargs until={until!r}: expected a string or a list of strings")
    max_new = g.pop("max_new_tokens", None)
    explicit = max_new is not None
    max_new = DEFAULT_MAX_NEW_TOKENS if max_new is None else _whole(max_new, "gen_kwargs max_new_tokens",
                                                                     f"prunescope: {where}")
    if max_new < 1:
        raise ValueError(f"prunescope: {where}: gen_kwargs max_new_tokens={max_new}: expected >= 1")
    num_beams = g.pop("num_beams", None)
    if num_beams not in (None, 1):
        raise ValueError(f"prunescope: {where}: gen_kwargs num_beams={num_beams}: beam search is not supported (the "
                         "engine decodes greedily or samples with temperature / top-p)")
    penalty = g.pop("repetition_penalty", None)
    if penalty not in (None, 1, 1.0):
        raise ValueError(f"prunescope: {where}: gen_kwargs repetition_penalty={penalty}: not supported by the engine")
    temperature = float(g.pop("temperature", 0) or 0)
    do_sample = g.pop("do_sample", None)
    top_p = g.pop("top_p", None)
    top_p = 1.0 if top_p is None else float(top_p)
    top_k = g.pop("top_k", None)
    sample = temperature > 0 and do_sample is not False
    if sample and top_k not in (None, 0):
        raise ValueError(f"prunescope: {where}: gen_kwargs top_k={top_k}: not supported when sampling (the engine "
                         "samples with temperature and top-p)")
    g.pop("image_sizes", None)
    return {"until": list(until), "max_new_tokens": max_new, "explicit_max": explicit,
            "temperature": temperature if sample else 0.0, "top_p": top_p if sample else 1.0, "ignored": sorted(g)}


def cut_at_stop(text: str, until: list[str]) -> str:
    """``text`` up to the first occurrence of any non-empty stop string."""
    cut = len(text)
    for stop in until:
        if stop:
            i = text.find(stop)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


class PruneScopeLMM(lmms):
    """lmms-eval's model interface over PruneScope's engine (see the module docstring)."""

    is_simple = True

    def __init__(self, pretrained: str | None = None, strategy: str = "none", load_in_4bit: bool = False,
                 device: str | None = None, threads: int | None = None, attn_implementation: str = "sdpa",
                 batch_size=1, max_batch_size=None, **params) -> None:
        super().__init__()
        from accelerate import Accelerator

        from pruning.cli import resolve_model
        from pruning.engine import Engine
        from pruning.model import DEFAULT_MODEL_DIR, load_model

        # everything that can be checked without the model first
        if str(batch_size) != "1":
            raise ValueError(f"prunescope: batch_size={batch_size!r}: the engine answers one image and question at a "
                             "time (batch size 1); for throughput run several processes (docs/evaluation.md)")
        self.strategy = build_strategy(strategy, params)
        if not isinstance(load_in_4bit, bool):
            raise ValueError(f"prunescope model_args: load_in_4bit={load_in_4bit!r}: expected True or False")
        if threads is not None and _whole(threads, "threads") < 1:
            raise ValueError(f"prunescope model_args: threads={threads}: expected >= 1")

        accelerator = Accelerator()
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and accelerator.num_processes != launched:
            raise ValueError(
                f"prunescope: {launched} processes were launched (WORLD_SIZE={launched}) but accelerate joined "
                f"{accelerator.num_processes} (no process group: accelerate joins CPU processes only when told the "
                "run is on CPU); on CPU launch with ACCELERATE_USE_CPU=1, e.g. ACCELERATE_USE_CPU=1 torchrun "
                "--nproc_per_node 2 -m lmms_eval ... (docs/evaluation.md)")
        self.accelerator = accelerator
        self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        if device in (None, "cuda"):
            if torch.cuda.is_available():
                device = f"cuda:{accelerator.local_process_index % torch.cuda.device_count()}"
            elif device == "cuda":
                raise ValueError("prunescope: device cuda: no GPU is visible to this process")
            else:
                device = "cpu"
        source = resolve_model(pretrained)
        embedded = os.path.realpath(source) == os.path.realpath(DEFAULT_MODEL_DIR)
        if device == "cpu" and (threads is not None or embedded):
            # the embedded model's matrices are tiny: one thread per process is as fast as two (as the app runs it)
            torch.set_num_threads(int(threads or 1))
        self.engine = Engine(load_model(source, load_in_4bit=load_in_4bit, device=device,
                                        attn_implementation=attn_implementation))
        self.pretrained = source
        # then the budget and the layers against the loaded model
        check_keep(self.strategy.keep, self.engine.geometry.n_patches or None)
        try:
            self.engine.check(self.strategy)
        except ValueError as e:
            raise ValueError(f"prunescope model_args: {e}") from None
        self._device = self.engine.device
        self._records: list[dict] = []
        self._warned: set[str] = set()
        if self._rank == 0:
            logger.info(f"prunescope: {source} on {device}, strategy {self.strategy.name} {self.strategy.params()}, "
                        f"{self._world_size} process(es)")

    # ------------------------------------------------------------ what lmms-eval reads
    @property
    def device(self):
        return self._device

    @property
    def tokenizer(self):
        return self.engine.lm.processor.tokenizer

    @property
    def batch_size(self) -> int:
        return 1

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned and self._rank == 0:
            self._warned.add(key)
            logger.warning(f"prunescope: {message}")

    def _document(self, doc_to_visual, task: str, split: str, doc_id) -> tuple:
        where = f"task {task!r} document {doc_id}"
        return _one_image(doc_to_visual(self.task_dict[task][split][doc_id]), where), where

    def _question(self, context: str) -> str:
        if "<image>" in context:
            self._warn_once("placeholder", "a task's prompt holds <image>: removed (the engine puts the image before "
                                           "the question, as LLaVA-1.5's prompt does)")
            context = context.replace("<image>", "")
        return context.strip()

    def _record(self, req, counts: PruneScopeCounts, seconds: float) -> None:
        if not (req.metadata or {}).get("__padding_only__"):  # lmms-eval's padding copies are not documents
            self._records.append({"task": req.task_name, "seconds": seconds, **counts.to_dict()})

    # ------------------------------------------------------------ requests
    def generate_until(self, requests) -> list:
        from pruning.bench import prefill_cost, timed_prefill

        engine, out = self.engine, []
        context_len = engine.context
        for req in tqdm(requests, desc="prunescope", disable=self._rank != 0):
            t0 = time.perf_counter()
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            image, where = self._document(doc_to_visual, task, split, doc_id)
            settings = _generation_settings(gen_kwargs, where)
            for key in settings["ignored"]:
                self._warn_once(f"gen:{key}", f"gen_kwargs {key!r} is ignored (the engine has no such setting)")
            prepared = engine.prepare(image, self._question(context))
            state, ms = timed_prefill(engine, prepared, self.strategy)
            max_new = settings["max_new_tokens"]
            if context_len is not None:
                room = context_len - max(state.next_positions) + 1
                if max_new > room:
                    if settings["explicit_max"]:
                        self._warn_once("room", f"max_new_tokens={max_new} does not fit the model's context of "
                                                f"{context_len} positions after a prompt of {max(state.next_positions)}"
                                                f": capped to {room}")
                    max_new = room
            until = [u for u in settings["until"] if u]
            stop = ((lambda toks: any(u in self.tokenizer.decode(toks, skip_special_tokens=True) for u in until))
                    if until else None)
            tokens = engine.decode(state, max_new, temperature=settings["temperature"], top_p=settings["top_p"],
                                   seed=int(doc_id) if isinstance(doc_id, int) else 0, stop=stop)
            text = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), settings["until"]).strip()
            cost = prefill_cost(engine, prepared, state, ms)
            counts = PruneScopeCounts(input_tokens=cost["prompt_tokens"], output_tokens=len(tokens), **cost)
            self._record(req, counts, time.perf_counter() - t0)
            out.append(GenerationResult(text=text, token_counts=counts))
        return out

    def loglikelihood(self, requests) -> list:
        from pruning.bench import prefill_cost, timed_prefill

        engine, s, out = self.engine, self.strategy, []
        for req in tqdm(requests, desc="prunescope loglikelihood", disable=self._rank != 0):
            t0 = time.perf_counter()
            if len(req.args) < 6:
                raise NotImplementedError("prunescope: a loglikelihood request without an image (acc_mutual_info's "
                                          "unconditional term) is not supported: the engine needs one image")
            context, target, doc_to_visual, doc_id, task, split = req.args[:6]
            image, where = self._document(doc_to_visual, task, split, doc_id)
            continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            prepared = engine.prepare(image, self._question(context))
            cont = self._continuation_ids(prepared.prompt, str(continuation), where)
            total = prepared.input_ids.shape[0] + cont.shape[0]
            if engine.context is not None and total > engine.context:
                raise ValueError(f"prunescope: {where}: context and continuation hold {total} tokens, beyond the "
                                 f"model's context of {engine.context}")
            # the context is prefilled (and pruned) as for generation; the continuation is teacher-forced through
            # the per-layer cache (Engine.score)
            state, ms = timed_prefill(engine, prepared, s)
            logprobs, greedy = engine.score(state, cont.tolist())
            nll = -sum(logprobs) / len(logprobs)
            cost = prefill_cost(engine, prepared, state, ms)
            counts = PruneScopeCounts(input_tokens=cost["prompt_tokens"], output_tokens=0, **cost)
            self._record(req, counts, time.perf_counter() - t0)
            # lmms-eval 0.7.3 turns a bare (float, bool) tuple into its string (api/instance.py,
            # unwrap_generation_output), which multiple-choice scoring cannot read; inside its own GenerationResult the
            # pair reaches the task unchanged, with the counts.
            out.append(GenerationResult(text=(nll, greedy), token_counts=counts))
        return out

    def _continuation_ids(self, prompt: str, continuation: str, where: str) -> torch.Tensor:
        """The continuation's token ids as they follow the prompt: tokenize prompt + continuation and the prompt
        alone, keep the tail (lm-eval's rule; the image placeholder is one token in both)."""
        tok = self.tokenizer
        whole = tok(prompt + continuation).input_ids
        head = tok(prompt).input_ids
        tail = whole[len(head):]
        if not tail:
            raise ValueError(f"prunescope: {where}: the continuation {continuation!r} adds no token to the prompt")
        return torch.tensor(tail, dtype=torch.long)

    def generate_until_multi_round(self, requests) -> list:
        raise NotImplementedError("prunescope: generate_until_multi_round (multi-round tasks) is not supported: the "
                                  "engine answers one image and one question per request")

    # ------------------------------------------------------------ the run's summary
    def clean(self):
        """lmms-eval calls this once on every process after the last request: the processes' per-request costs are
        gathered on rank 0, which puts their means into the results file's ``throughput``."""
        records, self._records = self._records, []
        if self._world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * self._world_size
            torch.distributed.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        if self._rank == 0 and records:
            from lmms_eval.models.model_utils.gen_metrics import log_metrics

            seconds = sum(r["seconds"] for r in records)
            generated = sum(r.get("output_tokens", 0) for r in records)
            log_metrics(total_elapsed_time=seconds, total_gen_tokens=generated,
                        avg_speed=generated / seconds if seconds > 0 else 0.0,
                        additional_metrics={"total_requests": len(records),
                                            **{k: statistics.mean(r[k] for r in records) for k in COST_FIELDS}})
        super().clean()
