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
MAX_ASPECT = 20  # refuse a longer side more than 20x the shorter, from the header: the processor resizes the shorter
#                  side to its input size (336 for LLaVA-1.5), so a 1x100000 image would become 336x33,600,000 pixels


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
            raise ValueError(f"image {label} does not exist")
        if os.path.getsize(path) == 0:
            raise ValueError(f"image {label} is an empty (0-byte) file")
        image, failed = None, None
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
            failed = f"cannot read image {label}: {e}"
        except ValueError:  # _check_size's refusal: nothing decoded, the file closed
            if image is not None:
                image.close()
            raise
        if failed is not None:
            # Raised here, not inside the except: a decode that failed half way holds its pixels (up to MAX_PIXELS x
            # 4 bytes) in the frames of its traceback, and a refusal chained to it would keep them for as long as the
            # refusal lives (the app's error message outlived the request by one request: +190 MiB)
            if image is not None:
                image.close()
            image = None
            raise ValueError(failed)
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
    orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation; 1 = upright, 2..8 a flip and/or rotation
    if orientation in range(2, 9):
        image = ImageOps.exif_transpose(image)
        said.append(f"EXIF orientation {orientation}: the image was rotated/flipped upright")
    elif orientation not in (None, 1):
        said.append(f"EXIF orientation {orientation!r} is not a valid value (1-8): the image is used as stored")
    if image.mode.startswith("I;16") or image.mode == "I":
        import numpy as np

        values = np.asarray(image)
        if image.mode != "I" or values.max(initial=0) > 255:  # 16-bit samples: keep the top 8 bits
            image = Image.fromarray((values.clip(0, 65535) >> 8).astype(np.uint8))
            said.append("16-bit image: reduced to 8 bits per sample" if image.mode != "I" and values.dtype != np.int32
                        else "32-bit integer image: samples clipped to 0..65535, then reduced to 8 bits per sample")
    return image.convert("RGB")


def _check_size(size: tuple[int, int], label: str) -> None:
    """The declared size (from the header: PIL's ``open`` reads no pixels) against the pixel and aspect limits."""
    w, h = size
    if w * h > MAX_PIXELS:
        raise ValueError(f"image {label} declares {w}x{h} pixels, more than the {MAX_PIXELS:,} accepted")
    if min(w, h) > 0 and max(w, h) > MAX_ASPECT * min(w, h):
        raise ValueError(f"image {label} is {w}x{h} pixels: an aspect ratio of {max(w, h) / min(w, h):,.0f}:1, more "
                         f"than the {MAX_ASPECT}:1 accepted (the model resizes the shorter side; crop the image first)")


def check_header(path: str, label: str | None = None) -> tuple[int, int]:
    """Read only the header of the image file at ``path`` and check its declared size; returns (width, height).
    For callers that must refuse a bomb before anything else decodes it (the app's data-URL and API paths)."""
    from PIL import Image, UnidentifiedImageError

    label = label or repr(str(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                size = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"image {label} is too large to decode safely: {e}") from e
    except UnidentifiedImageError as e:
        raise ValueError(f"cannot read image {label}: not an image file (or a format PIL cannot open)") from e
    except OSError as e:
        raise ValueError(f"cannot read image {label}: {e}") from e
    _check_size(size, label)
    return size


__all__ = ["load_image", "check_header", "MAX_PIXELS", "MAX_ASPECT"]
