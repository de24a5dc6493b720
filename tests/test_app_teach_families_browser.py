"""The Teach tab's patch painter in headless Chromium (Debian's chromium through Playwright) with a tiny Qwen2.5-VL as
the app's default model (issue 27): an uploaded 80 x 64 picture gets a painter of its own 8 x 10 merged-token grid
(80 cells, the picture's 5:4 shape), a drag paints a row of it and the model runs with exactly those patches; with
LLaVA-NeXT picked in the Model menu the painter and the probe say, in words, why there is no grid to paint."""

import numpy as np
import pytest
from PIL import Image

from pruning.compare import ScopePool
from pruning.toy_families import build_family
from .conftest import drag, serve_app, wait_painter_image

TIMEOUT_MS = 120_000  # a shared 2-core machine runs other work besides


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("teach-families-browser")
    qwen = str(build_family(root / "qwen", "qwen2.5-vl", seed=1))
    nxt = str(build_family(root / "next", "llava-next", seed=1))
    picture = root / "scene.png"
    Image.fromarray(np.random.RandomState(3).randint(0, 255, (64, 80, 3), dtype=np.uint8)).save(picture)
    with serve_app(qwen, allowed=[nxt]) as (_, url):
        yield {"url": url, "picture": str(picture), "next": ScopePool(qwen, [nxt]).label(nxt)}


def test_the_painter_follows_qwens_grid_and_refuses_a_strip(served, browser, shots):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(served["url"])
    page.wait_for_selector("#ps-run", state="visible")
    page.set_input_files("#ps-image input[type=file]", served["picture"])
    page.wait_for_function("() => { const i = document.querySelector('#ps-image img'); return i && i.src.includes('scene'); }")
    page.fill("#ps-question textarea", "What is in the picture?")  # no example scenes on a family model
    page.get_by_role("tab", name="Teach", exact=True).click()
    page.click("#ps-hand-box .label-wrap")
    page.wait_for_selector("#ps-painter .pp-c[data-i='79']", state="visible")
    # the upload and the tab's selection each redraw the views; let the second land before painting (a new grid
    # empties the painter)
    wait_painter_image(page)
    page.wait_for_timeout(2000)
    assert page.locator("#ps-painter .pp-c").count() == 80
    box = page.locator("#ps-painter .pp-grid").bounding_box()
    assert abs(box["width"] / box["height"] - 10 / 8) < 0.03, box  # the picture's shape, not a square
    drag(page, "#ps-painter", 32, 35)  # row 3, columns 2..5
    page.wait_for_function("() => document.querySelector('#ps-painter .pp-count').innerText.startsWith('4 of 80')")
    page.click("#ps-hand-run")
    page.wait_for_function("() => (document.querySelector('#ps-hand-out') || {}).innerText?.includes("
                           "'exactly these 4 patches')")
    assert "32, 33, 34, 35" in page.inner_text("#ps-hand-out")
    page.screenshot(path=str(shots / "teach-families-qwen-painter.png"), full_page=True)

    # LLaVA-NeXT in the Model menu: no grid to paint, and the words say why, beside the painter and the probe
    page.click("#ps-model input")
    page.click(f"ul[role=listbox] li:text-is('{served['next']}')")
    page.wait_for_function("() => (document.querySelector('#ps-painter') || {}).innerText?.includes('LLaVA-NeXT packs')")
    assert page.locator("#ps-painter .pp-c").count() == 0
    assert "needs a patch grid over the picture" in page.inner_text("#ps-probe-box")
    page.screenshot(path=str(shots / "teach-families-next-refused.png"), full_page=True)
    page.close()
