"""Stabilization masks m ≥ 0: a detached weight per token (or sequence) that switches the update off
where the ratio r = π_θ / π_den has left its trust region.

A mask is called with the detached ratio r and the advantage Â (same shape) and returns m.
``value_ratio`` is the ratio the canonical objective uses in place of r (the clipped one), so that
the logged objective is the paper's, e.g. PPO's min(r·Â, clip(r)·Â).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from unigrad.estimator.checks import fraction, non_negative

# Why the clip widths have these domains (the range is [1 − ε_low, 1 + ε_high], ordered when both are ≥ 0).
LOWER_CLIP = ("the ratio's lower bound is 1 − eps_low: a negative eps_low lifts it above 1, cutting on-policy terms; "
              "beyond 1 it falls below 0, where no ratio lies")
UPPER_CLIP = "the ratio's upper bound is 1 + eps_high: a negative eps_high drops it below 1, cutting on-policy terms"
CLAMP = "the clamp [1 − eps, 1 + eps] must contain 1 and keep its lower bound ≥ 0, as the ratio is positive"


@dataclass(frozen=True)
class NoMask:
    """m = 1 (SFT, DPO, REINFORCE)."""

    requires: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        return torch.ones_like(ratio)

    def value_ratio(self, ratio: Tensor) -> Tensor:
        return ratio


@dataclass(frozen=True)
class PPOClip:
    """PPO's clip as a mask (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7):

        m = 0  if (Â > 0 and r > 1 + eps_high) or (Â < 0 and r < 1 - eps_low),  else 1,

    which is the gradient of min(r·Â, clip(r, 1-eps_low, 1+eps_high)·Â). eps_low = eps_high gives
    PPO/GRPO; eps_high > eps_low is DAPO's clip-higher (Yu et al. 2025, "DAPO", eq. 10).
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    requires: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        fraction(self, "eps_low", self.eps_low, LOWER_CLIP)
        non_negative(self, "eps_high", self.eps_high, UPPER_CLIP)

    def __call__(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        clipped = ((advantage > 0) & (ratio > 1 + self.eps_high)) | ((advantage < 0) & (ratio < 1 - self.eps_low))
        return (~clipped).to(ratio.dtype)

    def value_ratio(self, ratio: Tensor) -> Tensor:
        return ratio.clamp(1 - self.eps_low, 1 + self.eps_high)


@dataclass(frozen=True)
class ClampedRatio:
    """A value clamp of the importance weight as a mask: m = clip(r, 1−ε, 1+ε) / r, so that
    m · r = clip(r, 1−ε, 1+ε). Unlike PPO's clip (which zeroes the gradient outside the trust
    region), the update keeps the clamped weight (A-LoL, Baheti et al. 2024, "Leftover Lunch:
    Advantage-based Offline Reinforcement Learning for Language Models", ICLR; official code: the
    weight is computed under no_grad and ``clamp``-ed, never masked)."""

    eps: float = 0.9
    requires: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        fraction(self, "eps", self.eps, CLAMP)

    def __call__(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        return ratio.clamp(1 - self.eps, 1 + self.eps) / ratio

    def value_ratio(self, ratio: Tensor) -> Tensor:
        return ratio.clamp(1 - self.eps, 1 + self.eps)
