"""The Teach and Lessons tabs' JSON API through gradio_client (issue 26), against the app served in-process
(``app_server`` in conftest, one app for the session).

Asserted, with values: a probe's maps have the grid's shape and agree with each other ([CLS]'s row at the patch is
what the patch receives; each strategy's fate agrees with its kept set); the handpicked set is exactly what the
model received; a budget film's answer at the full budget is none's, and a second play comes from the cache; the
agreement matrix is symmetric with ones on the diagonal and the per-patch counts add up; random over N seeds and
its held-out band; a lesson runs; the export is one self-contained HTML file; Compare cards
carry the ground truth; bad requests raise errors that name the value.
"""

import re
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

KEEP = 24
THREE = ["vtc-cls", "fastv", "tome"]


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server.url, verbose=False)


@pytest.fixture(scope="module")
def count_scene(app_server):
    """The count scene (answer: four) and its question."""
    return next(e for e in app_server.examples if "count" in e["image"])


def call(client, name, **kwargs):
    if "image" in kwargs:
        kwargs["image"] = handle_file(kwargs["image"])
    return client.predict(api_name=f"/{name}", **kwargs)


def test_probe_values(client, count_scene):
    p = call(client, "probe", image=count_scene["image"], question=count_scene["question"], row=5, col=6,
             strategies=THREE, keep=KEEP)
    assert p["patch"] == 5 * 12 + 6 and p["grid"] == [12, 12]
    vit = p["vit_attention"]
    assert len(vit) == p["vit_layers"] and all(len(row) == 144 for row in vit)
    for row, to_cls in zip(vit, p["vit_to_cls"]):  # a softmax row over [CLS] and the patches
        assert sum(row) + to_cls == pytest.approx(1, abs=1e-4)
    assert p["cls_received"] == [layer[p["patch"]] for layer in p["cls_attention"]]
    assert [f["strategy"] for f in p["fates"]] == ["none", *THREE]
    for name, maps in p["llm_attention"].items():
        assert len(maps) == p["llm_layers"] and p["llm_received"][name] == [m[p["patch"]] for m in maps]
    fates = {f["strategy"]: f for f in p["fates"]}
    assert fates["none"]["state"] == "kept"
    kept = call(client, "kept_set", image=count_scene["image"], question=count_scene["question"], strategy="vtc-cls",
                keep=KEEP)
    assert len(kept["kept_final"]) == KEEP
    assert (fates["vtc-cls"]["state"] == "kept") == (p["patch"] in kept["kept_final"])
    assert fates["fastv"]["state"] in ("kept", "llm")
    if fates["fastv"]["state"] == "llm":
        assert fates["fastv"]["layer"] == 2 and p["llm_received"]["fastv"][2] is None, "gone from layer 2 on"
    assert fates["tome"]["state"] in ("kept", "merged")
    if fates["tome"]["state"] == "merged":
        assert fates["tome"]["merged_into"] in call(client, "kept_set", image=count_scene["image"],
                                                     question=count_scene["question"], strategy="tome",
                                                     keep=KEEP)["kept"]
    assert p["truth"]["answer"] == "four"


def test_handpicked_set_is_what_the_model_received(client, count_scene):
    h = call(client, "handpick", image=count_scene["image"], question=count_scene["question"],
             patches="41, 3, 5, 40, 5")
    none, manual = h["results"]
    assert none["strategy"] == "none" and manual["strategy"] == "manual"
    assert h["patches"] == [3, 5, 40, 41]
    assert manual["kept"] == [3, 5, 40, 41] and manual["kept_final"] == [3, 5, 40, 41]
    assert manual["visual_tokens_kept"] == 4 and manual["image_tokens_per_layer"] == [4] * len(manual["tokens_per_layer"])
    assert manual["tokens_per_layer"][0] == none["tokens_per_layer"][0] - 140, "140 fewer rows in the prefill"
    assert manual["params"]["patches"] == "3, 5, 40, 41"
    assert manual["correct"] == (manual["answer"].strip().lower() == "four") and none["correct"] is True


def test_handpick_a_strategys_set_gives_its_kept_set(client, count_scene):
    kept = call(client, "kept_set", image=count_scene["image"], question=count_scene["question"], strategy="tome",
                keep=12)
    h = call(client, "handpick", image=count_scene["image"], question=count_scene["question"],
             patches=", ".join(map(str, kept["kept_final"])))
    assert h["results"][1]["kept"] == kept["kept_final"]


def test_budget_film_full_budget_is_none_and_replays_from_cache(client, count_scene):
    kwargs = dict(image=count_scene["image"], question=count_scene["question"],
                  strategies=["vtc-cls", "fastv", "tome", "random", "vtw"], budgets="144, 36, 9, 1")
    f = call(client, "budget_film", **kwargs)
    assert f["budgets"] == [144, 36, 9, 1] and f["strategies"] == ["vtc-cls", "fastv", "tome", "random"]
    assert any("vtw" in n for n in f["notes"]), "vtw has no budget: named, not filmed"
    assert f["reference"] == "four" and f["judge"] == "truth"
    for name, frames in f["frames"].items():
        assert [x["keep"] for x in frames] == [144, 36, 9, 1]
        assert frames[0]["answer"] == f["none_answer"], f"{name} at the full budget answers as none"
        assert frames[0]["visual_tokens_kept"] == 144 or name == "fastv"
        assert all(x["right"] == (x["answer"].strip().lower() == "four") for x in frames)
        broke = f["first_break"][name]
        assert broke == next((x["keep"] for x in frames if not x["right"]), None)
    assert f["frames"]["vtc-cls"][2]["visual_tokens_kept"] == 9
    again = call(client, "budget_film", **kwargs)
    assert again["cached"] == again["frames_total"] == 16, "a second play is served from the cache"
    assert again["frames"] == f["frames"]


def test_agreement_matrix(client, count_scene):
    a = call(client, "agreement", image=count_scene["image"], question=count_scene["question"],
             strategies=["vtc-cls", "fastv", "tome", "random", "vtw"], keep=KEEP)
    names = a["strategies"]
    assert names == ["vtc-cls", "fastv", "tome", "random"] and any("vtw" in n for n in a["notes"])
    m = a["jaccard"]
    assert len(m) == 4 and all(len(row) == 4 for row in m)
    for i in range(4):
        assert m[i][i] == 1.0
        for j in range(4):
            assert m[i][j] == m[j][i] and 0 <= m[i][j] <= 1
            sa, sb = set(a["sets"][names[i]]), set(a["sets"][names[j]])
            assert m[i][j] == pytest.approx(len(sa & sb) / len(sa | sb))
    assert len(a["counts"]) == 144 and sum(a["counts"]) == sum(len(s) for s in a["sets"].values())
    assert max(a["counts"]) <= 4
    for name, pos in a["positions"].items():
        assert sum(pos["rows"]) == sum(pos["cols"]) == pos["n"] == len(a["sets"][name]) == KEEP
        assert 0 <= pos["mean_index"] <= 1 and 0 <= pos["centre"][0] <= 11


def test_random_seeds_and_band(client, count_scene):
    s = call(client, "random_seeds", image=count_scene["image"], question=count_scene["question"], keep=18, n=5)
    assert s["n"] == 5 and len(s["answers"]) == len(s["kept"]) == 5 and s["seeds"] == [0, 1, 2, 3, 4]
    assert all(len(k) == 18 for k in s["kept"]) and len({tuple(k) for k in s["kept"]}) == 5, "each seed its own set"
    assert s["correct"] == sum(a.strip().lower() == "four" for a in s["answers"])
    assert s["same_as_none"] == sum(a.strip().lower() == s["none_answer"].strip().lower() for a in s["answers"])
    b = call(client, "random_band", strategies=["vtc-cls"], budgets="36", n=5, seeds=2)
    assert [r["label"] for r in b["rows"]] == ["none", "vtc-cls"]
    assert len(b["random_runs"]) == 2 and all(len(run) == 1 and run[0]["n"] == 5 for run in b["random_runs"])


def test_compare_cards_carry_ground_truth(client, count_scene):
    out = client.predict(image=handle_file(count_scene["image"]), question=count_scene["question"],
                         strategies=["random"], keep=18, max_new_tokens=4, params={}, api_name="/compare")
    none, rnd = out
    assert none["truth"]["answer"] == "four" and none["correct"] is True
    assert rnd["correct"] == (rnd["answer"].strip().lower() == "four")
    seeds = rnd["random_seeds"]
    assert seeds["n"] == 5 and seeds["answers"][0] == rnd["answer"]
    assert rnd["scene_objects"]["objects"] == 4 and rnd["scene_objects"]["kept"] == 18


def test_lesson_endpoint(client):
    """One lesson through the API (tests/test_teach.py checks what every lesson's text claims, in the library)."""
    out = call(client, "lesson", lesson_id="vtw-withdraw")
    assert out["lesson"]["id"] == "vtw-withdraw" and out["lesson"]["text"]
    assert [r["strategy"] for r in out["results"]] == ["none", "vtw"]
    vtw = out["results"][1]
    assert vtw["image_tokens_per_layer"][3] == 0 and vtw["image_tokens_per_layer"][2] == 144
    assert vtw["correct"] is True and out["results"][0]["correct"] is True
    assert out["inspect"]["vtw_kl"] is not None, "the lesson carries the comparison's analyses"


def test_export_is_one_self_contained_html_file(client, count_scene):
    path = call(client, "export", image=count_scene["image"], question=count_scene["question"],
                strategies=["vtc-cls", "tome"], keep=KEEP)
    text = Path(path).read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and count_scene["question"] in text
    assert "Plotly" in text and text.count("data:image/png;base64,") >= 4, "plotly.js and the images are inline"
    assert not re.search(r"""<(script|img|link)[^>]+(src|href)=["']https?:""", text), "nothing loaded from outside"
    for name in ("none", "vtc-cls", "tome"):
        assert f"{name} overlay" in text
    assert "What each strategy cost" in text and "toy" in text


@pytest.mark.parametrize("name, kwargs, words", [
    ("probe", dict(row=99, col=0, strategies=[], keep=KEEP), ["row=99", "0..11"]),
    ("handpick", dict(patches=""), ["patches", "none chosen"]),
    ("handpick", dict(patches="3, 500"), ["500", "outside the grid"]),
    ("handpick", dict(patches="3, x"), ["'x'", "not a patch index"]),
    ("budget_film", dict(strategies=["vtc-cls"], budgets="36, 0"), ["budget 0", "1..144"]),
    ("budget_film", dict(strategies=["vtw"], budgets="36"), ["strategies", "budget"]),
    ("agreement", dict(strategies=["vtc-cls"], keep=KEEP), ["at least two"]),
    ("random_seeds", dict(keep=18, n=99), ["n=99", "1..20"]),
], ids=["probe-row", "handpick-empty", "handpick-outside", "handpick-word", "film-budget-0", "film-no-budget",
        "agreement-one", "seeds-99"])
def test_bad_request_names_the_problem(client, count_scene, name, kwargs, words):
    with pytest.raises(Exception) as info:
        call(client, name, image=count_scene["image"], question=count_scene["question"], **kwargs)
    message = str(info.value)
    assert all(w in message for w in words), f"{name}: the error should name the problem ({words}): {message!r}"
