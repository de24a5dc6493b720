"""The app's library layer (``pruning.compare.Scope``) on the families beyond LLaVA-1.5 (issue 27): Qwen2.5-VL,
LLaVA-OneVision, LLaVA-NeXT and InternVL, each a tiny random-init checkpoint built offline. Their token count is per
image, so ``info()`` offers the budget as a ratio, a count is clamped to the image's tokens, strategies the family's
table refuses are refused before anything runs, and the overlay is drawn on every family: over the picture where the
grid is the picture's, else per view of the token layout (base image and crops, tiles and thumbnail)."""

import numpy as np
import pytest

from pruning.compare import Scope

FAMILIES = ("qwen2.5-vl", "llava-onevision", "llava-next", "internvl")


@pytest.fixture(scope="module")
def scopes(family_dirs):
    return {name: Scope(str(family_dirs[name]), speed_report=None) for name in FAMILIES}


def _image(h=64, w=80):
    return np.random.RandomState(h * w).randint(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("family", FAMILIES)
def test_info_says_the_budget_is_a_ratio_and_names_no_grid(scopes, family):
    info = scopes[family].info()
    assert info["dynamic"] and info["grid"] is None and info["n_patches"] is None
    assert info["budget"]["unit"] == "ratio" and 0 < info["budget"]["min"] < info["budget"]["max"] == 1.0
    assert "this image's own visual tokens" in info["budget"]["sentence"]
    assert info["sweep"]["available"] is False and "token count changes" in info["sweep"]["reason"]
    assert info["overlay"]["drawn"] is True and info["overlay"]["note"] is None
    assert (info["overlay"]["panels"] is None) is (family == "qwen2.5-vl")


@pytest.mark.parametrize("family", FAMILIES)
def test_compare_runs_two_strategies_with_a_ratio_of_the_images_tokens(scopes, family):
    scope = scopes[family]
    events = list(scope.compare_stream(_image(), "What is in the picture?", ["vtc-cls", "random"], keep_ratio=0.25,
                                       repeats=1, warmup=0, max_new_tokens=2))
    view, results, inspect = events[0], [e["result"] for e in events if e["kind"] == "result"], events[-1]
    assert view["kind"] == "view" and inspect["kind"] == "inspect"
    n = view["visual_tokens"]
    assert [r["strategy"] for r in results] == ["none", "vtc-cls", "random"]
    assert all(r["visual_tokens"] == n for r in results)
    assert results[0]["visual_tokens_kept"] == n
    for r in results[1:]:
        assert r["visual_tokens_kept"] == round(0.25 * n), r
        assert f"keep_ratio=0.25: {round(0.25 * n)} of this image's {n} visual tokens" in r["notes"]
        assert all(0 <= i < n for i in r["kept"])
        assert isinstance(r["answer"], str)
    assert any("substitute" in note for note in results[1]["notes"])  # vtc-cls reads the named substitute
    rows, cols = results[0]["grid"]
    assert rows * cols == n
    assert view["overlay_drawn"] is True and view["grid_on_view"] is (family == "qwen2.5-vl")
    layout = view["layout"]
    assert layout["n"] == n and len(view["views"]) == len(layout["views"])
    for picture, v in zip(view["views"], layout["views"]):
        assert picture.shape == (*v["size"], 3) and picture.dtype == np.uint8
    if family == "qwen2.5-vl":
        # the view is the picture the merged-token grid lies over: an 80 x 64 image is kept at its size (multiples of
        # the 8 px merged token), and the processor's patches put back in place give that image again
        assert view["view"].shape == (64, 80, 3) and [rows, cols] == [8, 10] and view["grid"] == [8, 10]
        assert np.abs(view["view"].astype(int) - _image()).mean() < 3
    else:
        assert rows == 1 and view["overlay_note"] is None
        assert view["view"].ndim == 3 and view["view"].shape[2] == 3
        # an 80 x 64 image: 2 x 3 crops (tiles) of 32 px, as the view note says
        names = [v["name"] for v in layout["views"]]
        assert names == (["tiles", "thumbnail"] if family == "internvl" else ["base", "crops"])
        assert "2 x 3" in view["view_note"] and "stitched" in view["view_note"]
        if family != "internvl":
            assert f"{len(layout['newline'])} newline tokens included" in view["view_note"]
    assert inspect["cls_attention"] is None and "not drawn" in inspect["inspect_note"]


@pytest.mark.parametrize("family", ("qwen2.5-vl", "llava-next"))
def test_a_count_is_clamped_to_the_images_tokens(scopes, family):
    results = scopes[family].compare(_image(48, 48), "What is it?", ["random"], keep=10_000, repeats=1, warmup=0,
                                     max_new_tokens=1)
    n = results[1]["visual_tokens"]
    assert results[1]["visual_tokens_kept"] == n
    assert f"keep=10000 is more than this image's {n} visual tokens: clamped to {n}" in results[1]["notes"]
    few = scopes[family].compare(_image(48, 48), "What is it?", ["random"], keep=3, repeats=1, warmup=0,
                                 max_new_tokens=1)
    assert few[1]["visual_tokens_kept"] == 3


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("strategy", ["topk-sim", "visionzip", "ivtp"])
def test_a_strategy_the_table_refuses_is_refused_before_anything_runs(scopes, family, strategy):
    stream = scopes[family].compare_stream(_image(), "What is it?", ["random", strategy], keep_ratio=0.5, repeats=1,
                                           warmup=0, max_new_tokens=1)
    with pytest.raises(ValueError, match=rf"strategy {strategy} does not run on .*\[CLS\].*strategy x family table"):
        next(stream)  # no view, no result: the refusal comes first


def test_budget_forms_are_checked(scopes):
    scope = scopes["qwen2.5-vl"]
    for kwargs, message in (({"keep": 4, "keep_ratio": 0.5}, "give one budget"),
                            ({"keep_ratio": 1.5}, "keep_ratio=1.5: expected a share"),
                            ({"keep_ratio": 0}, "keep_ratio=0: expected a share"),
                            ({"keep": 0}, "keep at least 1 of this image's visual tokens")):
        with pytest.raises(ValueError, match=message):
            scope.compare(_image(), "What is it?", ["random"], repeats=1, warmup=0, **kwargs)


def test_sweep_is_refused_in_words(scopes):
    with pytest.raises(ValueError, match="the sweep is not run on Qwen2.5-VL"):
        scopes["qwen2.5-vl"].sweep(["random"], [4], n=2)


def test_no_projection_onto_llava_for_another_family(family_dirs):
    """The cards' projection is onto LLaVA-1.5-7B (from its speed report): on another family it would be a different
    model's cost, so results and info say there is none, and which command times the family instead."""
    scope = Scope(str(family_dirs["llava-next"]))  # the app's default speed report
    assert scope.speed_report is not None  # the LLaVA-1.5-7B report is there, and still not used
    info = scope.info()["projection"]
    assert info["available"] is False and "this model is LLaVA-NeXT" in info["reason"]
    assert "`python -m pruning speed --geometry llava-next-7b`" in info["reason"]
    result = scope.compare(_image(), "What is it?", ["random"], keep_ratio=0.5, repeats=1, warmup=0,
                           max_new_tokens=1)[1]
    assert result["projected"]["available"] is False and result["projected"]["reason"] == info["reason"]
