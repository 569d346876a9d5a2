"""How a number reads in printed lines and report tables: one formatter for all of them."""

from __future__ import annotations

import math
import statistics
from typing import Any


def fmt_number(v: Any, spec: str = ".4f", scale: float = 1) -> str:
    """``v * scale`` formatted with ``spec``; ``-`` for a missing value (None or NaN); any other
    value (a name) as its text. ``fmt_number(0.8123)`` is ``0.8123``; as a percentage,
    ``fmt_number(0.8123, ".2f", scale=100)`` is ``81.23``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v * scale if scale != 1 else v, spec) if isinstance(v, (int, float)) else str(v)


def percent(v: float | None) -> str:
    """A fraction as a percentage with two decimals (``0.8123`` -> ``81.23``); ``-`` when missing."""
    return fmt_number(v, ".2f", scale=100)


def mean_std(vals: list[float]) -> tuple[float, float | None]:
    """Mean and sample std of ``vals`` (std None for one value: no spread measured)."""
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)
