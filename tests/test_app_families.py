"""The app with a model of a family whose token grid is per image (issue 27): a tiny Qwen2.5-VL checkpoint on the
allow-list (``PRUNESCOPE_MODELS``), picked by ``/compare``'s ``model`` argument through gradio_client, against the
app served in-process beside the embedded default. The budget slider is a percentage of each image's tokens there
(``Scope.info()["budget"]``), so ``keep`` = 25 keeps a quarter of this image's tokens."""

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from app import ui
from benchmarks.serving import free_port, load_app_main
from pruning.model import DEFAULT_MODEL_DIR


@pytest.fixture(scope="module")
def qwen_dir(family_dirs):
    return str(family_dirs["qwen2.5-vl"])


@pytest.fixture(scope="module")
def next_dir(family_dirs):
    return str(family_dirs["llava-next"])


@pytest.fixture(scope="module")
def served(qwen_dir, next_dir):
    main = load_app_main()
    demo = main.make_demo(threads=torch.get_num_threads(), warm_up=False, allowed=[qwen_dir, next_dir])
    port = free_port()
    main.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    yield demo, Client(f"http://127.0.0.1:{port}/", verbose=False)
    demo.close()


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
    slider, state, words = switch(qwen_dir, 72)  # the page's own callback, from the embedded model's 72 of 144
    assert (slider["minimum"], slider["maximum"], slider["value"]) == (1, 100, 50) and "%" in slider["label"]
    assert state == [None, None] and "Qwen2.5-VL" in words and "The Sweep tab" in words
    slider, state, words = switch(str(DEFAULT_MODEL_DIR), 72)  # back to the embedded model: a count again
    assert (slider["maximum"], slider["value"]) == (144, 72) and state == [144, [12, 12]]
    assert words.startswith("Loaded") and "12x12 patches" in words
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


def test_the_compare_button_on_llava_next_says_the_overlay_is_not_drawn(served, next_dir, picture):
    """On LLaVA-NeXT (a 1 x N strip of several crops) no card picture is drawn, and the note under the view says
    why, in the library's words."""
    _, client = served
    messages = stream(client, picture, ["random"], 50, next_dir)
    status = messages[-1][0]
    assert status.startswith("Done: 2 strategies on this image's"), status
    view_note = "".join(v for v in sent(messages, 5) if v)
    assert "The kept patches are not drawn for LLaVA-NeXT" in view_note and "base image" in view_note
    for card in range(2):
        assert all(v is None for v in sent(messages, 10 + 3 * card + 1)), f"card {card}: no picture"
        assert any(v for v in sent(messages, 10 + 3 * card + 2)), f"card {card}: its details (the counts)"
