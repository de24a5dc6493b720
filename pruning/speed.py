"""Measured speed against the arithmetic: ``python -m pruning speed``.

Every strategy x budget runs in one process on one model, **interleaved**: after one untimed warm-up run of
each configuration, repeat r runs every configuration once, round robin, starting one configuration later than
repeat r - 1 (so no configuration always follows the same one and machine drift hits all alike). For each
configuration: the median and spread (min, max, quartiles) of vision ms, prefill ms, ms per decoded token,
total ms and time to first token (TTFT = vision + prefill); peak memory from one more, untimed run (CUDA: max
allocated; CPU: the process's RSS high-water mark above its level before the run, sampled every millisecond
after returning freed heap to the system, a lower bound); KV-cache bytes and TFLOPs (the engine's estimate from
the token counts it ran, ``pruning.cost``); the speedup over ``none`` measured (ratio of medians) and predicted
by the TFLOPs, for the prefill and for TTFT, and their ratio ``efficiency``.

``geometry_model`` builds (once, cached on disk) a random-init LLaVA with the real LLaVA-1.5 widths and token
geometry and as few layers as asked (``pruning.toy.real_width_geometry``), so that the per-layer cost is the
real model's on a CPU. Per-layer figures transfer to the full model; totals and the vision / prefill split scale
with depth (24 ViT and 32 or 40 LLM layers in the real models).
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import hashlib
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import cost
from .strategies import get_strategy

DEFAULT_STRATEGIES = ("none", "vtc-cls", "random", "pooling", "topk-sim", "fastv", "vtw")
DEFAULT_QUESTION = "What is shown in this image?"
REAL_WIDTH_DEFAULTS = {"llm_layers": 2, "vit_layers": 4}  # CPU-sized depth of a real-width geometry
TIMINGS = ("vision_ms", "prefill_ms", "decode_ms_per_token", "total_ms", "ttft_ms")
FASTV_LAYER = 2  # FastV's K (the paper's default); min(K, depth - 1) on a shallower model


# ------------------------------------------------------------------------------------------- the model to time
def cache_root() -> Path:
    """Where built geometries are kept: ``$PRUNESCOPE_CACHE`` or ``~/.cache/prunescope``."""
    return Path(os.environ.get("PRUNESCOPE_CACHE") or Path.home() / ".cache" / "prunescope")


def geometry_choices() -> list[str]:
    from .geometries import BUILT_IN
    from .toy import GEOMETRIES

    return list(BUILT_IN) + list(GEOMETRIES)


def resolve_geometry(name: str, llm_layers: int | None = None, vit_layers: int | None = None,
                     vocab: int | None = None):
    """What to build for ``name``: a real-width LLaVA-1.5 ``ToyGeometry`` (``llava-1.5-7b``, ``llava-1.5-13b``;
    default 2 LLM and 4 ViT layers, vocabulary 32064), one of ``pruning.toy``'s small geometries, or, for a later
    family (``llava-next-7b``, ``llava-onevision-7b``, ``qwen2.5-vl-7b``, ``internvl3-8b``), the dict
    ``pruning.toy_families.build_real_width`` takes (same default depths and vocabulary), with the depths given."""
    from .geometries import BUILT_IN, FAMILY_GEOMETRIES
    from .toy import GEOMETRIES, real_width_geometry

    if name in FAMILY_GEOMETRIES:
        spec = {"geometry": name, "llm_layers": llm_layers or REAL_WIDTH_DEFAULTS["llm_layers"],
                "vit_layers": vit_layers or REAL_WIDTH_DEFAULTS["vit_layers"], "vocab": vocab or 32064}
        for what, key, low in (("--llm-layers", "llm_layers", 1), ("--vit-layers", "vit_layers", 2),
                               ("--vocab", "vocab", 320)):
            if spec[key] < low:
                raise ValueError(f"{what} {spec[key]}: expected at least {low}")
        return spec
    if name in BUILT_IN:
        return real_width_geometry(name, llm_layers or REAL_WIDTH_DEFAULTS["llm_layers"],
                                   vit_layers or REAL_WIDTH_DEFAULTS["vit_layers"], vocab)
    if name not in GEOMETRIES:
        raise ValueError(f"unknown geometry {name!r}: expected one of {', '.join(geometry_choices())}")
    changes = {}
    for what, field, n, low in (("--llm-layers", "text_layers", llm_layers, 1),
                                ("--vit-layers", "vision_layers", vit_layers, 2), ("--vocab", "model_vocab", vocab, 320)):
        if n is not None:
            if n < low:
                raise ValueError(f"{what} {n}: expected at least {low}")
            changes[field] = n
    return dataclasses.replace(GEOMETRIES[name], **changes)


def geometry_layers(geometry) -> tuple[int, int]:
    """(LLM layers, ViT layers) of what ``resolve_geometry`` returned."""
    if isinstance(geometry, dict):
        return geometry["llm_layers"], geometry["vit_layers"]
    return geometry.text_layers, geometry.vision_layers


def geometry_image_size(name: str, geometry) -> int:
    """The side of the square random image a geometry is timed on: the later families' geometry fixes one (its crops
    or tiles, ``pruning.geometries``), LLaVA's is its input size."""
    from .geometries import FAMILY_GEOMETRIES

    return FAMILY_GEOMETRIES[name].image_px if isinstance(geometry, dict) else geometry.image_size


def geometry_model(name: str, llm_layers: int | None = None, vit_layers: int | None = None,
                   vocab: int | None = None, cache_dir: str | Path | None = None, seed: int = 0,
                   progress: bool = True) -> Path:
    """A random-init directory for ``name`` at the depths given, built once and cached under ``cache_dir`` (default
    ``cache_root()/models``); greedy decoding on it never meets EOS."""
    from .toy import build_random_llava
    from .toy_families import build_real_width

    geometry = resolve_geometry(name, llm_layers, vit_layers, vocab)
    family = isinstance(geometry, dict)
    spec = json.dumps({"name": name, "geometry": geometry if family else dataclasses.asdict(geometry), "seed": seed,
                       "eos": False}, sort_keys=True)
    digest = hashlib.sha256(spec.encode()).hexdigest()[:10]
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "models"
    n_llm, n_vit = geometry_layers(geometry)
    out = root / f"{name}-llm{n_llm}-vit{n_vit}-{digest}"
    if (out / "speed_geometry.json").is_file():
        return out
    tmp = root / f".{out.name}.tmp{os.getpid()}"
    if progress:
        print(f"building {name} ({n_llm} LLM layers, {n_vit} ViT layers) in {out} (once)", flush=True,
              file=__import__("sys").stderr)
    if family:
        build_real_width(tmp, name, llm_layers=n_llm, vit_layers=n_vit, vocab=geometry["vocab"], seed=seed)
    else:
        build_random_llava(tmp, geometry, seed=seed, allow_eos=False)
    (tmp / "speed_geometry.json").write_text(spec)
    if out.exists():  # another process built it meanwhile
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


# ------------------------------------------------------------------------------------------- configurations
def speed_configs(strategies, budgets: list[int], n_llm_layers: int, n_patches: int) -> tuple[list[dict], list[str]]:
    """``[{"label", "params"}]``: ``none`` first (the reference, added when not asked for), every strategy with a
    budget at every budget, ``vtw`` once. FastV prunes before layer min(2, depth - 1); VTW at its own default
    (depth / 2 - 1, at least 1). Returns the configurations and notes on what was chosen."""
    names = [s.strip() for s in (strategies.split(",") if isinstance(strategies, str) else strategies) if s.strip()]
    if not names:
        raise ValueError("--strategies: name at least one strategy")
    if not budgets and any(n not in ("none", "vtw") for n in names):
        raise ValueError("--keep: give at least one budget")
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= n_patches:
            raise ValueError(f"--keep {b}: expected a visual-token count in 1..{n_patches} (this image's visual tokens)")
    notes = []
    if "none" not in names:
        notes.append("none added: it is the reference of every speedup")
    rows, seen = [{"label": "none", "params": {"name": "none"}}], {"none"}
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        get_strategy(name)  # unknown names fail here, naming the choices
        if name == "vtw":
            if n_llm_layers < 2:
                raise ValueError(f"vtw withdraws inside the LLM: it needs at least 2 LLM layers (the model has "
                                 f"{n_llm_layers})")
            layer = get_strategy("vtw").llm_layer(n_llm_layers)
            rows.append({"label": f"vtw (layer {layer})", "params": {"name": "vtw", "layer": layer}})
            notes.append(f"vtw withdraws the image before 0-based LLM layer {layer} of {n_llm_layers} (its default, "
                         "depth / 2 - 1)")
            continue
        extra = {}
        if name == "fastv":
            if n_llm_layers < 2:
                raise ValueError(f"fastv prunes inside the LLM: it needs at least 2 LLM layers (the model has "
                                 f"{n_llm_layers})")
            layer = min(FASTV_LAYER, n_llm_layers - 1)
            extra = {"layer": layer}
            notes.append(f"fastv prunes before 0-based LLM layer {layer} of {n_llm_layers}"
                         + ("" if layer == FASTV_LAYER else f" (its K = {FASTV_LAYER} does not fit this depth)")
                         + ", keeping the budget's count of image rows")
        for b in budgets:
            params = {"name": name, "keep": b, **extra}
            label = f"{name} {b}" + (f" (layer {extra['layer']})" if extra else "")
            rows.append({"label": label, "params": params})
    for row in rows:
        get_strategy(**row["params"])
    return rows, notes


def interleaved_order(n_configs: int, repeats: int) -> list[tuple[int, int]]:
    """(repeat, configuration index) in run order: round robin within each repeat, repeat r starting at
    configuration r mod n (so a configuration does not always follow the same one)."""
    return [(r, (r + i) % n_configs) for r in range(repeats) for i in range(n_configs)]


# ------------------------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RssPeak:
    """``with RssPeak() as p: ...`` then ``p.delta``: the RSS high-water mark above the RSS at entry, sampled
    every ``interval`` seconds by a thread (a lower bound: freed memory the allocator keeps is reused unseen)."""

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.delta = None

    def __enter__(self):
        _trim_heap()
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.delta = self.peak - self.base
        return False


def measure_peak(engine, fn) -> tuple[int | None, str]:
    """Peak memory of one call of ``fn``: (bytes, what it is)."""
    if str(engine.device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(), "cuda max allocated (weights included)"
    if not Path("/proc/self/statm").is_file():
        return None, "not measured"
    with RssPeak() as p:
        fn()
    return p.delta, "cpu rss high-water above the level before the run (lower bound; weights excluded)"


# ------------------------------------------------------------------------------------------- other processes
_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole machine, ticks of this process) from /proc; None where there is no /proc."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return user + nice + system + irq + softirq + steal, int(own[11]) + int(own[12])
    except (OSError, ValueError, IndexError):
        return None


class OthersCPU:
    """``with OthersCPU() as o: ...`` then ``o.share``: the CPU time other processes took during the block, as a
    share of all cores' time (0: the machine was ours; 1 / cores: one core fully busy elsewhere). None without
    /proc. Resolution: one clock tick (10 ms)."""

    def __enter__(self):
        self._t0, self._c0 = time.perf_counter(), _cpu_ticks()
        self.share = None
        return self

    def __exit__(self, *exc):
        c1 = _cpu_ticks()
        wall = time.perf_counter() - self._t0
        if self._c0 is not None and c1 is not None and wall > 0:
            others = max((c1[0] - self._c0[0]) - (c1[1] - self._c0[1]), 0) / _CLK
            self.share = min(others / (wall * (os.cpu_count() or 1)), 1.0)  # ticks are coarse on short runs
        return False


# ------------------------------------------------------------------------------------------- statistics
def spread(values: list[float]) -> dict:
    """median, min, max and quartiles (inclusive method; the median of one value for a single run)."""
    v = sorted(values)
    q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0], v[0], v[0]]
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "q1": q[0], "q3": q[2], "n": len(v)}


def machine_info(device: str) -> dict:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    info = {"device": device, "cpu": model, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------- measuring
def measure(engine, image, question: str, configs: list[dict], repeats: int = 5, new_tokens: int = 8,
            warmup: int = 1, memory: bool = True, progress: bool = True) -> dict:
    """Time every configuration of ``configs`` (from ``speed_configs``) on ``engine``, interleaved (see the module
    docstring); returns ``{"order", "rows", "prompt"}``, rows in ``configs``' order with speedups over the first
    (``none``)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r}: expected an integer >= 1")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup={warmup!r}: expected an integer >= 0")
    if not configs or configs[0]["params"]["name"] != "none":
        raise ValueError("the first configuration must be none (the reference)")
    strategies = [get_strategy(**c["params"]) for c in configs]
    for s in strategies:
        engine.check(s, new_tokens)
    prepared = engine.prepare(image, question)
    sampling = dict(temperature=0.0, top_p=1.0, seed=0)
    order = interleaved_order(len(configs), repeats)
    total = len(configs) * warmup + len(order) + (len(configs) if memory else 0)
    bar = tqdm(total=total, desc="speed", disable=not progress, unit="run")

    def once(i):
        with OthersCPU() as others:
            timings, out = engine.timed_run(prepared, strategies[i], new_tokens, sampling)
        timings["ttft_ms"] = timings["vision_ms"] + timings["prefill_ms"]
        timings["others_cpu"] = others.share
        bar.update(1)
        return timings, out

    try:
        for _ in range(warmup):
            for i in range(len(configs)):
                bar.set_postfix_str(f"warm-up {configs[i]['label']}")
                once(i)
        runs: list[list[dict]] = [[] for _ in configs]
        last: list = [None] * len(configs)
        for r, i in order:
            bar.set_postfix_str(f"repeat {r + 1}/{repeats} {configs[i]['label']}")
            timings, last[i] = once(i)
            timings["repeat"] = r
            runs[i].append(timings)
        peaks = [(None, "not measured")] * len(configs)
        if memory:
            for i in range(len(configs)):
                bar.set_postfix_str(f"memory {configs[i]['label']}")
                peaks[i] = measure_peak(engine, lambda: once(i))
    finally:
        bar.close()
    rows = []
    for i, (config, strategy) in enumerate(zip(configs, strategies)):
        state, tokens = last[i]
        medians = {k: statistics.median(t[k] for t in runs[i]) for k in TIMINGS}
        result = engine.make_result(prepared, strategy, state, tokens, medians, peaks[i][0], None)
        rows.append(_row(config, result, runs[i], peaks[i], prepared))
    _add_speedups(rows)
    text_tokens = int(prepared.input_ids.shape[0]) - prepared.n_image
    return {"order": [[r, configs[i]["label"]] for r, i in order], "rows": rows,
            "prompt": {"question": prepared.question, "text_tokens": text_tokens, "visual_tokens": prepared.n_image}}


def _row(config: dict, result, runs: list[dict], peak: tuple, prepared) -> dict:
    tf = dict(result.tflops)
    tf["ttft"] = tf["vision"] + tf["prefill"]
    return {
        "label": config["label"], "strategy": result.strategy, "params": result.params,
        "visual_tokens": result.visual_tokens, "visual_tokens_kept": result.visual_tokens_kept,
        "text_tokens": int(prepared.input_ids.shape[0]) - prepared.n_image,
        "tokens_per_layer": result.tokens_per_layer, "image_tokens_per_layer": result.image_tokens_per_layer,
        "vit_tokens_per_layer": result.vit_tokens_per_layer, "decoded_tokens": len(result.generated_tokens),
        "timings": {k: spread([t[k] for t in runs]) for k in TIMINGS},
        "runs": runs,
        "peak_memory_bytes": peak[0], "peak_memory_kind": peak[1],
        "kv_cache_bytes": result.kv_cache_bytes, "kv_cache_bytes_per_layer": result.kv_cache_bytes_per_layer,
        "tflops": tf, "notes": result.notes or [],
    }


def _add_speedups(rows: list[dict]) -> None:
    """Speedups over rows[0] (none): measured as the ratio of the medians, predicted as the ratio of TFLOPs, their
    ratio ``efficiency``; for TTFT (vision + prefill: ``speedup``, as ``pruning.compare`` reports it) and for the
    prefill alone (``prefill_*``). ``speedup_paired``: the spread of the per-repeat ratios (same repeat's none)."""
    ref = rows[0]
    ref_runs = {t["repeat"]: t for t in ref["runs"]}
    for row in rows:
        for prefix, key, tf in (("", "ttft_ms", "ttft"), ("prefill_", "prefill_ms", "prefill")):
            measured = ref["timings"][key]["median"] / max(row["timings"][key]["median"], 1e-9)
            predicted = ref["tflops"][tf] / max(row["tflops"][tf], 1e-18)
            row[f"{prefix}speedup"] = measured
            row[f"{prefix}speedup_predicted"] = predicted
            row[f"{prefix}efficiency"] = measured / predicted
            paired = [ref_runs[t["repeat"]][key] / max(t[key], 1e-9) for t in row["runs"] if t["repeat"] in ref_runs]
            row[f"{prefix}speedup_paired"] = spread(paired) if paired else None


def model_info(engine, source: str, geometry: str | None, built) -> dict:
    s, v = engine.llm_shape, engine.vision_shape
    return {"source": source, "geometry": geometry, "llm_layers": s.layers, "vit_layers": v.layers,
            "hidden": s.hidden, "intermediate": s.intermediate, "heads": s.heads, "kv_heads": s.kv_heads,
            "vocab": s.vocab, "vision_hidden": v.hidden, "vision_intermediate": v.intermediate,
            "visual_tokens": engine.geometry.n_patches, "image_size": engine.geometry.image_size,
            "patch_size": engine.geometry.patch_size, "feature_layer": engine.geometry.vision_feature_layer,
            "dtype": str(engine.lm.dtype).replace("torch.", ""), "load_in_4bit": engine.lm.load_in_4bit,
            "random_weights": built is not None or geometry is not None}


def depth_notes(model: dict, geometry: str | None) -> list[str]:
    from .geometries import ALL_GEOMETRIES, BUILT_IN, FAMILY_GEOMETRIES

    notes = []
    if geometry in FAMILY_GEOMETRIES:
        real = FAMILY_GEOMETRIES[geometry]
        notes.append(
            f"{geometry}'s real widths (LLM {model['hidden']} / MLP {model['intermediate']} / {model['heads']} query "
            f"and {model['kv_heads']} key-value heads, ViT {model['vision_hidden']} / MLP "
            f"{model['vision_intermediate']}) and image processing ({real.layout}), random weights, "
            f"{model['llm_layers']} of {real.llm.layers} LLM layers and {model['vit_layers']} of {real.vision.layers} "
            "ViT layers: per-layer figures transfer to the full model; totals, the vision / prefill split and "
            "the TTFT speedups scale with depth")
        if real.family == "qwen2_5_vl":
            notes.append("Qwen2.5-VL's ViT attends in windows except every eighth block (7, 15, 23, 31 in the real "
                         "32); a shallower tower here has full attention in its last block only")
    if geometry in ALL_GEOMETRIES:
        real = ALL_GEOMETRIES[geometry]
    if geometry in BUILT_IN:
        notes.append(
            f"{geometry}'s real widths (LLM {model['hidden']} / MLP {model['intermediate']} / {model['heads']} heads, "
            f"ViT {model['vision_hidden']} / MLP {model['vision_intermediate']}) and token geometry "
            f"({model['image_size']} px, patch {model['patch_size']}, {model['visual_tokens']} visual tokens, "
            f"feature layer {model['feature_layer']}, LLaVA-1.5's chat prompt), random weights, "
            f"{model['llm_layers']} of {real.llm.layers} LLM layers and {model['vit_layers']} of {real.vision.layers} "
            "ViT layers: per-layer figures transfer to the full model; totals, the vision / prefill split and "
            "the TTFT speedups scale with depth")
    if geometry in ALL_GEOMETRIES:
        notes.append(
            f"vocabulary {model['vocab']}" + (" (the real one)" if model["vocab"] == real.llm.vocab else
                                               f" (the real model's is {real.llm.vocab})")
            + ": it sizes only the LM head, which runs on the last prompt position in prefill and once per decoded "
            "token, and the embedding table (a lookup); the per-layer cost does not depend on it")
    return notes


def markdown_table(report: dict) -> str:
    """The report's rows as a markdown table: medians with (min-max), speedups measured / predicted / efficiency."""
    head = ["configuration", "tokens in LLM (first / last layer)", "vision ms", "prefill ms", "decode ms/token",
            "total ms", "peak MiB", "KV MiB", "TFLOPs (vision + prefill)", "prefill speedup: measured / predicted "
            "(efficiency)", "TTFT speedup: measured / predicted (efficiency)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ms(t):
        digits = 0 if t["median"] >= 100 else 1 if t["median"] >= 10 else 2
        return f"{t['median']:.{digits}f} ({t['min']:.{digits}f}-{t['max']:.{digits}f})"

    for r in report["rows"]:
        t = r["timings"]
        tokens = r["tokens_per_layer"]
        mib = None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 2**20
        peak = "n/m" if mib is None else f"{mib:.0f}" if mib >= 10 else f"{mib:.2f}"
        cells = [r["label"], f"{tokens[0]} / {tokens[-1]}", ms(t["vision_ms"]), ms(t["prefill_ms"]),
                 ms(t["decode_ms_per_token"]), ms(t["total_ms"]), peak, f"{r['kv_cache_bytes'] / 2**20:.3g}",
                 f"{r['tflops']['ttft']:.4g}",
                 f"{r['prefill_speedup']:.2f}x / {r['prefill_speedup_predicted']:.2f}x ({r['prefill_efficiency']:.2f})",
                 f"{r['speedup']:.2f}x / {r['speedup_predicted']:.2f}x ({r['efficiency']:.2f})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def random_image(size: int = 336, seed: int = 0):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (size, size, 3), dtype=np.uint8))


def run_speed(engine, configs: list[dict], notes: list[str], image=None, question: str = DEFAULT_QUESTION,
              repeats: int = 5, new_tokens: int = 8, warmup: int = 1, memory: bool = True, progress: bool = True,
              source: str = "", geometry: str | None = None, built=None, command: str | None = None) -> dict:
    """The whole report: model, machine (load average before and after), settings, notes, run order, rows."""
    image = image if image is not None else random_image(engine.geometry.image_size)
    load_before = load_average()
    started = time.time()
    out = measure(engine, image, question, configs, repeats=repeats, new_tokens=new_tokens, warmup=warmup,
                  memory=memory, progress=progress)
    model = model_info(engine, source, geometry, built)
    peak_kind = out["rows"][0]["peak_memory_kind"]
    shares = [t["others_cpu"] for r in out["rows"] for t in r["runs"] if t.get("others_cpu") is not None]
    others = spread(shares) if shares else None
    all_notes = depth_notes(model, geometry) + list(notes) + [
        f"timings: medians (min-max) of {repeats} repeats after {warmup} untimed warm-up run(s) of every "
        "configuration; configurations interleaved round robin within each repeat, each repeat starting one "
        "configuration later",
        "speedup: the median of none over the median of the configuration (TTFT = vision + prefill; prefill "
        "alone); predicted: TFLOPs of none over the configuration's (the engine's estimate from the token counts "
        "it ran, pruning.cost); efficiency = measured / predicted",
        f"peak memory: {peak_kind}, from one more untimed run per configuration",
    ] + ([f"other processes took {others['median']:.1%} of the machine's CPU time during the median timed run, "
          f"{others['max']:.1%} at most (0: the machine was ours; each run's share is in runs[].others_cpu)"]
         if others else [])
    return {
        "command": command, "model": model, "machine": {**machine_info(str(engine.device)),
                                                         "load_average_before": load_before,
                                                         "load_average_after": load_average(),
                                                         "others_cpu": others},
        "settings": {"repeats": repeats, "warmup": warmup, "new_tokens": new_tokens, "question": question,
                     **out["prompt"], "wall_s": round(time.time() - started, 1)},
        "notes": all_notes, "order": out["order"], "rows": out["rows"],
    }


def command_line(args) -> str:
    """The command line that reproduces ``args`` (every option written out, defaults included)."""
    parts = ["python -m pruning speed"]
    if args.geometry is not None:
        parts.append(f"--geometry {args.geometry}")
        for opt, value in (("--llm-layers", args.llm_layers), ("--vit-layers", args.vit_layers), ("--vocab", args.vocab)):
            if value is not None:
                parts.append(f"{opt} {value}")
    elif args.model is not None:
        parts.append(f"--model {args.model}")
    parts += [f"--keep {args.keep}", f"--strategies {args.strategies}", f"--repeats {args.repeats}",
              f"--new-tokens {args.new_tokens}"]
    if args.warmup != 1:
        parts.append(f"--warmup {args.warmup}")
    for flag, on in (("--4bit", args.load_in_4bit), ("--no-memory", not args.memory)):
        if on:
            parts.append(flag)
    for opt, value in (("--device", args.device), ("--threads", args.threads), ("--image", args.image)):
        if value is not None:
            parts.append(f"{opt} {value}")
    if args.question != DEFAULT_QUESTION:
        parts.append(f"--question {json.dumps(args.question)}")
    if args.json:
        parts.append(f"--json {args.json}")
    return " ".join(parts)


def run_cli(args, model: str | None = None) -> str:
    """``python -m pruning speed``: check the options (before anything is built or loaded), build or load the
    model, measure, write ``--json``; return the text report. ``model``: the directory or hub id when no
    ``--geometry`` is given."""
    from .bench import parse_budgets
    from .engine import Engine, check_generation
    from .images import load_image
    from .model import load_model

    if args.geometry is None:
        given = [o for o, v in (("--llm-layers", args.llm_layers), ("--vit-layers", args.vit_layers),
                                ("--vocab", args.vocab)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only with --geometry (a loaded --model keeps its own shape)")
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats}: expected at least 1")
    check_generation(args.new_tokens)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads}: expected at least 1")
    if args.json and not Path(args.json).expanduser().resolve().parent.is_dir():
        raise ValueError(f"--json {args.json}: its directory does not exist")
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    for name in names:
        get_strategy(name)

    def budgets(n_patches):
        try:
            return parse_budgets(args.keep, n_patches)
        except ValueError as e:
            raise ValueError(f"--keep {args.keep}: {e}") from None
    image = load_image(args.image) if args.image else None
    if args.geometry is not None:
        from .geometries import FAMILY_GEOMETRIES

        g = resolve_geometry(args.geometry, args.llm_layers, args.vit_layers, args.vocab)
        n_llm, _ = geometry_layers(g)
        if isinstance(g, dict):  # the packed rows (or merged tokens) of the geometry's own image
            n_patches = FAMILY_GEOMETRIES[args.geometry].n_patches if image is None else None
        else:
            n_patches = (g.image_size // g.patch_size) ** 2
        if n_patches is not None:
            speed_configs(names, budgets(n_patches), n_llm, n_patches)  # fail before building
        source = str(geometry_model(args.geometry, args.llm_layers, args.vit_layers, args.vocab, args.cache_dir,
                                    progress=not args.quiet))
        if image is None:
            image = random_image(geometry_image_size(args.geometry, g))
    else:
        source = model
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    engine = Engine(load_model(source, load_in_4bit=args.load_in_4bit, device=args.device))
    if image is None:
        image = random_image(engine.geometry.image_size)
    n_patches = engine.prepare(image, args.question).n_image  # this image's visual tokens (dynamic families)
    configs, notes = speed_configs(names, budgets(n_patches), engine.geometry.llm_layers, n_patches)
    report = run_speed(engine, configs, notes, image=image, question=args.question, repeats=args.repeats,
                       new_tokens=args.new_tokens, warmup=args.warmup, memory=args.memory, progress=not args.quiet,
                       source=source, geometry=args.geometry, command=command_line(args))
    if args.json:
        Path(args.json).expanduser().write_text(json.dumps(report, indent=1))
    return text_report(report)


def text_report(report: dict) -> str:
    m, mc, st = report["model"], report["machine"], report["settings"]
    lines = [
        f"$ {report['command']}" if report.get("command") else "speed",
        f"model: {m['source']}" + (f" (geometry {m['geometry']})" if m["geometry"] else "")
        + f"; LLM {m['llm_layers']} layers x {m['hidden']} (MLP {m['intermediate']}, {m['heads']} heads), ViT "
        f"{m['vit_layers']} layers x {m['vision_hidden']}, vocabulary {m['vocab']}, {m['dtype']}"
        + (" 4-bit nf4" if m["load_in_4bit"] else ""),
        f"machine: {mc['device']}, {mc['cpu']} ({mc['cpu_count']} cores, {mc['torch_threads']} torch threads)"
        + (f", {mc['gpu']}" if mc.get("gpu") else "")
        + f"; load average before {mc['load_average_before']}, after {mc['load_average_after']}",
        f"prompt: {st['text_tokens']} text + {st['visual_tokens']} visual tokens; {st['new_tokens']} new tokens; "
        f"{st['repeats']} repeats; {st['wall_s']} s",
    ]
    lines += [f"note: {n}" for n in report["notes"]]
    lines += ["", markdown_table(report)]
    return "\n".join(lines)


__all__ = ["DEFAULT_STRATEGIES", "geometry_model", "resolve_geometry", "speed_configs", "interleaved_order", "measure",
           "run_speed", "run_cli", "text_report", "markdown_table", "spread", "RssPeak", "cache_root"]
