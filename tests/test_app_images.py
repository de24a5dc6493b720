"""A new image and a Compare clicked at once (found in a real browser, issue 27's last check).

The Compare tab's image box sends its change event several times for one upload, the last ones after a Compare
clicked at once has started. When that event cancelled the comparison (Gradio's ``cancels``), the comparison asked
for the new image stopped after its first card: the status stayed at "1 of 4 done; running vtc-cls..." and the
other cards never came (every time on a LLaVA-OneVision model picked in the Model menu, now and then on the
embedded model). Now a change clears the results only when they are of another image (``ui.PageImages``), and a
comparison waiting or running for the old image is cancelled by the events that change the image once each.

Asserted here: ``PageImages`` itself; in headless Chromium, on a tiny LLaVA-OneVision picked in the Model menu,
an upload followed at once by Compare finishes with every card (drawn in panels), and the results stay once the box
has settled (the embedded model takes the same path); on the embedded model, a new image uploaded while a
comparison runs stops it and clears the page, and nothing of the old comparison comes back.
"""

import time

import pytest

from app.ui import PageImages
from .conftest import serve_app
from .test_app_browser import CARD_COMPLETE, TIMEOUT_MS, check_cards, open_page, pick, wait_done

SETTLE_S = 3  # the box's repeated change events come within this after an upload, on an idle machine


def test_page_images_clears_only_for_another_image():
    pages = PageImages()
    first = pages.changed("s", "/up/a.png")
    assert first is not None and pages.clearing("s", first), "a first image: the page is cleared for it"
    assert pages.changed("s", "/up/a.png") is None, "the same image again (a repeated change event): nothing"
    pages.started("s", "/up/a.png")
    assert not pages.clearing("s", first), "a comparison started since the change: it keeps the page"
    assert pages.changed("s", "/up/a.png") is None, "a late change to the comparison's own image: nothing"
    second = pages.changed("s", "/up/b.png")
    assert second is not None and second != first and pages.clearing("s", second), "another image: cleared"
    third = pages.changed("s", None)
    assert not pages.clearing("s", second) and pages.clearing("s", third), "only the latest change clears"
    assert not pages.clearing("s", None) and not pages.clearing("t", third), "no number, or another session"


def test_page_images_a_comparison_clicked_before_the_change_arrives():
    """Upload b, Compare at once: the comparison starts before b's first change event reaches the server."""
    pages = PageImages()
    pages.started("s", "/up/a.png")
    pages.started("s", "/up/b.png")
    assert pages.changed("s", "/up/b.png") is None, "b's change, late: the page is the comparison's, it stays"
    pages.started("t", "/up/a.png")
    change = pages.changed("t", "/up/b.png")
    pages.started("t", "/up/b.png")  # b's comparison starts between the change and its clearing
    assert not pages.clearing("t", change)


def test_page_images_remembers_at_most_cap_sessions():
    pages = PageImages(cap=3)
    for s in "abcd":
        pages.started(s, f"/up/{s}.png")
    assert pages.changed("a", "/up/a.png") is not None, "the oldest session is forgotten past the cap: it clears"
    assert all(pages.changed(s, f"/up/{s}.png") is None for s in "cd")


def upload(page, path: str, name: str) -> None:
    """Remove the image shown, upload ``path`` and wait until the box shows it (``name`` is in its URL)."""
    page.click("#ps-image button[aria-label='Remove Image']")
    page.set_input_files("#ps-image input[type=file]", path)
    page.wait_for_function("(n) => { const i = document.querySelector('#ps-image img');"
                           " return i && i.src.includes(n); }", arg=name)


def test_a_new_image_during_a_comparison_stops_it(app_server, browser):
    page = open_page(browser, app_server)
    # every strategy, each timed with the app's own repeats: long enough to upload in the middle of it
    page.click("#ps-strategies .remove-all")
    page.click("#ps-strategies input[role=combobox]")
    names = page.eval_on_selector_all("#ps-strategies li[role=option]",
                                      "els => els.map(e => e.getAttribute('aria-label'))")
    page.keyboard.press("Escape")
    pick(page, names)
    page.click("#ps-run")
    page.wait_for_function(CARD_COMPLETE, arg=1, timeout=TIMEOUT_MS)  # the second card is in: it runs
    example = app_server.examples[2]
    upload(page, example["image"], example["image"].rsplit("/", 1)[-1].split(".")[0])
    page.wait_for_function("() => document.querySelector('#ps-status').innerText.startsWith('New image')")
    page.wait_for_selector("#ps-card-0", state="hidden")
    time.sleep(SETTLE_S)  # a comparison that went on would send its next card and status within this
    status = page.inner_text("#ps-status")  # (Gradio may show a timer over it while any event with it is pending)
    assert "New image" in status and "done" not in status and "Running" not in status, status
    assert not page.is_visible("#ps-card-0") and not page.is_visible("#ps-results")
    page.close()


@pytest.fixture(scope="module")
def onevision_app(family_dirs):
    from pruning.compare import ScopePool

    path = str(family_dirs["llava-onevision"])
    with serve_app(allowed=[path]) as (_, url):
        yield {"url": url, "label": ScopePool(None, [path]).label(path)}


def test_compare_on_onevision_picked_in_the_menu_finishes(onevision_app, browser, shots, app_server,
                                                           one_timed_run):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(onevision_app["url"])
    page.wait_for_selector("#ps-run", state="visible")
    page.click("#ps-model input")
    page.click(f"#ps-model li[role=option][aria-label='{onevision_app['label']}']")
    page.wait_for_function("() => document.querySelector('#ps-model-msg').innerText.includes('LLaVA-OneVision')")
    # the toy's warning above the menu is the embedded model's: the line names the model picked instead
    page.wait_for_function("(l) => document.querySelector('#ps-banner').innerText.includes('Model: ' + l)",
                           arg=onevision_app["label"])
    assert "toy" not in page.inner_text("#ps-banner")
    example = app_server.examples[0]
    upload(page, example["image"], example["image"].rsplit("/", 1)[-1].split(".")[0])
    page.click("#ps-run")
    wait_done(page, 4)
    check_cards(page, ["none", "vtc-cls", "fastv", "vtw"])
    status = page.inner_text("#ps-status")
    assert "visual tokens, budget 50% of them" in status, status
    # each card's overlay is the base image and the crops side by side (wider than tall)
    for i in range(4):
        size = page.evaluate("(i) => { const m = document.querySelector('#ps-card-' + i + ' img');"
                             " return [m.naturalWidth, m.naturalHeight]; }", i)
        assert size[0] > 1.5 * size[1], (i, size)
    time.sleep(SETTLE_S)
    assert page.inner_text("#ps-status") == status, "a late change event cleared the results"
    page.screenshot(path=str(shots / "images-onevision.png"))
    page.close()
