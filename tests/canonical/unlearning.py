"""Canonical unlearning losses, transcribed from the papers / official code (float64).

Rows: sign = −1 forget (FLAT: forget answer; SAFE-ALIGN: harmful/red), sign = +1 retain (FLAT:
template answer; SAFE-ALIGN: helpful/blue). Written with explicit loops over rows where that is
clearer. This module must stay independent of the library under test (no imports from it).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _rows(sign: Tensor, forget: bool) -> list[int]:
    return [i for i in range(sign.shape[0]) if (float(sign[i]) < 0) == forget]


def _token_mean(values: Tensor, mask: Tensor, rows: list[int]) -> Tensor:
    """(1/N) Σ over the listed rows' completion tokens of ``values``."""
    total = sum((values[i] * mask[i]).sum() for i in rows)
    return total / sum(mask[i].sum() for i in rows)


def ga_loss(logp, mask, sign):
    """Gradient ascent: +(1/N_f) Σ_{forget tokens} log π_θ(y_t) (= −NLL of the forget set)."""
    return _token_mean(logp, mask, _rows(sign, True))


def nll_retain(logp, mask, sign):
    return -_token_mean(logp, mask, _rows(sign, False))


def grad_diff_loss(logp, mask, sign, logp_ref=None, retain_weight=1.0, retain="nll", kl_estimator="k3"):
    """GA(forget) + c·NLL(retain), or + c·(1/N_r) Σ_retain k(ℓ, ℓ_ref) with log ρ = ℓ_ref − ℓ,
    k3 = ρ − 1 − log ρ, k2 = ½ (log ρ)²."""
    if retain == "nll":
        r = nll_retain(logp, mask, sign)
    else:
        log_rho = logp_ref - logp
        k = (torch.exp(log_rho) - 1 - log_rho) if kl_estimator == "k3" else 0.5 * log_rho ** 2
        r = _token_mean(k, mask, _rows(sign, False))
    return ga_loss(logp, mask, sign) + retain_weight * r


def npo_loss(logp, mask, sign, logp_ref, beta=0.1, retain_weight=0.0):
    """NPO (Zhang et al. 2024): −(2/β) mean_{forget rows} log σ(−β (ℓ(y) − ℓ_ref(y))), sums over
    tokens (official code: ``-F.logsigmoid(beta * neg_log_ratios).mean() * 2 / beta`` with
    neg_log_ratios = NLL_θ − NLL_ref); NPO+RT adds c·NLL_tokenmean(retain)."""
    terms = []
    for i in _rows(sign, True):
        h = (logp[i] * mask[i]).sum() - (logp_ref[i] * mask[i]).sum()
        terms.append(-(2.0 / beta) * F.logsigmoid(-beta * h))
    loss = torch.stack(terms).mean()
    if retain_weight:
        loss = loss + retain_weight * nll_retain(logp, mask, sign)
    return loss


def ihl_loss(logp, mask, sign, logp_top_other, retain_weight=1.0):
    """LoKU's inverted hinge loss (Cha et al. 2025): per forget token 1 + p(y_t) − max_{v≠y_t} p(v),
    token mean over forget tokens (official code: torchmetrics multiclass hinge, crammer-singer,
    on the forget batch, negated into 1 + p_y − max_other); + c·NLL_tokenmean(retain)."""
    per_token = 1 + torch.exp(logp) - torch.exp(logp_top_other)
    loss = _token_mean(per_token, mask, _rows(sign, True))
    if retain_weight:
        loss = loss + retain_weight * nll_retain(logp, mask, sign)
    return loss


_LOG2 = math.log(2.0)
# (activation g, conjugate-of-g f*(g(·))) per divergence, from FLAT's ``get_contrastive_loss``
FLAT = {
    "kl": (lambda u: u, lambda u: torch.exp(u - 1.0)),
    "reverse_kl": (lambda u: -torch.exp(u), lambda u: -1.0 - u),
    "jeffrey": (lambda u: u, lambda u: u + u * u / 4.0 + u * u * u / 16.0),
    "squared_hellinger": (lambda u: 1.0 - torch.exp(u), lambda u: (1.0 - torch.exp(u)) / torch.exp(u)),
    "pearson": (lambda u: u, lambda u: u * u / 4.0 + u),
    "js": (lambda u: _LOG2 - torch.log(1.0 + torch.exp(-u)), lambda u: u + torch.log(1.0 + torch.exp(-u)) - _LOG2),
    "total_variation": (lambda u: torch.tanh(u) / 2.0, lambda u: torch.tanh(u) / 2.0),
}


def flat_loss(logp, mask, sign, divergence="total_variation"):
    """FLAT (Wang et al. 2025): −g(P_e) + f*(g(P_f)), P = mean of p_θ(y_t) over the answer tokens
    of the template rows (sign +1) and of the forget rows (sign −1)."""
    p = torch.exp(logp)
    P_e = _token_mean(p, mask, _rows(sign, False))
    P_f = _token_mean(p, mask, _rows(sign, True))
    g, conj = FLAT[divergence]
    return -g(P_e) + conj(P_f)


def safe_align_loss(logp, mask, sign, lam=1.0, loss_threshold=None):
    """SAFE-ALIGN strategy B as reconstructed (confidence L): one token mean over all completion
    tokens of −ℓ_t on blue rows and +λ ℓ_t on red rows whose mean NLL is below τ."""
    total = logp.new_zeros(())
    for i in range(logp.shape[0]):
        seq = (logp[i] * mask[i]).sum()
        if float(sign[i]) > 0:
            total = total - seq
        else:
            nll_mean = float(-seq.detach() / mask[i].sum())
            if loss_threshold is None or nll_mean < loss_threshold:
                total = total + lam * seq
    return total / mask.sum()


def canonical(name: str, logp: Tensor, mask: Tensor, **kw) -> Tensor:
    table = {"ga": ga_loss, "grad-diff": grad_diff_loss, "npo": npo_loss, "ihl": ihl_loss,
             "flat": flat_loss, "safe-align": safe_align_loss}
    return table[name](logp, mask, **kw)
