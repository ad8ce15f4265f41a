"""Canonical extragradient, from Korpelevich 1976 ("The extragradient method for finding saddle points
and other problems"), for plain gradient descent on a vector field F (F = ∇f for a minimisation; for a
min-max game min_x max_y f, F = (∇_x f, −∇_y f)), in float64, never importing unigrad:

    z_{k+½} = z_k − η F(z_k)
    z_{k+1} = z_k − η F(z_{k+½})

beside simultaneous gradient descent z_{k+1} = z_k − η F(z_k), each written as a loop over steps.
"""
from __future__ import annotations

from typing import Callable

import torch

Field = Callable[[torch.Tensor], torch.Tensor]


def extragradient_step(field: Field, z: torch.Tensor, lr: float) -> torch.Tensor:
    z = z.to(torch.float64)
    half = z - lr * field(z)
    return z - lr * field(half)


def gradient_descent_step(field: Field, z: torch.Tensor, lr: float) -> torch.Tensor:
    z = z.to(torch.float64)
    return z - lr * field(z)


def iterate(step: Callable[[Field, torch.Tensor, float], torch.Tensor], field: Field, z0: torch.Tensor,
            lr: float, steps: int) -> list[torch.Tensor]:
    """[z_0, z_1, …, z_steps]."""
    path = [z0.to(torch.float64)]
    for _ in range(steps):
        path.append(step(field, path[-1], lr))
    return path


def bilinear_field(z: torch.Tensor) -> torch.Tensor:
    """f(x, y) = x·y, min over x, max over y: F(x, y) = (∂f/∂x, −∂f/∂y) = (y, −x)."""
    return torch.stack([z[1], -z[0]])
