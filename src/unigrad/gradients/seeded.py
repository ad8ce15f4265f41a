"""Seeded directions in parameter space, made and applied in place (MeZO's Algorithm 1 machinery,
Malladi et al. 2023, "Fine-Tuning Language Models with Just Forward Passes"), shared by every
zeroth-order estimator (MeZO, ES, ZO-RankSGD).

A direction z(s) ~ N(0, I_d) over the trainable parameters is regenerated from its seed s, one chunk
at a time in the parameters' order, never stored. A step's estimate is ĝ = Σ_i c_i z(s_i), kept as
the pairs (s_i, c_i) — a ``SeededDirection`` — from which any process rebuilds it.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

SEED_STRIDE = 1_000_003
CHUNK = 1 << 20     # elements of z drawn at once: the only memory a perturbation adds


def seed_of(seed: int, key: int, sample: int) -> int:
    """The seed of direction ``sample`` of call ``key`` (step and call) of a run seeded ``seed``."""
    return ((seed * SEED_STRIDE + key) * SEED_STRIDE + sample) % (2 ** 63)


@dataclass(frozen=True)
class SeededDirection:
    """ĝ = Σ_i c_i z(s_i): the seeds s_i, coefficients c_i and squared norms ‖z(s_i)‖² of a direction."""
    seeds: tuple[int, ...]
    coefficients: tuple[float, ...]
    norms2: tuple[float, ...] = ()

    def finite(self) -> bool:
        return all(math.isfinite(c) for c in self.coefficients)

    def norm(self) -> float:
        """‖ĝ‖ = √(Σ_i c_i² ‖z_i‖²), taking the z_i as orthogonal: exact for one direction; for several,
        the neglected ⟨z_i, z_j⟩ are O(√d) against ‖z_i‖² = O(d)."""
        return math.sqrt(sum(c * c * n2 for c, n2 in zip(self.coefficients, self.norms2)))


def directions(params: list[torch.Tensor], seed: int):
    """(parameter, a slice of its flat view, z for that slice): z ~ N(0, I) drawn from ``seed`` in the
    parameters' order, in fixed chunks so that no tensor the size of the largest parameter is made."""
    generator = None
    for p in params:
        if generator is None or generator.device != p.device:
            generator = torch.Generator(device=p.device)
            generator.manual_seed(seed)
        n = p.numel()
        for start in range(0, n, CHUNK):
            piece = slice(start, min(start + CHUNK, n))
            yield p, piece, torch.randn(piece.stop - start, generator=generator, device=p.device, dtype=torch.float32)


def perturb(params: list[torch.Tensor], seed: int, scale: float, norm: bool = False) -> float | None:
    """θ += scale · z(seed) in place; with ``norm``, returns ‖z‖² (one host sync, at the end)."""
    norm2 = None
    with torch.no_grad():
        for p, piece, z in directions(params, seed):
            p.view(-1)[piece].add_(z.to(p.dtype), alpha=scale)
            if norm:
                dot = torch.dot(z, z)
                norm2 = dot if norm2 is None else norm2 + dot.to(norm2.device)
    return (0.0 if norm2 is None else float(norm2)) if norm else None


def materialise(params: list[torch.Tensor], direction: SeededDirection, scale: float = 1.0) -> None:
    """param.grad = scale · Σ_i c_i z(s_i)."""
    with torch.no_grad():
        for p in params:
            p.grad = torch.zeros_like(p)
        for seed, c in zip(direction.seeds, direction.coefficients):
            for p, piece, z in directions(params, seed):
                p.grad.view(-1)[piece].add_(z.to(p.dtype), alpha=scale * c)


def antithetic(params: list[torch.Tensor], seed: int, scale: float, evaluate: Callable[[], float]):
    """(F(θ + scale·z), F(θ − scale·z), ‖z‖²) of z = z(seed), in place: θ += sz, θ −= 2sz, θ += sz."""
    norm2 = perturb(params, seed, scale, norm=True)
    plus = evaluate()
    perturb(params, seed, -2 * scale)
    minus = evaluate()
    perturb(params, seed, scale)
    return plus, minus, norm2


@contextmanager
def forward_only(model):
    """Forwards with dropout off and without autograd."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)


def clip_factor(norm: float, max_norm: float | None) -> float:
    """What ``torch.nn.utils.clip_grad_norm_`` multiplies a gradient of norm ``norm`` by."""
    return min(1.0, max_norm / (norm + 1e-6)) if max_norm else 1.0
