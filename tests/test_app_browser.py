"""The Compare tab in headless Chromium (Playwright for Python driving Debian's chromium, never Playwright's own
browser download), against the app served in-process (``app_server`` in conftest).

Asserted: the page serves with the first example and the default strategies preloaded, and shows no empty result
boxes before the first Compare; a user uploads an example image, types its question, picks exactly three
strategies, clicks Compare and gets four cards (none first) with answers and overlays, the table and the
look-inside plots; releasing the budget slider re-runs the comparison at the new budget. Every strategy at once,
on a fresh page three times: every card shows, with its answer, its overlay and its cost, in a fixed grid, and
the table fits (issue 23: cards went missing while the status said "Done"). Refused input (an empty question, eta
0) is said beside the input and in the status, and the earlier results stay; a new image clears them. On a phone
(390x844) the first screen holds the image, the question and Compare, and the results stack within the screen's
width. Screenshots go to ``$PRUNESCOPE_SCREENSHOTS`` when set, else to the test's tmp_path.
"""

from pathlib import Path

import pytest

THREE = ["vtc-cls", "fastv", "tome"]
PLOTS = ["ps-plot-tokens", "ps-plot-shares", "ps-plot-llm", "ps-plot-cls", "ps-plot-consistency"]
TIMEOUT_MS = 120_000  # a shared 2-core machine runs other work besides; a run takes a few seconds


def tokens(page) -> list[str]:
    return [t.inner_text().strip() for t in page.locator("#ps-strategies .token").all()]


def wait_done(page, n: int):
    page.wait_for_function("(n) => { const s = document.querySelector('#ps-status');"
                           " return s && s.innerText.includes('Done: ' + n + ' strategies'); }", arg=n,
                           timeout=TIMEOUT_MS)


def open_page(browser, app_server, width=1400, height=1000):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_server.url)
    page.wait_for_selector("#ps-run", state="visible")
    return page


def pick(page, names):
    """Exactly these strategies: clear the multiselect, then type each name and press Enter on its option."""
    if tokens(page):
        page.click("#ps-strategies .remove-all")
    combo = page.locator("#ps-strategies input[role=combobox]")
    for name in names:
        combo.blur()  # a click on a combobox that kept the focus (after Escape) does not open its list
        combo.click()
        combo.fill(name)
        page.wait_for_selector(f"#ps-strategies li[role=option][aria-label='{name}']")
        combo.press("Enter")
    combo.press("Escape")
    assert tokens(page) == list(names)


def offered(page) -> list[str]:
    """Every strategy the dropdown offers (open it with nothing chosen, read the options)."""
    page.click("#ps-strategies .remove-all")
    page.click("#ps-strategies input[role=combobox]")
    names = page.eval_on_selector_all("#ps-strategies li[role=option]", "els => els.map(e => e.getAttribute('aria-label'))")
    page.keyboard.press("Escape")
    return names


def set_number(page, selector: str, value):
    """Type a number into a box and press Enter; again if the box was still being mounted (a component in an
    accordion just opened gets its initial value after it appears, over what was typed)."""
    box = page.locator(selector)
    for _ in range(5):
        box.fill(str(value))
        box.press("Enter")
        page.wait_for_timeout(200)
        if float(box.input_value() or "nan") == float(value):
            return
    raise AssertionError(f"{selector} does not keep {value}: {box.input_value()!r}")


CARD_COMPLETE = """(i) => {
  const c = document.querySelector('#ps-card-' + i);
  if (!c || c.offsetParent === null) return false;
  const img = c.querySelector('.ps-overlay img');
  return /Answer:\s*\S/.test(c.innerText) && /first token [0-9.]+ ms/.test(c.innerText)
      && /(vs none|the reference)/.test(c.innerText) && img && img.complete && img.naturalWidth > 0;
}"""


def check_cards(page, names: list[str]):
    """Card i is names[i], shown, with its answer, its cost and its overlay image loaded (scrolled into view, so
    that a lazily loaded image is fetched); the slots after them are hidden."""
    for i, name in enumerate(names):
        page.locator(f"#ps-card-{i}").scroll_into_view_if_needed()
        page.wait_for_function(CARD_COMPLETE, arg=i, timeout=10_000)
        text = page.inner_text(f"#ps-card-{i}")
        assert text.splitlines()[0].strip() == name, f"card {i} is {name}: {text!r}"
    assert not page.is_visible(f"#ps-card-{len(names)}"), "the slots this run did not fill are hidden"


def test_compare_and_slider_in_chromium(app_server, browser, shots, one_timed_run):
    example = next(e for e in app_server.examples if e["image"].endswith("example-2-count.png"))
    page = open_page(browser, app_server)
    first = app_server.examples[0]
    page.wait_for_selector("#ps-image img")
    assert page.get_attribute("#ps-image img", "src").endswith(Path(first["image"]).name), "first example preloaded"
    assert page.input_value("#ps-question textarea") == first["question"]
    assert tokens(page) == ["none", "vtc-cls", "fastv", "vtw"], "the default strategies"
    assert page.input_value("#ps-keep input[type=range]") == "72"
    # before the first Compare: a sentence says what will come, no empty cards, table or plot boxes
    assert page.is_visible("#ps-placeholder")
    for box in ("#ps-results", "#ps-inside", "#ps-card-0", "#ps-plot-tokens"):
        assert not page.is_visible(box), f"{box} shows before the first Compare"

    # upload the count scene and type its question
    page.click("#ps-image button[aria-label='Remove Image']")
    page.set_input_files("#ps-image input[type=file]", example["image"])
    page.wait_for_function("() => { const i = document.querySelector('#ps-image img');"
                           " return i && i.src.endsWith('example-2-count.png'); }")
    page.fill("#ps-question textarea", example["question"])

    pick(page, THREE)
    page.screenshot(path=str(shots / "1-before.png"), full_page=True)

    page.click("#ps-run")
    wait_done(page, 4)
    assert not page.is_visible("#ps-placeholder")
    check_cards(page, ["none", *THREE])
    assert "72 of 144 visual tokens enter the LLM" in page.inner_text("#ps-card-1")
    assert "144 of 144 visual tokens enter the LLM, 72 reach its last layer" in page.inner_text("#ps-card-2")
    for plot in PLOTS:
        page.wait_for_selector(f"#{plot} .js-plotly-plot", state="visible")
    assert not page.is_visible("#ps-plot-kl"), "the KL plot shows only when vtw runs"
    table = page.inner_text("#ps-table")
    assert all(name in table for name in ["none", *THREE])
    assert "GFLOPs" in table or "MFLOPs" in table, "compute in a readable unit"
    page.screenshot(path=str(shots / "2-after-run.png"), full_page=True)

    # release the budget slider at a quarter of its track (a mouse click: pointerdown, pointerup -> release)
    track = page.locator("#ps-keep input[type=range]")
    track.scroll_into_view_if_needed()
    box = track.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 2)
    keep = int(track.input_value())
    assert 20 <= keep <= 50 and page.input_value("#ps-keep input[type=number]") == str(keep)
    page.wait_for_function("(k) => { const c = document.querySelector('#ps-card-1');"
                           " return c && c.innerText.includes(k + ' of 144 visual tokens enter the LLM'); }", arg=keep)
    wait_done(page, 4)
    assert f"144 of 144 visual tokens enter the LLM, {keep} reach its last layer" in page.inner_text("#ps-card-2")
    assert f"{keep} of 144 visual tokens enter the LLM" in page.inner_text("#ps-card-3")
    check_cards(page, ["none", *THREE])
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
    assert "seed 0" in page.inner_text("#ps-sweep-status")
    # another question set, with random's range over its seeds as a band
    seed = page.locator("#ps-sweep-seed input[type=number]")
    seed.fill("7")
    seed.press("Enter")
    page.check("#ps-sweep-band input[type=checkbox]")
    page.click("#ps-sweep-run")
    page.wait_for_function("() => document.querySelector('#ps-sweep-status').innerText.includes('seed 7')",
                           timeout=TIMEOUT_MS)
    assert "drawn as a band" in page.inner_text("#ps-sweep-status")
    page.wait_for_selector("#ps-plot-sweep-budget .js-plotly-plot", state="visible")
    legend = legend_names(page, "ps-plot-sweep-budget")
    assert "random: 5 seeds (range)" in legend and "vtc-cls" in legend, legend
    x_title = page.eval_on_selector("#ps-plot-sweep-budget .xtitle", "e => e.textContent")
    assert x_title.startswith("visual tokens per LLM layer"), x_title
    page.click("#ps-speed button, #ps-speed .label-wrap")
    for plot in ("ps-plot-speed-prefill", "ps-plot-speed-ttft"):
        page.wait_for_selector(f"#{plot} .js-plotly-plot", state="visible")
    assert "fastv (layer 1): measured" in legend_names(page, "ps-plot-speed-prefill")
    assert "python -m pruning speed" in page.inner_text("#ps-speed")
    page.screenshot(path=str(shots / "4-sweep.png"), full_page=True)
    page.close()


def test_off_world_input_the_view_the_question_forms_and_the_projection(app_server, browser, shots, tmp_path,
                                                                        one_timed_run):
    """A question form picked from the list fills the question; a photo-like 4:3 upload is shown as the model sees
    it (cropped to the centre, said in words) with the reasons it lies outside the toy's world, every card warns,
    and the table shows the kept sets' projected cost on LLaVA-1.5-7B with the machine it was measured on."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:300, 0:400]
    photo = np.stack([x * 0.6, y * 0.8, 255 - x * 0.5], -1) + np.random.default_rng(0).normal(0, 20, (300, 400, 3))
    path = tmp_path / "landscape.png"
    Image.fromarray(photo.clip(0, 255).astype(np.uint8)).save(path)
    page = open_page(browser, app_server)
    page.click("#ps-question-form input")
    page.get_by_role("option", name="How many objects are there?").first.click()
    page.wait_for_function("() => document.querySelector('#ps-question textarea').value === "
                           "'How many objects are there?'")
    page.click("#ps-run")
    wait_done(page, 4)
    assert "no resizing or cropping" in page.inner_text("#ps-view-box")
    assert "Outside the toy model's world" not in page.inner_text("#ps-results"), "an example is in the toy's world"
    table = page.inner_text("#ps-table")
    assert "LLaVA-1.5-7B, projected" in table and "measured here (range)" in table
    assert "measured at its real widths on" in page.inner_text("#ps-results")
    # the heatmaps over the image, or as grids alone; one click saves the comparison as one HTML page
    images = "(id) => (document.querySelector(id + ' .js-plotly-plot').layout.images || []).length"
    page.wait_for_selector("#ps-plot-llm .js-plotly-plot", state="visible")
    assert page.evaluate(images, "#ps-plot-llm") == 1 and page.evaluate(images, "#ps-plot-cls") == 1
    page.uncheck("#ps-heat-over input[type=checkbox]")
    page.wait_for_function(f"() => ({images})('#ps-plot-llm') === 0 && ({images})('#ps-plot-cls') === 0")
    assert not page.is_visible("#ps-compare-export-file")
    page.click("#ps-compare-export")
    page.wait_for_selector("#ps-compare-export-file a", state="visible")
    listed = page.inner_text("#ps-compare-export-file")
    assert "prunescope-comparison-" in listed and ".html" in listed, listed

    page.click("#ps-image button[aria-label='Remove Image']")
    page.set_input_files("#ps-image input[type=file]", str(path))
    page.wait_for_function("() => document.querySelector('#ps-status').innerText.startsWith('New image')")
    page.wait_for_selector("#ps-view-box", state="hidden")
    # the removal alone says "New image" too: wait until the upload is the image shown (else Compare may run on none)
    page.wait_for_function("() => { const i = document.querySelector('#ps-image img');"
                           " return i && i.src.includes('landscape'); }")
    page.fill("#ps-question textarea", "What is in the sky?")
    page.click("#ps-run")
    wait_done(page, 4)
    note = page.inner_text("#ps-view-box")
    assert "Your 400 x 300 image (4:3)" in note and "cut off" in note, note
    assert "questions of a few exact forms" in note and "grey background" in note, note
    box = page.locator("#ps-view img").bounding_box()
    assert box and abs(box["width"] - box["height"]) <= 2, "shown square, as the model sees it"
    for i in range(4):
        assert "Outside the toy model's world" in page.inner_text(f"#ps-card-{i}"), i
    page.screenshot(path=str(shots / "9-off-world.png"), full_page=True)
    page.close()



def test_every_strategy_every_card_twice(app_server, browser, shots, one_timed_run):
    """Issue 23: with every strategy chosen, one or two cards sometimes never showed while the status said "Done".
    Two comparisons of every strategy, each on a fresh page (where cards are laid out for the first time): every
    card shows with its answer, overlay and cost, in a fixed grid (equal widths, several to a row), and the table
    fits the page."""
    for run in range(2):
        page = open_page(browser, app_server)
        names = offered(page)
        assert "none" in names and len(names) >= 12
        order = ["none", *[n for n in names if n != "none"]]
        pick(page, order)
        set_number(page, "#ps-max-new input[type=number]", 2)
        page.click("#ps-run")
        # every slot of the run is laid out, waiting, before the first result
        page.wait_for_function("(n) => document.querySelectorAll('#ps-cards .ps-card-title h3').length === n",
                               arg=len(order))
        wait_done(page, len(order))
        check_cards(page, order)
        boxes = [page.locator(f"#ps-card-{i}").bounding_box() for i in range(len(order))]
        widths = {round(b["width"]) for b in boxes}
        assert len(widths) == 1 and widths.pop() < 1400 / 3, f"a fixed grid of equal cards: {boxes[:3]}"
        assert len({round(b["y"]) for b in boxes[:4]}) == 1, "several cards to a row"
        rows = page.locator("#ps-table tbody tr").count()
        assert rows == len(order), f"one table row per strategy: {rows}"
        fits = page.eval_on_selector("#ps-table .ps-table-wrap", "e => e.scrollWidth <= e.clientWidth + 1")
        assert fits, "the table fits at 1400 px (no column cut)"
        if run == 0:
            page.screenshot(path=str(shots / "5-every-strategy.png"), full_page=True)
        page.close()


def test_refused_input_keeps_the_results_and_a_new_image_clears_them(app_server, browser, shots, one_timed_run):
    """An empty question (and eta 0) is refused beside its input and in the status line, with no error marks on the
    results, which stay; the next comparison runs; uploading a new image clears the old results."""
    page = open_page(browser, app_server)
    set_number(page, "#ps-max-new input[type=number]", 2)
    page.click("#ps-run")
    wait_done(page, 4)
    check_cards(page, ["none", "vtc-cls", "fastv", "vtw"])
    answers = page.inner_text("#ps-results")

    page.fill("#ps-question textarea", "")
    page.click("#ps-run")
    page.wait_for_function("() => document.querySelector('#ps-status').innerText.startsWith('Not run')")
    status = page.inner_text("#ps-status")
    assert "question is empty" in status and "previous comparison" in status, status
    assert "question is empty" in page.inner_text("#ps-question-msg"), "said beside the question box"
    assert not page.is_visible("#ps-settings-msg") and not page.is_visible("#ps-image-msg"), "and nowhere else"
    assert page.inner_text("#ps-results") == answers, "the earlier results stay, unmarked"
    assert page.locator(".error:visible").count() == 0, "no error marks anywhere"
    check_cards(page, ["none", "vtc-cls", "fastv", "vtw"])
    page.screenshot(path=str(shots / "6-refused-question.png"), full_page=True)

    # eta 0, one of VTW's settings: said under the settings
    page.fill("#ps-question textarea", app_server.examples[0]["question"])
    page.locator("#ps-params button.label-wrap").first.click()
    page.locator("#ps-params-vtw button.label-wrap").first.click()
    set_number(page, "#ps-eta input", 0)
    page.click("#ps-run")
    page.wait_for_function("() => document.querySelector('#ps-status').innerText.startsWith('Not run')")
    assert "eta=0" in page.inner_text("#ps-settings-msg")
    assert not page.is_visible("#ps-question-msg"), "the question's message went with the next request"
    assert page.inner_text("#ps-results") == answers

    set_number(page, "#ps-eta input", 0.003)
    page.click("#ps-run")
    wait_done(page, 4)
    assert not page.is_visible("#ps-settings-msg")

    # a new image: the old results go
    page.click("#ps-image button[aria-label='Remove Image']")
    page.set_input_files("#ps-image input[type=file]", app_server.examples[1]["image"])
    page.wait_for_function("() => document.querySelector('#ps-status').innerText.startsWith('New image')")
    for box in ("#ps-results", "#ps-inside", "#ps-card-0"):
        page.wait_for_selector(box, state="hidden")
    assert page.is_visible("#ps-placeholder")
    page.close()


def test_phone_first_screen_and_stacked_results(app_server, browser, shots, one_timed_run):
    """390x844: the first screen holds the image, the question and the Compare button; after a comparison the
    cards and plots stack within the screen's width (nothing wider than the page)."""
    page = open_page(browser, app_server, 390, 844)
    page.wait_for_selector("#ps-image img")
    page.screenshot(path=str(shots / "7-phone-first-screen.png"))
    for element in ("#ps-image img", "#ps-question textarea", "#ps-run"):
        box = page.locator(element).bounding_box()
        assert box and box["y"] >= 0 and box["y"] + box["height"] <= 844, f"{element} on the first screen: {box}"
    set_number(page, "#ps-max-new input[type=number]", 2)
    page.click("#ps-run")
    wait_done(page, 4)
    check_cards(page, ["none", "vtc-cls", "fastv", "vtw"])
    xs = {round(page.locator(f"#ps-card-{i}").bounding_box()["x"]) for i in range(4)}
    assert len(xs) == 1, "one card to a row"
    for plot in PLOTS:
        page.wait_for_selector(f"#{plot} .js-plotly-plot", state="visible")
        box = page.locator(f"#{plot}").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, f"{plot} within the screen: {box}"
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390, "nothing wider than the page"
    page.screenshot(path=str(shots / "8-phone-results.png"), full_page=True)
    page.close()
