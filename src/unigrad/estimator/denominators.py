"""Reference-policy denominators: the detached log π_den(y_t) the ratio r = π_θ / sg π_den divides by.

Each returns a [B, T] tensor of detached log-probs. With the current policy (π_den = sg π_θ) the
ratio is identically 1 and only its gradient ∇ log π_θ remains: SFT, DPO and every likelihood-
weighted objective. With the behaviour policy it is importance sampling (PPO, GRPO).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from unigrad.batch import Batch


@dataclass(frozen=True)
class CurrentPolicy:
    """π_den = sg π_θ: r ≡ 1, gradient ∇ log π_θ (SFT, DPO and relatives)."""

    requires: ClassVar[frozenset[str]] = frozenset()
    tracks_policy: ClassVar[bool] = True

    def __call__(self, batch: Batch) -> Tensor:
        return batch.logp.detach()


@dataclass(frozen=True)
class BehaviourPolicy:
    """π_den = π_old, the policy that sampled the rollouts (PPO, GRPO): needs ``logp_old``."""

    requires: ClassVar[frozenset[str]] = frozenset({"logp_old"})
    tracks_policy: ClassVar[bool] = False

    def __call__(self, batch: Batch) -> Tensor:
        return batch.require("logp_old").detach()


@dataclass(frozen=True)
class ReferencePolicy:
    """π_den = π_ref, a fixed reference model (offline importance weighting): needs ``logp_ref``."""

    requires: ClassVar[frozenset[str]] = frozenset({"logp_ref"})
    tracks_policy: ClassVar[bool] = False

    def __call__(self, batch: Batch) -> Tensor:
        return batch.require("logp_ref").detach()


@dataclass(frozen=True)
class One:
    """π_den = 1: the gradient is ∇ π_θ itself (SRFT/LUFFY-style off-policy terms)."""

    requires: ClassVar[frozenset[str]] = frozenset()
    tracks_policy: ClassVar[bool] = False

    def __call__(self, batch: Batch) -> Tensor:
        return torch.zeros_like(batch.logp, requires_grad=False)
