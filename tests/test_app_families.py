"""The app with a model of a family whose token grid is per image (issue 27): a tiny Qwen2.5-VL checkpoint on the
allow-list (``PRUNESCOPE_MODELS``), picked by ``/compare``'s ``model`` argument through gradio_client, against the
app served in-process beside the embedded default. The budget slider is a percentage of each image's tokens there
(``Scope.info()["budget"]``), so ``keep`` = 25 keeps a quarter of this image's tokens."""

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from app import overlays, ui
from pruning.model import DEFAULT_MODEL_DIR
from .conftest import serve_app


@pytest.fixture(scope="module")
def qwen_dir(family_dirs):
    return str(family_dirs["qwen2.5-vl"])


@pytest.fixture(scope="module")
def next_dir(family_dirs):
    return str(family_dirs["llava-next"])


@pytest.fixture(scope="module")
def served(qwen_dir, next_dir):
    with serve_app(allowed=[qwen_dir, next_dir]) as (demo, url):
        yield demo, Client(url, verbose=False)


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("app-qwen-image") / "scene.png"
    Image.fromarray(np.random.RandomState(3).randint(0, 255, (64, 80, 3), dtype=np.uint8)).save(path)
    return str(path)


def menu(model_dir: str) -> str:
    """The Model menu's value for an allow-listed directory: its label, never the host's path."""
    from pruning.compare import ScopePool

    return ScopePool(None, [model_dir]).label(model_dir)


def compare(client, image, strategies, keep, model, **extra):
    model = menu(model)
    return client.predict(image=handle_file(image), question="What is in the picture?", strategies=strategies,
                          keep=keep, max_new_tokens=2, params={}, model=model, api_name="/compare", **extra)


def test_compare_on_the_allow_listed_qwen_model(served, qwen_dir, picture):
    _, client = served
    results = compare(client, picture, ["random", "vtc-cls"], 25, qwen_dir)
    assert [r["strategy"] for r in results] == ["none", "random", "vtc-cls"]
    n = results[0]["visual_tokens"]
    assert n == 80 and results[0]["grid"] == [8, 10]  # an 80 x 64 image: 10 x 8 merged tokens of 8 px
    assert results[0]["visual_tokens_kept"] == n
    for r in results:
        assert isinstance(r["answer"], str) and r["visual_tokens"] == n
    for r in results[1:]:
        assert r["visual_tokens_kept"] == 20 == len(r["kept"]), r["strategy"]  # 25% of this image's 80 tokens
        assert "keep_ratio=0.25: 20 of this image's 80 visual tokens" in r["notes"]
    assert any("substitute" in note for note in results[2]["notes"])


def test_a_strategy_the_family_refuses_is_refused_in_words(served, qwen_dir, picture):
    _, client = served
    with pytest.raises(Exception, match=r"topk-sim does not run on Qwen2.5-VL.*\[CLS\]"):
        compare(client, picture, ["topk-sim"], 25, qwen_dir)
    assert len(compare(client, picture, ["random"], 50, qwen_dir)) == 2  # the app answers the next request


def test_the_sweep_is_refused_for_the_qwen_model(served, qwen_dir):
    _, client = served
    with pytest.raises(Exception, match="the sweep is not run on Qwen2.5-VL"):
        client.predict(chosen=["random"], budgets_text="4", n=5, types=["count"], model_name=menu(qwen_dir),
                       api_name="/sweep")


def test_switching_the_model_menu_sets_the_slider_from_info(served, qwen_dir):
    """What the Model menu's change does: the slider becomes 1..100 % of the image's tokens, the words under it say
    so, and the line under the menu names what is not shown (the sweep) for this model."""
    from pruning.compare import ScopePool

    demo, _ = served
    switch = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "switch_model")
    # the page's own callback, given the menu's label, from the embedded model's 72 of 144
    slider, state, words, banner = switch(menu(qwen_dir), 72)
    assert (slider["minimum"], slider["maximum"], slider["value"]) == (1, 100, 50) and "%" in slider["label"]
    assert state == [None, None] and "Qwen2.5-VL" in words and "The Sweep tab" in words
    # the line above the menu follows it: no toy warning over another model, its label (never the host's path)
    assert "toy" not in banner and f"<code>{menu(qwen_dir)}</code>" in banner and qwen_dir not in banner
    slider, state, words, banner = switch(menu(str(DEFAULT_MODEL_DIR)), 72)  # back to the embedded model
    assert (slider["maximum"], slider["value"]) == (144, 72) and state == [144, [12, 12]]
    assert words.startswith("Loaded") and "12x12 patches" in words
    assert banner == ui.TOY_BANNER
    pool = ScopePool(None, [qwen_dir])
    info = pool.get(qwen_dir).info()
    settings = ui.slider_settings(info["budget"])
    assert (settings["minimum"], settings["maximum"], settings["value"]) == (1, 100, 50)
    assert "%" in settings["label"]
    assert ui.library_budget(25, info["budget"]) == {"keep_ratio": 0.25}
    assert ui.library_budget(36.0, pool.get().info()["budget"]) == {"keep": 36}
    assert "**25%** of each image's visual tokens" in ui.budget_words(25, None, None)
    words = ui.model_words(qwen_dir, info)
    assert "Qwen2.5-VL" in words and "share of this image's own visual tokens" in words
    assert "The Sweep tab: the sweep is not run on Qwen2.5-VL" in words


def stream(client, image, strategies, keep, model) -> list:
    """Every message ``/compare_stream`` sent (each a full tuple of the page's outputs; an output a message left as it
    was is an update dict)."""
    model = menu(model)
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/compare_stream"]
    unset = {p["parameter_name"]: None for p in api["parameters"] if not p["parameter_has_default"]}
    job = client.submit(image_path=handle_file(image), question_text="What is in the picture?", chosen=strategies,
                        keep_value=keep, max_new_tokens=2, model_name=model, api_name="/compare_stream", **unset)
    job.result()
    return job.outputs()


def sent(messages: list, index: int) -> list:
    """The values a message set at output ``index`` (updates that left it as it was skipped)."""
    return [m[index] for m in messages if not (isinstance(m[index], dict) and m[index].get("__type__") == "update")]


def test_the_compare_button_on_qwen_draws_the_overlay(served, qwen_dir, picture):
    """What the Compare button shows (``/compare_stream``, the page's own path) on the Qwen2.5-VL model: the status
    names this image's tokens and the percentage, and every card has its picture (the grid is the picture's)."""
    _, client = served
    messages = stream(client, picture, ["random", "vtc-cls"], 25, qwen_dir)
    status = messages[-1][0]
    assert status.startswith("Done: 3 strategies on this image's 80 visual tokens, budget 25% of them"), status
    view_note = "".join(v for v in sent(messages, 5) if v)
    assert "smart_resize" in view_note and "not drawn" not in view_note
    for card in range(3):  # (title, picture, details) per card, after the 10 outputs before them (State values are not sent)
        assert any(v is not None for v in sent(messages, 10 + 3 * card + 1)), f"card {card} has a picture"


def cell_middle(layout: dict, pictures: list, view: int, index: int) -> tuple[slice, slice]:
    """The middle half (rows, columns) of packed row ``index``'s cell (in ``view``) in ``overlays.overlay_views``'
    picture."""
    px0, py0, _, py1 = overlays.panel_boxes(pictures)[view]
    v = layout["views"][view]
    f = (py1 - py0) / pictures[view].shape[0]
    x0, y0, x1, y1 = (round(b * f) for b in v["box"])
    cw, ch = (x1 - x0) / v["cols"], (y1 - y0) / v["rows"]
    left, top = px0 + x0 + layout["col"][index] * cw, py0 + y0 + layout["row"][index] * ch
    return (slice(int(top + ch / 4), int(top + 3 * ch / 4) + 1), slice(int(left + cw / 4), int(left + 3 * cw / 4) + 1))


def check_panels(image, layout: dict, pictures: list, result: dict, tolerance: float = 1.0) -> None:
    """``image`` is the overlay of ``result``: one panel per view, of ``overlay_views``' size; in every view a kept
    cell shows the picture as it is and a cell dropped before the LLM is masked dark, as on LLaVA-1.5 (compared over
    the middle of the cell: its mean colour within ``tolerance`` per channel, as the page's images are lossy)."""
    plain = np.asarray(overlays.overlay_views(pictures, layout, None).convert("RGB"), float)
    drawn = np.asarray(image.convert("RGB"), float)
    assert drawn.shape == plain.shape, (drawn.shape, plain.shape)
    boxes = overlays.panel_boxes(pictures)
    assert len(boxes) == len(layout["views"]) == 2 and drawn.shape[1] == boxes[-1][2]
    kept, final = set(result["kept"]), set(result["kept_final"])
    mask = np.array(overlays.COLOURS["before"], float)
    for view in range(len(layout["views"])):
        cells = [i for i in range(layout["n"]) if layout["view"][i] == view and layout["col"][i] >= 0]
        kept_cell = next(i for i in cells if i in final)
        dropped_cell = next(i for i in cells if i not in kept)
        cell = cell_middle(layout, pictures, view, kept_cell)
        colour = drawn[cell].mean((0, 1))
        assert np.abs(colour - plain[cell].mean((0, 1))).max() <= tolerance, ("kept", view, kept_cell)
        cell = cell_middle(layout, pictures, view, dropped_cell)
        masked = 0.15 * plain[cell].mean((0, 1)) + 0.85 * mask
        assert np.abs(drawn[cell].mean((0, 1)) - masked).max() <= tolerance, ("dropped", view, dropped_cell)
        assert np.abs(plain[cell].mean((0, 1)) - masked).max() > 4 * tolerance, "a cell that masking changes"


@pytest.fixture(scope="module")
def panel_runs(family_dirs, picture):
    """One comparison (random at half the tokens) per family drawn in panels, by the library's own ``Scope``."""
    from pruning.compare import Scope

    runs = {}
    for family in ("llava-onevision", "internvl"):
        scope = Scope(str(family_dirs[family]), speed_report=None)
        runs[family] = (scope, list(scope.compare_stream(picture, "What is in the picture?", ["random"],
                                                         keep_ratio=0.5, repeats=1, warmup=0, max_new_tokens=1,
                                                         inspect=False)))
    return runs


@pytest.mark.parametrize("family", ["llava-onevision", "internvl"])
def test_the_card_overlay_draws_each_view_in_its_panel(panel_runs, family):
    """``overlays.overlay_views`` on the library's plain results: two panels (base | crops, tiles | thumbnail), kept
    cells unmasked and dropped cells masked in each; newline tokens counted in words (OneVision), none on InternVL."""
    events = panel_runs[family][1]
    view, none, random = events[0], events[1]["result"], events[2]["result"]
    layout, pictures = view["layout"], view["views"]
    image = overlays.overlay_views(pictures, layout, random)
    check_panels(image, layout, pictures, random)
    assert np.array_equal(np.asarray(overlays.overlay_views(pictures, layout, none)),
                          np.asarray(overlays.overlay_views(pictures, layout, None)))  # none keeps every cell
    words = overlays.newline_words(layout, random)
    if family == "internvl":
        assert words is None and layout["newline"] == []
    else:
        k = len(set(layout["newline"]) & set(random["kept_final"]))
        assert words.startswith(f"{k} of {len(layout['newline'])} newline tokens kept")


def test_the_compare_button_on_llava_next_draws_base_and_crops(served, next_dir, picture):
    """On LLaVA-NeXT (a 1 x N strip: the base image, the crops' grid, newline tokens) every card has its picture: the
    base image and the crops side by side, the random card's kept cells unmasked and its dropped cells masked (the
    kept set is the library's, same request); the card says how many newline tokens were kept, and the view note
    says the crops are shown stitched."""
    from pruning.compare import ScopePool

    _, client = served
    messages = stream(client, picture, ["random"], 50, next_dir)
    status = messages[-1][0]
    assert status.startswith("Done: 2 strategies on this image's"), status
    view_note = "".join(v for v in sent(messages, 5) if v)
    assert "not drawn" not in view_note and "base image" in view_note and "stitched" in view_note
    events = list(ScopePool(None, [next_dir]).get(next_dir).compare_stream(
        picture, "What is in the picture?", ["random"], keep_ratio=0.5, repeats=1, warmup=0, max_new_tokens=2,
        inspect=False))
    layout, pictures = events[0]["layout"], events[0]["views"]
    for card in range(2):
        images = [v for v in sent(messages, 10 + 3 * card + 1) if v is not None]
        assert images, f"card {card} has a picture"
        details = "".join(v for v in sent(messages, 10 + 3 * card + 2) if v)
        assert "newline tokens kept" in details, details
        path = images[-1]["path"] if isinstance(images[-1], dict) else images[-1]
        drawn = Image.open(path)
        if card == 1:  # the random card: lossy web encoding, so a tolerance
            check_panels(drawn, layout, pictures, events[2]["result"], tolerance=10)
        else:
            assert drawn.size == overlays.overlay_views(pictures, layout, None).size


def test_the_cls_heatmap_uses_the_comparisons_grid():
    """``_inspect_updates`` draws the [CLS] heatmap on the grid it is given (the picked model's, from the comparison's
    view event), never on ``info["grid"]``: here a made-up 2 x 72 grid stands in for another model's."""
    import json

    from pruning.compare import ScopePool

    scope = ScopePool(None).get()  # the embedded LLaVA-1.5 toy: 12 x 12 patches with [CLS] attention
    image = np.random.RandomState(5).randint(0, 255, (96, 96, 3), dtype=np.uint8)
    events = list(scope.compare_stream(image, "How many objects are there?", ["random"], keep=36, repeats=1,
                                       warmup=0, max_new_tokens=1))
    view, results, inspect = events[0], [e["result"] for e in events[1:-1]], events[-1]
    assert view["grid"] == [12, 12] and inspect["cls_attention"] is not None
    info = {**scope.info(), "grid": [2, 72]}
    outputs = [f"output {i}" for i in range(9)]  # the plots and boxes it fills, by name
    values = ui._inspect_updates(inspect, results, info, *outputs, grid=view["grid"])
    heat = json.loads(values["output 3"].plot)["data"][0]["z"]
    assert (len(heat), len(heat[0])) == (12, 12)


def test_the_export_draws_the_families_cards_in_panels(panel_runs, picture):
    """The comparison's HTML export (the Compare tab's save button): on LLaVA-OneVision its cards are the panels the
    Compare cards show (``Teacher.view`` gives the layout and pictures), with the newline words."""
    import base64
    import io
    import re

    from app import teach

    scope, events = panel_runs["llava-onevision"]
    seen = scope.teach.view(picture)
    assert seen["grid_on_view"] is False and seen["layout"] == events[0]["layout"]
    results = [e["result"] for e in events[1:]]
    text = teach.export_html({"question": "What is in the picture?", "keep": 50, "model": "toy"}, seen["view"], results,
                             panels=(seen["layout"], seen["views"]))
    cards = re.findall(r"<img src='data:image/png;base64,([^']+)' alt='(\w+) overlay'", text)
    assert [name for _, name in cards] == ["none", "random"]
    drawn = Image.open(io.BytesIO(base64.b64decode(cards[1][0])))
    expected = overlays.overlay_views(seen["views"], seen["layout"], results[1], 192)
    assert np.array_equal(np.asarray(drawn.convert("RGB")), np.asarray(expected.convert("RGB")))
    assert "newline tokens kept" in text
