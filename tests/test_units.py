"""app/units.py: numbers in units a reader takes in at a glance."""

import pytest

from app import units


@pytest.mark.parametrize("tflops, text", [(0.0007417, "742 MFLOPs"), (0.0025, "2.50 GFLOPs"), (2.5, "2.50 TFLOPs"),
                                          (0.9999996, "1.00 TFLOPs"), (999.6e-6, "1.00 GFLOPs"), (0.0, "0 FLOPs"),
                                          (1234.0, "1.23 PFLOPs"), (None, "n/a")])
def test_format_flops_picks_the_unit(tflops, text):
    assert units.format_flops(tflops) == text


def test_one_unit_for_an_axis_or_a_column():
    factor, unit = units.flops_unit([1.08e-4, 2.3e-4, 6.5e-4])
    assert unit == "MFLOPs" and factor == pytest.approx(1e6)
    assert [round(v * factor) for v in (1.08e-4, 6.5e-4)] == [108, 650]
    assert units.format_flops(2.5e-3, unit=(factor, unit)) == "2500 MFLOPs"
    assert units.flops_unit([]) == (1e12, "FLOPs")


@pytest.mark.parametrize("n, text", [(557056, "544 KiB"), (100, "100 bytes"), (2**20 - 1, "1.00 MiB"),
                                     (38.6 * 2**20, "38.6 MiB"), (3 * 2**30, "3.00 GiB")])
def test_format_bytes(n, text):
    assert units.format_bytes(n) == text


@pytest.mark.parametrize("ms, text", [(16.24, "16.2 ms"), (0.01234, "0.0123 ms"), (1350, "1.35 s"),
                                      (999.96, "1.00 s"), (float("nan"), "n/a")])
def test_format_ms(ms, text):
    assert units.format_ms(ms) == text
