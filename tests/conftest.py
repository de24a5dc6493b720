"""Shared fixtures: random-init LLaVA checkpoints built on disk once per session, offline (and those of the families
beyond LLaVA-1.5: ``family_dirs``, ``family_engines``); the web app served in-process on a free port
(``app_server``, for the app tests)."""

import contextlib
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.serving import free_port, load_app_main
from pruning.engine import Engine
from pruning.model import load_model
from pruning.toy import build_random_llava
from pruning.toy_families import build_family

QUESTIONS = ["what is the colour of the circle?", "how many objects are there?", "is there a red square?"]


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {name: build_random_llava(root / name, name, seed=1) for name in ("tiny", "llava15")}


@pytest.fixture(scope="session")
def images():
    rng = np.random.RandomState(0)
    return [Image.fromarray(rng.randint(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(64, 80), (100, 60), (48, 48)]]


_cache = {}


def get_engine(model_dirs, name, four_bit=False, attn="sdpa"):
    key = (name, four_bit, attn)
    if key not in _cache:
        torch.manual_seed(0)
        _cache[key] = Engine(load_model(str(model_dirs[name]), load_in_4bit=four_bit, device="cpu",
                                        attn_implementation=attn))
    return _cache[key]


@pytest.fixture(scope="session")
def engines(model_dirs):
    return lambda name, four_bit=False, attn="sdpa": get_engine(model_dirs, name, four_bit, attn)


# ------------------------------------------------------------------ the families beyond LLaVA-1.5 (issue 27)
class _OnFirstUse(dict):
    """A dict whose values are made on first look-up (``make(key)``), then kept."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, key):
        self[key] = value = self.make(key)
        return value


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    """``family_dirs[family]``: a tiny random-init checkpoint of ``family`` (``pruning.toy_families.build_family``,
    seed 1), built on first use into one directory per session and shared by every test that reads it. A test that
    writes into a checkpoint builds its own."""
    root = tmp_path_factory.mktemp("families")
    return _OnFirstUse(lambda family: build_family(root / family, family, seed=1))


@pytest.fixture(scope="session")
def family_engines(family_dirs):
    """``family_engines(family, attn="sdpa")``: an ``Engine`` on ``family_dirs[family]``, loaded once per (family,
    attention implementation) and shared (tests read it; none changes its weights or settings)."""
    loaded = _OnFirstUse(lambda key: Engine(load_model(str(family_dirs[key[0]]), device="cpu",
                                                       attn_implementation=key[1])))
    return lambda family, attn="sdpa": loaded[(family, attn)]


# ------------------------------------------------------------------ the web app, served in-process (tests/test_app_*)

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def serve_app(model: str | None = None, allowed=()):
    """The app on a free loopback port with ``model`` as its default (None: the embedded model) and ``allowed`` on
    offer; yields (demo, url); closed on exit. The test process's torch thread count is kept."""
    main = load_app_main()
    demo = main.make_demo(model, threads=torch.get_num_threads(), warm_up=False, allowed=list(allowed))
    port = free_port()
    main.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    try:
        yield demo, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def wait_painter_image(page) -> None:
    """Wait until the Teach tab's painter shows the image (the tab's own refresh has landed), as a visitor sees it
    before painting: a refresh landing mid-drag redraws the grid under the finger."""
    page.wait_for_function("() => { const g = document.querySelector('#ps-painter .pp-grid');"
                           " return g && g.style.backgroundImage.includes('data:image'); }")


def drag(page, selector: str, start: int, end: int, offset: int = 3) -> None:
    """Drag the mouse from cell ``start`` to cell ``end`` of the element ``selector`` (cells carry ``data-i``),
    ``offset`` px inside each cell's corner, in 12 steps: what a painting hand does."""
    a = page.locator(f"{selector} [data-i='{start}']").bounding_box()
    b = page.locator(f"{selector} [data-i='{end}']").bounding_box()
    page.mouse.move(a["x"] + offset, a["y"] + offset)
    page.mouse.down()
    page.mouse.move(b["x"] + offset, b["y"] + offset, steps=12)
    page.mouse.up()


@pytest.fixture
def one_timed_run(monkeypatch):
    """The comparisons of a test about what the page shows (or about which results come back) time each strategy
    once, without a warm-up (the app's own default times several repeats, which is what makes every strategy at once
    take long here); whatever else the caller passed, by position or by name, is kept."""
    import inspect

    from pruning.compare import Scope

    stream = Scope.compare_stream
    signature = inspect.signature(stream)

    def quick(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.arguments.update(repeats=1, warmup=0)
        return stream(*bound.args, **bound.kwargs)

    monkeypatch.setattr(Scope, "compare_stream", quick)


@pytest.fixture(scope="session")
def app_server():
    """The app with the embedded model on a free loopback port, shared by the app tests; closed at the end."""
    main = load_app_main()
    # keep the test process's torch thread count (the app alone would pick 1 thread for the embedded model)
    demo = main.make_demo(threads=torch.get_num_threads(), warm_up=False)
    port = free_port()
    main.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", port=port, demo=demo, examples=main.load_examples())
    demo.close()


# ------------------------------------------------------------------ the browser tests (Debian's chromium via Playwright)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        pytest.fail("Chromium is not installed: the browser tests drive Debian's chromium at /usr/bin/chromium "
                    "(apt-get install chromium; .ci/run installs it). Playwright's own browser download is not used.")
    return path


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is not installed: pip install --no-deps -r requirements-dev.txt")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    """Where a browser test writes its screenshots: ``$PRUNESCOPE_SCREENSHOTS`` when set, else the test's tmp_path."""
    directory = Path(os.environ.get("PRUNESCOPE_SCREENSHOTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory
