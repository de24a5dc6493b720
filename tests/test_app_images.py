"""A new image and a Compare clicked at once (found in a real browser, issue 27's last check).

The Compare tab's image box sends its change event several times for one upload, the last ones after a Compare
clicked at once has started. When that event cancelled the comparison (Gradio's ``cancels``), the comparison asked
for the new image stopped after its first card: the status stayed at "1 of 4 done; running vtc-cls..." and the
other cards never came (every time on a LLaVA-OneVision model picked in the Model menu, now and then on the
embedded model). Now a change clears the results only when they are of another image (``ui.PageImages``), and a
comparison stops itself once the page shows another image.

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
    assert pages.changed("s", "/up/a.png"), "nothing shown yet: a change clears (there is nothing to keep)"
    token = pages.started("s", "/up/a.png")
    assert pages.current("s", token)
    assert not pages.changed("s", "/up/a.png"), "the same image again: the results are of it, they stay"
    assert pages.current("s", token), "and the comparison on it goes on"
    assert pages.changed("s", "/up/b.png"), "another image: the results go"
    assert not pages.current("s", token), "and the comparison on the old image stops"
    assert pages.changed("s", "/up/b.png"), "forgotten: nothing shown is of b until a comparison on it starts"


def test_page_images_sessions_are_apart_and_a_later_comparison_wins():
    pages = PageImages()
    first = pages.started("s", "/up/a.png")
    other = pages.started("t", "/up/a.png")
    assert pages.changed("t", None), "a removal in one session"
    assert pages.current("s", first) and not pages.current("t", other), "stops only that session's comparison"
    second = pages.started("s", "/up/a.png")
    assert pages.current("s", second) and not pages.current("s", first)


def test_page_images_remembers_at_most_cap_sessions():
    pages = PageImages(cap=3)
    tokens = {s: pages.started(s, f"/up/{s}.png") for s in "abcd"}
    assert not pages.current("a", tokens["a"]), "the oldest session is forgotten past the cap"
    assert all(pages.current(s, tokens[s]) for s in "bcd")
    assert pages.changed("a", "/up/a.png"), "a forgotten session's page is cleared on its next change"


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
    assert page.inner_text("#ps-status").startswith("New image"), page.inner_text("#ps-status")
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
