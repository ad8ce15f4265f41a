"""Parameter domains: the one-line checks every part and method factory runs at construction.

A value outside its domain (a negative DPO β turns the preference around, γ = 2 in HPT's gate routes
every prompt to SFT) would otherwise train without a word. Each check raises ``ParameterError``, a
``ValueError`` that names the owner, the parameter, the domain, why, and the value:

    dpo: beta must be > 0 (it scales the implied reward; ...), got -1

``ParameterError.at(path)`` is the same message for a config, with the parameter's full key
(``method.beta``), which ``methods.compose`` uses. Booleans are refused where numbers are expected
(``True`` is an ``int`` to Python), and so are NaN and ±inf.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable


def _name(owner) -> str:
    return owner if isinstance(owner, str) else type(owner).__name__


class ParameterError(ValueError):
    """A method's or part's parameter outside its domain."""

    def __init__(self, owner, parameter: str, value, domain: str, why: str = ""):
        self.owner, self.parameter, self.value, self.domain, self.why = _name(owner), parameter, value, domain, why
        super().__init__(f"{self.owner}: {parameter} must be {domain}{self._reason()}, got {value!r}")

    def _reason(self) -> str:
        return f" ({self.why})" if self.why else ""

    def at(self, path: str, key: str | None = None) -> str:
        """The message with the parameter's full config key, ``path.key`` (key: the parameter's name):
        ``method.beta must be > 0 for dpo (...), got -1``."""
        return (f"{path}.{key or self.parameter} must be {self.domain} for {self.owner}{self._reason()}, "
                f"got {self.value!r}")


def is_real(value) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '≥'} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '≤'} {high:g}"
    return "a finite number"


def number(owner, name: str, value, why: str = "", *, low=None, high=None,
           low_open: bool = False, high_open: bool = False) -> None:
    """``value`` a finite real (not a bool) within the bounds (closed unless ``*_open``)."""
    domain = _bounds(low, high, low_open, high_open)
    inside = is_real(value) and (
        (low is None or (value > low if low_open else value >= low))
        and (high is None or (value < high if high_open else value <= high)))
    if not inside:
        if not is_real(value) and (low is not None or high is not None):
            domain = f"a finite number {domain}"
        raise ParameterError(owner, name, value, domain, why)


def positive(owner, name: str, value, why: str = "") -> None:
    """value > 0."""
    number(owner, name, value, why, low=0, low_open=True)


def non_negative(owner, name: str, value, why: str = "") -> None:
    """value ≥ 0."""
    number(owner, name, value, why, low=0)


def fraction(owner, name: str, value, why: str = "") -> None:
    """0 ≤ value ≤ 1."""
    number(owner, name, value, why, low=0, high=1)


def integer(owner, name: str, value, why: str = "", *, low: int = 1) -> None:
    """An integer ≥ ``low`` (an integral float such as 20.0 counts; a bool does not)."""
    whole = is_real(value) and float(value).is_integer()
    if not (whole and value >= low):
        raise ParameterError(owner, name, value, f"an integer ≥ {low}", why)


def one_of(owner, name: str, value, options: Iterable, why: str = "") -> None:
    """``value`` one of ``options`` (compared by equality, so unhashable values are refused cleanly)."""
    options = tuple(options)
    if isinstance(value, bool) or not any(type(value) is type(o) and value == o for o in options):
        raise ParameterError(owner, name, value, "one of " + ", ".join(map(repr, options)), why)


def flag(owner, name: str, value, why: str = "") -> None:
    """``value`` a bool (a string such as "no" is truthy and would silently mean True)."""
    if not isinstance(value, bool):
        raise ParameterError(owner, name, value, "true or false", why)


def text(owner, name: str, value, why: str = "") -> None:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ParameterError(owner, name, value, "a non-empty string", why)


def part(owner, name: str, value, kind: str, *members: str) -> None:
    """``value`` has the protocol's ``members`` (a part, not a number or a name)."""
    if not all(hasattr(value, member) for member in members):
        raise ParameterError(owner, name, value, f"a {kind} (with {', '.join(members)})")


__all__ = ["ParameterError", "flag", "fraction", "integer", "is_real", "non_negative", "number", "one_of", "part",
           "positive", "text"]
