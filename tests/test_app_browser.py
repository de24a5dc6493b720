"""The Compare tab in headless Chromium (Playwright for Python driving Debian's chromium, never Playwright's own
browser download), against the app served in-process (``app_server`` in conftest).

Asserted: the page serves with the first example and the default strategies preloaded; a user uploads an
example image, types its question, picks exactly three strategies, clicks Compare and gets four cards (none
first) with answers and overlays, the table and the look-inside plots; releasing the budget slider re-runs
the comparison at the new budget. Screenshots (before, after the run, after the slider) go to
``$PRUNESCOPE_SCREENSHOTS`` when set, else to the test's tmp_path.
"""

import os
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
THREE = ["vtc-cls", "fastv", "tome"]
PLOTS = ["ps-plot-tokens", "ps-plot-shares", "ps-plot-llm", "ps-plot-cls", "ps-plot-consistency"]
TIMEOUT_MS = 120_000  # a shared 2-core machine runs other work besides; a run takes a few seconds


def chromium_path() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        pytest.fail("Chromium is not installed: the browser test drives Debian's chromium at /usr/bin/chromium "
                    "(apt-get install chromium; .ci/run installs it). Playwright's own browser download is not used.")
    return path


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is not installed: pip install -r requirements-dev.txt")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    directory = Path(os.environ.get("PRUNESCOPE_SCREENSHOTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def tokens(page) -> list[str]:
    return [t.inner_text().strip() for t in page.locator("#ps-strategies .token").all()]


def wait_done(page, n: int):
    page.wait_for_function("(n) => { const s = document.querySelector('#ps-status');"
                           " return s && s.innerText.includes('Done: ' + n + ' strategies'); }", arg=n,
                           timeout=TIMEOUT_MS)


def test_compare_and_slider_in_chromium(app_server, browser, shots):
    example = next(e for e in app_server.examples if e["image"].endswith("example-2-count.png"))
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_server.url)
    page.wait_for_selector("#ps-run", state="visible")
    first = app_server.examples[0]
    page.wait_for_selector("#ps-image img")
    assert page.get_attribute("#ps-image img", "src").endswith(Path(first["image"]).name), "first example preloaded"
    assert page.input_value("#ps-question textarea") == first["question"]
    assert tokens(page) == ["none", "vtc-cls", "fastv", "vtw"], "the default strategies"
    assert page.input_value("#ps-keep input[type=range]") == "72"

    # upload the count scene and type its question
    page.click("#ps-image button[aria-label='Remove Image']")
    page.set_input_files("#ps-image input[type=file]", example["image"])
    page.wait_for_function("() => { const i = document.querySelector('#ps-image img');"
                           " return i && i.src.endsWith('example-2-count.png'); }")
    page.fill("#ps-question textarea", example["question"])

    # exactly three strategies: clear the multiselect, then type each name and press Enter on its option
    page.click("#ps-strategies .remove-all")
    assert tokens(page) == []
    combo = page.locator("#ps-strategies input[role=combobox]")
    for name in THREE:
        combo.click()
        combo.fill(name)
        page.wait_for_selector(f"#ps-strategies li[role=option][aria-label='{name}']")
        combo.press("Enter")
    combo.press("Escape")
    assert tokens(page) == THREE
    page.screenshot(path=str(shots / "1-before.png"), full_page=True)

    page.click("#ps-run")
    wait_done(page, 4)
    for i, name in enumerate(["none", *THREE]):
        card = f"#ps-card-{i}"
        page.wait_for_selector(f"{card} .ps-overlay img", state="visible")
        text = page.inner_text(card)
        assert text.splitlines()[0].strip() == name, f"card {i} is {name}: {text!r}"
        assert re.search(r"Answer:\s*\S", text), f"card {i} has an answer: {text!r}"
    assert not page.is_visible("#ps-card-4"), "only the first four cards show"
    assert "72 of 144 visual tokens enter the LLM" in page.inner_text("#ps-card-1")
    assert "144 of 144 visual tokens enter the LLM, 72 reach its last layer" in page.inner_text("#ps-card-2")
    for plot in PLOTS:
        page.wait_for_selector(f"#{plot} .js-plotly-plot", state="visible")
    assert not page.is_visible("#ps-plot-kl"), "the KL plot shows only when vtw runs"
    table = page.inner_text("#ps-table")
    assert all(name in table for name in ["none", *THREE])
    page.screenshot(path=str(shots / "2-after-run.png"), full_page=True)

    # release the budget slider at a quarter of its track (a mouse click: pointerdown, pointerup -> release)
    track = page.locator("#ps-keep input[type=range]")
    box = track.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 2)
    keep = int(track.input_value())
    assert 20 <= keep <= 50 and page.input_value("#ps-keep input[type=number]") == str(keep)
    page.wait_for_function("(k) => { const c = document.querySelector('#ps-card-1');"
                           " return c && c.innerText.includes(k + ' of 144 visual tokens enter the LLM'); }", arg=keep)
    wait_done(page, 4)
    assert f"144 of 144 visual tokens enter the LLM, {keep} reach its last layer" in page.inner_text("#ps-card-2")
    assert f"{keep} of 144 visual tokens enter the LLM" in page.inner_text("#ps-card-3")
    for i in range(4):
        page.wait_for_selector(f"#ps-card-{i} .ps-overlay img", state="visible")
    for plot in PLOTS:
        page.wait_for_selector(f"#{plot} .js-plotly-plot", state="visible")
    page.screenshot(path=str(shots / "3-after-slider.png"), full_page=True)
    page.close()


def legend_names(page, elem_id: str) -> list[str]:
    """The trace names in a plotly figure's legend (SVG text, which inner_text cannot read)."""
    return page.eval_on_selector_all(f"#{elem_id} .legendtext", "els => els.map(e => e.textContent)")


def test_sweep_tab_pareto_front_and_measured_speed(app_server, browser, shots):
    """The Sweep tab: a small sweep draws accuracy against TFLOPs with its Pareto front, and the measured speed
    report (assets/reports/speed-7b.json) opens as two plots."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_server.url)
    page.get_by_role("tab", name="Sweep").click()
    page.wait_for_selector("#ps-sweep-run", state="visible")
    page.fill("#ps-sweep-budgets textarea", "48")
    number = page.locator("#ps-sweep-n input[type=number]")
    number.fill("5")
    number.press("Enter")
    page.click("#ps-sweep-run")
    page.wait_for_function("() => { const s = document.querySelector('#ps-sweep-status');"
                           " return s && s.innerText.includes('5 questions x'); }", timeout=TIMEOUT_MS)
    page.wait_for_selector("#ps-plot-sweep-tflops .js-plotly-plot", state="visible")
    legend = legend_names(page, "ps-plot-sweep-tflops")
    assert "Pareto front" in legend and "vtc-cls" in legend
    page.click("#ps-speed button, #ps-speed .label-wrap")
    for plot in ("ps-plot-speed-prefill", "ps-plot-speed-ttft"):
        page.wait_for_selector(f"#{plot} .js-plotly-plot", state="visible")
    assert "fastv (layer 1): measured" in legend_names(page, "ps-plot-speed-prefill")
    assert "python -m pruning speed" in page.inner_text("#ps-speed")
    page.screenshot(path=str(shots / "4-sweep.png"), full_page=True)
    page.close()
