"""The Estimator: one composition of the four parts, and the surrogate loss with its gradient.

    grad = −(1/Z) Σ_b Σ_t m · (π_θ / sg π_den) · Â · ∇ log π_θ         (token unit)
    grad = −(1/Z) Σ_b m_b · r_b · Â_b · ∇ log r_b,  r_b = exp(within_t(ℓ − ℓ_den))  (sequence unit)

(Lv et al. 2025, "Towards a Unified View of Large Language Model Post-Training", eq. 5; signs for
descent.) The surrogate −(1/Z) Σ m · r · Â has exactly this gradient, since ∇r = r ∇ log π_θ and m,
Â and π_den are detached. Its value is not the method's loss; ``Output.objective`` is: the
advantage's own objective when it returns one (a preference loss), otherwise −(1/Z) Σ Â · ℓ for
likelihood-weighted objectives (π_den = sg π_θ) or −(1/Z) Σ Â · r̃ with the mask's value ratio r̃
for importance-weighted ones, r̃ = r where m keeps the term (PPO's min(r·Â, clip(r)·Â)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.diagnostics import logp_advantage_covariance
from unigrad.estimator.advantages.constant import Constant
from unigrad.estimator.checks import part
from unigrad.estimator.denominators import CurrentPolicy
from unigrad.estimator.likelihoods import Likelihood
from unigrad.estimator.masks import NoMask
from unigrad.estimator.normalisers import reduce_within
from unigrad.estimator.protocols import Advantage, Denominator, Mask, Output


@dataclass(frozen=True)
class Estimator:
    """m · (π_θ / sg π_den) · Â · ∇ log π_θ, with the likelihood's unit and normaliser."""

    mask: Mask = NoMask()
    denominator: Denominator = CurrentPolicy()
    advantage: Advantage = Constant(1.0)
    likelihood: Likelihood = Likelihood()

    def __post_init__(self):
        part(self, "mask", self.mask, "mask", "value_ratio", "metrics", "requires")
        part(self, "denominator", self.denominator, "denominator", "tracks_policy", "requires")
        part(self, "advantage", self.advantage, "advantage", "__call__", "requires")
        part(self, "likelihood", self.likelihood, "likelihood", "unit", "normaliser")

    @property
    def requires(self) -> frozenset[str]:
        return (frozenset({"logp", "mask"}) | self.mask.requires | self.denominator.requires
                | self.advantage.requires | self.likelihood.normaliser.requires)

    def loss(self, batch: Batch) -> Output:
        mask = batch.mask.to(batch.logp.dtype)
        logp = batch.logp * mask
        log_den = self.denominator(batch).detach() * mask
        weighted = self.advantage(batch)
        advantage = weighted.weight.detach()
        within = self.likelihood.normaliser.within
        if self.likelihood.unit == "token":
            advantage = advantage[:, None].expand_as(logp) if advantage.dim() == 1 else advantage
            ratio = torch.exp(logp - log_den)
            weight = self.mask(ratio.detach(), advantage, batch)
            per_sequence = reduce_within(weight * ratio * advantage, mask, within)
            value_unit = logp if self.denominator.tracks_policy else self.mask.value_ratio(ratio.detach(), advantage, batch)
            value = reduce_within(advantage * value_unit.detach(), mask, within)
            kept = (weight * mask).sum() / mask.sum().clamp(min=1)
        else:
            if advantage.dim() != 1:
                raise ValueError("a sequence-level likelihood needs one advantage per sequence ([B])")
            log_ratio = reduce_within(logp - log_den, mask, within)
            ratio = torch.exp(log_ratio)
            weight = self.mask(ratio.detach(), advantage, batch)
            per_sequence = weight * ratio * advantage
            value_unit = (reduce_within(logp, mask, within) if self.denominator.tracks_policy
                          else self.mask.value_ratio(ratio.detach(), advantage, batch))
            value = advantage * value_unit.detach()
            kept = weight.mean()
        count = self.likelihood.normaliser.count(batch)
        objective = weighted.objective if weighted.objective is not None else -value.sum() / count
        metrics = {"advantage_mean": float(advantage.mean()), "mask_kept": float(kept), **weighted.metrics,
                   **self.mask.metrics(ratio.detach(), advantage, batch)}
        metrics.update(logp_advantage_covariance(batch.logp, advantage, mask))   # the entropy mechanism's Cov(ℓ, Â)
        return Output(loss=-per_sequence.sum() / count, objective=objective.detach(), metrics=metrics)


__all__ = ["Estimator", "Output"]
