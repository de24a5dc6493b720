"""Command line: ``python -m pruning ask ...`` answers one question about one image with one strategy."""

from __future__ import annotations

import argparse
import json
import sys

from .images import load_image


class _UsageError(Exception):
    """A command line argparse refuses (printed by ``main`` as one ``error:`` line, exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error raised to ``main`` (one line on stderr) instead of usage + exit."""

    def error(self, message):
        raise _UsageError(f"{self.prog.split()[-1]}: {message}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (expected a whole number >= 0)")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative (expected a whole number >= 0)")
    return value


def _model_and_questions(parser: argparse.ArgumentParser) -> None:
    """The options every evaluation command shares."""
    parser.add_argument("--model", help="default: the embedded model")
    parser.add_argument("--questions", default="shapes", help="'shapes' (held-out) or a JSONL file")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m pruning", description="PruneScope: visual-token pruning in LLaVA")
    sub = parser.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="answer a question about an image with a pruning strategy")
    ask.add_argument("--model", help="local LLaVA directory or hub id (e.g. llava-hf/llava-1.5-7b-hf); "
                     "default: the embedded model in assets/model")
    ask.add_argument("--image", required=True, help="path to an image file")
    ask.add_argument("--question", required=True)
    ask.add_argument("--strategy", default="none", help="pruning strategy name (default: none)")
    ask.add_argument("--keep", type=_budget, help="visual tokens to keep: a count (64) or a ratio of this image's "
                     "tokens (0.25; on dynamic-resolution families the count differs per image)")
    ask.add_argument("--layer", type=_positive_int, help="prune inside the LLM before layer K (implies --stage llm)")
    ask.add_argument("--stage", choices=["before", "llm"], help="where the strategy prunes")
    ask.add_argument("--positions", choices=["keep", "rearrange"], help="position ids after pruning")
    ask.add_argument("--seed", type=_positive_int, help="seed of the strategy's randomness")
    ask.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="another strategy parameter (e.g. k_layers=3 for vtc-cls, tau=0.2 for ivtp); repeatable")
    ask.add_argument("--4bit", dest="load_in_4bit", action="store_true", help="load in 4-bit (bitsandbytes nf4)")
    ask.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    ask.add_argument("--max-new-tokens", type=_positive_int, default=16)
    ask.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ask.add_argument("--top-p", type=float, default=1.0)
    ask.add_argument("--repeats", type=_positive_int, default=1, help="timed runs; timings are their median")
    ask.add_argument("--warmup", type=_positive_int, default=1, help="untimed runs before the timed ones")
    ask.add_argument("--trace", action="store_true", help="also record per-layer attention (untimed run)")
    ask.add_argument("--json", action="store_true", help="print one JSON object")

    toy = sub.add_parser("build-toy", help="write a random-init LLaVA checkpoint (for tests and timing)")
    toy.add_argument("--geometry", default="llava15", choices=["tiny", "llava15", "deep", "qwen2.5-vl",
                                                               "llava-onevision", "llava-next", "internvl"],
                     help="a LLaVA-1.5 geometry (tiny, llava15, deep) or a tiny checkpoint of another family "
                          "(qwen2.5-vl, llava-onevision, llava-next, internvl: pruning/toy_families.py)")
    toy.add_argument("--with-clip", action="store_true", help="also write clip/ (a random CLIP text half)")
    toy.add_argument("--out", required=True, help="directory to write")
    toy.add_argument("--seed", type=_positive_int, default=0)

    cal = sub.add_parser("calibrate", help="choose VTW's withdrawal layer by the KL rule (eq. 6, Algorithm 1)")
    _model_and_questions(cal)
    cal.add_argument("--strategy", default="vtw", choices=["vtw"])
    cal.add_argument("--eta", type=float, default=0.003)
    cal.add_argument("--samples", type=_positive_int, default=20)
    low = cal.add_mutually_exclusive_group()
    low.add_argument("--min-k", type=_positive_int, help="smallest K tried, in the paper's 1-based numbering "
                     "(eq. 5; the paper: K >= 5, the default)")
    low.add_argument("--min-layer", type=_positive_int, help="the same bound as the engine's 0-based layer "
                     "(= K - 1; default 4; the authors' code searches from 5)")
    cal.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="accuracy / cost sweep over strategies x budgets")
    _model_and_questions(bench)
    bench.add_argument("--strategies", default="all", help="'all' or comma-separated names")
    bench.add_argument("--keep", default="0.333,0.222,0.111",
                       help="budgets: counts or fractions of the grid (default: 192/128/64 of 576, as fractions)")
    bench.add_argument("--n", type=_positive_int, default=200, help="questions (split evenly over types)")
    bench.add_argument("--4bit", dest="load_in_4bit", action="store_true")
    bench.add_argument("--processes", type=_positive_int, default=1,
                       help="split the questions over N processes (one GPU each when there are GPUs, else the CPU "
                       "cores shared out); under torchrun / accelerate launch the launcher's processes split them")
    bench.add_argument("--threads", type=_positive_int, help="CPU threads per process (default: the cores shared out)")
    bench.add_argument("--seeds", default=None,
                       help="comma-separated seeds: the seeded strategies among --strategies (random, kmeans) run "
                            "once per seed on the same questions, and a second table gives their mean and spread "
                            "(one process only)")
    bench.add_argument("--json", action="store_true")

    an = sub.add_parser("analyze", help="the papers' analyses: VTC-CLS Fig. 2, VTW Fig. 4 and 8b (JSON + HTML)")
    _model_and_questions(an)
    an.add_argument("--samples", type=_positive_int, default=50)
    an.add_argument("--keep", default="0.22,0.11", help="budgets U for the overlap ratio (counts or fractions)")
    an.add_argument("--eta", type=float, default=0.003)
    an.add_argument("--out", default="analysis", help="directory for analysis.json and analysis.html")

    check = sub.add_parser("flopcheck", help="compare the FLOPs estimate with torch's FlopCounterMode")
    check.add_argument("--model", help="default: the embedded model")
    check.add_argument("--image", help="image path (default: a random-noise image)")
    check.add_argument("--question", default="What is in the image?")
    check.add_argument("--keep", default="all,128,64", help="comma-separated budgets before the LLM ('all' = none)")
    check.add_argument("--json", action="store_true")

    cst = sub.add_parser("cost", help="FLOPs estimate from a geometry alone (no weights): ViT, projector, LLM per "
                         "layer, total; the papers' conventions")
    cst.add_argument("--geometry", required=True, help="llava-1.5-7b, llava-1.5-13b, llava-onevision-7b, "
                     "llava-next-7b, qwen2.5-vl-7b, internvl3-8b (one square image each, see docs/performance.md) "
                     "or a local LLaVA directory (its config.json only)")
    cst.add_argument("--visual-tokens", type=int, help="visual tokens entering the LLM unpruned (default: the "
                     "geometry's, 576 for LLaVA-1.5, the packed rows of its image for the later families)")
    cst.add_argument("--text-tokens", type=int, required=True, help="text tokens of the prompt (system, question, "
                     "template)")
    cst.add_argument("--strategy", default="none", help="pruning strategy name (default: none)")
    cst.add_argument("--keep", type=int, help="visual tokens to keep")
    cst.add_argument("--layer", type=int, help="stage llm: the 0-based LLM layer before which rows are dropped "
                     "(implies --stage llm)")
    cst.add_argument("--stage", choices=["before", "llm"], help="where the strategy prunes")
    cst.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="another strategy parameter (e.g. ratio=0.5 for fastv, llm_fraction=0.375 for ivtp); "
                     "repeatable")
    cst.add_argument("--convention", default="prunescope", choices=["prunescope", "ivtp", "vtw", "fastv"],
                     help="how FLOPs are counted (docs/performance.md): prunescope (the engine's), or a paper's")
    cst.add_argument("--json", action="store_true", help="print one JSON object")

    spd = sub.add_parser("speed", help="measured speed of every strategy x budget, interleaved in one process, against "
                         "the TFLOPs-predicted speedup (efficiency)")
    src = spd.add_mutually_exclusive_group()
    src.add_argument("--model", help="local LLaVA directory or hub id (default: the embedded model)")
    src.add_argument("--geometry", help="build (once, cached) a random-init model at real widths: llava-1.5-7b, "
                     "llava-1.5-13b, llava-next-7b, llava-onevision-7b, qwen2.5-vl-7b or internvl3-8b (2 LLM and 4 "
                     "ViT layers unless told; the later families timed on their geometry's square image), or a toy "
                     "geometry (tiny, llava15, deep)")
    spd.add_argument("--llm-layers", type=int, help="--geometry: decoder layers (default 2 for the real widths)")
    spd.add_argument("--vit-layers", type=int, help="--geometry: ViT layers (default 4 for the real widths)")
    spd.add_argument("--vocab", type=int, help="--geometry: LM head rows (default 32064, LLaVA-1.5's real one)")
    spd.add_argument("--keep", default="192,128,64", help="budgets: visual-token counts or fractions of this image's tokens (0.25,0.11)")
    spd.add_argument("--strategies", default="none,vtc-cls,random,pooling,topk-sim,fastv,vtw",
                     help="comma-separated strategy names (none is always measured: it is the reference)")
    spd.add_argument("--repeats", type=_positive_int, default=5, help="timed runs of every configuration")
    spd.add_argument("--warmup", type=_positive_int, default=1, help="untimed runs of every configuration first")
    spd.add_argument("--new-tokens", type=_positive_int, default=8, help="tokens decoded per run")
    spd.add_argument("--4bit", dest="load_in_4bit", action="store_true", help="load in 4-bit (bitsandbytes nf4)")
    spd.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    spd.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    spd.add_argument("--image", help="image path (default: a random-noise image)")
    spd.add_argument("--question", default="What is shown in this image?")
    spd.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs")
    spd.add_argument("--cache-dir", help="where --geometry models are built (default: $PRUNESCOPE_CACHE/models or "
                     "~/.cache/prunescope/models)")
    spd.add_argument("--json", metavar="OUT", help="also write the whole report as JSON to this file")
    spd.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def resolve_model(model: str | None) -> str:
    """``--model`` or, when absent, the embedded model shipped in assets/model."""
    from .model import DEFAULT_MODEL_DIR

    if model:
        return model
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        raise ValueError(f"no --model given and the embedded model is missing at {DEFAULT_MODEL_DIR}")
    return str(DEFAULT_MODEL_DIR)


def _budget(text: str):
    from .budgets import parse_budget

    try:
        return parse_budget(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _ask(args) -> int:
    from .engine import Engine
    from .model import load_model
    from .strategies import get_strategy

    from .engine import check_generation
    from .model import check_question

    # everything that can be checked without the model first, then the budget and layers against it
    check_generation(args.max_new_tokens, args.temperature, args.top_p)
    check_question(args.question)  # its length counted before the model loads (nothing tokenizes it first)
    if isinstance(args.keep, int) and args.keep < 1 and args.strategy != "vtw":
        raise ValueError(f"--keep {args.keep}: keep at least 1 visual token")
    stage = args.stage or ("llm" if args.layer is not None else None)
    ratio = isinstance(args.keep, float)
    settings = dict(layer=args.layer, stage=stage, positions=args.positions, seed=args.seed, **_params(args.param))
    strategy = get_strategy(args.strategy, keep=1 if ratio else args.keep, **settings)  # checked before loading
    notes: list[str] = []
    image = load_image(args.image, notes=notes)
    lm = load_model(resolve_model(args.model), load_in_4bit=args.load_in_4bit, device=args.device)
    engine = Engine(lm)
    if ratio:  # a ratio of this image's own token count (pruning/budgets.py)
        from .budgets import keep_tokens

        n_image = engine.prepare(image, args.question).n_image
        keep = keep_tokens(args.keep, n_image)
        strategy = get_strategy(args.strategy, keep=keep, **settings)
        notes.append(f"--keep {args.keep}: {keep} of this image's {n_image} visual tokens")
    result = engine.run(image, args.question, strategy, max_new_tokens=args.max_new_tokens, repeats=args.repeats,
                        warmup=args.warmup, trace=args.trace, temperature=args.temperature, top_p=args.top_p)
    n_patches = result.visual_tokens  # this image's count (per image on dynamic-resolution families)
    if args.keep is not None and args.keep > n_patches and args.strategy != "vtw":
        notes.append(f"--keep {args.keep} is more than the {n_patches} visual tokens of the grid: clamped to "
                     f"{n_patches}")
    result.notes = notes + (result.notes or [])
    if args.json:
        from .compare import result_json

        print(json.dumps(result_json(result)))
    else:
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        t = result.timings
        print(result.answer)
        print(f"[{result.strategy}] visual tokens {result.visual_tokens} -> {result.visual_tokens_kept} entering the "
              f"LLM, {result.image_tokens_per_layer[-1]} in the last layer | vision {t['vision_ms']:.1f} ms, "
              f"prefill {t['prefill_ms']:.1f} ms, decode {t['decode_ms_per_token']:.1f} ms/token | "
              f"{result.tflops['total']:.4g} TFLOPs | KV cache {result.kv_cache_bytes / 2**20:.2f} MiB",
              file=sys.stderr)
    return 0


def _build_toy(args) -> int:
    from .toy import build_random_llava
    from .toy_families import FAMILIES, build_family

    if args.geometry in FAMILIES:
        if args.with_clip:
            print(f"error: --with-clip is for LLaVA-1.5 geometries, not {args.geometry}", file=sys.stderr)
            return 2
        path = build_family(args.out, args.geometry, seed=args.seed)
    else:
        path = build_random_llava(args.out, args.geometry, seed=args.seed, with_clip=args.with_clip)
    print(path)
    return 0


def _flopcheck(args) -> int:
    import numpy as np
    from PIL import Image

    from .cost import flop_check
    from .engine import Engine
    from .model import load_model
    from .strategies import get_strategy

    image = load_image(args.image) if args.image else Image.fromarray(
        np.random.RandomState(0).randint(0, 255, (256, 256, 3), dtype=np.uint8))
    # eager attention: FlopCounterMode does not count torch's CPU SDPA kernel
    engine = Engine(load_model(resolve_model(args.model), device="cpu", attn_implementation="eager"))
    rows = []
    for budget in args.keep.split(","):
        budget = budget.strip()
        strategy = get_strategy("none") if budget == "all" else get_strategy("random", keep=int(budget))
        for stage, estimate, counted in flop_check(engine, image, args.question, strategy):
            rows.append({"keep": budget, "stage": stage, "estimate": estimate, "counted": counted,
                         "ratio": estimate / counted})
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'keep':>5} {'stage':>8} {'estimate':>14} {'FlopCounterMode':>16} {'ratio':>6}")
        for r in rows:
            print(f"{r['keep']:>5} {r['stage']:>8} {r['estimate']:>14,} {r['counted']:>16,} {r['ratio']:>6.3f}")
    return 0


def _param_value(text: str):
    """A --param value: int, float, true/false/none, or the string itself."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _params(items: list[str]) -> dict:
    """--param NAME=VALUE options as strategy keyword arguments."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {item!r}: expected NAME=VALUE")
        params[key.strip().replace("-", "_")] = _param_value(value.strip())
    return params


def _cost(args) -> int:
    from .cost import CONVENTIONS, estimate
    from .geometries import load_geometry
    from .strategies import get_strategy

    for name, value in (("--visual-tokens", args.visual_tokens), ("--text-tokens", args.text_tokens),
                        ("--keep", args.keep), ("--layer", args.layer)):
        if value is not None and value < 0:
            raise ValueError(f"{name} {value}: expected a non-negative integer")
    stage = args.stage or ("llm" if args.layer is not None else None)
    strategy = get_strategy(args.strategy, keep=args.keep, layer=args.layer, stage=stage, **_params(args.param))
    geometry = load_geometry(args.geometry)
    out = estimate(geometry, args.text_tokens, visual_tokens=args.visual_tokens, strategy=strategy,
                   convention=args.convention)
    if args.json:
        print(json.dumps(out))
        return 0
    tok, fl = out["tokens"], out["flops"]
    g = 1e9
    print(f"{geometry.name}: {out['visual_tokens']} visual + {out['text_tokens']} text tokens, strategy "
          f"{strategy.name} {_short_params(strategy)}, convention {args.convention}")
    print(f"  ({out['convention']['description']})")
    if geometry.layout:
        print(f"  (image: {geometry.layout})")
    print(f"{'LLM layers':>10} {'tokens':>7} {'visual':>7} {'GFLOPs/layer':>13}")
    rows = list(zip(tok["llm_per_layer"], tok["visual_per_layer"], fl["llm_per_layer"]))
    start = 0
    for i in range(1, len(rows) + 1):  # runs of identical layers on one line
        if i == len(rows) or rows[i] != rows[start]:
            n, v, f = rows[start]
            span = f"{start}" if i - 1 == start else f"{start}-{i - 1}"
            print(f"{span:>10} {n:>7} {v:>7} {f / g:>13.2f}")
            start = i
    vit_tokens = tok["vit_per_layer"]
    vit_desc = (f"{vit_tokens[0]} tokens x {len(vit_tokens)} layers" if len(set(vit_tokens)) == 1
                else "tokens per layer " + " ".join(map(str, vit_tokens)))
    if tok["vit_crops"] > 1:
        vit_desc = f"{tok['vit_crops']} crops/tiles x {vit_desc}"
    if geometry.vision.window:
        vit_desc += (f", windows of {geometry.vision.window} tokens except layers "
                     + ", ".join(map(str, geometry.vision.full_attention_layers)))
    vit_desc += {"none": "; not counted in this convention",
                 "feature": f"; counted through the feature layer, {geometry.feature_layer_index + 1} layers"}.get(
        CONVENTIONS[args.convention].vit, "")
    t = out["tflops"]
    print(f"ViT        {t['vit']:>10.4g} TFLOPs  ({vit_desc})")
    print(f"projector  {t['projector']:>10.4g} TFLOPs  ({tok['projector_rows']} tokens"
          + (", all projected before pruning)" if geometry.projector_dims else ")"))
    print(f"LLM layers {t['layers']:>10.4g} TFLOPs")
    print(f"LM head    {t['lm_head']:>10.4g} TFLOPs")
    print(f"total      {t['total']:>10.4g} TFLOPs  = {out['ratio']:.2%} of unpruned ({out['baseline_tflops']:.4g}); "
          f"predicted speedup {out['speedup']:.2f}x")
    for note in out["notes"]:
        print(f"note: {note}")
    return 0


def _speed(args) -> int:
    from .speed import run_cli

    print(run_cli(args, model=resolve_model(args.model) if args.geometry is None else None))
    return 0


def _short_params(strategy) -> str:
    keys = [k for k in ("keep", "stage") if getattr(strategy, k, None) is not None]
    if strategy.stage == "llm":
        keys.append("layer")
    return "(" + ", ".join(f"{k}={getattr(strategy, k)}" for k in keys) + ")" if keys else ""


def _calibrate(args) -> int:
    from .bench import calibrate_vtw, load_samples
    from .engine import Engine
    from .model import load_model

    from .bench import check_eta

    check_eta(args.eta)
    if args.min_k is not None and args.min_k < 1:
        raise ValueError("--min-k counts from 1 (the paper's K); use --min-layer for the 0-based layer")
    min_layer = args.min_k - 1 if args.min_k is not None else args.min_layer  # None: calibrate_vtw's 4 (K >= 5)
    engine = Engine(load_model(resolve_model(args.model)))
    result = calibrate_vtw(engine, load_samples(args.questions, args.samples), eta=args.eta, min_layer=min_layer)
    if args.json:
        print(json.dumps(result))
    else:
        print("layer: the engine's 0-based layer the image rows are dropped before (--layer); "
              "K: the paper's 1-based K (eq. 5) = layer + 1")
        for k, v in result["kl_per_layer"].items():
            print(f"layer={k:>3}  K={int(k) + 1:>3}  KL={v:.5f}")
        chosen = result["k"]
        print(f"chosen: layer {chosen} (the paper's K = {chosen + 1})" if chosen is not None else
              f"no layer >= {result['min_layer']} (K >= {result['min_k_paper']}) has KL < {args.eta}: withdrawal "
              "is not lossless on this sample")
    return 0


def _bench(args) -> int:
    from .bench import (SEEDED, SweepJob, configs, launched_world, load_samples, markdown_table, parse_budgets,
                        seed_summary, seed_table, sweep, sweep_launched, sweep_processes)

    if args.processes < 1:
        raise ValueError("--processes 0: expected at least 1 process")
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads 0: expected at least 1 thread")
    launched = launched_world()
    if launched and args.processes > 1:
        raise ValueError(f"--processes {args.processes} under a launcher that started {launched[1]} processes "
                         "(WORLD_SIZE): use one or the other")
    configs(args.strategies, [1])  # an unknown strategy fails here, before any model loads
    seeds = _seed_list(args.seeds) if args.seeds is not None else None
    if seeds is not None and (launched or args.processes > 1):
        raise ValueError("--seeds runs in one process: drop --processes (or the launcher)")
    job = SweepJob(model=resolve_model(args.model), questions=args.questions, n=args.n, strategies=args.strategies,
                   keep=args.keep, load_in_4bit=args.load_in_4bit, threads=args.threads)
    if launched:
        rows = sweep_launched(job)
        if rows is None:  # not rank 0: rank 0 prints the table
            return 0
    elif args.processes > 1:
        rows = sweep_processes(job, args.processes)
    else:
        import torch

        from .engine import Engine
        from .model import load_model

        if args.threads:
            torch.set_num_threads(args.threads)
        engine = Engine(load_model(job.model, load_in_4bit=args.load_in_4bit))
        budgets = parse_budgets(args.keep, engine.geometry.n_patches)
        samples = load_samples(args.questions, args.n)
        rows = sweep(engine, samples, args.strategies, budgets)
        if seeds is not None:
            seeded = [r for r in rows if r["name"] in SEEDED]
            names = ",".join(dict.fromkeys(r["name"] for r in seeded))
            if not names:
                raise ValueError(f"--seeds: none of --strategies {args.strategies!r} draws random numbers "
                                 f"(seeded strategies: {', '.join(SEEDED)})")
            by_seed = [r for seed in seeds for r in sweep(engine, samples, names, budgets, seed=seed)
                       if r["name"] in SEEDED]
            summary = seed_summary(by_seed)
            if args.json:
                print(json.dumps({"rows": rows, "seeded_rows": by_seed, "seed_summary": summary}))
            else:
                print(markdown_table(rows) + "\n\nOver seeds " + ",".join(map(str, seeds)) + ":\n\n" + seed_table(summary))
            return 0
    print(json.dumps(rows) if args.json else markdown_table(rows))
    return 0


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2,3,4") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: expected distinct integers >= 0, e.g. 0,1,2,3,4")
    return seeds


def _analyze(args) -> int:
    from pathlib import Path

    from app.plots import analysis_html  # the CLI composes library and figures; pruning/ itself never plots

    from .analysis import analyze
    from .bench import load_samples, parse_budgets
    from .engine import Engine
    from .model import load_model
    from .bench import check_eta

    check_eta(args.eta)
    engine = Engine(load_model(resolve_model(args.model)))
    budgets = parse_budgets(args.keep, engine.geometry.n_patches)
    result = analyze(engine, load_samples(args.questions, args.samples), budgets, eta=args.eta)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").write_text(json.dumps(result, indent=1))
    (out / "analysis.html").write_text(analysis_html(result))
    c = result["consistency"]
    for name in c:
        print(f"{name:>8}: Spearman per layer " + " ".join(f"{v:+.2f}" for v in c[name]["spearman"]))
    print("image share of attention per layer: " + " ".join(f"{v:.2f}" for v in result["attention_share"]["image"]))
    k = result["vtw_kl"]["k"]
    said = "no layer has KL below eta" if k is None else f"layer {k} (the paper's K = {k + 1})"
    print(f"VTW calibrated: {said}; wrote {out / 'analysis.json'} and {out / 'analysis.html'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        if args.command == "ask":
            return _ask(args)
        if args.command == "build-toy":
            return _build_toy(args)
        if args.command == "flopcheck":
            return _flopcheck(args)
        if args.command == "calibrate":
            return _calibrate(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "analyze":
            return _analyze(args)
        if args.command == "cost":
            return _cost(args)
        if args.command == "speed":
            return _speed(args)
    except (ValueError, FileNotFoundError) as e:  # ModelLoadError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
