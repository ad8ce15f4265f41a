"""Combinators: objectives built from objectives, the way optax's ``chain`` builds transformations.

An objective is any value with ``requires`` (the Batch fields it reads) and ``loss(batch) -> Output``.
``Estimator`` is the basic one; ``Sum`` weighs several; ``KLPenalty`` is the usual regulariser.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.core import Output
from unigrad.estimator.likelihoods import SequenceMean, TokenMean, reduce_within


@dataclass(frozen=True)
class Term:
    weight: float
    objective: object
    name: str = ""


@dataclass(frozen=True)
class Sum:
    """L = Σ_i w_i L_i, with objective Σ_i w_i objective_i; metrics prefixed by each term's name."""

    terms: tuple[Term, ...]

    @property
    def requires(self) -> frozenset[str]:
        return frozenset().union(*(term.objective.requires for term in self.terms))

    def loss(self, batch: Batch) -> Output:
        loss, objective, metrics = 0.0, 0.0, {}
        for index, term in enumerate(self.terms):
            out = term.objective.loss(batch)
            loss = loss + term.weight * out.loss
            objective = objective + term.weight * out.objective
            name = term.name or f"term{index}"
            metrics.update({f"{name}/{key}": value for key, value in out.metrics.items()})
            metrics[f"{name}/objective"] = float(out.objective)
        return Output(loss=loss, objective=objective, metrics=metrics)


def kl_estimate(logp: Tensor, logp_ref: Tensor, estimator: str) -> Tensor:
    """Per-token estimates of KL(π_θ ‖ π_ref) on tokens sampled from π_θ, with log ρ = ℓ_ref − ℓ
    (Schulman 2020, "Approximating KL Divergence"):
        k1 = −log ρ,   k2 = ½ (log ρ)²,   k3 = ρ − 1 − log ρ   (DeepSeekMath eq. 4 uses k3)."""
    log_rho = logp_ref - logp
    if estimator == "k1":
        return -log_rho
    if estimator == "k2":
        return 0.5 * log_rho ** 2
    if estimator == "k3":
        return torch.exp(log_rho) - 1 - log_rho
    raise ValueError(f"unknown KL estimator {estimator!r}; choose k1, k2 or k3")


@dataclass(frozen=True)
class KLPenalty:
    """L = (1/Z) Σ_b Σ_t k(ℓ_t, ℓ_ref,t), a KL-to-reference regulariser differentiated through ℓ
    (as GRPO adds it to its loss). Its normaliser is the likelihood's (GRPO: per-sequence mean)."""

    estimator: Literal["k1", "k2", "k3"] = "k3"
    normaliser: TokenMean | SequenceMean = SequenceMean()

    def __post_init__(self):
        if self.estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"unknown KL estimator {self.estimator!r}; choose k1, k2 or k3")

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({"logp", "mask", "logp_ref"}) | self.normaliser.requires

    def loss(self, batch: Batch) -> Output:
        mask = batch.mask.to(batch.logp.dtype)
        per_token = kl_estimate(batch.logp, batch.require("logp_ref").detach(), self.estimator) * mask
        loss = reduce_within(per_token, mask, self.normaliser.within).sum() / self.normaliser.count(batch)
        return Output(loss=loss, objective=loss.detach(), metrics={"kl": float(loss.detach())})
