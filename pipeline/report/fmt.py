"""How a number reads in printed lines and report tables: one formatter for all of them."""

from __future__ import annotations

import math
from typing import Any


def fmt_number(v: Any, spec: str = ".4f", scale: float = 1) -> str:
    """``v * scale`` formatted with ``spec``; ``-`` for a missing value (None or NaN); any other
    value (a name) as its text. ``fmt_number(0.8123)`` is ``0.8123``; as a percentage,
    ``fmt_number(0.8123, ".2f", scale=100)`` is ``81.23``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v * scale if scale != 1 else v, spec) if isinstance(v, (int, float)) else str(v)
