"""app/overlays.py: each patch drawn in its state's style, exactly over its own pixels (synthetic results)."""

import numpy as np
import pytest

from app import overlays


def _result(kept, kept_final, grid=(4, 4), kept_vit=None, merge_groups=None):
    return {"grid": list(grid), "kept": kept, "kept_final": kept_final, "kept_vit": kept_vit,
            "merge_groups": merge_groups}


def _view(h=8, w=8, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


def _tile(img, p, cols, size):
    r, c = divmod(p, cols)
    return img[r * size:(r + 1) * size, c * size:(c + 1) * size].astype(int)


def test_patch_states_cover_every_stage():
    r = _result(kept=[0, 1, 2, 5], kept_final=[0, 5], kept_vit=[0, 1, 2, 3, 5, 6])
    states = overlays.patch_states(r)
    assert len(states) == 16
    assert states[0] == states[5] == "kept"
    assert states[1] == states[2] == "llm"  # entered the LLM, gone by its last layer
    assert states[3] == states[6] == "before"  # left the ViT, not selected for the LLM
    assert states[4] == states[15] == "vit"  # dropped inside the ViT


def test_merged_state_only_for_patches_that_went_into_a_kept_token():
    r = _result(kept=[0, 10], kept_final=[0, 10], merge_groups=[0, 0, 1, -1] + [-1] * 6 + [1, 1] + [-1] * 4)
    states = overlays.patch_states(r)
    assert states[1] == "merged" and states[2] == "merged" and states[11] == "merged"
    assert states[3] == "before"
    assert states[0] == states[10] == "kept"


def test_masked_pixels_exactly_where_the_dropped_patches_are():
    view = _view()
    r = _result(kept=[0, 1, 5], kept_final=[0, 5])
    img = np.asarray(overlays.overlay(view, r, display=32))  # 8 px -> 32 px: scale 4, patch 2 px -> 8 px
    assert img.shape == (32, 32, 3)
    up = np.repeat(np.repeat(view, 4, 0), 4, 1).astype(int)
    for p, state in enumerate(overlays.patch_states(r)):
        got, orig = _tile(img, p, 4, 8), _tile(up, p, 4, 8)
        if state == "kept":
            assert np.array_equal(got, orig), p  # untouched
        elif state == "before":
            expect = np.round(0.15 * orig + 0.85 * np.array(overlays.COLOURS["before"])).astype(int)
            assert np.abs(got - expect).max() <= 1, p
        else:  # llm: tinted and striped, never equal to the original
            assert state == "llm" and not np.array_equal(got, orig)
            stripe = np.all(got == np.array(overlays.COLOURS["llm"]), axis=-1)
            assert 0 < stripe.mean() < 1


def test_vit_and_before_styles_differ():
    view = np.full((8, 8, 3), 128, np.uint8)
    r = _result(kept=[0], kept_final=[0], kept_vit=[0, 1])
    img = np.asarray(overlays.overlay(view, r, display=8))
    before, vit = img[0, 2], img[0, 4]  # patch 1 (before), patch 2 (vit)
    assert overlays.patch_states(r)[1:3] == ["before", "vit"]
    assert not np.array_equal(before, vit)


def test_merge_groups_tinted_per_group_and_kept_token_marked():
    view = np.full((8, 8, 3), 100, np.uint8)
    groups = [0, 0, -1, -1, -1, 1, 1, -1] + [-1] * 8
    r = _result(kept=[0, 5], kept_final=[0, 5], merge_groups=groups)
    img = np.asarray(overlays.overlay(view, r, display=32)).astype(int)
    g0, g1 = _tile(img, 1, 4, 8), _tile(img, 6, 4, 8)  # absorbed patches of groups 0 and 1
    assert np.array_equal(g0[0, 0], np.round(0.45 * 100 + 0.55 * np.array(overlays.group_colour(0))))
    assert not np.array_equal(g0[0, 0], g1[0, 0])
    kept0 = _tile(img, 0, 4, 8)
    assert (kept0 == 255).all(axis=-1).any()  # the white dot on the kept token
    assert np.array_equal(kept0[0, 0], g0[0, 0])  # same group tint as its absorbed patches


def test_scale_and_non_square_views():
    view = _view(h=6, w=9)
    r = _result(kept=list(range(6)), kept_final=list(range(6)), grid=(2, 3))
    img = overlays.overlay(view, r, display=36)
    assert img.size == (36, 24)  # scale 4
    assert np.array_equal(np.asarray(img)[::4, ::4], view)


@pytest.mark.parametrize("state", ["kept", "llm", "before", "vit", "merged"])
def test_legend_names_every_state(state):
    html = overlays.legend_html()
    words = dict((s, w) for s, _, w in overlays.LEGEND)[state]
    assert words in html
