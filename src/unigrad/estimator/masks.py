"""Stabilization masks m ≥ 0: a detached weight per token (or sequence) that switches the update off
where the ratio r = π_θ / π_den has left its trust region, or reshapes it (a clamp, a soft gate).

A mask is called with the detached ratio r, the advantage Â (same shape) and the batch, and returns m;
the Estimator's gradient is then m · r · Â · ∇ℓ. ``value_ratio(r, Â, batch)`` is the ratio r̃ the
canonical objective uses, so that the logged objective −(1/Z) Σ Â · r̃ is the paper's, e.g. PPO's
min(r·Â, clip(r)·Â) (r̃ = r where the term is kept, clip(r) where it is cut). ``metrics`` are what the
mask reports (a rollout correction's truncated fraction; {} for most masks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.checks import fraction, non_negative, number, positive

# Why the clip widths have these domains (the range is [1 − ε_low, 1 + ε_high], ordered when both are ≥ 0).
LOWER_CLIP = ("the ratio's lower bound is 1 − eps_low: a negative eps_low lifts it above 1, cutting on-policy terms; "
              "beyond 1 it falls below 0, where no ratio lies")
UPPER_CLIP = "the ratio's upper bound is 1 + eps_high: a negative eps_high drops it below 1, cutting on-policy terms"
CLAMP = "the clamp [1 − eps, 1 + eps] must contain 1 and keep its lower bound ≥ 0, as the ratio is positive"
DUAL_CLIP = "the bound c·Â on a negative advantage's term must lie below its on-policy value 1·Â, so c > 1"
TEMPERATURE = "the soft gate σ(τ(r − 1)) needs a temperature τ > 0 (τ → 0 flattens it, τ → ∞ is a hard clip)"


def _ppo_cut(ratio: Tensor, advantage: Tensor, eps_low: float, eps_high: float) -> Tensor:
    """Where PPO's min(r·Â, clip(r)·Â) takes the clipped branch with r outside the range (no gradient)."""
    return ((advantage > 0) & (ratio > 1 + eps_high)) | ((advantage < 0) & (ratio < 1 - eps_low))


@dataclass(frozen=True)
class NoMask:
    """m = 1 (SFT, DPO, REINFORCE)."""

    requires: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> Tensor:
        return torch.ones_like(ratio)

    def value_ratio(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> Tensor:
        return ratio

    def metrics(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> dict[str, float]:
        return {}


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

    def __call__(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> Tensor:
        return (~_ppo_cut(ratio, advantage, self.eps_low, self.eps_high)).to(ratio.dtype)

    def value_ratio(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> Tensor:
        clipped = ratio.clamp(1 - self.eps_low, 1 + self.eps_high)
        return torch.where(_ppo_cut(ratio, advantage, self.eps_low, self.eps_high), clipped, ratio)

    def metrics(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> dict[str, float]:
        return {}


@dataclass(frozen=True)
class DualClip:
    """PPO's dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep
    Reinforcement Learning", arXiv 1912.09729): for Â < 0 the objective is bounded below by c·Â,

        Â ≥ 0:  min(r·Â, clip(r)·Â);        Â < 0:  max(min(r·Â, clip(r)·Â), c·Â),

    so a negative-advantage token whose ratio has grown past c no longer pushes without bound. As a
    mask: PPO's clip, and m = 0 also where Â < 0 and r > c; r̃ = c there. verl's ``clip_ratio_c`` = 3.
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    c: float = 3.0
    requires: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        fraction(self, "eps_low", self.eps_low, LOWER_CLIP)
        non_negative(self, "eps_high", self.eps_high, UPPER_CLIP)
        number(self, "c", self.c, DUAL_CLIP, low=1, low_open=True)

    def _dual_cut(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        return (advantage < 0) & (ratio > self.c)

    def __call__(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> Tensor:
        cut = _ppo_cut(ratio, advantage, self.eps_low, self.eps_high) | self._dual_cut(ratio, advantage)
        return (~cut).to(ratio.dtype)

    def value_ratio(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> Tensor:
        clipped = ratio.clamp(1 - self.eps_low, 1 + self.eps_high)
        ppo = torch.where(_ppo_cut(ratio, advantage, self.eps_low, self.eps_high), clipped, ratio)
        return torch.where(self._dual_cut(ratio, advantage), torch.full_like(ratio, self.c), ppo)

    def metrics(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> dict[str, float]:
        return {}


@dataclass(frozen=True)
class ClampedRatio:
    """A value clamp of the importance weight as a mask: m = clip(r, 1−ε, 1+ε) / r, so that
    m · r = clip(r, 1−ε, 1+ε). Unlike PPO's clip (which zeroes the gradient outside the trust
    region), the update keeps the clamped weight (A-LoL, Baheti et al. 2024, "Leftover Lunch:
    Advantage-based Offline Reinforcement Learning for Language Models", ICLR; official code: the
    weight is computed under no_grad and ``clamp``-ed, never masked). The logged value keeps r
    (A-LoL's advantage part defines its own objective)."""

    eps: float = 0.9
    requires: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        fraction(self, "eps", self.eps, CLAMP)

    def __call__(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> Tensor:
        return ratio.clamp(1 - self.eps, 1 + self.eps) / ratio

    def value_ratio(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> Tensor:
        return ratio

    def metrics(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> dict[str, float]:
        return {}


@dataclass(frozen=True)
class CISPO:
    """CISPO's clipped importance-sampling weight (MiniMax 2025, "MiniMax-M1: Scaling Test-Time
    Compute Efficiently with Lightning Attention", arXiv 2506.13585):

        J = (1/Σ|y_i|) Σ_{i,t} sg(clip(r_{i,t}, 1 − ε_low, 1 + ε_high)) · Â_{i,t} · ℓ_{i,t},

    whose gradient is clip(r)·Â·∇ℓ on every token (no token is dropped, unlike PPO's clip). As a mask
    m = clip(r)/r, so m·r = clip(r); the logged objective uses r̃ = clip(r). The paper sets ε_low
    large ("effectively no lower bound") and tunes ε_high only: eps_low = 1 (lower bound 0, which no
    positive ratio is below) is that; eps_high = 4 (the weight capped at 5) is TRL's recommended cap
    for ``loss_type="cispo"`` (verl's example uses 0.2 for both).
    """

    eps_low: float = 1.0
    eps_high: float = 4.0
    requires: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        fraction(self, "eps_low", self.eps_low, LOWER_CLIP + "; 1 means no lower bound (the paper's choice)")
        non_negative(self, "eps_high", self.eps_high, UPPER_CLIP)

    def _clipped(self, ratio: Tensor) -> Tensor:
        return ratio.clamp(1 - self.eps_low, 1 + self.eps_high)

    def __call__(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> Tensor:
        return self._clipped(ratio) / ratio

    def value_ratio(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> Tensor:
        return self._clipped(ratio)

    def metrics(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> dict[str, float]:
        return {}


@dataclass(frozen=True)
class SAPO:
    """SAPO's soft gate ("Soft Adaptive Policy Optimization", arXiv 2511.20347): the token
    objective f(r)·Â with

        f(r) = σ(τ (r − 1)) · 4/τ,   τ = tau_pos if Â > 0 else tau_neg,

    a smooth trust region (f′(1) = 1: on policy it is the plain policy gradient; far from r = 1 the
    gradient decays instead of being cut). ∇f(r) = f′(r)·r·∇ℓ, f′(r) = 4 σ(τ(r−1)) (1 − σ(τ(r−1))),
    so m = f′(r) and r̃ = f(r). Defaults τ_pos = 1.0, τ_neg = 1.05 (the paper's: negative tokens'
    gradients decay faster)."""

    tau_pos: float = 1.0
    tau_neg: float = 1.05
    requires: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        positive(self, "tau_pos", self.tau_pos, TEMPERATURE)
        positive(self, "tau_neg", self.tau_neg, TEMPERATURE)

    def _tau(self, advantage: Tensor) -> Tensor:
        return torch.full_like(advantage, self.tau_neg).masked_fill(advantage > 0, self.tau_pos)   # in Â's dtype

    def __call__(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> Tensor:
        gate = torch.sigmoid(self._tau(advantage) * (ratio - 1))
        return 4 * gate * (1 - gate)

    def value_ratio(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> Tensor:
        tau = self._tau(advantage)
        return torch.sigmoid(tau * (ratio - 1)) * 4 / tau

    def metrics(self, ratio: Tensor, advantage: Tensor, batch: Batch) -> dict[str, float]:
        return {}
