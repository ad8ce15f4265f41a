"""The one error the data layer raises for bad input data."""
from __future__ import annotations

from typing import Any

# Characters str.splitlines breaks on: escaped so that a message stays one line whatever a record holds.
_LINE_BREAKS = {c: repr(chr(c))[1:-1] for c in (0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)}


class DataError(ValueError):
    """Bad input data; the message names the file, the line (or row) and the field.

    The message is one line and printable: line breaks and lone surrogates quoted from a record (or
    from a library's own message) are written as escapes.
    """

    def __init__(self, message: Any = "", *args: Any) -> None:
        text = str(message).translate(_LINE_BREAKS).encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(text, *args)


def one_line(text: Any) -> str:
    """A library's error message on one line (pyarrow's and datasets' span several)."""
    return " ".join(str(text).split())


def type_name(value: Any) -> str:
    """JSON-ish name of a value's type, for messages (``null``, ``list``, ``int`` ...)."""
    if value is None:
        return "null"
    return type(value).__name__
