"""Where each packed visual token lies: a plain description of the N rows a family's image becomes (issue 27).

The engine prunes the N image rows of a prompt as one sequence. On LLaVA-1.5 and Qwen2.5-VL those rows are one
row-major grid of the picture the model sees; on the anyres families and InternVL they are several grids packed one
after the other. ``TokenLayout`` (a plain dict, no tensors) says, for each packed row:

- ``view[i]``: which view it belongs to (an index into ``views``);
- ``row[i]``, ``col[i]``: its cell in that view's token grid, or ``col[i] == -1`` for an image-newline token (it
  closes row ``row[i]`` of its view; it has no cell and no pixels);
- ``source[i]``: the index, in the processor's ``pixel_values``, of the image (crop, tile) whose vision features
  became the row; -1 for a newline token and for OneVision's rows shrunk bilinearly over several crops.

and, per view, ``name`` ("image", "base", "crops", "tiles", "thumbnail"), ``label`` (in words), ``rows`` x ``cols``
(its token grid), ``sources`` and ``tiles`` ([rows, cols]: the processor images it is stitched from, row-major, each
``tile_px`` [h, w] pixels), ``size`` ([h, w] pixels of the stitched picture) and ``box`` ([x0, y0, x1, y1]: the
pixels its token grid covers, each cell (x1 - x0) / cols wide; the crops' padding outside it has no tokens).

How the rows are packed, read from the stock transformers code (called here, never copied or patched):

- LLaVA-NeXT / LLaVA-OneVision (``pack_image_features``): the base image's side x side tokens row-major (side =
  vision image_size / patch_size, [CLS] dropped); then the crops, laid out as ``get_anyres_image_grid_shape`` says
  (crop rows x crop columns of the best pinpoint resolution; the processor's crops are row-major), each crop's
  side x side tokens placed at (crop row x side + r, crop column x side + c) of one joint grid; that grid is cut to
  the picture's own aspect ratio by ``unpad_image`` (called here on a grid of cell numbers, so its cut is its own);
  OneVision then shrinks it bilinearly when it holds more than ``anyres_max_K`` crops' worth of tokens by a factor
  over 1.1 (to int(h // ratio) x int(w // ratio)); finally one newline token after each row of the joint grid.
- InternVL (``get_image_features``, GotOcr2's ``crop_image_to_patches``): tiles in row-major order of the canvas
  ``get_optimal_tiled_canvas`` picks (columns x rows of square tiles), then a thumbnail of the whole image when there
  is more than one tile; each tile's (side x side) patches ([CLS] dropped) are pixel-shuffled by the downsample ratio
  (0.5): token (r, c) of a tile holds the 2 x 2 patches (2r..2r+1, 2c..2c+1), row-major, tile after tile.

tests/test_layout.py checks each against the stock ``get_image_features`` with identifiable features.
"""

from __future__ import annotations

import math
import sys


def _view(name: str, label: str, rows: int, cols: int, sources: list[int], tiles: list[int], tile_px: list[int],
          box: list[int] | None = None) -> dict:
    size = [tiles[0] * tile_px[0], tiles[1] * tile_px[1]]
    return {"name": name, "label": label, "rows": rows, "cols": cols, "sources": sources, "tiles": tiles,
            "tile_px": tile_px, "size": size, "box": box or [0, 0, size[1], size[0]]}


def _empty(views: list[dict]) -> dict:
    return {"views": views, "view": [], "row": [], "col": [], "source": []}


def _add(layout: dict, view: int, row: int, col: int, source: int) -> None:
    layout["view"].append(view)
    layout["row"].append(row)
    layout["col"].append(col)
    layout["source"].append(source)


def _finish(layout: dict, family: str) -> dict:
    layout["family"] = family
    layout["n"] = len(layout["view"])
    layout["newline"] = [i for i, c in enumerate(layout["col"]) if c < 0]
    return layout


def grid_layout(rows: int, cols: int, height: int, width: int, family: str = "llava") -> dict:
    """One row-major grid over one picture of ``height`` x ``width`` px (LLaVA-1.5, Qwen2.5-VL)."""
    layout = _empty([_view("image", "the image", rows, cols, [0], [1, 1], [height, width])])
    for p in range(rows * cols):
        _add(layout, 0, p // cols, p % cols, 0)
    return _finish(layout, family)


def anyres_layout(config, image_hw, family: str) -> dict:
    """LLaVA-NeXT / LLaVA-OneVision: the packed rows of one image of ``image_hw`` (height, width) px (the processor's
    ``image_sizes``), for a model ``config`` (``LlavaNextConfig`` / ``LlavaOnevisionConfig``)."""
    import torch

    modeling = sys.modules[_modeling_module(family)]
    vc = config.vision_config
    crop_px, patch = vc.image_size, vc.patch_size
    side = crop_px // patch
    h0, w0 = (int(x) for x in image_hw)
    crop_rows, crop_cols = modeling.get_anyres_image_grid_shape([h0, w0], config.image_grid_pinpoints, crop_px)
    full_h, full_w = crop_rows * side, crop_cols * side
    cells = torch.arange(full_h * full_w).view(1, full_h, full_w)
    kept = modeling.unpad_image(cells, [h0, w0])[0]  # the stock cut, on cell numbers
    h, w = kept.shape
    top, left = divmod(int(kept[0, 0]), full_w)
    rows, cols = h, w
    if family == "llava_onevision":
        most = int(getattr(config, "vision_aspect_ratio", "anyres_max_9").strip("anyres_max_"))
        ratio = math.sqrt(h * w / (most * side ** 2))
        if ratio > 1.1:
            rows, cols = int(h // ratio), int(w // ratio)
    shrunk = (rows, cols) != (h, w)
    views = [_view("base", "base image", side, side, [0], [1, 1], [crop_px, crop_px]),
             _view("crops", f"{crop_rows} x {crop_cols} crops" + (" (shrunk)" if shrunk else ""), rows, cols,
                   list(range(1, 1 + crop_rows * crop_cols)), [crop_rows, crop_cols], [crop_px, crop_px],
                   [left * patch, top * patch, (left + w) * patch, (top + h) * patch])]
    layout = _empty(views)
    for p in range(side * side):
        _add(layout, 0, p // side, p % side, 0)
    for r in range(rows):
        for c in range(cols):
            source = -1
            if not shrunk:
                gr, gc = top + r, left + c  # the joint grid's cell
                source = 1 + (gr // side) * crop_cols + gc // side
            _add(layout, 1, r, c, source)
        _add(layout, 1, r, -1, -1)  # the newline closing row r
    return _finish(layout, family)


def _modeling_module(family: str) -> str:
    name = {"llava_next": "llava_next", "llava_onevision": "llava_onevision"}[family]
    module = f"transformers.models.{name}.modeling_{name}"
    __import__(module)
    return module


def internvl_layout(config, image_processor, image_hw, n_tiles: int) -> dict:
    """InternVL: the packed rows of one image of ``image_hw`` (height, width) px cut by ``image_processor`` (GotOcr2's)
    into ``n_tiles`` tiles (the thumbnail included), for a model ``config`` (``InternVLConfig``)."""
    vc = config.vision_config
    tile_px = list(vc.image_size) if isinstance(vc.image_size, (list, tuple)) else [vc.image_size] * 2
    patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
    side = int(tile_px[0] // patch * config.downsample_ratio)  # tokens per tile side after the pixel shuffle
    canvas = sys.modules[type(image_processor).__module__].get_optimal_tiled_canvas
    h0, w0 = (int(x) for x in image_hw)
    size = image_processor.size
    cols, rows = canvas((h0, w0), (size.height, size.width), image_processor.min_patches,
                        image_processor.max_patches)
    if n_tiles == 1:  # no crops (crop_to_patches off, or a 1 x 1 canvas): the image resized to one tile
        rows = cols = 1
    elif n_tiles != rows * cols + 1:
        raise ValueError(f"internvl: {n_tiles} tiles, but the stock canvas for a {w0} x {h0} image is {cols} x {rows} "
                         "tiles plus a thumbnail")
    views = [_view("tiles", f"{rows} x {cols} tiles" if n_tiles > 1 else "the image (one tile)", rows * side,
                   cols * side, list(range(rows * cols)), [rows, cols], tile_px)]
    if n_tiles > 1:
        views.append(_view("thumbnail", "thumbnail", side, side, [n_tiles - 1], [1, 1], tile_px))
    layout = _empty(views)
    for tile in range(n_tiles):
        thumb = n_tiles > 1 and tile == n_tiles - 1
        tr, tc = (0, 0) if thumb else divmod(tile, cols)
        for p in range(side * side):
            r, c = divmod(p, side)
            _add(layout, 1 if thumb else 0, tr * side + r, tc * side + c, tile)
    return _finish(layout, "internvl")


def check_layout(layout: dict, n: int, family: str) -> dict:
    """The layout must describe exactly the ``n`` rows the prompt holds; anything else is refused in words."""
    if layout["n"] != n:
        raise ValueError(f"{family}: the token layout describes {layout['n']} rows, but the prompt holds {n} image "
                         "rows (the processor and the model's packing disagree)")
    return layout


__all__ = ["grid_layout", "anyres_layout", "internvl_layout", "check_layout"]
