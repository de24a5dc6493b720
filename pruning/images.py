"""Image loading and validation shared by the CLI, the bench and the app (one place, one set of messages).

``load_image`` accepts a file path, a PIL image or an (H, W[, C]) uint8 array and returns an RGB PIL
image the processor can take. A missing or unreadable file, a declared size beyond ``MAX_PIXELS``
(decompression bombs), or an empty image is a ``ValueError`` that names the problem. What it changes in
an image it accepts (an animation's later frames dropped, an EXIF rotation applied, 16-bit samples reduced
to 8 bits) it says, in words, in the optional ``notes`` list.
"""

from __future__ import annotations

import os
import warnings

MAX_PIXELS = 50_000_000  # refuse larger declared sizes before decoding (PIL's own bomb limit is ~179M)


def load_image(source, name: str | None = None, notes: list | None = None):
    """Open and validate an image; returns an RGB ``PIL.Image.Image`` (first frame of an animation,
    EXIF orientation applied, 16-bit samples scaled to 8 bits). ``notes``: a list this appends to, one
    sentence per change made to the image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = name or (repr(str(source)) if isinstance(source, (str, os.PathLike)) else "the image")
    if source is None:
        raise ValueError("no image given: upload an image or pick an example")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ValueError(f"image {path!r} does not exist")
        if os.path.getsize(path) == 0:
            raise ValueError(f"image {path!r} is an empty (0-byte) file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(path)
                _check_size(image.size, label)
                image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ValueError(f"image {label} is too large to decode safely: {e}") from e
        except UnidentifiedImageError as e:
            raise ValueError(f"cannot read image {label}: not an image file (or a format PIL cannot open)") from e
        except (OSError, SyntaxError) as e:
            raise ValueError(f"cannot read image {label}: {e}") from e
    elif isinstance(source, Image.Image):
        image = source
    else:
        try:
            import numpy as np

            array = np.asarray(source)
        except Exception as e:  # noqa: BLE001 - any conversion failure is the caller's bad input
            raise ValueError(f"{label}: expected a file path, a PIL image or an array, got {type(source).__name__}") from e
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            raise ValueError(f"{label}: expected an (H, W) or (H, W, C) uint8 array, got {array.dtype} {array.shape}")
        image = Image.fromarray(array)
    _check_size(image.size, label)
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image {label} is empty ({image.width}x{image.height})")
    said = notes if notes is not None else []
    if getattr(image, "is_animated", False):
        try:
            frames = image.n_frames
            image.seek(0)
        except (OSError, EOFError, ValueError) as e:
            raise ValueError(f"cannot read image {label}: {e}") from e
        said.append(f"animated {image.format or 'image'}: the first of {frames} frames is used")
    orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation; 1 = upright
    if orientation not in (None, 1):
        image = ImageOps.exif_transpose(image)
        said.append(f"EXIF orientation {orientation}: the image was rotated/flipped upright")
    if image.mode.startswith("I;16") or image.mode == "I":
        import numpy as np

        values = np.asarray(image)
        if image.mode != "I" or values.max(initial=0) > 255:  # 16-bit samples: keep the top 8 bits
            image = Image.fromarray((values.clip(0, 65535) >> 8).astype(np.uint8))
            said.append("16-bit image: reduced to 8 bits per sample")
    return image.convert("RGB")


def _check_size(size: tuple[int, int], label: str) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise ValueError(f"image {label} declares {w}x{h} pixels, more than the {MAX_PIXELS:,} accepted")


__all__ = ["load_image", "MAX_PIXELS"]
