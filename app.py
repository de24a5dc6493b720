"""PruneScope's web app: ``python app.py`` serves the Compare / Sweep / How it works tabs on
http://127.0.0.1:7860 with the embedded model (offline).

Options and environment (for HuggingFace Spaces): ``--model`` or ``MODEL_ID`` (a local LLaVA directory or
a hub id such as ``llava-hf/llava-1.5-7b-hf``), ``--4bit`` or ``LOAD_IN_4BIT=1`` (bitsandbytes nf4),
``PRUNESCOPE_MODELS`` (comma-separated local directories / hub ids a visitor may pick besides the default;
nothing else is ever loaded), ``--host`` (default 127.0.0.1; ``0.0.0.0`` to serve a network, as Spaces
need), ``--port`` (default 7860, or ``GRADIO_SERVER_PORT``). This file is the composition root: it loads the model once, builds the UI and
launches it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "assets" / "examples"
SPEED_REPORT = ROOT / "assets" / "reports" / "speed-7b.json"


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def load_examples(directory: Path = EXAMPLES_DIR) -> list[dict]:
    index = directory / "examples.json"
    if not index.is_file():
        return []
    rows = json.loads(index.read_text())
    return [{**row, "image": str(directory / row["image"])} for row in rows]


def load_speed_report(path: Path = SPEED_REPORT) -> dict | None:
    """The measured speed report the Sweep tab shows (``python -m pruning speed --json``), or None without one."""
    return json.loads(path.read_text()) if path.is_file() else None


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description="PruneScope web app")
    parser.add_argument("--model", default=env.get("MODEL_ID") or None,
                        help="local LLaVA directory or hub id (default: MODEL_ID, else the embedded model)")
    parser.add_argument("--4bit", dest="load_in_4bit", action="store_true", default=truthy(env.get("LOAD_IN_4BIT")),
                        help="load in 4-bit with bitsandbytes (default: LOAD_IN_4BIT)")
    parser.add_argument("--host", default=env.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=int(env["PRUNESCOPE_THREADS"]) if env.get("PRUNESCOPE_THREADS")
                        else None, help="torch CPU threads (default: PRUNESCOPE_THREADS, else 1 for the embedded "
                        "model and torch's default for others)")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="skip the untimed comparison on a blank image at start-up")
    return parser.parse_args(argv)


def make_demo(model: str | None = None, load_in_4bit: bool = False, device: str | None = None,
              allowed: str | list | None = None, threads: int | None = None, warm_up: bool = True):
    """Load the default model once and build the queued Blocks; ``allowed`` (default: the environment's
    ``PRUNESCOPE_MODELS``) lists the other models a visitor may pick."""
    from transformers.utils import logging as hf_logging

    from app.ui import build
    from pruning.compare import ScopePool

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    pool = ScopePool(model, allowed if allowed is not None else os.environ.get("PRUNESCOPE_MODELS", ""),
                     load_in_4bit=load_in_4bit, device=device, threads=threads)
    if warm_up:
        pool.get().warm_up()
    from app.server import QUEUE_SIZE, guard
    from pruning.images import check_header

    demo = build(pool, load_examples() if pool.get().info()["embedded"] else [], load_speed_report())
    # api_open=False: every event goes through the queue (Gradio leaves the REST routes open off Spaces, and a
    # direct POST would skip the queue's concurrency limits)
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE, api_open=False)
    guard(demo, check_header)  # every image input's header checked before anything decodes it (app/server.py)
    return demo


def launch(demo, host: str, port: int, **kwargs):
    """Serve ``demo`` behind ``app.server.Guard`` (body caps, a bound on each visitor's pending jobs, security
    headers), uploads capped at 10 MiB, only ``assets/examples`` served besides Gradio's own files."""
    from app.server import launch_kwargs
    from app.ui import CSS

    return demo.launch(server_name=host, server_port=port, share=False, css=CSS, show_error=True,
                       allowed_paths=[str(EXAMPLES_DIR)], footer_links=["api"], **launch_kwargs(demo), **kwargs)


def main(argv=None) -> int:
    args = parse_args(argv)
    models = [args.model or "", *os.environ.get("PRUNESCOPE_MODELS", "").split(",")]
    if all(not m.strip() or Path(m.strip()).expanduser().exists() for m in models):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # only local models: never wait on a hub
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        demo = make_demo(args.model, args.load_in_4bit, args.device, threads=args.threads, warm_up=args.warm_up)
    except ValueError as e:  # a model that cannot load: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    launch(demo, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
