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


def sophia_steps(theta0: list[float], gradients: list[list[float]], curvatures: dict[int, list[float]], lr: float,
                 beta1: float, beta2: float, rho: float, eps: float, weight_decay: float) -> list[float]:
    """Sophia (Liu et al. 2024, Algorithm 3), one coordinate at a time in plain Python floats:
    m_t = β1 m_{t−1} + (1−β1) g_t; at the steps in ``curvatures`` (t with t mod k = 1, 1-based in the
    paper) h_t = β2 h_{t−k} + (1−β2) ĥ_t, else h_t = h_{t−1}; θ ← θ − η λ θ; then
    θ ← θ − η · clip(m_t / max(ρ h_t, ε), 1) with clip(z, 1) = max{min{z, 1}, −1}."""
    theta = list(theta0)
    m = [0.0] * len(theta)
    h = [0.0] * len(theta)
    for t, g in enumerate(gradients):
        for i in range(len(theta)):
            m[i] = beta1 * m[i] + (1 - beta1) * g[i]
            if t in curvatures:
                h[i] = beta2 * h[i] + (1 - beta2) * curvatures[t][i]
            theta[i] = theta[i] - lr * weight_decay * theta[i]
            ratio = m[i] / max(rho * h[i], eps)
            theta[i] = theta[i] - lr * max(min(ratio, 1.0), -1.0)
    return theta


def exact_fisher_diagonal(log_probs_of, param: torch.Tensor) -> torch.Tensor:
    """diag of (1/N) Σ_t Σ_y p_t(y) ∇ log p_t(y) ∇ log p_t(y)ᵀ, the Gauss–Newton matrix of the mean
    token cross-entropy, by enumerating every position t and every label y: ``log_probs_of()`` gives
    the [N, V] log-probabilities as a differentiable function of ``param``."""
    log_probs = log_probs_of()
    n, v = log_probs.shape
    total = torch.zeros_like(param, dtype=torch.float64)
    for t in range(n):
        for y in range(v):
            (grad,) = torch.autograd.grad(log_probs[t, y], param, retain_graph=True)
            total += float(log_probs[t, y].detach().exp()) * grad.to(torch.float64) ** 2
    return total / n
