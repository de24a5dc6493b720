"""``python -m pruning.integrations``: the lmms-eval side of PruneScope that needs no lmms-eval.

- ``export-task --out DIR [--n 500]``: write the ``prunescope_shapes`` tasks (``shapes_task``) for ``--include_path``.
- ``table PATH [PATH ...]``: every lmms-eval results file (``*_results.json``) under the paths as one markdown table:
  the strategy and its budget (from ``model_args``), each task's metrics, and the ``prunescope`` model's cost (mean
  visual tokens entering the LLM and in its last layer, prefill TFLOPs and ms, from the file's ``throughput``).

Bad input exits with code 2 and one line ``error: ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

COST_COLUMNS = (("avg_visual_tokens_kept", "tokens into LLM", "{:.0f}"),
                ("avg_visual_tokens_last_layer", "image tokens last layer", "{:.0f}"),
                ("avg_prefill_tflops", "prefill TFLOPs", "{:.3g}"), ("avg_prefill_ms", "prefill ms", "{:.1f}"))


def parse_model_args(text: str) -> dict:
    """``a=1,b=x`` as a dict of strings (enough for the table: no nested values)."""
    out = {}
    for part in (text or "").split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def results_files(paths: list[str]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = sorted(p.rglob("*_results.json"))
            if not found:
                raise ValueError(f"{p}: no lmms-eval results file (*_results.json) under it")
            files.extend(found)
        else:
            raise ValueError(f"{p}: no such file or directory")
    return files


def table_rows(files: list[Path]) -> list[dict]:
    rows = []
    for f in files:
        try:
            data = json.loads(f.read_text())
            results, config = data["results"], data["config"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{f}: not an lmms-eval results file ({e})") from None
        args = parse_model_args(config.get("model_args") or "")
        throughput = data.get("throughput") or {}
        for task, metrics in results.items():
            values = {k.split(",")[0]: v for k, v in metrics.items()
                      if isinstance(v, (int, float)) and "_stderr" not in k and k != "alias"}
            rows.append({"file": str(f), "model": config.get("model"), "args": args, "task": task, "metrics": values,
                         "limit": config.get("limit"), "throughput": throughput})
    return rows


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def markdown(rows: list[dict]) -> str:
    """One line per (results file, task), the unpruned runs first."""
    rows = sorted(rows, key=lambda r: r["args"].get("strategy", "none") != "none")
    metric_names: list[str] = []
    for r in rows:
        for m in r["metrics"]:
            if m not in metric_names:
                metric_names.append(m)
    head = ["strategy", "keep", "other args", "task", *metric_names, *(c[1] for c in COST_COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        args = dict(r["args"])
        strategy = args.pop("strategy", "none")
        keep = args.pop("keep", "all" if strategy == "none" else "–")  # vtw keeps no budget
        args.pop("pretrained", None)
        other = ", ".join(f"{k}={v}" for k, v in args.items()) or ""
        cells = [strategy if r["model"] == "prunescope" else f"{r['model']}", keep, other, r["task"],
                 *(_cell(r["metrics"].get(m), "{:.1%}" if 0 <= (r["metrics"].get(m) or 0) <= 1 else "{:.4g}")
                   for m in metric_names),
                 *(_cell(r["throughput"].get(key), fmt) for key, _, fmt in COST_COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pruning.integrations",
                                     description="PruneScope's lmms-eval task and results table")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export-task", help="write the prunescope_shapes lmms-eval tasks and their data")
    ex.add_argument("--out", required=True, help="directory to write (pass it to lmms-eval as --include_path)")
    ex.add_argument("--n", type=int, default=500, help="held-out questions (split evenly over the types)")
    tb = sub.add_parser("table", help="lmms-eval results files as one markdown table (accuracy, budget, cost)")
    tb.add_argument("paths", nargs="+", help="results files or directories searched for *_results.json")
    tb.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "export-task":
            from .shapes_task import export

            data = export(args.out, args.n, progress=True)
            print(f"wrote {data} and the tasks prunescope_shapes, prunescope_shapes_mc: lmms-eval --include_path "
                  f"{Path(args.out)}")
            return 0
        rows = table_rows(results_files(args.paths))
        print(json.dumps(rows) if args.json else markdown(rows))
        return 0
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


__all__ = ["main", "markdown", "table_rows", "results_files", "parse_model_args"]
