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
