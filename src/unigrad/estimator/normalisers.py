"""Normalisers of the likelihood gradient: how per-token weights become the scalar descended.

A normaliser reduces per-token weights w[b, t] (already multiplied by the completion mask):

    TokenMean            Σ_b Σ_t w[b,t] / N_tokens                      (HF loss; DAPO, eq. 12)
    SequenceMean(per)    Σ_b (1/|y_b|) Σ_t w[b,t] / N_per               (GRPO, DeepSeekMath eq. 3)
    SequenceSum(per)     Σ_b Σ_t w[b,t] / N_per                          (DPO's sequence log-prob)
    FixedCount(c)        Σ_b Σ_t w[b,t] / (c · N_sequences)              (Dr. GRPO, Liu et al. 2025)
    Restrict(n, rows)    n's reduction, counted only on the rows picked by ``sign``

N_per counts sequences, or groups (pairs: one DPO loss per pair). Counts are taken on the whole
optimiser step (``Batch.tokens_total`` …), so k accumulated micro-batches give one batch of k.
``within`` is how one sequence's tokens are combined: at the token unit it reduces the weighted
terms; at the sequence unit it reduces the log-ratio before the ratio is taken.

Row selection: unlearning batches mix forget rows (``sign = −1``) and retain rows (``sign = +1``),
DDO data (+1) and reference samples (−1), SAFE-ALIGN helpful (+1) and harmful (−1) responses. Each
side of such a loss is a mean over its own rows: an Estimator whose advantage is 0 off its rows and
whose normaliser is ``Restrict(TokenMean(), "negative")`` (Σ over the subset / its token count) or
``Restrict(SequenceSum(), "negative")`` (/ its number of rows). ``rows`` is ``"negative"``
(sign < 0: forget / reference / harmful) or ``"positive"`` (sign > 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.checks import one_of, part, positive
from unigrad.estimator.protocols import Normaliser

Per = Literal["sequence", "group"]
Rows = Literal["negative", "positive"]
FORGET: Rows = "negative"
RETAIN: Rows = "positive"


def reduce_within(values: Tensor, mask: Tensor, within: str) -> Tensor:
    """Σ_t or (1/|y|) Σ_t of ``values`` over each row's completion tokens: [B, T] → [B]."""
    total = (values * mask).sum(-1)
    if within == "sum":
        return total
    return total / mask.sum(-1).clamp(min=1)


def _per_requires(normaliser) -> frozenset[str]:
    return frozenset({"group"}) if normaliser.per == "group" else frozenset()


def _per_count(normaliser, batch: Batch) -> float:
    return batch.groups_total if normaliser.per == "group" else batch.sequences_total


def _check_per(normaliser) -> None:
    one_of(normaliser, "per", normaliser.per, ("sequence", "group"),
           "what Z counts: sequences, or groups (one pairwise loss per pair)")


@dataclass(frozen=True)
class TokenMean:
    """Z = N_tokens, the step's completion tokens."""

    within: ClassVar[str] = "sum"
    requires: ClassVar[frozenset[str]] = frozenset()

    def count(self, batch: Batch) -> float:
        return batch.tokens_total


@dataclass(frozen=True)
class SequenceMean:
    """Each sequence's mean over its tokens, Z = N_per (sequences, or groups: pairs)."""

    per: Per = "sequence"
    within: ClassVar[str] = "mean"
    requires = property(_per_requires)
    count = _per_count
    __post_init__ = _check_per


@dataclass(frozen=True)
class SequenceSum:
    """Each sequence's sum over its tokens, Z = N_per (sequences, or groups: pairs)."""

    per: Per = "sequence"
    within: ClassVar[str] = "sum"
    requires = property(_per_requires)
    count = _per_count
    __post_init__ = _check_per


@dataclass(frozen=True)
class FixedCount:
    """Z = c · N_sequences, a constant per sequence instead of its length: Dr. GRPO's c = the
    sampler's maximum completion length (config name ``constant``)."""

    c: float = 1.0
    within: ClassVar[str] = "sum"
    requires: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        positive(self, "c", self.c, "Z = c · N_sequences divides the loss; Dr. GRPO sets c to the maximum completion length")

    def count(self, batch: Batch) -> float:
        return self.c * batch.sequences_total


# ---- row selection by sign ----

def check_rows(rows: str, owner="row selection") -> None:
    """``rows`` names a subset by the sign of ``batch.sign``."""
    one_of(owner, "rows", rows, ("negative", "positive"), "negative: the rows with sign < 0, positive: sign > 0")


def row_selector(batch: Batch, rows: str) -> Tensor:
    """[B] float: 1 on the rows of the subset (by the sign of ``batch.sign``), 0 elsewhere."""
    check_rows(rows)
    sign = batch.require("sign")
    chosen = sign < 0 if rows == "negative" else sign > 0
    return chosen.to(batch.logp.dtype)


def masked_rows(batch: Batch, rows: str) -> Tensor:
    """[B, T] completion mask restricted to the subset's rows."""
    return batch.mask.to(batch.logp.dtype) * row_selector(batch, rows)[:, None]


@dataclass(frozen=True)
class Restrict:
    """``normaliser`` counted only on the subset's rows of the step: Z = max(Z_n(S), 1) with S the
    rows whose ``sign`` is ``rows`` (``Batch.subset``), so each side of a mixed batch is a mean over
    its own rows; the weights off the subset must be 0 (the advantage's job)."""

    normaliser: Normaliser = TokenMean()
    rows: Rows = "negative"

    def __post_init__(self):
        part(self, "normaliser", self.normaliser, "normaliser", "count", "within", "requires")
        check_rows(self.rows, self)

    @property
    def within(self) -> str:
        return self.normaliser.within

    @property
    def requires(self) -> frozenset[str]:
        return self.normaliser.requires | {"sign"}

    def count(self, batch: Batch) -> float:
        whole = batch.whole
        return max(float(self.normaliser.count(whole.subset(row_selector(whole, self.rows) > 0))), 1.0)


__all__ = ["FORGET", "RETAIN", "FixedCount", "Restrict", "SequenceMean", "SequenceSum", "TokenMean",
           "masked_rows", "reduce_within", "row_selector"]
