"""``unigrad repro``: the papers' claims, re-derived at laptop scale, beside the papers' numbers.

Each module of this package defines one ``Reproduction`` (``base.py``); ``REGISTRY`` names them.
``runner.py`` runs them and writes ``runs/repro/NAME/`` (result.json, index.html), the index page
and ``docs/REPRODUCTIONS.md``.
"""
from __future__ import annotations

from importlib import import_module

from unigrad.repro.base import NOT_REPRODUCED, PARTLY, REPRODUCED, VERDICTS, Claim, Outcome, Reproduction, Scale

REGISTRY: dict[str, str] = {      # name -> module[:attribute] (imported when asked for: each pulls in torch)
    "hpt": "unigrad.repro.hpt",
    "fisher-merging": "unigrad.repro.merging",
    "ches": "unigrad.repro.ches",
    "npo-vs-ga": "unigrad.repro.unlearning",
    "distill-kl": "unigrad.repro.distill",
    "mezo-estimator": "unigrad.repro.mezo:ESTIMATOR",
    "mezo-memory": "unigrad.repro.mezo:MEMORY",
    "mezo-curve": "unigrad.repro.mezo:CURVE",
    "pes-bias": "unigrad.repro.pes",
    "pes-lr-schedule": "unigrad.repro.pes:SCHEDULE",
    "zo-rank-toy": "unigrad.repro.zo_rank",
    "sophia-vs-adamw": "unigrad.repro.sophia",
    "nash-mp-rate": "unigrad.repro.nash",
    "dph-rl": "unigrad.repro.dph",
}


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> Reproduction:
    """The reproduction called ``name`` (ValueError naming the known ones otherwise)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown reproduction {name!r}; known: {', '.join(REGISTRY)} (or all)")
    module, _, attribute = REGISTRY[name].partition(":")
    return getattr(import_module(module), attribute or "REPRODUCTION")


__all__ = ["Claim", "NOT_REPRODUCED", "Outcome", "PARTLY", "REGISTRY", "REPRODUCED", "Reproduction", "Scale",
           "VERDICTS", "get", "names"]
