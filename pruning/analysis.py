"""The papers' analyses, reproduced for any model and question sample (plain values out).

- VTC-CLS Fig. 2 (Sec. 3.2, eq. 4-8): per LLM layer n, the importance s_l^n of each patch = attention from
  the generated tokens, mean over heads and output tokens (eq. 4, from the engine's trace); against the
  [CLS] importance of the vision encoder, ensembled over K layers (eq. 9, K = 1..5), and against random
  scores: overlap of the top-U sets (eq. 5-6) and Spearman's rank correlation (eq. 7-8).
- VTW Fig. 4: the share of the generated tokens' attention on system / image / question / output tokens
  per LLM layer.
- VTW Fig. 8b: KL divergence against the withdrawal layer (``bench.calibrate_vtw``).

Ranks are ordinal (ties broken by index); the paper does not say how it breaks ties.
"""

from __future__ import annotations

import statistics

import torch
from tqdm import tqdm

from .bench import Sample, calibrate_vtw
from .engine import SEGMENTS
from .strategies import get_strategy


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ordinal ranks, 0 = smallest."""
    return x.argsort().argsort().double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Eq. 8: the Pearson correlation of the two rank sequences."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = ra.norm() * rb.norm()
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def overlap(a: torch.Tensor, b: torch.Tensor, u: int) -> float:
    """Eq. 6: |TopU(a) ∩ TopU(b)| / U."""
    ta, tb = set(a.topk(u).indices.tolist()), set(b.topk(u).indices.tolist())
    return len(ta & tb) / u


def consistency_and_shares(engine, samples: list[Sample], budgets: list[int], ks=(1, 2, 3, 4, 5),
                           max_new_tokens: int = 8, seed: int = 0, progress: bool = True) -> dict:
    n_layers = engine.geometry.llm_layers
    none = get_strategy("none")
    gen = torch.Generator().manual_seed(seed)
    ks = [k for k in ks if k <= engine.geometry.feature_layer_index + 1]
    sources = [f"cls_k{k}" for k in ks] + ["random"]
    acc = {s: {"overlap": {u: [[] for _ in range(n_layers)] for u in budgets},
               "spearman": [[] for _ in range(n_layers)]} for s in sources}
    shares = [[] for _ in range(n_layers)]
    for s in tqdm(samples, desc="analyze", disable=not progress):
        prepared = engine.prepare(s.image, s.question)
        vision = engine.vision_pass(prepared)
        trace = engine.trace(prepared, none, max_new_tokens, {"temperature": 0.0, "top_p": 1.0, "seed": 0})
        n = vision.n_patches
        scores = {f"cls_k{k}": vision.cls_scores(k) for k in ks}
        scores["random"] = torch.rand(n, generator=gen)
        for layer in range(n_layers):
            s_l = torch.tensor(trace["patch_attention"][layer])
            shares[layer].append(trace["attention_share"][layer])
            for name, s_v in scores.items():
                acc[name]["spearman"][layer].append(spearman(s_v, s_l))
                for u in budgets:
                    acc[name]["overlap"][u][layer].append(overlap(s_v, s_l, u))
    mean = statistics.mean
    return {
        "samples": len(samples), "layers": n_layers, "budgets": budgets, "ks": ks,
        "consistency": {name: {"spearman": [mean(v) for v in d["spearman"]],
                               "overlap": {str(u): [mean(v) for v in per] for u, per in d["overlap"].items()}}
                        for name, d in acc.items()},
        "attention_share": {seg: [mean(x[seg] for x in shares[layer]) for layer in range(n_layers)]
                            for seg in SEGMENTS},
    }


def analyze(engine, samples: list[Sample], budgets: list[int], calibrate_samples: int = 20, eta: float = 0.003,
            progress: bool = True) -> dict:
    out = consistency_and_shares(engine, samples, budgets, progress=progress)
    out["vtw_kl"] = calibrate_vtw(engine, samples[:calibrate_samples], eta=eta, progress=progress)
    return out
