"""Canonical offline losses (ASFT, DDO, A-LoL and variants), float64, from the papers and the
official A-LoL code. Independent of the library under test (no imports from it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _seq(logp, mask):
    return (logp * mask).sum(dim=1)


def asft_loss(logp, mask, group, sign, lam=0.1):
    """ASFT (Wang et al. 2024): per pair −log p(y_w) − λ[log σ(log odds y_w) + log σ(−log odds y_l)],
    p(y) = exp(ℓ(y)/|y|), odds = p/(1 − p); mean over pairs. Written literally through odds."""
    p = torch.exp(_seq(logp, mask) / mask.sum(dim=1))
    log_odds = torch.log(p / (1 - p))
    losses = []
    for g in torch.unique(group).tolist():
        w = [i for i in range(len(group)) if int(group[i]) == g and float(sign[i]) > 0][0]
        l = [i for i in range(len(group)) if int(group[i]) == g and float(sign[i]) < 0][0]
        losses.append(-torch.log(p[w]) - lam * (F.logsigmoid(log_odds[w]) + F.logsigmoid(-log_odds[l])))
    return torch.stack(losses).mean()


def ddo_loss(logp, mask, sign, logp_ref, beta=0.1, alpha=0.5):
    """DDO (Zheng et al. 2025): −E_data log σ(βh) − α E_ref log(1 − σ(βh)), h = log p_θ − log p_ref
    (sequence sums); data rows sign +1, reference samples sign −1; each expectation a mean."""
    h = _seq(logp, mask) - _seq(logp_ref, mask)
    d = torch.sigmoid(beta * h)
    data = sign > 0
    return -torch.log(d[data]).mean() - alpha * torch.log(1 - d[~data]).mean()


def _advantage(reward, value=None, group=None):
    if value is not None:
        return reward - value
    base = torch.stack([reward[group == group[i]].mean() for i in range(len(reward))])
    return reward - base


def a_lol_loss(logp, mask, logp_ref, reward, value=None, group=None, clip=0.9, variant="a-lol", kl_beta=0.1):
    """A-LoL (Baheti et al. 2024, official code), mean over the batch, rows with A ≤ 0 dropped:
    a-lol: NLL(y)·clamp(π/π_ref)·A; ref-free: NLL(y)·A; seq: A·Σ_t NLL_t·clamp(π_t/π_ref,t);
    kl: NLL(y)·A + β_KL(log π(y) − log π_ref(y)). NLL = −Σ_t log π (sum), weights without grad."""
    A = _advantage(reward, value, group)
    losses = []
    for i in range(logp.shape[0]):
        if float(A[i]) <= 0:
            losses.append(logp.new_zeros(()))
            continue
        nll = -(logp[i] * mask[i]).sum()
        if variant == "a-lol":
            w = torch.exp((logp[i] - logp_ref[i]) @ mask[i]).detach().clamp(1 - clip, 1 + clip)
            losses.append(nll * w * A[i])
        elif variant == "a-lol-ref-free":
            losses.append(nll * A[i])
        elif variant == "a-lol-seq":
            w = torch.exp(logp[i] - logp_ref[i]).detach().clamp(1 - clip, 1 + clip)
            losses.append(A[i] * (-(logp[i]) * w * mask[i]).sum())
        elif variant == "a-lol-kl":
            losses.append(nll * A[i] + kl_beta * ((logp[i] - logp_ref[i]) * mask[i]).sum())
        else:
            raise ValueError(variant)
    return torch.stack(losses).mean()
