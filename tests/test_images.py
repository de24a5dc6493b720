"""pruning.images.load_image: one loader for the CLI, the bench and the app."""

import numpy as np
import pytest
from PIL import Image

from pruning import images


def test_reads_paths_pil_and_arrays(tmp_path):
    arr = np.random.RandomState(0).randint(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    for source in (tmp_path / "a.png", str(tmp_path / "a.png"), Image.fromarray(arr), arr):
        img = images.load_image(source)
        assert img.mode == "RGB" and img.size == (30, 20)
        assert np.array_equal(np.asarray(img), arr)


def test_grayscale_rgba_and_palette_become_rgb(tmp_path):
    for mode in ("L", "RGBA", "P", "CMYK"):
        Image.new(mode, (8, 6)).save(tmp_path / f"x-{mode}.{'jpg' if mode == 'CMYK' else 'png'}")
        assert images.load_image(tmp_path / f"x-{mode}.{'jpg' if mode == 'CMYK' else 'png'}").mode == "RGB"


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_text("not an image"), "cannot read image"),
])
def test_bad_files_name_the_problem(tmp_path, make, message):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ValueError, match=message):
        images.load_image(path)


def test_truncated_png(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read image"):
        images.load_image(tmp_path / "cut.png")


def test_decompression_bomb_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="more than the 1,000 accepted"):
        images.load_image(tmp_path / "big.png")


def test_no_image_and_wrong_types():
    with pytest.raises(ValueError, match="no image given"):
        images.load_image(None)
    with pytest.raises(ValueError, match="uint8 array"):
        images.load_image(np.zeros((4, 4), np.float32))


def test_invalid_exif_orientation_is_said_and_nothing_is_rotated(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 9  # not an orientation (1-8)
    Image.fromarray(stored).save(tmp_path / "o9.jpg", exif=exif, quality=95)
    notes = []
    img = images.load_image(str(tmp_path / "o9.jpg"), notes=notes)
    assert img.size == (40, 20)  # as stored
    assert notes == ["EXIF orientation 9 is not a valid value (1-8): the image is used as stored"]


def test_int32_tiff_note_says_what_was_done(tmp_path):
    values = (np.arange(30 * 40).reshape(30, 40) * 50).astype(np.int32)  # up to 59950
    Image.fromarray(values, mode="I").save(tmp_path / "i32.tif")
    notes = []
    img = images.load_image(str(tmp_path / "i32.tif"), notes=notes)
    assert notes == ["32-bit integer image: samples clipped to 0..65535, then reduced to 8 bits per sample"]
    assert np.array_equal(np.asarray(img)[..., 0], (values >> 8).astype(np.uint8))


def test_header_check_refuses_extreme_aspect_without_decoding(tmp_path):
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", 1, 100_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    (tmp_path / "thin.png").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="100,000:1"):
        images.check_header(str(tmp_path / "thin.png"), "'thin.png'")
    Image.new("RGB", (200, 10)).save(tmp_path / "ok.png")
    assert images.check_header(str(tmp_path / "ok.png")) == (200, 10)


def test_a_failed_decode_gives_its_pixels_back_with_the_refusal(tmp_path):
    """A file whose header passes but whose decoding fails half way: the refusal chains no traceback (whose frames
    would hold the half-decoded pixels for as long as the message lives; in the app, until the next request)."""
    noise = np.random.RandomState(0).randint(0, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "whole.png")
    raw = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "half.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="half.png.*truncated") as info:
        images.load_image(str(tmp_path / "half.png"))
    assert info.value.__cause__ is None and info.value.__context__ is None
