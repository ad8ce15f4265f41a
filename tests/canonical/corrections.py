"""Canonical stabilisers and rollout corrections, transcribed from their papers (float64, loops over tokens).

Notation as ``canonical.rl`` (no imports from the library under test): r_{i,t} = exp(logp − logp_old);
Â_i the GRPO group-normalised advantage; |y_i| = Σ_t mask. Every loss is the one to minimise, written
in the paper's own form with autograd through it (the stop-gradient is ``.detach()``).

    PPO dual clip (Ye et al. 2020, arXiv 1912.09729):  Â ≥ 0: min(rÂ, clip(r)Â);  Â < 0: max(min(rÂ, clip(r)Â), cÂ)
    CISPO (MiniMax-M1, arXiv 2506.13585):  J = (1/Σ|y_i|) Σ_{i,t} sg(clip(r_{i,t})) Â_i log π_θ(y_{i,t})
    SAPO (arXiv 2511.20347):  token objective f(r)Â, f(r) = σ(τ(r − 1))·4/τ, τ = τ_pos if Â > 0 else τ_neg;
                              per-sequence token mean, then mean over sequences
    rollout correction: ρ_t = π_old(y_t)/π_sampler(y_t), ρ_seq = Π_t ρ_t (log clamped at ±20);
                        TIS w = min(ρ, C); MIS w = ρ if low ≤ ρ ≤ high else 0; the term is multiplied by w
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .rl import grpo_advantage


# --------------------------------------------------------------------------- rollout-correction weights
def token_rho(mask, logp_old, logp_sampler) -> list[list[float]]:
    """ρ_{i,t} = π_old/π_sampler for every completion token, as Python floats (one list per row)."""
    rows = []
    for i in range(mask.shape[0]):
        rows.append([math.exp(max(-20.0, min(20.0, float(logp_old[i, t] - logp_sampler[i, t]))))
                     for t in range(mask.shape[1]) if mask[i, t] > 0])
    return rows


def sequence_rho(mask, logp_old, logp_sampler) -> list[float]:
    """ρ_i = Π_t π_old(y_t)/π_sampler(y_t), its log clamped to ±20."""
    out = []
    for i in range(mask.shape[0]):
        log = sum(float(logp_old[i, t] - logp_sampler[i, t]) for t in range(mask.shape[1]) if mask[i, t] > 0)
        out.append(math.exp(max(-20.0, min(20.0, log))))
    return out


def tis(rho: float, cap: float) -> float:
    """Truncated IS: min(ρ, C)."""
    return rho if rho < cap else cap


def mis(rho: float, low: float, high: float) -> float:
    """Masked IS: ρ inside [low, high], else 0 (the term is dropped)."""
    return rho if low <= rho <= high else 0.0


def correction_weights(mask, logp_old, logp_sampler, kind: str, level: str, cap=2.0, low=0.0, high=3.0) -> Tensor:
    """[B, T] weight of each token's term (0 past the completion): the sequence weight on all its tokens."""
    weight = torch.zeros_like(mask)
    w = (lambda rho: tis(rho, cap)) if kind == "tis" else (lambda rho: mis(rho, low, high))
    per_token = token_rho(mask, logp_old, logp_sampler)
    per_sequence = sequence_rho(mask, logp_old, logp_sampler)
    for i in range(mask.shape[0]):
        k = 0
        for t in range(mask.shape[1]):
            if mask[i, t] > 0:
                weight[i, t] = w(per_token[i][k]) if level == "token" else w(per_sequence[i])
                k += 1
    return weight


# --------------------------------------------------------------------------- token objectives
def ppo_token(r: Tensor, a: Tensor, eps_low: float, eps_high: float, c: float | None) -> Tensor:
    """PPO's clipped objective of one token, with the dual clip c for a negative advantage."""
    clipped = torch.clamp(r, 1 - eps_low, 1 + eps_high)
    value = torch.minimum(r * a, clipped * a)
    if c is not None and float(a) < 0:
        value = torch.maximum(value, c * a)
    return value


def sapo_token(r: Tensor, a: Tensor, tau_pos: float, tau_neg: float) -> Tensor:
    tau = tau_pos if float(a) > 0 else tau_neg
    return torch.sigmoid(tau * (r - 1)) * 4 / tau * a


def _per_token(logp, mask, logp_old, adv, token_value, weight):
    """[[objective of token t of row i]] with the correction weight applied, completion tokens only."""
    rows = []
    for i in range(logp.shape[0]):
        row = []
        for t in range(logp.shape[1]):
            if mask[i, t] > 0:
                r = torch.exp(logp[i, t] - logp_old[i, t])
                w = 1.0 if weight is None else weight[i, t]
                row.append(w * token_value(r, adv[i], logp[i, t]))
        rows.append(row)
    return rows


def _sequence_mean(rows) -> Tensor:
    return -sum(sum(row) / len(row) for row in rows) / len(rows)


def _token_mean(rows) -> Tensor:
    return -sum(sum(row) for row in rows) / sum(len(row) for row in rows)


def grpo_dual_clip_loss(logp, mask, logp_old, reward, group, eps=0.2, c=3.0, weight=None) -> Tensor:
    """GRPO (per-sequence token mean) on PPO's dual-clipped objective, each term times ``weight``."""
    adv = grpo_advantage(reward, group)
    return _sequence_mean(_per_token(logp, mask, logp_old, adv, lambda r, a, lp: ppo_token(r, a, eps, eps, c), weight))


def dapo_dual_clip_loss(logp, mask, logp_old, reward, group, eps_low=0.2, eps_high=0.28, c=None, weight=None) -> Tensor:
    """DAPO (token mean over the batch), optionally dual-clipped, each term times ``weight``."""
    adv = grpo_advantage(reward, group)
    return _token_mean(_per_token(logp, mask, logp_old, adv,
                                  lambda r, a, lp: ppo_token(r, a, eps_low, eps_high, c), weight))


def cispo_loss(logp, mask, logp_old, reward, group, eps_low=1.0, eps_high=4.0, weight=None) -> Tensor:
    """CISPO: −(1/Σ|y_i|) Σ sg(clip(r)) Â log π_θ."""
    adv = grpo_advantage(reward, group)
    return _token_mean(_per_token(logp, mask, logp_old, adv,
                                  lambda r, a, lp: torch.clamp(r, 1 - eps_low, 1 + eps_high).detach() * a * lp, weight))


def sapo_loss(logp, mask, logp_old, reward, group, tau_pos=1.0, tau_neg=1.05, weight=None) -> Tensor:
    """SAPO: −(1/N) Σ_i (1/|y_i|) Σ_t f(r) Â."""
    adv = grpo_advantage(reward, group)
    return _sequence_mean(_per_token(logp, mask, logp_old, adv,
                                     lambda r, a, lp: sapo_token(r, a, tau_pos, tau_neg), weight))
