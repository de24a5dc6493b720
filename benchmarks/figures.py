"""The performance figures of docs/performance.md, drawn from the reports the commands write.

    .venv/bin/python -m benchmarks.figures --speed runs/speed-7b.json --bench runs/bench.json --out docs/figures

- from a ``python -m pruning speed --json`` report: ``speedup-prefill.html`` and ``speedup-ttft.html``, measured
  (with the per-repeat quartiles) and TFLOPs-predicted speedup over ``none`` against the budget per strategy
  (``app.plots.speed_figure``);
- from ``python -m pruning bench --json > FILE`` rows: ``accuracy-tflops.html``, accuracy against prefill TFLOPs
  with the Pareto front, and ``accuracy-budget.html`` (``app.plots.sweep_figures``, the Sweep tab's figures);
- a PNG beside each HTML file with ``--png`` (kaleido, pinned in requirements-dev.txt; it drives a Chrome or
  Chromium: ``BROWSER_PATH``, default Debian's ``/usr/bin/chromium`` where it exists).

The HTML files load plotly.js from its CDN (``include_plotlyjs="cdn"``): open them in a browser with a network.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def write(fig, out: Path, stem: str, png: bool) -> list[str]:
    html = out / f"{stem}.html"
    fig.write_html(html, include_plotlyjs="cdn", full_html=True)
    written = [str(html)]
    if png:
        fig.write_image(out / f"{stem}.png", width=1000, height=600, scale=1)
        written.append(str(out / f"{stem}.png"))
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.figures", description=__doc__.split("\n")[0])
    p.add_argument("--speed", help="a JSON report of python -m pruning speed --json")
    p.add_argument("--bench", help="a JSON file of python -m pruning bench --json")
    p.add_argument("--out", default="docs/figures")
    p.add_argument("--png", action="store_true", help="also a PNG of each figure (kaleido)")
    args = p.parse_args(argv)
    if not args.speed and not args.bench:
        p.error("give --speed, --bench or both")
    if args.png and "BROWSER_PATH" not in os.environ and Path("/usr/bin/chromium").exists():
        os.environ["BROWSER_PATH"] = "/usr/bin/chromium"
    from app import plots

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if args.speed:
        report = json.loads(Path(args.speed).read_text())
        command = report.get("command", "")
        for stage in ("prefill", "ttft"):
            fig = plots.speed_figure(report, stage)
            fig.add_annotation(text=command, xref="paper", yref="paper", x=0, y=-0.22, showarrow=False,
                               font=dict(size=9), align="left")
            fig.update_layout(margin=dict(b=120))
            written += write(fig, out, f"speedup-{stage}", args.png)
    if args.bench:
        rows = json.loads(Path(args.bench).read_text())
        by_budget, by_tflops = plots.sweep_figures(rows)
        written += write(by_tflops, out, "accuracy-tflops", args.png)
        written += write(by_budget, out, "accuracy-budget", args.png)
    for w in written:
        print(w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
