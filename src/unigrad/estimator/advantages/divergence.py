"""The weight of an f-divergence to the reference estimated on the reference's own samples.

For tokens a_t sampled from π_ref (stored with their log-probs when they were drawn) and
u_t = π_θ(a_t)/π_ref(a_t), the per-token generator form

    L = (1/N) Σ_t f̄(u_t),   f̄(u) = f(u) − f′(1)(u − 1),   E_{a∼π_ref}[f̄(u)] = D_f(π_θ ‖ π_ref)

is an unbiased estimate of the divergence (E_ref[u] = 1, so the linear term only lowers the variance
and makes f̄(1) = f̄′(1) = 0). Since ∂f̄(u)/∂ℓ = u f̄′(u),

    Â_t = −u_t (f′(u_t) − f′(1))     (token unit, π_den = sg π_θ, m = 1, token mean over the rows)

DPH-RL (Li et al. 2025, "The Choice of Divergence: A Neglected Key to Mitigating Diversity Collapse
in RLVR", arXiv 2509.07430) uses it on its rehearsal set: forward KL (f = −log u, f̄ = u − log u − 1,
the k3 form, Â = 1 − u), JS (f = u log u − (u+1) log((u+1)/2), Â = −u log(2u/(1+u))) and the
α-divergence. The divergences themselves (f, f′) live in ``objectives.divergences``; this part only
turns one into a likelihood weight.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from unigrad.batch import Batch
from unigrad.estimator.checks import part, text
from unigrad.estimator.normalisers import TokenMean
from unigrad.estimator.protocols import Weighted
from unigrad.objectives.divergences import FDivergence, JensenShannon

REFERENCE_FIELD = "logp_rehearsal"


@dataclass(frozen=True)
class SampledFDivergence:
    """Â_t = −u_t (f′(u_t) − f′(1)), u_t = exp(ℓ_t − ℓ_ref,t), with ℓ_ref read from
    ``batch.extra[field]`` (the samples' log-probs under π_ref, stored when they were drawn); the
    objective is the token mean of f̄(u_t) over the batch's step. Deviation from the DPH-RL code
    (verl's ``kl_penalty(..., "low_var_kl")``): no clamp of log u to ±20 or of k3 to ≤ 10."""

    divergence: FDivergence = JensenShannon()
    field: str = REFERENCE_FIELD

    def __post_init__(self):
        part(self, "divergence", self.divergence, "f-divergence", "f", "fprime")
        text(self, "field", self.field, "the Batch.extra field holding log π_ref of the stored samples' tokens")

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({self.field})

    def __call__(self, batch: Batch) -> Weighted:
        mask = batch.mask.to(batch.logp.dtype)
        log_u = (batch.logp.detach() - batch.require(self.field).to(batch.logp.dtype)) * mask
        slope_at_one = self.divergence.fprime(torch.zeros((), dtype=log_u.dtype, device=log_u.device))
        u = torch.exp(log_u)
        generator = self.divergence.f(log_u) - slope_at_one * (u - 1)
        weight = -u * (self.divergence.fprime(log_u) - slope_at_one) * mask
        value = (generator * mask).sum() / TokenMean().count(batch)
        return Weighted(weight, objective=value,
                        metrics={"log_ratio_mean": float((log_u * mask).sum() / mask.sum().clamp(min=1))})


__all__ = ["REFERENCE_FIELD", "SampledFDivergence"]
