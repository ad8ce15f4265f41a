"""The likelihood gradient: its unit (token or sequence) and its normalisation.

A normaliser reduces per-token weights w[b, t] (already multiplied by the completion mask) to the
scalar the optimiser descends:

    TokenMean          Σ_b Σ_t w[b,t] / N_tokens                      (HF loss; DAPO, eq. 12)
    SequenceMean(per)  Σ_b (1/|y_b|) Σ_t w[b,t] / N_per               (GRPO, DeepSeekMath eq. 3)
    SequenceSum(per)   Σ_b Σ_t w[b,t] / N_per                          (DPO's sequence log-prob)
    Constant(c)        Σ_b Σ_t w[b,t] / (c · N_sequences)              (Dr. GRPO, Liu et al. 2025)

N_per counts sequences, or groups (pairs: one DPO loss per pair). The counts come from the batch
(``Batch.tokens_total`` …), which the training loop sets to global totals over micro-batches.

``within`` is how one sequence's tokens are combined: at the token unit it reduces the weighted
terms; at the sequence unit it reduces the log-ratio before the ratio is taken (GSPO's
length-normalised sequence ratio is ``Likelihood("sequence", SequenceMean())``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor

from unigrad.batch import Batch

Per = Literal["sequence", "group"]


def _count(batch: Batch, per: Per) -> float:
    return batch.groups_total if per == "group" else batch.sequences_total


def reduce_within(values: Tensor, mask: Tensor, within: str) -> Tensor:
    """Σ_t or (1/|y|) Σ_t of ``values`` over each row's completion tokens: [B, T] → [B]."""
    total = (values * mask).sum(-1)
    if within == "sum":
        return total
    return total / mask.sum(-1).clamp(min=1)


@dataclass(frozen=True)
class TokenMean:
    within: ClassVar[str] = "sum"
    requires: ClassVar[frozenset[str]] = frozenset()

    def count(self, batch: Batch) -> float:
        return batch.tokens_total


@dataclass(frozen=True)
class SequenceMean:
    per: Per = "sequence"
    within: ClassVar[str] = "mean"

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({"group"}) if self.per == "group" else frozenset()

    def count(self, batch: Batch) -> float:
        return _count(batch, self.per)


@dataclass(frozen=True)
class SequenceSum:
    per: Per = "sequence"
    within: ClassVar[str] = "sum"

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({"group"}) if self.per == "group" else frozenset()

    def count(self, batch: Batch) -> float:
        return _count(batch, self.per)


@dataclass(frozen=True)
class Constant:
    c: float = 1.0
    within: ClassVar[str] = "sum"
    requires: ClassVar[frozenset[str]] = frozenset()

    def count(self, batch: Batch) -> float:
        return self.c * batch.sequences_total


@dataclass(frozen=True)
class Likelihood:
    """Unit of the likelihood gradient and its normaliser."""

    unit: Literal["token", "sequence"] = "token"
    normaliser: TokenMean | SequenceMean | SequenceSum | Constant = TokenMean()

    def __post_init__(self):
        if self.unit not in ("token", "sequence"):
            raise ValueError(f"likelihood unit must be 'token' or 'sequence', got {self.unit!r}")
