"""Canonical meta-gradient estimators for unrolled computation graphs, from the papers' statements
(float64, scalar θ, plain loops over particles and truncations; never imports unigrad).

PES (Vicol, Metz & Sohl-Dickstein 2021, "Unbiased Gradient Estimation in Unrolled Computation Graphs
with Persistent Evolution Strategies", Algorithm 1 / eq. for ĝ^PES): particle i starts the inner
problem at s₀ with ξ_i = 0; in truncation t it unrolls K steps from its own state under θ + ε_{t,i},
adds ε_{t,i} to ξ_i, and the estimate is ĝ_t = (1/(N σ²)) Σ_i ξ_i L_t^(i).

ES-Single (Vicol, Kolter & Swersky 2023, "Low-Variance Gradient Estimation in Unrolled Computation
Graphs with ES-Single", Algorithm 1): particle i draws ε_i once per inner problem, unrolls every
truncation under θ + ε_i from its own state, ĝ_t = (1/(N σ²)) Σ_i ε_i L_t^(i).

The perturbations are given explicitly: ``perturbations[t][i]`` (PES) or ``perturbations[i]``
(ES-Single), floats.

Influence balancing (Tallec & Ollivier 2017, UORO §6; the PES code ``influence_balancing.py``),
written component by component: s_j ← ½ s_j + ½ s_{j+1} (the last: ½ s_j) + θ·sign_j, sign = +1 for
the first 10 of 23 components, −1 after; loss ½(s₀ − 1)² after the truncation's K steps.
"""
from __future__ import annotations

from typing import Callable


def influence_step(s: list[float], theta: float, positive: int = 10) -> list[float]:
    n = len(s)
    out = []
    for j in range(n):
        following = s[j + 1] if j + 1 < n else 0.0
        out.append(0.5 * s[j] + 0.5 * following + theta * (1.0 if j < positive else -1.0))
    return out


def influence_unroll(s: list[float], theta: float, K: int) -> tuple[list[float], float]:
    for _ in range(K):
        s = influence_step(s, theta)
    return s, 0.5 * (s[0] - 1.0) ** 2


def pes(unroll: Callable[[list[float], float, int], tuple[list[float], float]], s0: list[float], theta: float,
        K: int, perturbations: list[list[float]], sigma: float) -> list[float]:
    """PES's estimate after each truncation of one inner problem (θ fixed)."""
    n_particles = len(perturbations[0])
    states = [list(s0) for _ in range(n_particles)]
    xi = [0.0] * n_particles
    estimates = []
    for eps_t in perturbations:
        total = 0.0
        for i in range(n_particles):
            states[i], loss = unroll(states[i], theta + eps_t[i], K)
            xi[i] += eps_t[i]
            total += xi[i] * loss
        estimates.append(total / (n_particles * sigma ** 2))
    return estimates


def es_single(unroll: Callable[[list[float], float, int], tuple[list[float], float]], s0: list[float], theta: float,
              K: int, truncations: int, perturbations: list[float], sigma: float) -> list[float]:
    """ES-Single's estimate after each truncation of one inner problem (θ fixed)."""
    n_particles = len(perturbations)
    states = [list(s0) for _ in range(n_particles)]
    estimates = []
    for _ in range(truncations):
        total = 0.0
        for i in range(n_particles):
            states[i], loss = unroll(states[i], theta + perturbations[i], K)
            total += perturbations[i] * loss
        estimates.append(total / (n_particles * sigma ** 2))
    return estimates
