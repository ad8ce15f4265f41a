"""Parts that act on one subset of a batch's rows, picked by ``sign``.

Unlearning batches mix forget rows (``sign = -1``) and retain rows (``sign = +1``); DDO mixes data
samples (+1) and reference samples (-1); SAFE-ALIGN helpful (+1) and harmful (-1) responses. Each
side of such a loss is a mean over its own rows, so a method is a ``Sum`` of Estimators, one per
side, each with

    an advantage that is 0 off its rows, and
    a normaliser that counts only its rows:  RowsTokenMean  Σ_{b∈S} Σ_t w[b,t] / N_tokens(S)
                                             RowsSequenceSum Σ_{b∈S} Σ_t w[b,t] / N_sequences(S)

``rows`` is ``"negative"`` (sign < 0: forget / reference / harmful) or ``"positive"`` (sign > 0).
Counts are taken on the whole optimiser step (``batch.whole``), so accumulation is exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor

from unigrad.batch import Batch

Rows = Literal["negative", "positive"]
FORGET: Rows = "negative"
RETAIN: Rows = "positive"


def _check(rows: str) -> None:
    if rows not in ("negative", "positive"):
        raise ValueError(f"rows must be 'negative' (sign < 0) or 'positive' (sign > 0), got {rows!r}")


def row_selector(batch: Batch, rows: str) -> Tensor:
    """[B] float: 1 on the rows of the subset (by the sign of ``batch.sign``), 0 elsewhere."""
    _check(rows)
    sign = batch.require("sign")
    chosen = sign < 0 if rows == "negative" else sign > 0
    return chosen.to(batch.logp.dtype)


def rows_tokens(batch: Batch, rows: str) -> float:
    whole = batch.whole
    return max(float((whole.mask.to(whole.logp.dtype) * row_selector(whole, rows)[:, None]).sum()), 1.0)


def rows_sequences(batch: Batch, rows: str) -> float:
    return max(float(row_selector(batch.whole, rows).sum()), 1.0)


@dataclass(frozen=True)
class RowsTokenMean:
    """Σ over the subset's tokens / number of the subset's completion tokens."""

    rows: Rows = "negative"
    within: ClassVar[str] = "sum"
    requires: ClassVar[frozenset[str]] = frozenset({"sign"})

    def __post_init__(self):
        _check(self.rows)

    def count(self, batch: Batch) -> float:
        return rows_tokens(batch, self.rows)


@dataclass(frozen=True)
class RowsSequenceSum:
    """Σ over the subset's sequences (each a sum over its tokens) / number of the subset's rows."""

    rows: Rows = "negative"
    within: ClassVar[str] = "sum"
    requires: ClassVar[frozenset[str]] = frozenset({"sign"})

    def __post_init__(self):
        _check(self.rows)

    def count(self, batch: Batch) -> float:
        return rows_sequences(batch, self.rows)


@dataclass(frozen=True)
class RowsConstant:
    """Â = value on the subset's rows, 0 elsewhere. Gradient ascent on forget rows: value = −1;
    NLL on retain rows: value = +1 (with ``RowsTokenMean`` this is SFT restricted to the subset)."""

    value: float = -1.0
    rows: Rows = "negative"
    requires: ClassVar[frozenset[str]] = frozenset({"sign"})

    def __post_init__(self):
        _check(self.rows)

    def __call__(self, batch: Batch) -> Tensor:
        return float(self.value) * row_selector(batch, self.rows)


def masked_rows(batch: Batch, rows: str) -> Tensor:
    """[B, T] completion mask restricted to the subset's rows."""
    return batch.mask.to(batch.logp.dtype) * row_selector(batch, rows)[:, None]


__all__ = ["FORGET", "RETAIN", "RowsConstant", "RowsSequenceSum", "RowsTokenMean", "row_selector",
           "rows_sequences", "rows_tokens", "masked_rows"]
