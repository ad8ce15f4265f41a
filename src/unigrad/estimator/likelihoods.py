"""The likelihood-gradient part: its unit (token or sequence) and its normaliser.

At the token unit each token is an action, weighted m·r·Â and reduced by the normaliser; at the
sequence unit the log-ratio is first reduced over the sequence (``normaliser.within``) and the
sequence is the action: GSPO's length-normalised sequence ratio is
``Likelihood("sequence", SequenceMean())``. The normalisers live in ``unigrad.estimator.normalisers``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from unigrad.estimator.checks import one_of, part
from unigrad.estimator.normalisers import TokenMean
from unigrad.estimator.protocols import Normaliser


@dataclass(frozen=True)
class Likelihood:
    """Unit of the likelihood gradient and its normaliser."""

    unit: Literal["token", "sequence"] = "token"
    normaliser: Normaliser = TokenMean()

    def __post_init__(self):
        one_of(self, "unit", self.unit, ("token", "sequence"), "each token an action, or the whole completion one")
        part(self, "normaliser", self.normaliser, "normaliser", "count", "within", "requires")
