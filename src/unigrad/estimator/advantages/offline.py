"""Offline-RL advantages: A-LoL's reward-minus-value weight on logged responses.

As everywhere in the estimator, Â is the detached weight with ∂L/∂ℓ = −Â/Z; the objective is the
official code's loss value. (A-LoL's clamped importance weight is a mask: ``masks.ClampedRatio``.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.advantages.group import group_mean
from unigrad.estimator.checks import fraction, non_negative, one_of
from unigrad.estimator.masks import CLAMP
from unigrad.estimator.normalisers import reduce_within
from unigrad.estimator.protocols import Weighted

KL_BETA = "the KL penalty's coefficient; a negative one rewards drifting from the reference"


def leftover_advantage(batch: Batch) -> Tensor:
    """A = R − V(x): V from ``batch.extra["value"]`` ([B], the value of π_ref on the prompt), or,
    when absent, the mean reward of the rows sharing the prompt's ``group`` in the whole step (a
    leave-none-out baseline; with one response per prompt this makes A = 0, so give ``value`` then)."""
    return batch.from_whole(_leftover_advantage(batch.whole))


def _leftover_advantage(batch: Batch) -> Tensor:
    reward = batch.require("reward").detach().to(batch.logp.dtype)
    value = batch.extra.get("value")
    if value is None:
        if batch.group is None:
            raise ValueError("A-LoL needs batch.extra['value'] (V_ref of each prompt) or `group` to "
                             "use the prompt's mean reward as the baseline")
        value = group_mean(reward, batch.group)
    return reward - value.detach().to(reward.dtype)


@dataclass(frozen=True)
class LeftoverAdvantage:
    """A-LoL's weight (Baheti et al. 2024, "Leftover Lunch: Advantage-based Offline Reinforcement
    Learning for Language Models", ICLR; official code abaheti95/LoL-RL). Rows with A ≤ 0 are
    dropped (Â = 0); A⁺ = A · 1[A > 0]:

        importance "sequence" (A-LoL):     Â = A⁺,  with mask clip(r(y))/r(y), π_den = π_ref (sum)
        importance "token"    (A-LoL seq): Â = A⁺ per token, mask clip(r_t)/r_t,  π_den = π_ref
        importance "none"     (ref-free):  Â = A⁺,  π_den = sg π_θ
        kl_beta > 0           (A-LoL KL):  Â = (A − β_KL) · 1[A > 0]   (∂/∂ℓ of β_KL(ℓ − ℓ_ref))

    The objective is the code's loss, mean over the batch's rows:
        A-LoL:   −ℓ(y)·clip(r(y))·A⁺          seq: A⁺·Σ_t(−ℓ_t)·clip(r_t)
        ref-free: −ℓ(y)·A⁺                     KL:  [−ℓ(y)·A + β_KL(ℓ(y) − ℓ_ref(y))]·1[A>0]."""

    clip: float = 0.9
    importance: str = "sequence"
    kl_beta: float = 0.0

    def __post_init__(self):
        fraction(self, "clip", self.clip, CLAMP)
        one_of(self, "importance", self.importance, ("sequence", "token", "none"),
               "the importance weight per sequence (A-LoL), per token (A-LoL seq) or none (ref-free)")
        non_negative(self, "kl_beta", self.kl_beta, KL_BETA)

    @property
    def requires(self) -> frozenset[str]:
        needs_ref = self.importance != "none" or self.kl_beta != 0
        return frozenset({"reward"}) | (frozenset({"logp_ref"}) if needs_ref else frozenset())

    def __call__(self, batch: Batch) -> Weighted:
        advantage = leftover_advantage(batch)
        kept = (advantage > 0).to(advantage.dtype)
        metrics = {"advantage_raw_mean": float(advantage.mean()), "kept": float((advantage > 0).double().mean())}
        return Weighted((advantage - self.kl_beta) * kept, objective=self._objective(batch, advantage, kept),
                        metrics=metrics)

    def _objective(self, batch: Batch, advantage: Tensor, kept: Tensor) -> Tensor:
        mask = batch.mask.to(batch.logp.dtype)
        logp = batch.logp.detach()
        lo, hi = 1 - self.clip, 1 + self.clip
        if self.importance == "token":
            weight = torch.exp(logp - batch.require("logp_ref").detach()).clamp(lo, hi)
            per_row = advantage * kept * reduce_within(-logp * weight, mask, "sum")
        else:
            seq = reduce_within(logp, mask, "sum")
            per_row = -seq * advantage * kept
            if self.importance == "sequence":
                h = seq - reduce_within(batch.require("logp_ref").detach(), mask, "sum")
                per_row = per_row * torch.exp(h).clamp(lo, hi)
            if self.kl_beta:
                per_row = per_row + self.kl_beta * (seq - reduce_within(batch.require("logp_ref").detach(), mask, "sum")) * kept
        return per_row.sum() / batch.sequences_total
