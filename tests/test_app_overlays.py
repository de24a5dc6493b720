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


def _two_view_layout():
    """A hand-made token layout of the library's form: a 2 x 2 base view over a 4 x 4 picture, then a 3 x 5 crops view
    over the box [2, 0, 12, 9] of a 9 x 14 picture (cells of 2 x 3 px: not whole pixels once scaled), a newline after
    each crops row; 4 + 3 x 6 = 22 rows."""
    views = [{"name": "base", "label": "base image", "rows": 2, "cols": 2, "size": [4, 4], "box": [0, 0, 4, 4]},
             {"name": "crops", "label": "crops", "rows": 3, "cols": 5, "size": [9, 14], "box": [2, 0, 12, 9]}]
    view, row, col = [0] * 4, [0, 0, 1, 1], [0, 1, 0, 1]
    for r in range(3):
        view += [1] * 6
        row += [r] * 6
        col += list(range(5)) + [-1]
    newline = [i for i, c in enumerate(col) if c < 0]
    return {"views": views, "view": view, "row": row, "col": col, "n": len(view), "newline": newline}


def test_overlay_views_draws_each_views_cells_on_its_own_picture():
    layout = _two_view_layout()
    pictures = [_view(4, 4, 1), _view(9, 14, 2)]
    kept = [0, 3, 4, 9, 20]  # base cells 0 and 3; crops (0, 0), the newline closing row 0, and (2, 4)
    result = _result(kept, kept, grid=(1, layout["n"]))
    plain = np.asarray(overlays.overlay_views(pictures, layout, None), int)
    drawn = np.asarray(overlays.overlay_views(pictures, layout, result), int)
    boxes = overlays.panel_boxes(pictures)
    assert drawn.shape == plain.shape and drawn.shape[1] == boxes[-1][2] and len(boxes) == 2
    # base: 2 x 2 cells over the whole panel
    x0, y0, x1, y1 = boxes[0]
    ch, cw = (y1 - y0) // 2, (x1 - x0) // 2
    for cell, is_kept in ((0, True), (1, False), (2, False), (3, True)):
        r, c = divmod(cell, 2)
        tile = (slice(y0 + r * ch + 1, y0 + (r + 1) * ch - 1), slice(x0 + c * cw + 1, x0 + (c + 1) * cw - 1))
        if is_kept:
            assert np.array_equal(drawn[tile], plain[tile]), cell
        else:
            assert np.abs(drawn[tile] - (0.15 * plain[tile] + 0.85 * 28)).max() <= 1, cell
    # crops: the box's cells; pixels outside the box (no tokens) untouched
    x0, y0, x1, y1 = boxes[1]
    f = (y1 - y0) / 9
    bx0, bx1 = x0 + round(2 * f), x0 + round(12 * f)
    assert np.array_equal(drawn[y0:y1, x0:bx0], plain[y0:y1, x0:bx0])
    assert np.array_equal(drawn[y0:y1, bx1:x1], plain[y0:y1, bx1:x1])
    cw, ch = (bx1 - bx0) / 5, (y1 - y0) / 3
    for (r, c), is_kept in (((0, 0), True), ((0, 1), False), ((2, 4), True), ((1, 2), False)):
        tile = (slice(int(y0 + r * ch) + 2, int(y0 + (r + 1) * ch) - 2),
                slice(int(bx0 + c * cw) + 2, int(bx0 + (c + 1) * cw) - 2))
        if is_kept:
            assert np.array_equal(drawn[tile], plain[tile]), (r, c)
        else:
            assert np.abs(drawn[tile] - (0.15 * plain[tile] + 0.85 * 28)).max() <= 1, (r, c)
    assert overlays.newline_words(layout, result).startswith("1 of 3 newline tokens kept")
    dropped_late = _result(kept, [0, 3, 4], grid=(1, layout["n"]))
    assert overlays.newline_words(dropped_late, dropped_late) is None  # no layout newline list: nothing to say
    assert overlays.newline_words(layout, dropped_late).startswith("1 of 3 newline tokens entered the LLM, 0 reached")


def test_view_result_maps_merge_groups_across_views():
    """A merge group whose token is a base cell and whose members lie in both views: each view gets its cells'
    group, and only the base view holds the token itself (``kept`` keeps its length, -1 elsewhere)."""
    layout = _two_view_layout()
    groups = [-1] * layout["n"]
    for p in (0, 1, 4, 5):  # base cells 0, 1 and crops (0, 0), (0, 1) went into token 0 (base cell 0)
        groups[p] = 0
    result = _result([0, 3], [0, 3], grid=(1, layout["n"]), merge_groups=groups)
    base, crops = overlays.view_result(layout, result, 0), overlays.view_result(layout, result, 1)
    assert base["kept"] == [0, 3] and base["merge_groups"] == [0, 0, -1, -1]
    assert crops["kept"] == [-1, -1] and crops["merge_groups"][:2] == [0, 0] and crops["kept_final"] == []
    assert overlays.patch_states(crops)[:3] == ["merged", "merged", "before"]
    image = overlays.overlay_views([_view(4, 4, 1), _view(9, 14, 2)], layout, result)
    assert image.size[0] == overlays.panel_boxes([_view(4, 4, 1), _view(9, 14, 2)])[-1][2]
