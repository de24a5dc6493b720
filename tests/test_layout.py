"""The token layout (``pruning.layout``, ``Adapter.token_layout``) against the stock packing (issue 27).

Each test makes the vision features identifiable, runs the stock ``get_image_features`` of a tiny checkpoint (the
same call the engine makes), and checks that every packed row is where the layout says:

- LLaVA-NeXT / LLaVA-OneVision: a forward hook on the projector replaces each crop's projected features with
  (crop index, row, column) of the token inside its crop; the stock ``pack_image_features`` then packs them, so each
  packed row names its crop and cell, which must be the layout's view, cell and source; newline rows must be the
  model's ``image_newline`` exactly where the layout says.
- InternVL: a forward hook on the vision tower writes (tile, patch row, patch column) into each patch's features,
  the stock pixel shuffle folds 2 x 2 patches into one token, and a hook on the projector hands those marks through;
  each token must hold the four patches of its layout cell, from its layout tile.
- OneVision's bilinear shrink (``anyres_max_K``): with K = 1 the crops' grid is shrunk; each shrunk row's
  interpolated (row, column) mark must fall inside its layout cell.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from pruning.engine import Engine
from pruning.layout import anyres_layout, internvl_layout
from pruning.model import load_model
from pruning.toy_families import build_family

SHAPES = [(64, 80), (30, 100), (100, 30), (48, 48)]  # (height, width): 2 x 3, 1 x 3, 3 x 1 and 2 x 2 crops or tiles


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout-families")
    return {name: Engine(load_model(str(build_family(root / name, name, seed=1))))
            for name in ("llava-onevision", "llava-next", "internvl")}


def _image(h, w):
    return Image.fromarray(np.random.RandomState(h + 7 * w).randint(0, 255, (h, w, 3), dtype=np.uint8))


def _marked_anyres_rows(engine, prepared, side, crop_cols=1):
    """The stock packed rows, with each crop's projected token t replaced by (1, crop, t // side, t % side, joint
    row, joint column): the last two its cell in the crops' joint grid (crop b >= 1 at (b - 1) // crop_cols,
    (b - 1) % crop_cols of the crop grid), which bilinear interpolation carries linearly."""
    inner = engine.lm.model.model

    def hook(module, args, output):
        b, t, _ = output.shape
        marks = torch.zeros_like(output)
        marks[..., 0] = 1
        marks[..., 1] = torch.arange(b, dtype=output.dtype)[:, None]
        marks[..., 2] = (torch.arange(t) // side).to(output.dtype)[None]
        marks[..., 3] = (torch.arange(t) % side).to(output.dtype)[None]
        crop_row, crop_col = (torch.arange(b) - 1) // crop_cols, (torch.arange(b) - 1) % crop_cols
        marks[..., 4] = (crop_row[:, None] * side + torch.arange(t)[None] // side).to(output.dtype)
        marks[..., 5] = (crop_col[:, None] * side + torch.arange(t)[None] % side).to(output.dtype)
        return marks

    handle = inner.multi_modal_projector.register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = inner.get_image_features(pixel_values=prepared.pixel_values, **prepared.vision_inputs)
    finally:
        handle.remove()
    return torch.cat([r.reshape(-1, r.shape[-1]) for r in out.pooler_output]), inner.image_newline.detach()


@pytest.mark.parametrize("family", ["llava-onevision", "llava-next"])
@pytest.mark.parametrize("shape", SHAPES)
def test_anyres_layout_matches_the_stock_packing(engines, family, shape):
    engine = engines[family]
    prepared = engine.prepare(_image(*shape), "What is it?")
    layout = engine.adapter.token_layout(prepared)
    vc = engine.lm.model.config.vision_config
    side, patch = vc.image_size // vc.patch_size, vc.patch_size
    rows, newline = _marked_anyres_rows(engine, prepared, side)
    assert layout["n"] == rows.shape[0] == prepared.n_image
    base, crops = layout["views"]
    assert (base["name"], base["rows"], base["cols"]) == ("base", side, side)
    crop_cols = crops["tiles"][1]
    left, top = crops["box"][0] // patch, crops["box"][1] // patch
    assert layout["newline"] == [i for i in range(layout["n"]) if layout["col"][i] < 0]
    assert len(layout["newline"]) == crops["rows"]  # one newline per row of the crops' grid
    for i in range(layout["n"]):
        row = rows[i]
        if layout["col"][i] < 0:
            assert torch.equal(row, newline), f"row {i}: the layout says newline"
            continue
        assert row[0] == 1 and not torch.equal(row, newline), f"row {i}: a token, not a newline"
        crop, r, c = (int(x) for x in row[1:4])
        assert crop == layout["source"][i], f"row {i}: from image {crop}, layout says {layout['source'][i]}"
        if layout["view"][i] == 0:
            assert crop == 0 and (r, c) == (layout["row"][i], layout["col"][i]), i
        else:
            cr, cc = divmod(crop - 1, crop_cols)  # the processor's crops, row-major
            assert (cr * side + r, cc * side + c) == (top + layout["row"][i], left + layout["col"][i]), i
    # the crops' box is the unpadded grid: each cell a patch of the stitched crops
    assert crops["box"][2] - crops["box"][0] == crops["cols"] * patch
    assert crops["box"][3] - crops["box"][1] == crops["rows"] * patch


def test_onevision_shrunk_grid_matches_the_stock_interpolation(engines):
    """With ``anyres_max_1`` the stock packing shrinks the crops' 8 x 10 grid of a 64 x 80 image bilinearly; the
    layout's shrunk grid has the stock's size, and each row's interpolated joint-grid position lies in its cell."""
    engine = engines["llava-onevision"]
    config = engine.lm.model.config
    inner = engine.lm.model.model
    prepared = engine.prepare(_image(64, 80), "What is it?")
    vc = config.vision_config
    side, patch = vc.image_size // vc.patch_size, vc.patch_size
    before = config.vision_aspect_ratio, inner.config.vision_aspect_ratio
    config.vision_aspect_ratio = inner.config.vision_aspect_ratio = "anyres_max_1"
    try:
        layout = anyres_layout(config, prepared.vision_inputs["image_sizes"][0].tolist(), "llava_onevision")
        rows, newline = _marked_anyres_rows(engine, prepared, side, layout["views"][1]["tiles"][1])
    finally:
        config.vision_aspect_ratio, inner.config.vision_aspect_ratio = before
    crops = layout["views"][1]
    assert "shrunk" in crops["label"] and (crops["rows"], crops["cols"]) == (3, 4)
    assert layout["n"] == rows.shape[0]
    left, top = crops["box"][0] // patch, crops["box"][1] // patch
    h, w = (crops["box"][3] - crops["box"][1]) // patch, (crops["box"][2] - crops["box"][0]) // patch
    checked = 0
    for i in range(layout["n"]):
        if layout["col"][i] < 0:
            assert torch.equal(rows[i], newline), i
            continue
        if layout["view"][i] == 0:
            assert (int(rows[i][2]), int(rows[i][3])) == (layout["row"][i], layout["col"][i]), i
            continue
        assert layout["source"][i] == -1  # a blend of cells of the joint grid
        r0, r1 = layout["row"][i] * h / crops["rows"], (layout["row"][i] + 1) * h / crops["rows"]
        c0, c1 = layout["col"][i] * w / crops["cols"], (layout["col"][i] + 1) * w / crops["cols"]
        gr, gc = rows[i][4].item() - top, rows[i][5].item() - left  # the interpolated joint-grid position
        assert r0 - 0.5 <= gr <= r1 - 0.5 and c0 - 0.5 <= gc <= c1 - 0.5, (i, gr, gc, (r0, r1, c0, c1))
        checked += 1
    assert checked == crops["rows"] * crops["cols"] == 12


@pytest.mark.parametrize("shape", SHAPES)
def test_internvl_layout_matches_the_stock_pixel_shuffle(engines, shape):
    engine = engines["internvl"]
    inner = engine.lm.model.model
    prepared = engine.prepare(_image(*shape), "What is it?")
    layout = engine.adapter.token_layout(prepared)
    n_tiles = prepared.pixel_values.shape[0]
    patches = int(engine.lm.model.config.vision_config.image_size[0] // engine.lm.model.config.vision_config.patch_size[0])
    hidden = engine.lm.model.config.vision_config.hidden_size

    def tower_hook(module, args, output):
        b, t, c = output.last_hidden_state.shape  # [CLS] first, then patches row-major
        marks = torch.zeros_like(output.last_hidden_state)
        p = torch.arange(t - 1)
        marks[:, 1:, 0] = torch.arange(b, dtype=marks.dtype)[:, None]
        marks[:, 1:, 1] = (p // patches).to(marks.dtype)[None]
        marks[:, 1:, 2] = (p % patches).to(marks.dtype)[None]
        output.last_hidden_state = marks
        return output

    def projector_hook(module, args, output):
        x = args[0]  # (tiles, tokens, 4 x hidden): the pixel-shuffled patches, 4 blocks of ``hidden``
        marks = torch.zeros_like(output)
        for k in range(4):
            marks[..., 3 * k:3 * k + 3] = x[..., k * hidden:k * hidden + 3]
        return marks

    handles = [inner.vision_tower.register_forward_hook(tower_hook),
               inner.multi_modal_projector.register_forward_hook(projector_hook)]
    try:
        with torch.no_grad():
            out = inner.get_image_features(pixel_values=prepared.pixel_values)
    finally:
        for h in handles:
            h.remove()
    rows = torch.cat([r.reshape(-1, r.shape[-1]) for r in out.pooler_output])
    assert layout["n"] == rows.shape[0] == prepared.n_image and layout["newline"] == []
    views = layout["views"]
    side = views[-1]["rows"] if n_tiles > 1 else views[0]["rows"]
    tile_cols = views[0]["tiles"][1]
    assert [v["name"] for v in views] == (["tiles", "thumbnail"] if n_tiles > 1 else ["tiles"])
    for i in range(layout["n"]):
        marks = rows[i][:12].view(4, 3).round().int().tolist()
        tiles = {m[0] for m in marks}
        assert tiles == {layout["source"][i]}, (i, tiles, layout["source"][i])
        tile = layout["source"][i]
        if layout["view"][i] == 0:
            tr, tc = divmod(tile, tile_cols)
            r, c = layout["row"][i] - tr * side, layout["col"][i] - tc * side
        else:
            assert tile == n_tiles - 1  # the thumbnail is the last image
            r, c = layout["row"][i], layout["col"][i]
        assert 0 <= r < side and 0 <= c < side, i
        assert {(m[1], m[2]) for m in marks} == {(2 * r + a, 2 * c + b) for a in (0, 1) for b in (0, 1)}, i


@pytest.mark.parametrize("family", ["llava-onevision", "llava-next", "internvl"])
def test_the_views_pictures_are_the_image_the_model_saw(engines, family, tmp_path):
    """``Scope.views``: the crops (tiles) stitched back give the image resized to the best canvas, and the box of the
    token grid holds the picture (not the padding)."""
    from pruning.compare import Scope

    scope = Scope.__new__(Scope)  # the engine of the module's checkpoint, without loading it again
    scope.engine, scope.family = engines[family], engines[family].lm.model.config.model_type
    scope.family_name = scope.family
    image = _image(64, 80)
    prepared = scope.engine.prepare(image, "What is it?")
    layout = scope.engine.adapter.token_layout(prepared)
    pictures = scope.views(prepared, layout)
    assert [p.shape[:2] for p in pictures] == [tuple(v["size"]) for v in layout["views"]]
    stitched = pictures[0 if family == "internvl" else 1]
    view = layout["views"][0 if family == "internvl" else 1]
    x0, y0, x1, y1 = view["box"]
    inside = stitched[y0:y1, x0:x1].astype(int)
    expected = np.asarray(image.resize((x1 - x0, y1 - y0), Image.BICUBIC)).astype(int)
    assert np.abs(inside - expected).mean() < 12, np.abs(inside - expected).mean()


def _pack_marked(model_cls, config, image_hw, family):
    """The stock ``pack_image_features`` of ``model_cls`` (called with only the config it reads, no weights) on
    marked features of one image at the config's real widths: per crop token (1, crop, joint row, joint column)."""
    from types import SimpleNamespace

    vc = config.vision_config
    side = vc.image_size // vc.patch_size
    layout = anyres_layout(config, image_hw, family)
    crop_rows, crop_cols = layout["views"][1]["tiles"]
    crops = 1 + crop_rows * crop_cols
    t = torch.arange(side * side)
    marks = torch.zeros(crops, side * side, 4, dtype=torch.float64)
    marks[..., 0] = 1
    marks[..., 1] = torch.arange(crops, dtype=torch.float64)[:, None]
    b = torch.arange(crops) - 1
    marks[..., 2] = ((b // crop_cols)[:, None] * side + t[None] // side).double()
    marks[..., 3] = ((b % crop_cols)[:, None] * side + t[None] % side).double()
    marks[0, :, 2], marks[0, :, 3] = (t // side).double(), (t % side).double()  # the base image: its own cells
    newline = torch.full((4,), -5.0, dtype=torch.float64)
    sizes = torch.tensor([list(image_hw)])
    fake = SimpleNamespace(config=config)
    if family == "llava_onevision":
        packed, _ = model_cls.pack_image_features(fake, [marks], sizes, image_newline=newline,
                                                  vision_aspect_ratio=config.vision_aspect_ratio)
    else:
        packed, _ = model_cls.pack_image_features(fake, [marks], sizes, config.vision_feature_select_strategy,
                                                  image_newline=newline)
    return layout, packed[0], newline, vc.patch_size


@pytest.mark.parametrize("family", ["llava_onevision", "llava_next"])
@pytest.mark.parametrize("shape", [(480, 640), (1000, 1500), (2000, 300), (336, 336), (3000, 4000), (700, 2100)])
def test_anyres_layout_at_real_widths(family, shape):
    """The layout of the real configs' geometry (OneVision: SigLIP 384/14, 36 pinpoints up to 2304, anyres_max_9, so
    large images are shrunk; NeXT: CLIP 336/14, its 5 pinpoints) against the stock ``pack_image_features`` on marked
    features: each row's view, newline, joint-grid cell (or, shrunk, the interpolated position inside its cell)."""
    from transformers import LlavaNextConfig, LlavaOnevisionConfig
    from transformers.models.llava_next.modeling_llava_next import LlavaNextModel
    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

    config = LlavaOnevisionConfig() if family == "llava_onevision" else LlavaNextConfig()
    model_cls = LlavaOnevisionModel if family == "llava_onevision" else LlavaNextModel
    layout, rows, newline, patch = _pack_marked(model_cls, config, shape, family)
    assert layout["n"] == rows.shape[0]
    crops = layout["views"][1]
    shrunk = "shrunk" in crops["label"]
    left, top = crops["box"][0] // patch, crops["box"][1] // patch
    h, w = (crops["box"][3] - crops["box"][1]) // patch, (crops["box"][2] - crops["box"][0]) // patch
    for i in range(layout["n"]):
        if layout["col"][i] < 0:
            assert torch.equal(rows[i], newline), i
            continue
        assert rows[i][0] == 1, i
        if layout["view"][i] == 0:
            assert rows[i][1:].tolist() == [0, layout["row"][i], layout["col"][i]], i
        elif not shrunk:
            assert rows[i][1] == layout["source"][i], i
            assert rows[i][2:].tolist() == [top + layout["row"][i], left + layout["col"][i]], i
        else:
            r0, r1 = layout["row"][i] * h / crops["rows"], (layout["row"][i] + 1) * h / crops["rows"]
            c0, c1 = layout["col"][i] * w / crops["cols"], (layout["col"][i] + 1) * w / crops["cols"]
            gr, gc = rows[i][2].item() - top, rows[i][3].item() - left
            assert r0 - 0.5 - 1e-9 <= gr <= r1 - 0.5 + 1e-9 and c0 - 0.5 - 1e-9 <= gc <= c1 - 0.5 + 1e-9, (i, gr, gc)
    if family == "llava_onevision" and shape == (3000, 4000):
        assert shrunk  # 6 x 6 crops' worth of tokens, more than anyres_max_9 allows


@pytest.mark.parametrize("shape", [(480, 640), (1000, 1500), (2000, 300), (448, 448), (3000, 4000)])
def test_internvl_layout_at_real_widths(shape):
    """InternVL's real geometry (448 px tiles, patch 14, pixel shuffle 0.5: 16 x 16 tokens a tile, up to 12 tiles): the
    stock GotOcr2 processor's tiles for the image, and the layout's canvas, count and thumbnail agree."""
    from transformers import InternVLConfig
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    config = InternVLConfig()
    processor = GotOcr2ImageProcessorPil(size={"height": 448, "width": 448}, crop_to_patches=True, min_patches=1,
                                         max_patches=12)
    tiles = processor(images=_image(*shape), return_tensors="pt")["pixel_values"].shape[0]
    layout = internvl_layout(config, processor, shape, tiles)
    assert layout["n"] == tiles * 256
    first = layout["views"][0]
    assert first["rows"] * first["cols"] == 256 * (tiles - 1 if tiles > 1 else 1)
    assert first["size"] == [first["tiles"][0] * 448, first["tiles"][1] * 448]
    if tiles > 1:
        assert layout["views"][1]["name"] == "thumbnail" and layout["source"][-1] == tiles - 1
        # the canvas keeps the picture's orientation: wider than tall stays so
        h, w = shape
        assert (first["tiles"][1] >= first["tiles"][0]) == (w >= h)
