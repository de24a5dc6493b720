"""Accuracy-vs-budget sweep and VTW calibration over a question set.

Question sets: ``shapes`` (the embedded model's held-out questions, seeds never used in training) or a
JSONL file with one object per line: ``{"image": PATH, "question": TEXT, "answer": TEXT[, "type": TEXT]}``
(image paths relative to the file). Answers are compared case-insensitively after stripping spaces and
a final period.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from . import cost
from .images import load_image
from .strategies import available, get_strategy


SEEDED = ("random", "kmeans")  # strategies whose rule draws random numbers (their seed matters)
QUESTION_SEED_STRIDE = 1_000_000  # held-out scene seeds between two question seeds (a set of 1000 uses ~1100)
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


@dataclass
class Sample:
    image: object  # PIL image
    question: str
    answer: str
    type: str = "all"


def check_seed(seed) -> int | None:
    """A sweep's seed: None (the default questions and strategy seeds) or an integer 0..999."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 999):
        raise ValueError(f"seed={seed!r}: expected a whole number 0..999")
    return seed


def load_samples(source: str, n: int, types=None, seed: int | None = None) -> list[Sample]:
    """``n`` questions from ``source``; ``types`` (shapes only) limits them to some question types. ``seed`` (shapes
    only; None and 0: the default set) draws another held-out set: scenes from seed ``HELD_OUT_SEED + seed x
    QUESTION_SEED_STRIDE`` on, never seen in training."""
    if source == "shapes":
        from .shapes import world

        types = tuple(types) if types else world.QUESTION_TYPES
        bad = [t for t in types if t not in world.QUESTION_TYPES]
        if bad:
            raise ValueError(f"question types {bad} unknown; valid: {', '.join(world.QUESTION_TYPES)}")
        seed0 = world.HELD_OUT_SEED + (check_seed(seed) or 0) * QUESTION_SEED_STRIDE
        return [Sample(s.image, q.text, q.answer, q.type) for s, q in world.heldout_questions(n, seed0, types)]
    if types:
        raise ValueError("question types filter only the held-out shapes questions")
    if seed:
        raise ValueError("a question seed draws only held-out shapes questions; a file's questions are taken in order")
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"question set {source!r} is neither 'shapes' nor an existing JSONL file")
    out = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image_path = path.parent / row["image"]
            out.append(Sample(load_image(str(image_path)), row["question"], str(row["answer"]),
                              row.get("type", "all")))
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{path}:{i + 1}: expected a JSON object with image, question, answer ({e})") from e
        if len(out) >= n:
            break
    if not out:
        raise ValueError(f"{path} holds no questions")
    return out


def normalise(text: str) -> str:
    return text.strip().rstrip(".").strip().lower()


def parse_budgets(spec: str, n_patches: int) -> list[int]:
    """'192,128,64' or '0.33,0.22' (fractions of the grid) -> token counts. ``n_patches`` < 1 (a model whose token
    count follows each image: Qwen2.5-VL, LLaVA-OneVision / NeXT, InternVL) is refused in words: one count cannot
    stand for every image there, and a fraction of 0 would silently keep nothing."""
    if n_patches < 1:
        raise ValueError("this model has no fixed patch grid: its visual tokens follow each image (Qwen2.5-VL, "
                         "LLaVA-OneVision / NeXT, InternVL), so one list of budgets cannot stand for every image; "
                         "sweeps over questions take fixed-grid models (LLaVA-1.5 geometries, the embedded model); "
                         "`ask --keep 0.25`, `speed --keep 0.25` and the app take ratios of each image's tokens")
    out = []
    for part in spec.split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"budget {part!r} is neither a count nor a fraction") from None
        count = round(value * n_patches) if 0 < value < 1 or "." in part else int(value)
        if not 0 <= count <= n_patches:
            raise ValueError(f"budget {part!r} gives {count} tokens, outside 0..{n_patches}")
        out.append(count)
    return out


def configs(strategies: str, budgets: list[int], position_variants: bool = True,
            seed: int | None = None) -> list[tuple[str, dict]]:
    """(label, strategy params) rows: every selection strategy at every budget (``all``: every registered one but
    ``manual``, whose patches a person picks); FastV at every budget;
    VTW once (it keeps no budget); with ``position_variants``, random and every before-LLM strategy whose default is
    contiguous positions in both position modes (``_other_positions``). ``seed``
    (None: each strategy's default) is given to the strategies whose rule draws random numbers (``SEEDED``)."""
    names = [s for s in available() if s not in ("none", "manual")] if strategies == "all" else [s.strip() for s in strategies.split(",")]
    rows = [("none", {"name": "none"})]
    for name in names:
        if name == "none":
            continue
        if name == "vtw":
            rows.append(("vtw", {"name": "vtw"}))
            continue
        for b in budgets:
            rows.append((f"{name}", {"name": name, "keep": b}))
            other = _other_positions(name) if position_variants else None
            if other is not None:
                rows.append((f"{name} ({other})", {"name": name, "keep": b, "positions": other}))
    if check_seed(seed) is not None:
        for _, params in rows:
            if params["name"] in SEEDED:
                params["seed"] = seed
    for _, params in rows:  # fail early on a bad name
        get_strategy(**params)
    return rows


def _other_positions(name: str) -> str | None:
    """The position mode a sweep adds beside a strategy's default: ``rearrange`` for random (the control), and
    ``keep`` for every strategy that prunes before the LLM with contiguous positions by default (the authors' way
    for vtc-cls, cdpruner, divprune, visionzip, ...; the embedded model was trained with each patch at a fixed
    position, so there both rows are shown)."""
    strategy = get_strategy(name)
    if name == "random":
        return "rearrange"
    if strategy.positions == "rearrange" and strategy.stage == "before":
        return "keep"
    return None


def timed_prefill(engine, prepared, strategy):
    """The vision pass, then the prefill timed on its own: ``(state, prefill_ms)``."""
    vision = engine.vision_pass(prepared, seed=strategy.seed, strategy=strategy)
    with cost.Stopwatch(str(engine.device)) as sw:
        state = engine.prefill(prepared, vision, strategy)
    return state, sw.ms


def prefill_cost(engine, prepared, state, prefill_ms: float) -> dict:
    """What one request cost before its first token: visual tokens before pruning, entering the LLM and in its
    last layer, prompt tokens entering the LLM, the prefill's milliseconds and its TFLOPs estimate (projector +
    LLM + LM head, as ``Result.tflops["prefill"]``)."""
    return {"visual_tokens": prepared.n_image, "visual_tokens_kept": len(state.kept_before),
            "visual_tokens_last_layer": state.image_tokens_per_layer[-1], "prompt_tokens": state.tokens_per_layer[0],
            "prefill_ms": prefill_ms, "prefill_tflops": engine.prefill_tflops(state)}


def sample_record(engine, sample: Sample, strategy, max_new_tokens: int = 4) -> dict:
    """One question, greedy: the answer, whether it is right, and ``prefill_cost``."""
    prepared = engine.prepare(sample.image, sample.question)
    state, ms = timed_prefill(engine, prepared, strategy)
    tokens = engine.decode(state, max_new_tokens)
    answer = engine.lm.processor.tokenizer.decode(tokens, skip_special_tokens=True)
    return {"type": sample.type, "answer": answer.strip(), "hit": int(normalise(answer) == normalise(sample.answer)),
            "visual_tokens_per_layer": list(state.image_tokens_per_layer), **prefill_cost(engine, prepared, state, ms)}


def wilson(hits: int, n: int, z: float = Z95) -> list[float]:
    """Wilson's score interval [low, high] for ``hits`` successes in ``n`` trials (95% by default); [0, 1] for n = 0."""
    if n == 0:
        return [0.0, 1.0]
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [0.0 if hits == 0 else centre - half, 1.0 if hits == n else centre + half]


def budget_label(params: dict, per_layer: list[float]) -> str:
    """A strategy's budget in words, for a point's label: "keep 36", "all", "keep 36 from layer 2" (pruned inside
    the LLM), "all withdrawn from layer 3" (VTW)."""
    keep = params.get("keep")
    what = "all" if keep is None else f"keep {keep}"
    drop = next((i for i, v in enumerate(per_layer) if v < per_layer[0] - 1e-9), None)
    if drop is None:
        return what
    if per_layer[-1] < 0.5:
        return f"all withdrawn from layer {drop}"
    return f"{what if keep is not None else f'{per_layer[-1]:.0f} kept'} from layer {drop}"


def summarise(strategy, records: list[dict]) -> dict:
    """A sweep row from per-question records (in question order): accuracy overall and per type with Wilson 95%
    intervals, mean tokens (entering the LLM, per LLM layer, in the last layer), TFLOPs, median prefill ms."""
    hits: dict[str, list[int]] = {}
    for r in records:
        hits.setdefault(r["type"], []).append(r["hit"])
    all_hits = [r["hit"] for r in records]
    per_layer = [statistics.mean(layer) for layer in zip(*(r["visual_tokens_per_layer"] for r in records))]
    tflops = statistics.mean(r["prefill_tflops"] for r in records)
    return {"name": strategy.name, "params": strategy.params(), "accuracy": sum(all_hits) / len(all_hits),
            "n": len(all_hits), "hits": sum(all_hits), "accuracy_ci": wilson(sum(all_hits), len(all_hits)),
            "per_type": {t: sum(v) / len(v) for t, v in sorted(hits.items())},
            "per_type_n": {t: len(v) for t, v in sorted(hits.items())},
            "per_type_ci": {t: wilson(sum(v), len(v)) for t, v in sorted(hits.items())},
            "tokens_entering_llm": statistics.mean(r["visual_tokens_kept"] for r in records),
            "visual_tokens_per_layer_mean": statistics.mean(per_layer), "visual_tokens_per_layer": per_layer,
            "tokens_last_layer": statistics.mean(r["visual_tokens_last_layer"] for r in records),
            "budget_label": budget_label(strategy.params(), per_layer),
            "prefill_tflops": tflops, "prefill_gflops": tflops * 1e3,
            "prefill_ms": statistics.median(r["prefill_ms"] for r in records)}


def evaluate(engine, samples: list[Sample], params: dict, max_new_tokens: int = 4) -> dict:
    strategy = get_strategy(**params)
    return summarise(strategy, [sample_record(engine, s, strategy, max_new_tokens) for s in samples])


def sweep(engine, samples: list[Sample], strategies: str, budgets: list[int], progress: bool = True,
          position_variants: bool = True, seed: int | None = None) -> list[dict]:
    """One row per configuration (``configs``; ``seed`` goes to the seeded strategies) over ``samples``."""
    rows = []
    for label, params in tqdm(configs(strategies, budgets, position_variants, seed), desc="bench",
                              disable=not progress):
        row = evaluate(engine, samples, params)
        row.update(label=label, seed=seed)
        rows.append(row)
    add_prefill_speedups(rows)
    return rows


def add_prefill_speedups(rows: list[dict]) -> None:
    """Each row's prefill speedup over the ``none`` row: ``prefill_speedup`` (median prefill ms, measured one
    configuration after the other, so drift is not shared as in ``python -m pruning speed``),
    ``prefill_speedup_predicted`` (prefill TFLOPs of none over the row's) and ``prefill_efficiency`` (their
    ratio). Nothing is added when there is no ``none`` row."""
    ref = next((r for r in rows if r["name"] == "none"), None)
    if ref is None:
        return
    for r in rows:
        measured = ref["prefill_ms"] / max(r["prefill_ms"], 1e-9)
        predicted = ref["prefill_tflops"] / max(r["prefill_tflops"], 1e-18)
        r.update(prefill_speedup=measured, prefill_speedup_predicted=predicted, prefill_efficiency=measured / predicted)


# ---------------------------------------------------------------- data-parallel sweeps
# The questions are split as lmms-eval splits a task: process r of N takes questions r, r + N, r + 2N, ...
# Every process runs every configuration on its share; the shares are merged in question order and summarised
# as one process would. Two ways in: ``sweep_processes`` spawns N workers itself (``bench --processes N``), and
# ``sweep_launched`` is one of N processes a launcher started (torchrun, ``accelerate launch``), found by the
# launcher's WORLD_SIZE / RANK / LOCAL_RANK.


@dataclass
class SweepJob:
    """What every process of a sharded sweep needs to rebuild the same sweep on its own."""

    model: str
    questions: str = "shapes"
    n: int = 200
    strategies: str = "all"
    keep: str = "0.333,0.222,0.111"
    load_in_4bit: bool = False
    position_variants: bool = True
    device: str | None = None  # None: one GPU per process when there are GPUs, else the CPU
    threads: int | None = None  # CPU threads per process; None: the cores shared out evenly
    seed: int | None = None  # questions and seeded strategies (``load_samples``, ``configs``); None: the defaults


def cpu_count() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def process_device(job: SweepJob, local_rank: int) -> str:
    """Process ``local_rank``'s device: GPU ``local_rank`` modulo the GPUs (processes share GPUs when there are
    more processes than GPUs), or the CPU."""
    if job.device is not None and job.device != "cuda":
        return job.device
    if torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    if job.device == "cuda":
        raise ValueError("device cuda: no GPU is visible to this process")
    return "cpu"


def run_shard(job: SweepJob, rank: int, world: int, local_rank: int, on_total=None, on_step=None) -> dict:
    """Process ``rank`` of ``world``: load the model and the questions, run every configuration on questions
    rank, rank + world, ... Returns the configurations, the number of questions and, per configuration, the
    (question index, record) pairs."""
    from .engine import Engine
    from .model import load_model

    device = process_device(job, local_rank)
    if device == "cpu":
        torch.set_num_threads(job.threads or max(1, cpu_count() // world))
    engine = Engine(load_model(job.model, load_in_4bit=job.load_in_4bit, device=device))
    samples = load_samples(job.questions, job.n, seed=job.seed if job.questions == "shapes" else None)
    rows = configs(job.strategies, parse_budgets(job.keep, engine.geometry.n_patches), job.position_variants, job.seed)
    mine = list(range(rank, len(samples), world))
    if on_total:
        on_total(len(mine) * len(rows))
    records = []
    for _, params in rows:
        strategy = get_strategy(**params)
        done = []
        for i in mine:
            done.append((i, sample_record(engine, samples[i], strategy)))
            if on_step:
                on_step()
        records.append(done)
    return {"configs": rows, "n_samples": len(samples), "records": records, "device": device, "seed": job.seed}


def merge_shards(shards: list[dict]) -> list[dict]:
    """The sweep's rows from every process's ``run_shard``, as ``sweep`` gives them in one process."""
    first = shards[0]
    for s in shards[1:]:
        if s["configs"] != first["configs"] or s["n_samples"] != first["n_samples"]:
            raise ValueError("the processes of a sharded sweep built different sweeps (configurations or questions "
                             "differ); every process must see the same model, questions and budgets")
    rows = []
    for c, (label, params) in enumerate(first["configs"]):
        pairs = sorted(pair for s in shards for pair in s["records"][c])
        if [i for i, _ in pairs] != list(range(first["n_samples"])):
            raise ValueError(f"{label}: the shards do not cover every question once")
        row = summarise(get_strategy(**params), [r for _, r in pairs])
        row.update(label=label, seed=first.get("seed"))
        rows.append(row)
    add_prefill_speedups(rows)
    return rows


def _worker(rank: int, world: int, job: SweepJob, queue) -> None:
    """A spawned process of ``sweep_processes``: its shard, or the error, through ``queue``."""
    try:
        out = run_shard(job, rank, world, rank, on_total=lambda n: queue.put(("total", rank, n)),
                        on_step=lambda: queue.put(("step", rank, 1)))
        queue.put(("done", rank, out))
    except (ValueError, FileNotFoundError) as e:  # bad input: the message is the whole story
        queue.put(("error", rank, str(e)))
    except BaseException:  # anything else: the traceback, so the parent can show where it broke
        queue.put(("error", rank, traceback.format_exc()))


def sweep_processes(job: SweepJob, processes: int, progress: bool = True) -> list[dict]:
    """``job`` over ``processes`` spawned processes (one per GPU, or the CPU cores shared out), one progress bar."""
    import multiprocessing
    import queue as queues

    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes={processes!r}: expected an integer >= 1")
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA or OpenMP state
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, processes, job, q), daemon=True) for r in range(processes)]
    for p in procs:
        p.start()
    shards: dict[int, dict] = {}
    totals: dict[int, int] = {}
    bar = tqdm(total=0, desc=f"bench ({processes} processes)", disable=not progress)
    try:
        while len(shards) < processes:
            try:
                kind, rank, value = q.get(timeout=2)
            except queues.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode is not None and r not in shards]
                if dead:  # give a message already on its way a moment to arrive
                    try:
                        kind, rank, value = q.get(timeout=5)
                    except queues.Empty:
                        r = dead[0]
                        raise RuntimeError(f"bench process {r} exited with code {procs[r].exitcode} before finishing "
                                           "(killed for memory?)") from None
                else:
                    continue
            if kind == "error":
                raise ValueError(f"bench process {rank}: {value}")
            if kind == "total":
                totals[rank] = value
                bar.total = sum(totals.values())
                bar.refresh()
            elif kind == "step":
                bar.update(value)
            elif kind == "done":
                shards[rank] = value
    finally:
        bar.close()
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)
    return merge_shards([shards[r] for r in range(processes)])


def launched_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when a launcher (torchrun, ``accelerate launch``) started several copies of
    this process; None otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))


def sweep_launched(job: SweepJob, progress: bool = True) -> list[dict] | None:
    """This process's shard of ``job`` when a launcher started several; the shards meet on rank 0 (torch.distributed,
    gloo: plain Python objects, no GPU needed for them), which returns the rows; the other ranks return None."""
    import torch.distributed as dist

    where = launched_world()
    if where is None:
        raise ValueError("sweep_launched: WORLD_SIZE is not > 1 (no launcher started several processes)")
    rank, world, local_rank = where
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo")  # the launcher's MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE
    try:
        bar = tqdm(total=0, desc=f"bench (rank 0 of {world})", disable=not progress or rank != 0)

        def on_total(n):
            bar.total = n
            bar.refresh()

        try:  # every rank reaches the gather, with its shard or its error, so no rank waits forever
            out = run_shard(job, rank, world, local_rank, on_total=on_total, on_step=lambda: bar.update(1))
        except (ValueError, FileNotFoundError) as e:
            out = {"error": str(e)}
        except Exception:
            out = {"error": traceback.format_exc()}
        finally:
            bar.close()
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(out, gathered, dst=0)
        if rank != 0:
            if "error" in out:
                raise ValueError(f"bench rank {rank}: {out['error']}")
            return None
        failed = [(r, g["error"]) for r, g in enumerate(gathered) if "error" in g]
        if failed:
            raise ValueError("; ".join(f"bench rank {r}: {e}" for r, e in failed))
        return merge_shards(gathered)
    finally:
        if own_group:
            dist.destroy_process_group()


def markdown_table(rows: list[dict]) -> str:
    types = sorted({t for r in rows for t in r["per_type"]})
    head = ["strategy", "keep", "positions", "stage", "overall", *types, "tokens into LLM", "image tokens last layer",
            "prefill TFLOPs", "prefill ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        p = r["params"]
        keep = "all" if p.get("keep") is None else str(p["keep"])
        cells = [r["name"], keep, p["positions"], p["stage"] + (f" (layer {p['layer']})" if p["stage"] == "llm" and p.get("layer") is not None else ""),
                 f"{r['accuracy']:.1%}", *[f"{r['per_type'].get(t, float('nan')):.1%}" for t in types],
                 f"{r['tokens_entering_llm']:.0f}", f"{r['tokens_last_layer']:.0f}", f"{r['prefill_tflops']:.2e}",
                 f"{r['prefill_ms']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_summary(rows: list[dict]) -> list[dict]:
    """Rows of the same configuration run with different seeds (``row["seed"]``), summarised: one dict per
    (label, keep) with the seeds, the mean accuracy, its min and max and the population standard deviation, overall
    and per question type."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["label"], r["params"].get("keep")), []).append(r)
    out = []
    for (label, keep), rs in groups.items():
        acc = [r["accuracy"] for r in rs]
        types = sorted({t for r in rs for t in r["per_type"]})
        out.append({"label": label, "keep": keep, "seeds": [r["seed"] for r in rs], "accuracy_mean": statistics.mean(acc),
                    "accuracy_min": min(acc), "accuracy_max": max(acc), "accuracy_sd": statistics.pstdev(acc),
                    "per_type_mean": {t: statistics.mean(r["per_type"][t] for r in rs) for t in types}})
    return out


def seed_table(summary: list[dict]) -> str:
    """``seed_summary`` as a markdown table: mean accuracy with its range and standard deviation over the seeds."""
    types = sorted({t for s in summary for t in s["per_type_mean"]})
    head = ["strategy", "keep", "seeds", "overall mean", "min-max", "sd", *[f"{t} mean" for t in types]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [s["label"], "all" if s["keep"] is None else str(s["keep"]), ",".join(map(str, s["seeds"])),
                 f"{s['accuracy_mean']:.1%}", f"{s['accuracy_min']:.1%}-{s['accuracy_max']:.1%}",
                 f"{s['accuracy_sd']:.1%}", *[f"{s['per_type_mean'][t]:.1%}" for t in types]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """KL(P || Q) of the two next-token distributions given by logits."""
    logp, logq = p_logits.float().log_softmax(-1), q_logits.float().log_softmax(-1)
    return float((logp.exp() * (logp - logq)).sum())


def check_eta(eta) -> float:
    """VTW's KL threshold: a finite number > 0 (a KL is >= 0, so eta <= 0 would accept no layer)."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta <= 0:
        raise ValueError(f"eta={eta!r}: expected a KL threshold > 0 (VTW's default: 0.003)")
    return float(eta)


def calibrate_vtw(engine, samples: list[Sample], eta: float = 0.003, min_layer: int | None = None,
                  progress: bool = True) -> dict:
    """VTW eq. 6 / Algorithm 1: the mean KL between the withdrawn model's and the full model's output
    distribution (the first answer token) for every withdrawal layer; the chosen layer is the first one >=
    ``min_layer`` whose KL is at most eta (None when none is).

    As the authors' code does it (lzhxmu/VTW @ a3d8cfc, llava/model/language_model/VTW.py, the ``findk`` branch of
    ``forward``: ``nn.KLDivLoss(reduction='batchmean')(log_softmax(full), softmax(withdrawn))``, which is
    KL(withdrawn || full); lmms-evaluation/lmms_eval/__main__.py: the first layer with ``kl <= eta``). The paper's
    text writes KL(lm_head(X), lm_head(X')) < eta (eq. 6 and Algorithm 1 line 6: full first, strict), which read as
    KL(full || withdrawn) picks another layer for some eta; docs/strategies.md names the difference.

    Layers are the engine's 0-based ``layer`` (the image rows are dropped before it runs), the paper's K is
    1-based (eq. 5 runs layers 1..K-1 with them): K = layer + 1. The default ``min_layer`` (None) is 4, the
    paper's K >= 5 (Algorithm 1 line 3); the authors' code starts its search at 0-based 5 (``min_layer=5``, K >= 6).
    A ``min_layer`` given beyond the model's depth is refused (the default is not: a shallow model gets k None).
    The result gives both: ``k`` / ``min_layer`` / ``kl_per_layer`` in the engine's numbering (what
    ``get_strategy("vtw", layer=k)`` takes), ``k_paper`` / ``min_k_paper`` / ``kl_per_k_paper`` in the paper's."""
    eta = check_eta(eta)
    n_layers = engine.geometry.llm_layers
    if min_layer is None:
        min_layer = 4
    elif isinstance(min_layer, bool) or not isinstance(min_layer, int) or not 0 <= min_layer < n_layers:
        raise ValueError(f"min_layer={min_layer!r} (K >= {min_layer + 1 if isinstance(min_layer, int) else '?'}): "
                         f"the model has {n_layers} LLM layers; expected 0..{n_layers - 1}")
    full = get_strategy("none")
    kl = {k: [] for k in range(1, n_layers)}
    for s in tqdm(samples, desc="calibrate", disable=not progress):
        prepared = engine.prepare(s.image, s.question)
        vision = engine.vision_pass(prepared)
        ref = engine.prefill(prepared, vision, full).logits
        for k in kl:
            out = engine.prefill(prepared, vision, get_strategy("vtw", layer=k)).logits
            kl[k].append(kl_divergence(out, ref))  # KL(withdrawn || full), the authors' KLDivLoss
    mean = {k: statistics.mean(v) for k, v in kl.items()}
    chosen = next((k for k in sorted(mean) if k >= min_layer and mean[k] <= eta), None)  # the authors' <=
    return {"k": chosen, "eta": eta, "min_layer": min_layer, "samples": len(samples), "layers": n_layers,
            "kl_per_layer": {str(k): v for k, v in mean.items()},
            "k_paper": None if chosen is None else chosen + 1, "min_k_paper": min_layer + 1,
            "kl_per_k_paper": {str(k + 1): v for k, v in mean.items()},
            "numbering": "k, min_layer, kl_per_layer: the engine's 0-based layer the image rows are dropped "
                         "before; k_paper, min_k_paper, kl_per_k_paper: VTW's 1-based K (eq. 5) = layer + 1"}
