"""Accuracy-vs-budget sweep and VTW calibration over a question set.

Question sets: ``shapes`` (the embedded model's held-out questions, seeds never used in training) or a
JSONL file with one object per line: ``{"image": PATH, "question": TEXT, "answer": TEXT[, "type": TEXT]}``
(image paths relative to the file). Answers are compared case-insensitively after stripping spaces and
a final period.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from . import cost
from .images import load_image
from .strategies import available, get_strategy


@dataclass
class Sample:
    image: object  # PIL image
    question: str
    answer: str
    type: str = "all"


def load_samples(source: str, n: int, types=None) -> list[Sample]:
    """``n`` questions from ``source``; ``types`` (shapes only) limits them to some question types."""
    if source == "shapes":
        from .shapes import world

        types = tuple(types) if types else world.QUESTION_TYPES
        bad = [t for t in types if t not in world.QUESTION_TYPES]
        if bad:
            raise ValueError(f"question types {bad} unknown; valid: {', '.join(world.QUESTION_TYPES)}")
        return [Sample(s.image, q.text, q.answer, q.type) for s, q in world.heldout_questions(n, types=types)]
    if types:
        raise ValueError("question types filter only the held-out shapes questions")
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
    """'192,128,64' or '0.33,0.22' (fractions of the grid) -> token counts."""
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


def configs(strategies: str, budgets: list[int], position_variants: bool = True) -> list[tuple[str, dict]]:
    """(label, strategy params) rows: every selection strategy at every budget; FastV at every budget;
    VTW once (it keeps no budget); with ``position_variants``, vtc-cls and random in both position modes."""
    names = [s for s in available() if s != "none"] if strategies == "all" else [s.strip() for s in strategies.split(",")]
    rows = [("none", {"name": "none"})]
    for name in names:
        if name == "none":
            continue
        if name == "vtw":
            rows.append(("vtw", {"name": "vtw"}))
            continue
        for b in budgets:
            rows.append((f"{name}", {"name": name, "keep": b}))
            if position_variants and name in ("vtc-cls", "random"):
                other = "keep" if name == "vtc-cls" else "rearrange"
                rows.append((f"{name} ({other})", {"name": name, "keep": b, "positions": other}))
    for _, params in rows:  # fail early on a bad name
        get_strategy(**params)
    return rows


def evaluate(engine, samples: list[Sample], params: dict, max_new_tokens: int = 4) -> dict:
    strategy = get_strategy(**params)
    hits: dict[str, list[int]] = {}
    prefill_ms, entering, last_layer, tflops = [], [], [], []
    dev = str(engine.device)
    for s in samples:
        prepared = engine.prepare(s.image, s.question)
        vision = engine.vision_pass(prepared, seed=strategy.seed, strategy=strategy)
        with cost.Stopwatch(dev) as sw:
            state = engine.prefill(prepared, vision, strategy)
        tokens = engine.decode(state, max_new_tokens)
        answer = engine.lm.processor.tokenizer.decode(tokens, skip_special_tokens=True)
        hits.setdefault(s.type, []).append(int(normalise(answer) == normalise(s.answer)))
        prefill_ms.append(sw.ms)
        entering.append(len(state.kept_before))
        last_layer.append(state.image_tokens_per_layer[-1])
        tflops.append((cost.projector_flops(engine.vision_shape, len(state.kept_before))
                       + cost.prefill_flops(engine.llm_shape, state.tokens_per_layer)) / 1e12)
    all_hits = [h for v in hits.values() for h in v]
    return {"name": strategy.name, "params": strategy.params(), "accuracy": sum(all_hits) / len(all_hits),
            "per_type": {t: sum(v) / len(v) for t, v in sorted(hits.items())},
            "tokens_entering_llm": statistics.mean(entering), "tokens_last_layer": statistics.mean(last_layer),
            "prefill_tflops": statistics.mean(tflops), "prefill_ms": statistics.median(prefill_ms)}


def sweep(engine, samples: list[Sample], strategies: str, budgets: list[int], progress: bool = True,
          position_variants: bool = True) -> list[dict]:
    rows = []
    for label, params in tqdm(configs(strategies, budgets, position_variants), desc="bench", disable=not progress):
        row = evaluate(engine, samples, params)
        row["label"] = label
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
    """VTW eq. 6 / Algorithm 1: the mean KL between the full model's and the withdrawn model's output
    distribution (the first answer token) for every withdrawal layer; the chosen layer is the first one >=
    ``min_layer`` whose KL is below eta (None when none is).

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
            kl[k].append(kl_divergence(ref, out))
    mean = {k: statistics.mean(v) for k, v in kl.items()}
    chosen = next((k for k in sorted(mean) if k >= min_layer and mean[k] < eta), None)
    return {"k": chosen, "eta": eta, "min_layer": min_layer, "samples": len(samples), "layers": n_layers,
            "kl_per_layer": {str(k): v for k, v in mean.items()},
            "k_paper": None if chosen is None else chosen + 1, "min_k_paper": min_layer + 1,
            "kl_per_k_paper": {str(k + 1): v for k, v in mean.items()},
            "numbering": "k, min_layer, kl_per_layer: the engine's 0-based layer the image rows are dropped "
                         "before; k_paper, min_k_paper, kl_per_k_paper: VTW's 1-based K (eq. 5) = layer + 1"}
