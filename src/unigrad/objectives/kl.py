"""KL to the reference: the sampled per-token estimates k1/k2/k3 and the regulariser built on them.

``kl_estimate`` is the one implementation, shared by ``KLPenalty``, grad-diff's retain term
(``estimator.advantages.ReferenceKL``) and the training loop's KL diagnostic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.checks import one_of, part
from unigrad.estimator.normalisers import SequenceMean, reduce_within
from unigrad.estimator.protocols import Normaliser, Output

KL_ESTIMATORS = ("k1", "k2", "k3")


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


def reference_kl(batch: Batch) -> float:
    """The token mean of k3 over the batch's completion tokens: KL(π_θ ‖ π_ref) as a diagnostic."""
    mask = batch.mask.to(batch.logp.dtype)
    kl = kl_estimate(batch.logp.detach(), batch.require("logp_ref").detach(), "k3")
    return float((kl * mask).sum() / mask.sum().clamp(min=1))


@dataclass(frozen=True)
class KLPenalty:
    """L = (1/Z) Σ_b Σ_t k(ℓ_t, ℓ_ref,t), a KL-to-reference regulariser differentiated through ℓ
    (as GRPO adds it to its loss). Its normaliser is the likelihood's (GRPO: per-sequence mean)."""

    estimator: Literal["k1", "k2", "k3"] = "k3"
    normaliser: Normaliser = SequenceMean()

    def __post_init__(self):
        one_of(self, "estimator", self.estimator, KL_ESTIMATORS, "the sampled estimates k1, k2 or k3 of Schulman 2020")
        part(self, "normaliser", self.normaliser, "normaliser", "count", "within", "requires")

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({"logp", "mask", "logp_ref"}) | self.normaliser.requires

    def loss(self, batch: Batch) -> Output:
        mask = batch.mask.to(batch.logp.dtype)
        per_token = kl_estimate(batch.logp, batch.require("logp_ref").detach(), self.estimator) * mask
        loss = reduce_within(per_token, mask, self.normaliser.within).sum() / self.normaliser.count(batch)
        return Output(loss=loss, objective=loss.detach(), metrics={"kl": float(loss.detach())})
