"""What each kind of part takes, returns and ``requires``; what an objective returns.

    grad = E[ m · (π_θ / sg π_den) · Â · ∇ log π_θ ]

A part is a small frozen dataclass satisfying one of these protocols; ``requires`` names the
``Batch`` fields it reads (the training loop fills only those). Nothing here is a base class:
the protocols are structural, a part never inherits from them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from torch import Tensor

if TYPE_CHECKING:
    from unigrad.batch import Batch


@dataclass(frozen=True)
class Output:
    """What ``Objective.loss`` returns."""

    loss: Tensor                                     # surrogate with the method's exact gradient
    objective: Tensor                                # canonical loss value, detached
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Weighted:
    """What an ``Advantage`` returns, from one computation: the detached weight Â ([B] per sequence
    or [B, T] per token), the canonical objective's value when the advantage defines it (a
    preference loss; None: the Estimator's default −(1/Z) Σ Â·ℓ or Σ Â·r̃), and metrics."""

    weight: Tensor
    objective: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class Mask(Protocol):
    """Stabilization mask m ≥ 0: called with the detached ratio r, Â (same shape) and the batch (a
    rollout correction reads its fields), returns m; ``value_ratio`` is the ratio r̃ the canonical
    objective −(1/Z) Σ Â·r̃ uses (r where m keeps the term, PPO's clip(r) where it cuts it);
    ``metrics`` what the mask reports."""

    @property
    def requires(self) -> frozenset[str]: ...

    def __call__(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> Tensor: ...

    def value_ratio(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> Tensor: ...

    def metrics(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> dict[str, float]: ...


class Denominator(Protocol):
    """Reference-policy denominator: detached log π_den [B, T]; ``tracks_policy`` is True when
    π_den = sg π_θ (the ratio is identically 1)."""

    @property
    def requires(self) -> frozenset[str]: ...

    @property
    def tracks_policy(self) -> bool: ...

    def __call__(self, batch: Batch) -> Tensor: ...


class Advantage(Protocol):
    """Advantage estimate Â: its weight, objective and metrics from one computation."""

    @property
    def requires(self) -> frozenset[str]: ...

    def __call__(self, batch: Batch) -> Weighted: ...


class Normaliser(Protocol):
    """The likelihood gradient's normalisation: ``within`` ("sum" or "mean") combines one
    sequence's tokens; ``count(batch)`` is Z, counted on the whole optimiser step."""

    @property
    def requires(self) -> frozenset[str]: ...

    @property
    def within(self) -> str: ...

    def count(self, batch: Batch) -> float: ...


class Objective(Protocol):
    """Anything the training loop can descend: an Estimator, a combinator, a standalone loss."""

    @property
    def requires(self) -> frozenset[str]: ...

    def loss(self, batch: Batch) -> Output: ...


__all__ = ["Advantage", "Denominator", "Mask", "Normaliser", "Objective", "Output", "Weighted"]
