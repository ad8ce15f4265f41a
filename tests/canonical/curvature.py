"""Canonical curvature-preconditioned steps (float64, never imports unigrad).

M-FAC (Frantar, Kurtic & Alistarh 2021, §3): the damped empirical Fisher of the last m gradients,
F̂ = λ I + (1/m) Σ_i g_i g_iᵀ, formed as a dense d × d matrix and inverted directly; the step
θ ← θ − lr F̂⁻¹ g.
"""
from __future__ import annotations

import torch


def dense_inverse_fisher_product(gradients: list[torch.Tensor], damping: float, x: torch.Tensor) -> torch.Tensor:
    d = x.numel()
    fisher = damping * torch.eye(d, dtype=torch.float64)
    for g in gradients:
        g = g.to(torch.float64).reshape(-1)
        fisher += torch.outer(g, g) / len(gradients)
    return torch.linalg.inv(fisher) @ x.to(torch.float64).reshape(-1)
