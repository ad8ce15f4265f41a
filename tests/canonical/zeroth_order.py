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
