"""The Teach and Lessons tabs on the families beyond LLaVA-1.5 (issue 27), with a family model as the app's default
(``make_demo(model=...)``, what ``MODEL_ID`` sets): a tiny Qwen2.5-VL checkpoint is the default, a tiny LLaVA-NeXT and
the embedded toy are on the allow-list. Served in-process; the JSON endpoints through gradio_client, the page's own
callbacks called as the page calls them.

Qwen2.5-VL's grid follows the image (an 80 x 64 picture: 8 x 10 merged tokens), so probing and painting use that
image's grid; LLaVA-NeXT packs its base image and crops into one 1 x N strip, so they are refused in words while the
budget film, the agreement and random over seeds (which need only token counts) run. The Compare tab's budget is a
percentage of each image's tokens on both (as ``/compare``'s ``keep``); the band (a shapes sweep) is refused, and a
lesson switches the Model menu to the embedded toy, saying so."""

import html
import re

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from app import teach as teach_ui
from benchmarks.serving import load_app_main
from pruning.compare import ScopePool
from pruning.model import DEFAULT_MODEL_DIR
from pruning.toy_families import build_family
from .conftest import serve_app

Q = "What is in the picture?"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("teach-families")
    return {"qwen": str(build_family(root / "qwen", "qwen2.5-vl", seed=1)),
            "next": str(build_family(root / "next", "llava-next", seed=1))}


@pytest.fixture(scope="module")
def served(dirs):
    with serve_app(dirs["qwen"], allowed=[dirs["next"], str(DEFAULT_MODEL_DIR)]) as (demo, url):
        yield demo, Client(url, verbose=False)


@pytest.fixture(scope="module")
def labels(dirs):
    pool = ScopePool(dirs["qwen"], [dirs["next"], str(DEFAULT_MODEL_DIR)])
    return {"qwen": pool.label(dirs["qwen"]), "next": pool.label(dirs["next"]), "toy": pool.embedded_label()}


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("teach-families-image") / "scene.png"
    Image.fromarray(np.random.RandomState(3).randint(0, 255, (64, 80, 3), dtype=np.uint8)).save(path)
    return str(path)


def call(client, name, **kwargs):
    if "image" in kwargs:
        kwargs["image"] = handle_file(kwargs["image"])
    return client.predict(api_name=f"/{name}", **kwargs)


def page_fn(demo, name: str):
    """A page callback by name (its qualified name holds the enclosing function for closures), with its event's
    outputs."""
    hits = [f for f in demo.fns.values() if name in getattr(f.fn, "__qualname__", "")]
    assert hits, name
    return hits[0]


# ---------------------------------------------------------------- the default model is a family model

def test_the_app_starts_with_qwen_as_default_and_compare_works(served, labels, picture):
    demo, client = served
    assert labels["toy"] == "embedded toy model"
    results = client.predict(image=handle_file(picture), question=Q, strategies=["random"], keep=25, max_new_tokens=2,
                             params={}, model=labels["qwen"], api_name="/compare")
    assert [r["strategy"] for r in results] == ["none", "random"]
    assert results[0]["grid"] == [8, 10] and results[1]["visual_tokens_kept"] == 20  # 25% of this image's 80
    # the Teach tab was laid out without a fixed grid: the film's budgets are this image's (empty box: halving)
    film_box = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "ps-film-budgets")
    assert film_box.value == "" and "this image's visual tokens" in film_box.label


def test_model_id_names_the_default_model(dirs, monkeypatch):
    """What the served app above is built with: ``MODEL_ID`` (or ``--model``) becomes ``make_demo``'s model."""
    main = load_app_main()
    monkeypatch.setenv("MODEL_ID", dirs["qwen"])
    assert main.parse_args([]).model == dirs["qwen"]
    monkeypatch.delenv("MODEL_ID")
    assert main.parse_args([]).model is None  # the embedded model


# ---------------------------------------------------------------- Qwen2.5-VL: the image's own grid

def test_probe_on_qwen_uses_the_images_grid(served, labels, picture):
    _, client = served
    p = call(client, "probe", image=picture, question=Q, row=7, col=9, strategies=["random"], keep=50,
             model=labels["qwen"])
    assert p["grid"] == [8, 10] and p["patch"] == 7 * 10 + 9
    assert p["vit_attention"] is None and p["cls_attention"] is None and "Qwen2.5-VL" in p["vit_note"]
    assert teach_ui.probe_attention_image({**p, "view": None}, 0) is None  # nothing drawn rather than a wrong map
    assert html.escape(p["vit_note"]) in teach_ui.fates_html(p)
    assert [f["strategy"] for f in p["fates"]] == ["none", "random"] and p["fates"][0]["state"] == "kept"
    for maps in p["llm_attention"].values():
        assert all(len(layer) == 80 for layer in maps)
    kept = call(client, "kept_set", image=picture, question=Q, strategy="random", keep=50, model=labels["qwen"])
    assert len(kept["kept_final"]) == 40  # 50% of 80
    assert (p["fates"][1]["state"] == "kept") == (p["patch"] in kept["kept_final"])
    with pytest.raises(Exception, match=r"row=8: expected 0\.\.7 \(this image's grid is 8x10 Qwen2\.5-VL tokens\)"):
        call(client, "probe", image=picture, question=Q, row=8, col=0, strategies=[], keep=50, model=labels["qwen"])


def test_handpick_on_qwen_keeps_exactly_the_patches_of_the_images_grid(served, labels, picture):
    _, client = served
    h = call(client, "handpick", image=picture, question=Q, patches="79, 0, 11", model=labels["qwen"])
    assert h["grid"] == [8, 10] and h["drawn"] is True
    none, manual = h["results"]
    assert manual["kept"] == [0, 11, 79] and manual["visual_tokens_kept"] == 3 and none["visual_tokens_kept"] == 80
    with pytest.raises(Exception, match=r"patches: 80 is outside this image's grid of 8 x 10 tokens \(patches 0\.\.79\)"):
        call(client, "handpick", image=picture, question=Q, patches="3, 80", model=labels["qwen"])


def test_film_agreement_and_seeds_on_qwen_count_this_images_tokens(served, labels, picture):
    _, client = served
    f = call(client, "budget_film", image=picture, question=Q, strategies=["random", "vtc-cls"], budgets="",
             model=labels["qwen"])
    assert f["budgets"] == [80, 40, 20, 10, 5, 2, 1] and f["n_patches"] == 80 and f["grid"] == [8, 10]
    assert [fr["visual_tokens_kept"] for fr in f["frames"]["random"]] == f["budgets"]
    assert f["frames"]["random"][0]["answer"] == f["none_answer"]  # all 80 tokens: none's answer
    with pytest.raises(Exception, match=r"budget 144 is outside 1\.\.80 \(this image's 80 visual tokens\)"):
        call(client, "budget_film", image=picture, question=Q, strategies=["random"], budgets="144, 10",
             model=labels["qwen"])
    a = call(client, "agreement", image=picture, question=Q, strategies=["random", "vtc-cls"], keep=25,
             model=labels["qwen"])
    assert a["grid"] == [8, 10] and a["drawn"] is True and len(a["counts"]) == 80
    assert sum(a["counts"]) == sum(len(s) for s in a["sets"].values()) == 40
    assert all(len(p["rows"]) == 8 and len(p["cols"]) == 10 for p in a["positions"].values())
    s = call(client, "random_seeds", image=picture, question=Q, keep=25, n=3, model=labels["qwen"])
    assert s["keep"] == 20 and s["n"] == 3 and all(len(k) == 20 for k in s["kept"]) and s["grid"] == [8, 10]
    with pytest.raises(Exception, match=r"strategy topk-sim does not run on Qwen2\.5-VL"):
        call(client, "agreement", image=picture, question=Q, strategies=["random", "topk-sim"], keep=25,
             model=labels["qwen"])


def test_the_band_and_the_lessons_are_refused_on_qwen_in_words(served, labels):
    _, client = served
    with pytest.raises(Exception, match=r"random's band is a sweep .* the sweep is not run on Qwen2\.5-VL"):
        call(client, "random_band", strategies=["vtc-cls"], budgets="20", n=5, seeds=2, model=labels["qwen"])
    with pytest.raises(Exception, match=r"the lessons are prepared on the embedded toy model.*Qwen2\.5-VL"):
        call(client, "lesson", lesson_id="cls-knows", model=labels["qwen"])


def test_export_on_qwen_is_one_page_without_the_toy_note(served, labels, picture):
    _, client = served
    path = call(client, "export", image=picture, question=Q, strategies=["random"], keep=25, model=labels["qwen"])
    text = open(path, encoding="utf-8").read()
    assert "<b>Budget:</b> 25% of the image&#x27;s visual tokens" in text
    assert teach_ui.TOY_NOTE[:40] not in text and text.count("alt='random overlay'") == 1


def test_the_page_draws_qwens_grid_over_its_picture(served, labels, picture):
    """The Teach tab's view refresh (image or model changed): the probe's picture and the painter get this image's
    8 x 10 grid (not a square default), and a click picks the cell under it."""
    demo, _ = served
    refresh = page_fn(demo, "refresh_views").fn
    probe_img, painter, grid, probe_msg, hand_msg = refresh(picture, Q, labels["qwen"], 3, 4, None)
    assert grid == [8, 10] and probe_msg == "" and hand_msg == ""
    assert probe_img.size[0] * 8 == probe_img.size[1] * 10  # the picture's 5:4, not a square
    assert "repeat(10, 1fr)" in painter["html_template"] and "repeat(8, 1fr)" in painter["html_template"]
    assert "of 80 " in painter["html_template"] and painter["value"] == ""
    again = refresh(picture, Q, labels["qwen"], 3, 4, [8, 10])[1]
    assert "html_template" not in again  # the same grid: the painter keeps its selection
    pick = page_fn(demo, "pick_patch").fn

    class Click:
        index = [probe_img.size[0] - 1, 0]  # the top right corner

    assert pick(probe_img, [8, 10], Click()) == (0, 9)
    using = page_fn(demo, "using_words").fn(picture, Q, ["random"], 25, [None, None])  # the Compare tab's state
    assert "budget **25% of the image's visual tokens**" in using
    assert "budget **36 of 144 visual tokens**" in page_fn(demo, "using_words").fn(picture, Q, [], 36, [144, [12, 12]])


# ---------------------------------------------------------------- LLaVA-NeXT: a packed strip

def test_probe_and_painting_are_refused_on_llava_next_in_words(served, labels, picture):
    demo, client = served
    refusal = r"needs a patch grid over the picture; LLaVA-NeXT packs its base image and crops .* one strip of \d+ tokens"
    with pytest.raises(Exception, match="probing a patch " + refusal):
        call(client, "probe", image=picture, question=Q, row=0, col=0, strategies=[], keep=50, model=labels["next"])
    with pytest.raises(Exception, match="choosing the patches by hand " + refusal):
        call(client, "handpick", image=picture, question=Q, patches="1, 2", model=labels["next"])
    probe_img, painter, grid, probe_msg, hand_msg = page_fn(demo, "refresh_views").fn(
        picture, Q, labels["next"], 0, 0, [8, 10])
    assert probe_img is None and grid is None and painter["value"] == ""
    assert re.search(refusal, probe_msg) and hand_msg == probe_msg and "pick the embedded model" in probe_msg
    assert "data-i" not in painter["html_template"] and "LLaVA-NeXT packs" in painter["html_template"]
    fill = page_fn(demo, "page_fill")
    out = fill.fn(picture, Q, "random", 50, labels["next"])
    assert re.search("filling the painter from a strategy's kept set " + refusal, out[fill.outputs[0]])


def test_film_agreement_and_seeds_run_on_llava_next_without_a_picture(served, labels, picture):
    demo, client = served
    f = call(client, "budget_film", image=picture, question=Q, strategies=["random"], budgets="", model=labels["next"])
    n = f["n_patches"]
    assert f["grid"] == [1, n] and f["drawn"] is False and f["budgets"][0] == n and "not drawn" in f["overlay_note"]
    strip = teach_ui.film_strip_html({**f, "view": np.zeros((32, 32, 3), np.uint8)})
    assert "<img" not in strip and "tokens in the last layer" in strip
    a = call(client, "agreement", image=picture, question=Q, strategies=["random", "vtc-cls"], keep=50,
             model=labels["next"])
    assert a["drawn"] is False and len(a["counts"]) == n and any("not a row and column" in x for x in a["notes"])
    fig = teach_ui.position_figure(a)
    assert "place in the sequence" in fig.layout.xaxis.title.text and len(fig.data) == 2
    agree = page_fn(demo, "page_agreement")
    out = agree.fn(picture, Q, ["random", "vtc-cls"], 50, labels["next"])
    counts_image = agree.outputs[3]
    assert out[agree.outputs[0]] == "" and out[counts_image] is None  # no picture to count over
    s = call(client, "random_seeds", image=picture, question=Q, keep=50, n=2, model=labels["next"])
    assert s["drawn"] is False and s["keep"] == round(n / 2)
    assert "<img" not in teach_ui.seeds_html({**s, "view": None})


def test_export_on_llava_next_draws_the_panels_not_one_grid(served, labels, picture):
    """The export on a strip model draws each card in panels (base | crops), as the Compare cards, never one grid over
    the picture, and counts the newline tokens in words."""
    _, client = served
    path = call(client, "export", image=picture, question=Q, strategies=["random"], keep=50, model=labels["next"])
    text = open(path, encoding="utf-8").read()
    assert "alt='random overlay'" in text and "(no overlay: this model's tokens are a packed strip" not in text
    assert "newline tokens kept" in text


# ---------------------------------------------------------------- lessons switch to the embedded toy

def test_a_lesson_picked_on_a_family_model_switches_to_the_embedded_toy(served, labels):
    demo, _ = served
    lesson = page_fn(demo, "page_lesson")
    out = lesson.fn(labels["qwen"])
    msg, model = lesson.outputs[0], lesson.outputs[-1]
    assert out[model] == labels["toy"]
    assert "switched from `qwen (local)` to `embedded toy model`" in out[msg]
    state = out[lesson.outputs[1]]
    assert state["grid"] == [12, 12] and state["results"][0]["strategy"] == "none"


def test_the_model_menu_sets_the_teach_layer_sliders_from_the_picked_model(served, labels):
    """The probe's and [CLS]'s ViT-layer sliders and the LLM-layer slider follow the model picked (the embedded toy
    has 6 ViT and 8 LLM layers, the tiny LLaVA-NeXT 4 and 4), so no layer beyond the model's depth can be asked for."""
    from pruning.compare import ScopePool

    demo, _ = served
    fn = page_fn(demo, "model_budgets")
    for label in (labels["toy"], labels["next"]):
        info = ScopePool(None, []).get().info() if label == labels["toy"] else None
        out = fn.fn(label)
        vit, cls, llm = out[2], out[3], out[4]
        if info is None:  # the tiny NeXT: 4 ViT layers (feature layer -2: index 2), 4 LLM layers
            assert (vit["maximum"], vit["value"], cls["maximum"], llm["maximum"], llm["value"]) == (3, 2, 3, 3, 2)
        else:
            assert (vit["maximum"], cls["maximum"], llm["maximum"]) == (info["vision_layers"] - 1,
                                                                         info["vision_layers"] - 1,
                                                                         info["llm_layers"] - 1) == (5, 5, 7)
            assert vit["value"] == cls["value"] == info["feature_layer"]
        assert vit["label"] == f"ViT layer (the LLM reads layer {vit['value']})"
