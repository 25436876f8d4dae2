"""Argument checks shared by the pure functions of the data and objective modules."""
from __future__ import annotations

import numbers
from typing import Any


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as ``int`` after checking it is an integer (bools rejected) and, if given, ``>= minimum``.

    Raises:
        ValueError: naming ``name`` and the offending value.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
