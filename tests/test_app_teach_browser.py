"""The Teach and Lessons tabs in headless Chromium (Debian's chromium through Playwright), against the app served
in-process (``app_server`` in conftest): a visitor clicks a patch of the image and gets its probe, paints a
selection on the patch grid and runs the model with it, plays a budget film, and opens a lesson; then the same on
a phone-sized screen. Screenshots (1400 px and 390 px wide) go to ``$PRUNESCOPE_SCREENSHOTS`` when set, else to
the test's tmp_path.
"""

from .conftest import drag, wait_painter_image

TIMEOUT_MS = 120_000  # a shared 2-core machine runs other work besides


def open_tab(page, name: str):
    """Click a tab; on a narrow screen the last tabs sit in the "More tabs" menu."""
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count():
        tab.click()
        return
    page.click("button[aria-label='More tabs']")
    page.click(f".overflow-dropdown button:text-is('{name}')")


def open_accordion(page, elem_id: str):
    page.click(f"#{elem_id} .label-wrap")


def fill_text(page, selector: str, text: str):
    """Type ``text`` into a text box of an accordion just opened and make sure it stays: the box's own initial value
    can arrive after the typing and replace it."""
    for _ in range(10):
        page.fill(selector, text)
        page.wait_for_timeout(300)
        if page.input_value(selector) == text:
            return
    raise AssertionError(f"{selector} does not keep {text!r}: {page.input_value(selector)!r}")


def click_cell(page, selector: str, row: int, col: int, grid=(12, 12)):
    """Click the centre of patch (row, col) of an image drawn with object-fit: contain (letterboxed in its box)."""
    page.locator(selector).scroll_into_view_if_needed()
    box = page.locator(selector).bounding_box()
    natural = page.eval_on_selector(selector, "img => [img.naturalWidth, img.naturalHeight]")
    scale = min(box["width"] / natural[0], box["height"] / natural[1])
    w, h = natural[0] * scale, natural[1] * scale
    x0, y0 = box["x"] + (box["width"] - w) / 2, box["y"] + (box["height"] - h) / 2
    page.mouse.click(x0 + (col + 0.5) * w / grid[1], y0 + (row + 0.5) * h / grid[0])


def test_probe_paint_film_and_lesson(app_server, browser, shots):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_server.url)
    page.wait_for_selector("#ps-run", state="visible")
    # a comparison first: its cards are marked against the scene's answer (red)
    page.click("#ps-run")
    page.wait_for_function("() => (document.querySelector('#ps-status') || {}).innerText?.includes('Done: 4 strategies')",
                           timeout=TIMEOUT_MS)
    assert "✓ right" in page.inner_text("#ps-card-0"), "none's card is marked right against the scene's answer"
    assert "Ground truth: the scene's correct answer is 'red'" in page.inner_text("#ps-card-0")
    open_tab(page, "Teach")
    page.wait_for_selector("#ps-probe-image img")
    assert "example-1-small-colour.png" in page.inner_text("#ps-teach-using"), "the Compare tab's inputs are named"

    # click a patch: row 4, column 7 -> patch 55
    click_cell(page, "#ps-probe-image img", 4, 7)
    page.wait_for_function("() => (document.querySelector('#ps-probe-fates') || {}).innerText?.includes('patch 55')")
    assert page.input_value("#ps-probe-row input") == "4" and page.input_value("#ps-probe-col input") == "7"
    fates = page.inner_text("#ps-probe-fates")
    for name in ("none", "vtc-cls", "fastv", "vtw"):
        assert name in fates
    assert "kept: it reaches the LLM's last layer" in fates, "none keeps every patch"
    page.wait_for_selector("#ps-probe-attends img", state="visible")
    page.wait_for_selector("#ps-probe-plot .js-plotly-plot", state="visible")
    page.screenshot(path=str(shots / "teach-1-probe-1400.png"), full_page=True)

    # paint a selection: drag along row 3 from column 2 to column 6 (5 patches), then run the model with it
    open_accordion(page, "ps-hand-box")
    page.wait_for_selector("#ps-painter .pp-c[data-i='38']", state="visible")
    wait_painter_image(page)
    drag(page, "#ps-painter", 38, 42, offset=4)
    page.wait_for_function("() => document.querySelector('#ps-painter .pp-count').innerText.startsWith('5 of 144')")
    assert page.locator("#ps-painter .pp-c.on").count() == 5
    page.click("#ps-hand-run")
    page.wait_for_function("() => (document.querySelector('#ps-hand-out') || {}).innerText?.includes("
                           "'exactly these 5 patches')")
    assert "38, 39, 40, 41, 42" in page.inner_text("#ps-hand-out")
    assert "manual" in page.inner_text("#ps-hand-out")
    assert "Beside the strategies of your last comparison" in page.inner_text("#ps-hand-out")

    # play a budget film (the Compare tab's strategies: vtc-cls, fastv, vtw; vtw has no budget)
    open_accordion(page, "ps-film-box")
    fill_text(page, "#ps-film-budgets textarea", "144, 36, 9")
    page.click("#ps-film-run")
    page.wait_for_function("() => document.querySelectorAll('#ps-film-strip img').length === 6")
    strip = page.inner_text("#ps-film-strip")
    assert "red" in strip, "the frames name the answers (the scene's answer is red)"
    page.wait_for_selector("#ps-film-plot .js-plotly-plot", state="visible")
    assert "vtw has no budget" in page.inner_text("#ps-film-box")
    page.screenshot(path=str(shots / "teach-2-paint-film-1400.png"), full_page=True)

    # open a lesson
    open_tab(page, "Lessons")
    page.click("#ps-lesson-merge-vs-drop")
    page.wait_for_function("() => document.querySelectorAll('#ps-lesson-cards img').length === 5")
    assert "Merging vs dropping" in page.inner_text("#ps-lesson-text")
    cards = page.inner_text("#ps-lesson-cards")
    assert "✓ four" in cards and "toy" in page.inner_text("body")
    page.screenshot(path=str(shots / "teach-3-lesson-1400.png"), full_page=True)

    # How it works: the diagram, the glossary, the papers
    open_tab(page, "How it works")
    how = page.inner_text("#ps-how")
    assert "Where each method acts" in how and "inside the LLM" in how and "Glossary" in how
    assert page.locator("#ps-how a[href='https://arxiv.org/abs/2403.06764']").count() == 1
    page.close()


def test_phone_width(app_server, browser, shots):
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                            has_touch=True)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_server.url)
    page.wait_for_selector("#ps-run", state="visible")
    open_tab(page, "Teach")
    page.wait_for_selector("#ps-probe-image img")
    click_cell(page, "#ps-probe-image img", 6, 3)
    page.wait_for_function("() => (document.querySelector('#ps-probe-fates') || {}).innerText?.includes('patch 75')")
    page.wait_for_selector("#ps-probe-plot .js-plotly-plot", state="visible")
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 392, f"the Teach tab fits a 390 px screen (scroll width {width})"
    page.screenshot(path=str(shots / "teach-4-probe-390.png"), full_page=True)
    open_tab(page, "Lessons")
    page.click("#ps-lesson-cls-knows")
    page.wait_for_function("() => document.querySelectorAll('#ps-lesson-cards img').length === 3")
    page.wait_for_selector("#ps-lesson-image img", state="visible")
    page.screenshot(path=str(shots / "teach-5-lesson-390.png"), full_page=True)
    page.close()


def test_touch_painting_on_a_phone(app_server, browser, shots):
    """A finger drags along a row of the painter on a touch screen (390x844, touch events through Chromium's
    DevTools protocol, which it turns into pointer events of type "touch"): the patches under the finger are
    chosen, the count says so; a second drag that starts on a chosen patch erases."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_server.url)
    page.wait_for_selector("#ps-run", state="visible")
    open_tab(page, "Teach")
    open_accordion(page, "ps-hand-box")
    page.wait_for_selector("#ps-painter .pp-c[data-i='26']", state="visible")
    wait_painter_image(page)
    page.locator("#ps-painter .pp-c[data-i='26']").scroll_into_view_if_needed()
    cdp = context.new_cdp_session(page)

    def drag(first: int, last: int):
        a = page.locator(f"#ps-painter .pp-c[data-i='{first}']").bounding_box()
        b = page.locator(f"#ps-painter .pp-c[data-i='{last}']").bounding_box()
        y = a["y"] + a["height"] / 2
        xs = [a["x"] + a["width"] / 2 + (b["x"] - a["x"]) * i / 12 for i in range(13)]
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": xs[0], "y": y}]})
        for x in xs[1:]:
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})

    drag(26, 30)  # row 2, columns 2..6
    page.wait_for_function("() => document.querySelector('#ps-painter .pp-count').innerText.startsWith('5 of 144')")
    chosen = page.eval_on_selector_all("#ps-painter .pp-c.on", "cs => cs.map(c => Number(c.dataset.i))")
    assert chosen == [26, 27, 28, 29, 30]
    page.screenshot(path=str(shots / "teach-4-touch-paint-390.png"))
    drag(28, 30)  # from a chosen patch: erase
    page.wait_for_function("() => document.querySelector('#ps-painter .pp-count').innerText.startsWith('2 of 144')")
    assert page.eval_on_selector_all("#ps-painter .pp-c.on", "cs => cs.map(c => Number(c.dataset.i))") == [26, 27]
    context.close()
