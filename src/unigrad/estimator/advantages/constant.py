"""Fixed advantages: Â a constant, on every row or on one subset of rows.

    Constant(v)            Â = v on every sequence                 SFT (v = 1)
    Chosen()               Â = 1 on the chosen row of a pair, 0 on the rejected one   ORPO's NLL term
    RowsConstant(v, rows)  Â = v on the rows picked by sign, 0 elsewhere   GA (v = −1 on forget rows)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from unigrad.batch import Batch
from unigrad.estimator.checks import number
from unigrad.estimator.normalisers import Rows, check_rows, row_selector
from unigrad.estimator.protocols import Weighted


@dataclass(frozen=True)
class Constant:
    """Â = value for every sequence (SFT: Â = 1)."""

    value: float = 1.0
    requires: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        number(self, "value", self.value, "the advantage of every sequence")

    def __call__(self, batch: Batch) -> Weighted:
        return Weighted(torch.full((batch.logp.shape[0],), float(self.value), dtype=batch.logp.dtype,
                                   device=batch.logp.device))


@dataclass(frozen=True)
class Chosen:
    """Â = 1 on the chosen row of each pair (sign = +1), 0 on the rejected one: SFT on y_w (ORPO,
    Hong et al. 2024, eq. 6)."""

    requires: ClassVar[frozenset[str]] = frozenset({"sign"})

    def __call__(self, batch: Batch) -> Weighted:
        return Weighted((batch.require("sign") > 0).to(batch.logp.dtype))


@dataclass(frozen=True)
class RowsConstant:
    """Â = value on the subset's rows, 0 elsewhere. Gradient ascent on forget rows: value = −1;
    NLL on retain rows: value = +1 (with ``Restrict(TokenMean(), rows)`` this is SFT restricted to
    the subset)."""

    value: float = -1.0
    rows: Rows = "negative"
    requires: ClassVar[frozenset[str]] = frozenset({"sign"})

    def __post_init__(self):
        number(self, "value", self.value, "the advantage of the subset's rows")
        check_rows(self.rows, self)

    def __call__(self, batch: Batch) -> Weighted:
        return Weighted(float(self.value) * row_selector(batch, self.rows))
