"""The one error the data layer raises for bad input data."""
from __future__ import annotations

from typing import Any


class DataError(ValueError):
    """Bad input data; the message names the file, the line (or row) and the field."""


def type_name(value: Any) -> str:
    """JSON-ish name of a value's type, for messages (``null``, ``list``, ``int`` ...)."""
    if value is None:
        return "null"
    return type(value).__name__
