"""MDPO's proximity term as an advantage: the gradient of (1/t_k) KL(π_θ ‖ π_k) on π_k's samples.

Tomar et al. 2020, "Mirror Descent Policy Optimization", arXiv 2005.09814 (on-policy MDPO): each
iteration k takes several SGD steps on the same batch (the run's ``rollout.epochs``) against

    max_θ  E_{π_k}[ (π_θ/π_k) Â ]  −  (1/t_k) E_s[ KL(π_θ(·|s) ‖ π_k(·|s)) ],   t_k = 1 − (k−1)/K,

K the number of iterations (``train.steps``), k = 1..K. For a language model the states are the
completion prefixes and π_k = π_old, the policy that sampled the step. On its samples, with
r_t = π_θ(y_t)/π_old(y_t), KL(π_θ‖π_old) at a prefix is E_{π_old}[r log r], whose gradient is
E_{π_old}[r (log r + 1) ∇ log π_θ]: inside the Estimator's ratio form (π_den = π_old, m = 1) that is

    "plain":       Â_t = −(1/t_k) (log r_t + 1),   objective (1/t_k) (1/N_tok) Σ_t r_t log r_t
    "controlled":  Â_t = −(1/t_k) log r_t,         objective (1/t_k) (1/N_tok) Σ_t (r_t log r_t − r_t + 1)

Both have that expected gradient: at every prefix E_{π_old}[r ∇log π_θ] = ∇ Σ_a π_θ(a) = 0, so the
"+1" of the plain form only adds noise, and that noise is scaled by 1/t_k, which grows to K by the
end of the run; the controlled form (the control variate −(r − 1), E_{π_old}[r − 1] = 0) is zero
where π_θ = π_old, as on the first epoch of every step. Default: controlled.

The step index reaches the part through the rollout producer's per-row ``train_step`` (0-based, so
k = train_step + 1) and ``train_steps`` (K). Followed: the paper's schedule t_k = 1 − (k−1)/K and
the authors' code ``mdpo_on/mdpo.py`` (``surrgain = mean(ratio·A) − meankl / lr_now``, KL direction
``policy_pi.kl(old_policy)``, the mean over all sampled states); the code's ``lr_now`` counts
iterations from 0 with the same formula, i.e. starts at t = 1 + 1/K — we keep the paper's t_1 = 1.
The code's KL is the analytic Gaussian one; here it is the sampled estimate above.

Metrics: ``kl_old`` = (1/N_tok) Σ (r log r − r + 1), the nonnegative estimate of KL(π_θ‖π_old) with
the same expectation under π_old (E[r] = 1); ``inverse_step`` = 1/t_k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.checks import one_of
from unigrad.estimator.protocols import Weighted

KL_ESTIMATES = ("controlled", "plain")
KL_ESTIMATE = ("the sampled KL(π_θ‖π_old): r log r − r + 1 (controlled, zero at π_θ = π_old) or r log r (plain); "
               "the same expected gradient")


def inverse_step(batch: Batch) -> float:
    """1/t_k = K / (K − (k − 1)) of the batch's step (``train_step`` = k − 1, ``train_steps`` = K)."""
    index, total = (batch.require(name) for name in ("train_step", "train_steps"))
    k_minus_1, K = int(index.reshape(-1)[0]), int(total.reshape(-1)[0])
    if K < 1 or not 0 <= k_minus_1 < K:
        raise ValueError(f"MDPO's schedule t_k = 1 − (k−1)/K needs 0 ≤ train_step < train_steps, got train_step="
                         f"{k_minus_1}, train_steps={K} (the rollout producer fills them from train.steps)")
    return K / (K - k_minus_1)


def _log_ratio(batch: Batch) -> tuple[Tensor, Tensor]:
    mask = batch.mask.to(batch.logp.dtype)
    return (batch.logp.detach() - batch.require("logp_old").detach()) * mask, mask


@dataclass(frozen=True)
class MirrorDescentKL:
    """Â_t = −(1/t_k) log r_t (controlled) or −(1/t_k)(log r_t + 1) (plain), r_t = π_θ/π_old: with
    π_den = π_old and the token mean, the gradient of MDPO's KL(π_θ‖π_k)/t_k on π_k's samples."""

    estimate: Literal["controlled", "plain"] = "controlled"
    requires: ClassVar[frozenset[str]] = frozenset({"logp_old", "train_step", "train_steps"})

    def __post_init__(self):
        one_of(self, "estimate", self.estimate, KL_ESTIMATES, KL_ESTIMATE)

    def __call__(self, batch: Batch) -> Weighted:
        log_r, mask = _log_ratio(batch)
        scale = inverse_step(batch)
        r = torch.exp(log_r)
        controlled = (r * log_r - r + 1) * mask
        plain = self.estimate == "plain"
        objective = scale * ((r * log_r * mask) if plain else controlled).sum() / batch.tokens_total
        weight = -scale * (log_r + 1 if plain else log_r) * mask
        return Weighted(weight, objective=objective,
                        metrics={"kl_old": float(controlled.sum() / mask.sum().clamp(min=1)), "inverse_step": scale})


__all__ = ["KL_ESTIMATES", "MirrorDescentKL", "inverse_step"]
