"""The method registry: names → factories. It exists only for the command line and configs;
in code a method is just the value its factory returns."""
from __future__ import annotations

import inspect

from unigrad.methods.preference import dpo, f_dpo, ipo, orpo, sft, simpo

REGISTRY = {
    "sft": sft,
    "dpo": dpo,
    "ipo": ipo,
    "simpo": simpo,
    "orpo": orpo,
    "f-dpo": f_dpo,
}


def methods() -> list[str]:
    """Names of the registered methods."""
    return sorted(REGISTRY)


def method(name: str, **params):
    """The objective of method ``name`` with ``params`` (its paper's symbols, spelled out)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(methods())}")
    factory = REGISTRY[name]
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"method {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                         f"its parameters are: {signature(name)}")
    return factory(**params)


def signature(name: str) -> str:
    return ", ".join(f"{p.name}={p.default!r}" for p in inspect.signature(REGISTRY[name]).parameters.values())


def describe(objective, indent: str = "  ") -> str:
    """The four parts of an objective, one per line (terms of a sum indented under their weight)."""
    if hasattr(objective, "terms"):
        return "\n".join(f"{indent}{term.weight:g} × {term.name}:\n{describe(term.objective, indent + '    ')}"
                         for term in objective.terms)
    if not hasattr(objective, "advantage"):
        return f"{indent}{objective!r}"
    return "\n".join(f"{indent}{part:<12} {getattr(objective, part)!r}"
                     for part in ("mask", "denominator", "advantage", "likelihood"))
