"""Numbers in units a reader can take in at a glance: GFLOPs rather than 0.0007417 TFLOPs, KiB rather than 557056
bytes, one unit chosen for a whole axis or column. Plain Python (no torch, no plotly)."""

from __future__ import annotations

import math

FLOP_UNITS = ((1e15, "PFLOPs"), (1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "kFLOPs"), (1.0, "FLOPs"))
BYTE_UNITS = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"), (1, "bytes"))


def _pick(largest: float, units) -> tuple[float, str]:
    largest = abs(largest) if largest is not None and math.isfinite(largest) else 0.0
    for size, name in units:
        if largest >= size:
            return size, name
    return units[-1]


def flops_unit(tflops) -> tuple[float, str]:
    """``(factor, unit)`` for values given in TFLOPs (the library's unit) so that the largest reads 1 to 999:
    multiply each value by ``factor``. ``tflops``: one number or an iterable (the largest decides)."""
    values = [tflops] if isinstance(tflops, (int, float)) or tflops is None else list(tflops)
    largest = max((abs(v) for v in values if v is not None and math.isfinite(v)), default=0.0) * 1e12
    size, name = _pick(largest, FLOP_UNITS)
    return 1e12 / size, name


def _digits(value: float, significant: int) -> str:
    if value == 0:
        return "0"
    value = float(f"{value:.{significant}g}")  # rounded first: 0.99996 -> 1.0, then written as 1.00
    decimals = max(0, significant - 1 - int(math.floor(math.log10(abs(value)))))
    return f"{value:.{decimals}f}"


def format_flops(tflops: float | None, significant: int = 3, unit: tuple[float, str] | None = None) -> str:
    """``0.0007417`` (TFLOPs) -> ``"742 GFLOPs"``; ``unit`` (from ``flops_unit``) to write a column in one unit."""
    if tflops is None or not math.isfinite(tflops):
        return "n/a"
    if unit is None:
        unit = flops_unit(tflops)
        rounded = float(_digits(tflops * unit[0], significant))
        if abs(rounded) >= 1000 and unit[1] != FLOP_UNITS[0][1]:  # 999.96 GFLOPs rounds to 1.00 TFLOPs
            unit = flops_unit(rounded / unit[0])
    factor, name = unit
    return f"{_digits(tflops * factor, significant)} {name}"


def bytes_unit(values) -> tuple[float, str]:
    """``(divisor, unit)`` in binary units (KiB, MiB, ...) for a byte count or an iterable of them."""
    values = [values] if isinstance(values, (int, float)) or values is None else list(values)
    largest = max((abs(v) for v in values if v is not None and math.isfinite(v)), default=0.0)
    return _pick(largest, BYTE_UNITS)


def format_bytes(n: float | None, significant: int = 3, unit: tuple[float, str] | None = None) -> str:
    """``557056`` -> ``"544 KiB"``; ``unit`` (from ``bytes_unit``) to write a column in one unit."""
    if n is None or not math.isfinite(n):
        return "n/a"
    if unit is None:
        unit = bytes_unit(n)
        if unit[1] != "bytes" and abs(float(_digits(n / unit[0], significant))) >= 1000 and unit != BYTE_UNITS[0]:
            unit = BYTE_UNITS[[u[1] for u in BYTE_UNITS].index(unit[1]) - 1]
    size, name = unit
    if name == "bytes":
        return f"{int(round(n))} bytes"
    return f"{_digits(n / size, significant)} {name}"


def format_ms(ms: float | None, significant: int = 3) -> str:
    """Milliseconds as ``"16.2 ms"``, or seconds from 1000 ms on (``"1.35 s"``)."""
    if ms is None or not math.isfinite(ms):
        return "n/a"
    if abs(float(_digits(ms, significant))) >= 1000:
        return f"{_digits(ms / 1000, significant)} s"
    return f"{_digits(ms, significant)} ms"


__all__ = ["flops_unit", "format_flops", "bytes_unit", "format_bytes", "format_ms"]
