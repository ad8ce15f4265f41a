"""Canonical GAE, PPO's clipped policy loss and clipped value loss, from the definitions (float64, loops).

Written independently of the library under test (no imports from it), from Schulman et al. 2016
("High-Dimensional Continuous Control Using Generalized Advantage Estimation", arXiv 1506.02438, eq. 16,
the finite-horizon sum) and Schulman et al. 2017 (PPO, eq. 7), in the LLM conventions of verl/TRL:

    A_t = Σ_{l=0}^{T−t} (γλ)^l δ_{t+l},  δ_t = r_t + γ V_{t+1} − V_t,  V_{T+1} = 0   (completion tokens 1..T)
    R_t = A_t + V_t;  r_t = the scalar reward at the last token, or given per token
    Â = (A − mean A) / sqrt(var A + 1e-8) over all valid tokens of the batch, var unbiased
    L_π = −(1/N_tok) Σ min(ρ Â, clip(ρ, 1 − ε, 1 + ε) Â);  dual clip c: for Â < 0, max(that, c Â)
    L_V = ½ (1/N_tok) Σ max((V − R)², (clip(V, V_old − c_v, V_old + c_v) − R)²)

The advantage is the explicit discounted sum of TD errors (eq. 16), not the backward recursion.
"""
from __future__ import annotations

import torch
from torch import Tensor


def rewards_at_last_token(reward: Tensor, mask: Tensor) -> list[list[float]]:
    """Per row, the list of its token rewards: zeros and R_i at its last completion token."""
    out = []
    for i in range(mask.shape[0]):
        n = int(mask[i].sum())
        out.append([0.0] * (n - 1) + [float(reward[i])])
    return out


def gae(token_rewards: list[list[float]], values: Tensor, mask: Tensor, gamma: float, lam: float):
    """(A, R) as [B, T] float64 tensors: A_t = Σ_l (γλ)^l δ_{t+l} over each row's own tokens."""
    B, T = mask.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        n = int(mask[i].sum())
        v = [float(values[i, t]) for t in range(n)] + [0.0]   # V_{T+1} = 0: the episode ends
        r = token_rewards[i]
        deltas = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            adv[i, t] = sum((gamma * lam) ** l * deltas[t + l] for l in range(n - t))
    returns = adv + values.to(torch.float64) * mask
    return adv, returns


def whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    flat = [float(x[i, t]) for i in range(x.shape[0]) for t in range(x.shape[1]) if mask[i, t] > 0]
    mean = sum(flat) / len(flat)
    var = sum((f - mean) ** 2 for f in flat) / (len(flat) - 1)
    return (x - mean) / (var + eps) ** 0.5 * mask


def ppo_policy_loss(logp, logp_old, mask, advantage, eps: float, dual_clip: float | None = None) -> Tensor:
    """−(1/N_tok) Σ min(ρÂ, clip(ρ)Â) (with the dual clip for Â < 0), Â detached data."""
    total, count = logp.new_zeros(()), 0
    for i in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if mask[i, t] == 0:
                continue
            rho = torch.exp(logp[i, t] - logp_old[i, t])
            a = float(advantage[i, t])
            term = torch.minimum(rho * a, torch.clamp(rho, 1 - eps, 1 + eps) * a)
            if dual_clip is not None and a < 0:
                term = torch.maximum(term, torch.tensor(dual_clip * a, dtype=term.dtype))
            total = total + term
            count += 1
    return -total / count


def value_loss(value, values_old, returns, mask, clip: float | None) -> Tensor:
    """½ (1/N_tok) Σ max((V − R)², (clip(V, V_old ± c) − R)²)."""
    total, count = value.new_zeros(()), 0
    for i in range(value.shape[0]):
        for t in range(value.shape[1]):
            if mask[i, t] == 0:
                continue
            v, old, ret = value[i, t], float(values_old[i, t]), float(returns[i, t])
            plain = (v - ret) ** 2
            if clip is not None:
                bounded = torch.clamp(v, old - clip, old + clip)
                plain = torch.maximum(plain, (bounded - ret) ** 2)
            total = total + plain
            count += 1
    return 0.5 * total / count
