"""Serving the app in-process, for the benchmarks and the tests: ``app.py`` loaded as a module and a free port."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_app_main():
    """``app.py`` (the composition root) as a module. ``import app`` finds the ``app/`` package, not the file."""
    spec = importlib.util.spec_from_file_location("prunescope_app_main", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
