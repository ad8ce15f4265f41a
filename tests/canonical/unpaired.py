"""Canonical KTO, BCO and CPO losses, transcribed from the papers (float64), with loops over examples.

Notation: ℓ(y) = Σ_t logp[b,t]·mask[b,t], h(y) = ℓ(y) − ℓ_ref(y), σ logistic.
Unpaired rows: ``label`` +1 desirable, −1 undesirable. KTO additionally gets, for each example, the
log-probs of a mismatched completion under its prompt (``kl_logp``, ``kl_logp_ref``, ``kl_mask``).

This module must stay independent of the library under test (no imports from it).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _seq(logp: Tensor, mask: Tensor, b: int) -> Tensor:
    return sum(logp[b, t] * mask[b, t] for t in range(logp.shape[1]))


def _sigmoid(x: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-x))


# --------------------------------------------------------------------------- KTO (Ethayarajh et al. 2024, arXiv 2402.01306)
def kto_loss(logp, mask, logp_ref, label, kl_logp, kl_logp_ref, kl_mask, beta: float,
             lambda_d: float, lambda_u: float) -> Tensor:
    """L_KTO = E_{x,y}[ λ_y − v(x, y) ] with
        r_θ(x, y) = log π_θ(y|x)/π_ref(y|x),
        z0 = KL(π_θ(y′|x) ‖ π_ref(y′|x)), estimated (as the authors' and TRL's code do) by the mean of
             r_θ over mismatched pairs (x_i, y′), clamped at 0 and NOT differentiated,
        v = λ_D σ(β (r − z0)) if y desirable, λ_U σ(β (z0 − r)) if undesirable.
    Expectation: the mean over examples; λ_y − v = λ_D (1 − σ(·)) or λ_U (1 − σ(·))."""
    n = logp.shape[0]
    kl_terms = [(_seq(kl_logp, kl_mask, i) - _seq(kl_logp_ref, kl_mask, i)).detach() for i in range(kl_logp.shape[0])]
    z0 = torch.clamp(sum(kl_terms) / len(kl_terms), min=0.0)
    total = 0.0
    for i in range(n):
        r = _seq(logp, mask, i) - _seq(logp_ref, mask, i)
        if label[i] > 0:
            total = total + (lambda_d - lambda_d * _sigmoid(beta * (r - z0)))
        else:
            total = total + (lambda_u - lambda_u * _sigmoid(beta * (z0 - r)))
    return total / n


# --------------------------------------------------------------------------- BCO (Jung et al. 2024, arXiv 2404.04656)
class BCORunningMean:
    """δ: the mean of every reward r = β h seen so far, the current batch's included."""

    def __init__(self):
        self.rewards: list[float] = []

    def update(self, rewards: list[float]) -> float:
        self.rewards.extend(rewards)
        return math.fsum(self.rewards) / len(self.rewards)


def bco_loss(logp, mask, logp_ref, label, beta: float, delta: float) -> Tensor:
    """L_BCO = −E_{desirable}[log σ(r − δ)] − E_{undesirable}[log σ(−(r − δ))], r = β log π/π_ref,
    written as the binary cross-entropy of the classifier σ(r − δ) against the label, mean over rows."""
    n = logp.shape[0]
    total = 0.0
    for i in range(n):
        r = beta * (_seq(logp, mask, i) - _seq(logp_ref, mask, i))
        p_desirable = _sigmoid(r - delta)
        total = total - (torch.log(p_desirable) if label[i] > 0 else torch.log(1.0 - p_desirable))
    return total / n


# --------------------------------------------------------------------------- CPO (Xu et al. 2024, arXiv 2401.08417)
def cpo_loss(logp, mask, group, sign, beta: float, alpha: float) -> Tensor:
    """L_CPO = L_prefer + α L_NLL:  L_prefer = −E log σ(β log π_θ(y_w|x) − β log π_θ(y_l|x)) over pairs,
    L_NLL = −E log π_θ(y_w|x), taken per token over the chosen responses (TRL: cross-entropy on them)."""
    pairs = {}
    for b in range(logp.shape[0]):
        pairs.setdefault(int(group[b]), {})["w" if sign[b] > 0 else "l"] = b
    prefer = 0.0
    for rows in pairs.values():
        prefer = prefer - torch.log(_sigmoid(beta * _seq(logp, mask, rows["w"]) - beta * _seq(logp, mask, rows["l"])))
    prefer = prefer / len(pairs)
    nll, tokens = 0.0, 0.0
    for rows in pairs.values():
        nll = nll - _seq(logp, mask, rows["w"])
        tokens += float(mask[rows["w"]].sum())
    return prefer + alpha * nll / tokens
