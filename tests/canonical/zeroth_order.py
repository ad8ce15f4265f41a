"""Canonical zeroth-order estimates, from the papers' own statements (float64, never imports unigrad).

SPSA / MeZO (Spall 1992; Malladi et al. 2023, "Fine-Tuning Language Models with Just Forward Passes",
§2, Definition 1): for a loss f and directions z_1..z_n,

    ĝ = (1/n) Σ_i [f(θ + ε z_i) − f(θ − ε z_i)] / (2ε) · z_i

written with copies of θ (not in place) and the directions given explicitly.
"""
from __future__ import annotations

from typing import Callable

import torch


def spsa(f: Callable[[torch.Tensor], float], theta: torch.Tensor, directions: list[torch.Tensor], eps: float) -> torch.Tensor:
    estimate = torch.zeros_like(theta, dtype=torch.float64)
    for z in directions:
        z = z.to(torch.float64)
        plus = f(theta.to(torch.float64) + eps * z)
        minus = f(theta.to(torch.float64) - eps * z)
        estimate += (plus - minus) / (2 * eps) * z
    return estimate / len(directions)


def mezo_sgd_step(theta: torch.Tensor, estimate: torch.Tensor, lr: float) -> torch.Tensor:
    """MeZO's Algorithm 1, last line (no weight decay): θ ← θ − η ĝ."""
    return theta.to(torch.float64) - lr * estimate


def zo_rank_direction(values: list[float], directions: list[torch.Tensor], k: int) -> torch.Tensor:
    """ZO-RankSGD (Tang et al. 2024, Algorithm 1): the oracle reveals the order of the best k points
    (lower value ranks higher); E holds (i, j), i above j, for i, j both in the top k and for i in the
    top k, j outside it; S = (1/|E|) Σ_{(i,j)∈E} (ξ_j − ξ_i). Built edge by edge."""
    m = len(values)
    order = sorted(range(m), key=lambda i: (values[i], i))
    top, rest = order[:k], order[k:]
    edges = [(top[a], top[b]) for a in range(k) for b in range(a + 1, k)] + [(i, j) for i in top for j in rest]
    direction = torch.zeros_like(directions[0], dtype=torch.float64)
    for i, j in edges:
        direction += directions[j].to(torch.float64) - directions[i].to(torch.float64)
    return direction / len(edges)


def antithetic_es(f: Callable[[torch.Tensor], float], theta: torch.Tensor, noise: list[torch.Tensor], sigma: float,
                  centred_ranks: bool = False) -> torch.Tensor:
    """Antithetic ES (Salimans et al. 2017, Algorithm 2 with mirrored sampling; the gradient of the
    Gaussian smoothing of f): with returns F_i⁺ = f(θ + σε_i), F_i⁻ = f(θ − σε_i) for the N noise
    vectors, ĝ = 1/(2Nσ) Σ_i (F_i⁺ − F_i⁻) ε_i. With centred ranks (§2.2; the authors'
    ``compute_centered_ranks``), the 2N returns, laid out as the (N, 2) array of the authors'
    code, are first replaced by rank/(2N − 1) − ½, rank 0 for the lowest (ties: their mean rank; the
    paper does not say)."""
    theta = theta.to(torch.float64)
    returns = [[f(theta + sigma * e.to(torch.float64)), f(theta - sigma * e.to(torch.float64))] for e in noise]
    if centred_ranks:
        flat = [r for row in returns for r in row]
        # rank = the number of returns below, plus half the other returns equal to it (a tie's mean rank)
        ranks = [sum(r < v for r in flat) + (sum(r == v for r in flat) - 1) / 2 for v in flat]
        shaped = [rank / (len(flat) - 1) - 0.5 for rank in ranks]
        returns = [shaped[2 * i:2 * i + 2] for i in range(len(noise))]
    estimate = torch.zeros_like(theta)
    for (plus, minus), e in zip(returns, noise):
        estimate += (plus - minus) * e.to(torch.float64)
    return estimate / (2 * len(noise) * sigma)
