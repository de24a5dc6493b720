"""The app's JSON API through gradio_client, against the app served in-process (``app_server`` in conftest).

Asserted: ``/compare`` returns one dict per strategy, ``none`` first, with every field of the documented schema,
typed and mutually consistent (counts, kept sets, per-layer token counts, timings, trace shares, merge groups);
every strategy the dropdown offers answers; bad requests raise an error that names the problem and the app
answers the next request; the app's answers and kept patches equal ``Scope.compare`` called directly.
"""

import math

import pytest
from gradio_client import Client, handle_file

from app import ui
from pruning.compare import Scope
from pruning.strategies import available

KEEP = 36
THREE = ["vtc-cls", "fastv", "tome"]
FIELDS = {"answer", "strategy", "params", "visual_tokens", "visual_tokens_kept", "tokens_per_layer",
          "image_tokens_per_layer", "kept", "kept_final", "grid", "timings", "tflops", "kv_cache_bytes",
          "kv_cache_bytes_per_layer", "peak_memory_bytes", "device", "trace", "kept_vit", "merge_groups", "notes",
          "vit_tokens_per_layer", "speedup", "speedup_predicted", "efficiency", "same_as_none"}


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server.url, verbose=False)


@pytest.fixture(scope="module")
def example(app_server):
    """The count scene (every object must survive pruning) and its question, from assets/examples/examples.json."""
    return next(e for e in app_server.examples if "count" in e["image"])


@pytest.fixture(scope="module")
def three(client, example):
    return compare(client, example["image"], example["question"], THREE)


def compare(client, image, question, strategies, keep=KEEP, max_new_tokens=8, params=None, **model):
    return client.predict(image=handle_file(image), question=question, strategies=strategies, keep=keep,
                          max_new_tokens=max_new_tokens, params=params or {}, api_name="/compare", **model)


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_result(r: dict, keep: int):
    """Every field of one per-strategy dict: types and the counts' consistency."""
    name = r["strategy"]
    assert set(r) >= FIELDS, f"{name}: missing {sorted(FIELDS - set(r))}"
    assert isinstance(r["answer"], str) and isinstance(name, str) and isinstance(r["device"], str)
    assert isinstance(r["params"], dict) and r["params"]["stage"] in ("before", "llm")
    assert r["grid"] == [12, 12]
    n = r["visual_tokens"]
    assert n == 144

    kept, final = r["kept"], r["kept_final"]
    assert all(is_int(i) and 0 <= i < n for i in kept + final), name
    assert kept == sorted(set(kept)) and final == sorted(set(final)), f"{name}: kept sets are sorted and unique"
    assert len(kept) == r["visual_tokens_kept"], name
    assert set(final) <= set(kept), f"{name}: kept_final is a subset of kept"
    if r["params"]["stage"] == "before" and name != "none":
        assert len(kept) <= keep, f"{name} prunes before the LLM: at most keep={keep} tokens enter it"

    layers = r["image_tokens_per_layer"]
    n_layers = len(layers)
    assert n_layers > 0 and all(is_int(x) for x in layers)
    assert all(a >= b for a, b in zip(layers, layers[1:])), f"{name}: image tokens per layer never grow: {layers}"
    assert layers[0] == len(kept) and layers[-1] == len(final), name
    tokens = r["tokens_per_layer"]
    assert len(tokens) == n_layers and all(t - i == tokens[0] - layers[0] for t, i in zip(tokens, layers)), \
        f"{name}: the text rows are the same in every layer"
    assert len(r["kv_cache_bytes_per_layer"]) == n_layers and all(is_int(b) and b > 0
                                                                   for b in r["kv_cache_bytes_per_layer"])
    assert r["kv_cache_bytes"] == sum(r["kv_cache_bytes_per_layer"])
    assert r["peak_memory_bytes"] is None or is_int(r["peak_memory_bytes"])

    t = r["timings"]
    assert set(t) == {"vision_ms", "prefill_ms", "decode_ms_per_token", "total_ms"}
    assert all(is_number(v) and v > 0 for v in t.values()), f"{name}: timings {t}"
    assert set(r["tflops"]) == {"vision", "prefill", "decode_per_token", "total"}
    assert all(is_number(v) and v > 0 for v in r["tflops"].values()), name
    for key in ("speedup", "speedup_predicted", "efficiency"):
        assert is_number(r[key]) and r[key] > 0, f"{name}: {key}"
    assert isinstance(r["same_as_none"], bool)
    assert isinstance(r["notes"], list) and all(isinstance(x, str) for x in r["notes"])
    assert all(is_int(x) for x in r["vit_tokens_per_layer"])
    assert r["kept_vit"] is None or (all(is_int(i) and 0 <= i < n for i in r["kept_vit"])
                                     and set(kept) <= set(r["kept_vit"]))

    groups = r["merge_groups"]
    assert groups is None or (len(groups) == n and all(is_int(g) and -1 <= g < len(kept) for g in groups)), \
        f"{name}: merge_groups is None or one entry in -1..{len(kept) - 1} per patch"

    trace = r["trace"]
    shares = trace["attention_share"]
    assert len(shares) == n_layers, f"{name}: one attention share per LLM layer"
    for layer in shares:
        assert set(layer) == set(trace["segments"]) and all(is_number(v) and v >= 0 for v in layer.values())
        assert sum(layer.values()) == pytest.approx(1, abs=1e-3), f"{name}: shares sum to 1"


def test_compare_three_strategies(three):
    assert [r["strategy"] for r in three] == ["none", *THREE], "none always runs first"
    for r in three:
        check_result(r, KEEP)
    none, vtc, fastv, tome = three
    assert none["speedup"] == 1 and none["speedup_predicted"] == 1 and none["same_as_none"] is True
    assert none["visual_tokens_kept"] == 144 and none["image_tokens_per_layer"][-1] == 144 and none["answer"]
    assert none["params"]["keep"] is None
    assert vtc["visual_tokens_kept"] == KEEP and vtc["params"]["keep"] == KEEP and vtc["params"]["stage"] == "before"
    assert tome["visual_tokens_kept"] == KEEP
    assert fastv["params"]["stage"] == "llm" and fastv["visual_tokens_kept"] == 144
    assert fastv["image_tokens_per_layer"][-1] == KEEP, "fastv drops to the budget inside the LLM"
    for r in three[1:]:
        assert r["same_as_none"] == (r["answer"].strip().lower() == none["answer"].strip().lower())
        assert r["tflops"]["prefill"] < none["tflops"]["prefill"], f"{r['strategy']} prunes: fewer TFLOPs"


def test_every_strategy_answers(client, example):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/compare"]
    offered = next(p for p in api["parameters"] if p["parameter_name"] == "strategies")["type"]["items"]["enum"]
    assert sorted(offered) == available(), "the dropdown offers every registered strategy"
    out = compare(client, example["image"], example["question"], offered, max_new_tokens=2)
    assert [r["strategy"] for r in out] == ["none", *[s for s in offered if s != "none"]]
    for r in out:
        assert isinstance(r["answer"], str) and r["answer"].strip(), f"{r['strategy']} gave no answer"
        check_result(r, KEEP)


@pytest.mark.parametrize("question, strategies, keep, params, model, words", [
    ("  ", ["fastv"], KEEP, {}, {}, ["question", "empty"]),
    (None, ["fastv"], KEEP, {"bogus": {"keep": 3}}, {}, ["unknown", "bogus"]),
    (None, ["bogus"], KEEP, {}, {}, ["bogus", "choices"]),
    (None, ["fastv"], 0, {}, {}, ["0", "minimum"]),
    (None, ["fastv"], KEEP, {"fastv": {"nope": 1}}, {}, ["nope"]),
    (None, ["fastv"], KEEP, {}, {"model": "/no/such/model"}, ["/no/such/model"]),
], ids=["empty-question", "params-of-unknown-strategy", "unknown-strategy", "keep-0", "unknown-parameter",
        "model-not-allowed"])
def test_bad_request_names_the_problem(client, example, question, strategies, keep, params, model, words):
    with pytest.raises(Exception) as info:
        compare(client, example["image"], example["question"] if question is None else question, strategies, keep,
                params=params, **model)
    message = str(info.value)
    assert all(w in message for w in words), f"the error should name the problem ({words}): {message!r}"
    out = compare(client, example["image"], example["question"], [], max_new_tokens=1)
    assert [r["strategy"] for r in out] == ["none"] and out[0]["answer"], "the app still answers the next request"


def test_app_equals_library(three, example):
    direct = Scope().compare(example["image"], example["question"], THREE, KEEP, {}, max_new_tokens=8)
    for key in ("strategy", "answer", "kept", "kept_final", "visual_tokens_kept", "image_tokens_per_layer",
                "merge_groups", "params"):
        assert [r[key] for r in three] == [r[key] for r in direct], key


def _stream_api(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/compare_stream"]
    return {p["parameter_name"]: None for p in api["parameters"] if not p["parameter_has_default"]}


def test_compare_stream_refuses_with_the_message_and_then_answers(client, example):
    """``/compare_stream`` (what the Compare button shows, for a program) raises on a refused request, with the
    library's message; the next request streams to the end: status "Done", the table lists every strategy."""
    unset = _stream_api(client)
    with pytest.raises(Exception) as info:
        client.predict(image_path=handle_file(example["image"]), question_text="  ", chosen=["fastv"],
                       keep_value=KEEP, max_new_tokens=2, api_name="/compare_stream", **unset)
    assert "question is empty" in str(info.value)
    out = client.predict(image_path=handle_file(example["image"]), question_text=example["question"],
                         chosen=["vtc-cls", "fastv"], keep_value=KEEP, max_new_tokens=2, api_name="/compare_stream",
                         **unset)
    status, table = out[0], out[1]
    assert status.startswith("Done: 3 strategies"), status
    assert all(f">{name}</span>" in table for name in ["none", "vtc-cls", "fastv"]), "one table row per strategy"


def _page_compare(app_server):
    """The Compare button's own function (not an API endpoint) and its default inputs, to read its messages."""
    block_fn = next(f for f in app_server.demo.fns.values() if getattr(f.fn, "__name__", "") == "run_compare")
    return block_fn, [c.value for c in block_fn.inputs]


def test_the_compare_button_streams_values_only(app_server, example):
    """The cause of issue 23's missing cards: Gradio 6's page reads a container's children back when the
    container's ``visible`` (or another property) changes, concurrently with the values of the same message, and
    mounts a component created invisible only later. So the Compare button's messages never change a property:
    no update in them carries anything but a value (or a dropdown's choices); every card slot of the run gets its
    "waiting" title in the first message, the other slots an empty one."""
    block_fn, defaults = _page_compare(app_server)
    ids = [getattr(c, "elem_id", None) for c in block_fn.inputs]
    inputs = list(defaults)
    inputs[ids.index("ps-image")], inputs[ids.index("ps-strategies")] = example["image"], ["vtw", "ivtp"]
    inputs[ids.index("ps-max-new")] = 2
    messages = list(block_fn.fn(*inputs[:8], None, *inputs[8:]))
    assert len(messages) >= 5, "laid out, one per strategy, done"
    for message in messages:
        for component, value in message.items():
            if isinstance(value, dict) and value.get("__type__") == "update":
                assert set(value) <= {"__type__", "value", "choices"}, f"{component}: a property changes: {value}"
    first = messages[0]
    titles = [v for c, v in first.items() if "ps-card-title" in (c.elem_classes or [])]
    assert len(titles) == len(ui.run_order(available())), "every slot is given a title"
    assert [bool(t) for t in titles].count(True) == 3 and all(ui.WAITING in t for t in titles if t)
    status = next(c for c in messages[-1] if getattr(c, "elem_id", None) == "ps-status")
    assert messages[-1][status].startswith("Done: 3 strategies")


def test_a_refused_comparison_touches_only_the_status_and_the_messages(app_server, example):
    """An empty question: one message, the status and the message beside the question; no card, table or plot
    is touched, so the earlier results stay on the page."""
    block_fn, defaults = _page_compare(app_server)
    ids = [getattr(c, "elem_id", None) for c in block_fn.inputs]
    inputs = list(defaults)
    inputs[ids.index("ps-image")], inputs[ids.index("ps-question")] = example["image"], "   "
    messages = list(block_fn.fn(*inputs[:8], None, *inputs[8:]))
    assert len(messages) == 1
    touched = {getattr(c, "elem_id", None): v for c, v in messages[0].items()}
    assert set(touched) == {"ps-status", "ps-image-msg", "ps-question-msg", "ps-settings-msg", "ps-model-msg"}, touched
    assert touched["ps-status"].startswith("**Not run:** question is empty")
    assert "question is empty" in touched["ps-question-msg"] and touched["ps-image-msg"] == ""
