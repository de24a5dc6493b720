"""app/overlays.py: each patch drawn in its state's style, exactly over its own pixels (synthetic results); merges
outlined over a picture that stays recognisable; the in-LLM hatch keeps an object's colour."""

import colorsys

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
        else:  # llm: hatched, never equal to the original, but most pixels (between the lines) untouched
            assert state == "llm" and not np.array_equal(got, orig)
            same = np.all(got == orig, axis=-1)
            assert 0.3 < same.mean() < 0.7, p


def test_llm_hatch_keeps_an_objects_colour():
    """VTW withdraws every patch inside the LLM: a red object stays red (an amber hatch once made it orange)."""
    red = np.zeros((8, 8, 3), np.uint8)
    red[:] = (220, 30, 30)
    r = _result(kept=list(range(16)), kept_final=[])  # every patch dropped inside the LLM
    img = np.asarray(overlays.overlay(red, r, display=64)).astype(float)
    mean = img.reshape(-1, 3).mean(0) / 255
    hue, sat, _ = colorsys.rgb_to_hsv(*mean)
    assert min(hue, 1 - hue) * 360 < 3, "the hatch must not shift the hue (red must not turn orange)"
    assert sat > 0.5
    assert abs(mean[1] - mean[2]) < 0.01  # green and blue moved alike: a neutral hatch


def test_vit_and_before_styles_differ():
    view = np.full((8, 8, 3), 128, np.uint8)
    r = _result(kept=[0], kept_final=[0], kept_vit=[0, 1])
    img = np.asarray(overlays.overlay(view, r, display=8))
    before, vit = img[0, 2], img[0, 4]  # patch 1 (before), patch 2 (vit)
    assert overlays.patch_states(r)[1:3] == ["before", "vit"]
    assert not np.array_equal(before, vit)


# ------------------------------------------------------------------ merges

def _merges():
    """A 4x4 grid: group 0 = the left two columns' top two rows (kept token 0), group 1 = patches 2, 3, 6, 7
    (kept token 2), patch 8 kept alone (group 2, nothing merged into it), the rest dropped."""
    groups = [0, 0, 1, 1,
              0, 0, 1, 1,
              2, -1, -1, -1,
              -1, -1, -1, -1]
    return _result(kept=[0, 2, 8], kept_final=[0, 2, 8], merge_groups=groups)


def test_merged_groups_keep_the_picture_recognisable():
    """Inside merged groups the image changes little: a light tint, thin outlines, a ring on the kept token."""
    view = _view(h=32, w=32, seed=3)  # 8 px patches
    r = _merges()
    img = np.asarray(overlays.overlay(view, r, display=128)).astype(float)  # scale 4: 32 px patches
    up = np.repeat(np.repeat(view, 4, 0), 4, 1).astype(float)
    inside = [0, 1, 4, 5, 2, 3, 6, 7]
    change = np.mean([np.abs(_tile(img, p, 4, 32) - _tile(up, p, 4, 32)).mean() for p in inside])
    assert change < 30, f"mean absolute change {change:.1f} inside the groups"
    # away from outlines and rings, a pixel moved at most TINT_ALPHA of the way to its tint
    centre = (slice(4, 8), slice(4, 8))  # a corner area of patch 1 (no ring: patch 1 is merged, not kept)
    diff = np.abs(_tile(img, 1, 4, 32)[centre] - _tile(up, 1, 4, 32)[centre])
    assert diff.max() <= overlays.TINT_ALPHA * 255 + 1
    members = [1, 4, 5, 3, 6, 7]  # merged patches (no ring), away from their outlines
    a = np.concatenate([_tile(img, p, 4, 32)[5:-5, 5:-5].ravel() for p in members])
    b = np.concatenate([_tile(up, p, 4, 32)[5:-5, 5:-5].ravel() for p in members])
    corr = np.corrcoef(a, b)[0, 1]
    assert corr > 0.95, f"the picture inside the groups is still there ({corr:.2f})"


def test_boundaries_drawn_where_groups_meet_and_nowhere_inside_a_group():
    view = np.full((32, 32, 3), 100, np.uint8)
    r = _merges()
    edges = overlays.boundary_edges(r)
    assert (1, 2) in edges and (5, 6) in edges  # group 0 | group 1
    assert (4, 8) in edges and (6, 10) in edges  # a group | a kept token or a dropped patch
    assert (0, 1) not in edges and (2, 3) not in edges and (1, 5) not in edges  # inside a group
    assert (9, 10) not in edges  # two dropped patches: no merge there
    img = np.asarray(overlays.overlay(view, r, display=128)).astype(int)
    light = lambda px: bool((px >= 200).all())  # noqa: E731
    # the vertical edge between patch 1 and patch 2 lies at x = 64: a light line there, rows 0..63
    assert all(light(img[y, 64]) for y in range(4, 60, 7))
    # between patches 0 and 1 (x = 32, same group): no line, only the tint
    assert not any(light(img[y, 32]) for y in range(4, 28, 3))
    assert abs(int(img[12, 32, 0]) - 100) <= overlays.TINT_ALPHA * 255 + 1


def test_ring_marks_the_token_each_group_became():
    view = np.full((32, 32, 3), 100, np.uint8)
    r = _merges()
    img = np.asarray(overlays.overlay(view, r, display=128)).astype(int)
    white = lambda t: (t >= 230).all(axis=-1).sum()  # noqa: E731
    ring0, member, alone = _tile(img, 0, 4, 32)[3:-3, 3:-3], _tile(img, 1, 4, 32)[3:-3, 3:-3], _tile(img, 8, 4, 32)[3:-3, 3:-3]
    assert white(ring0) > 20  # kept token 0 has a ring
    assert white(member) == 0  # a merged patch has none
    assert white(alone) == 0  # a token nothing merged into is just kept: no ring, no tint
    assert np.array_equal(_tile(img, 8, 4, 32)[10:20, 10:20], np.full((10, 10, 3), 100))
    centre = _tile(img, 0, 4, 32)[15:17, 15:17]  # inside the ring: the picture shows through (tinted only)
    assert np.abs(centre - 100).max() <= overlays.TINT_ALPHA * 255 + 1


def test_neighbouring_groups_get_different_tints():
    groups = [0, 0, 1, 1,
              0, 0, 1, 1,
              2, 2, 3, 3,
              2, 2, 3, 3]
    tints = overlays.group_tints(groups, 4, 4)
    assert tints[0] != tints[1] and tints[0] != tints[2] and tints[1] != tints[3] and tints[2] != tints[3]
    assert overlays.group_tints([0, 1, -1, -1], 2, 2) == {}  # singletons: no tint


def test_pooling_windows_outlined_as_windows_not_stripes():
    """Pooling's 2x2 windows: every window boundary outlined, none inside a window."""
    groups = [0, 0, 1, 1,
              0, 0, 1, 1,
              2, 2, 3, 3,
              2, 2, 3, 3]
    r = _result(kept=[0, 2, 8, 10], kept_final=[0, 2, 8, 10], merge_groups=groups)
    edges = set(overlays.boundary_edges(r))
    assert edges == {(1, 2), (5, 6), (4, 8), (5, 9), (6, 10), (7, 11), (9, 10), (13, 14)}


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
