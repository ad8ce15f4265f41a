"""MeZO: the gradient from forward passes only (Malladi et al. 2023, "Fine-Tuning Language Models
with Just Forward Passes", Algorithm 1), i.e. SPSA (Spall 1992) with the perturbation regenerated
from a seed instead of stored.

For each of n samples i, with z_i ~ N(0, I_d) over the trainable parameters drawn from seed s_i and
the same step data B for both evaluations,

    p_i = [L(θ + ε z_i; B) − L(θ − ε z_i; B)] / (2ε)          (the projected gradient, one scalar)
    ĝ   = (1/n) Σ_i p_i z_i                                   E[ĝ] = ∇L(θ) + O(ε²)

L is the method's objective value (``Output.objective``, the canonical loss), never the surrogate,
whose value does not change with θ. θ is perturbed in place — θ += εz, θ −= 2εz, θ += εz — one
parameter tensor at a time, so no copy of the weights and no z is kept; the forwards run without
autograd and with dropout off. Across processes only the scalars L(θ ± εz) are summed.

The estimate leaves the step as a ``SeededDirection`` — the (s_i, p_i / n) pairs, from which any
process regenerates ĝ — and, for an optimiser with state (MeZO with Adam's moments), also in
``param.grad``. ``SeededSGD`` is MeZO-SGD: θ ← θ − η (ĝ + λ θ) applied from the seeds, with no
gradient tensor and no optimiser state.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

from unigrad.gradients.base import StepSums

SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class SeededDirection:
    """ĝ = Σ_i c_i z(s_i): the seeds s_i and coefficients c_i of a direction in parameter space."""
    seeds: tuple[int, ...]
    coefficients: tuple[float, ...]

    def finite(self) -> bool:
        return all(math.isfinite(c) for c in self.coefficients)


CHUNK = 1 << 20     # elements of z drawn at once: the only memory a perturbation adds


def _directions(params: list[torch.Tensor], seed: int):
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


def perturb(params: list[torch.Tensor], seed: int, scale: float) -> float:
    """θ += scale · z(seed) in place; returns ‖z‖²."""
    norm2 = 0.0
    with torch.no_grad():
        for p, piece, z in _directions(params, seed):
            p.view(-1)[piece].add_(z.to(p.dtype), alpha=scale)
            norm2 += float(torch.dot(z, z))
    return norm2


def materialise(params: list[torch.Tensor], direction: SeededDirection, scale: float = 1.0) -> None:
    """param.grad = scale · Σ_i c_i z(s_i)."""
    with torch.no_grad():
        for p in params:
            p.grad = torch.zeros_like(p)
        for seed, c in zip(direction.seeds, direction.coefficients):
            for p, piece, z in _directions(params, seed):
                p.grad.view(-1)[piece].add_(z.to(p.dtype), alpha=scale * c)


@contextmanager
def _forward_only(model):
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)


@dataclass
class MeZO:
    """n-SPSA with in-place, seeded perturbations (see the module docstring). ``total`` sums a scalar
    over processes; ``world`` is their number; ``into_grad``: also write ĝ into ``param.grad`` (the
    layout then sums the processes' gradients, so each holds ĝ / world)."""
    model: torch.nn.Module
    params: list
    samples: int = 1
    eps: float = 1e-3
    seed: int = 0
    total: Callable[[float], float] = lambda value: value
    world: int = 1
    into_grad: bool = True
    norms: list = field(default_factory=list)

    def seed_of(self, key: int, sample: int) -> int:
        return ((self.seed * SEED_STRIDE + key) * SEED_STRIDE + sample) % (2 ** 63)

    def _value(self, micro_batches, sums: StepSums | None) -> float:
        value = 0.0
        for loss_of in micro_batches:
            out, tokens = loss_of()
            value += float(out.objective)
            if sums is not None:
                sums.tokens += tokens
                for key, v in out.metrics.items():
                    sums.metrics[key] = sums.metrics.get(key, 0.0) + float(v) / len(micro_batches)
        return value

    def __call__(self, micro_batches, backward, key: int = 0) -> StepSums:
        sums = StepSums()
        seeds, coefficients, local = [], [], 0.0
        self.norms = []
        with _forward_only(self.model):
            for i in range(self.samples):
                seed = self.seed_of(key, i)
                norm2 = perturb(self.params, seed, self.eps)
                plus = self._value(micro_batches, sums if i == 0 else None)
                perturb(self.params, seed, -2 * self.eps)
                minus = self._value(micro_batches, None)
                perturb(self.params, seed, self.eps)
                projected = (self.total(plus) - self.total(minus)) / (2 * self.eps)
                seeds.append(seed)
                coefficients.append(projected / self.samples)
                self.norms.append(norm2)
                local += (plus + minus) / (2 * self.samples)
        sums.tokens *= 2 * self.samples
        sums.objective = sums.surrogate = local
        sums.metrics["projected_gradient"] = sum(coefficients)
        sums.direction = SeededDirection(tuple(seeds), tuple(coefficients))
        if self.into_grad:
            materialise(self.params, sums.direction, 1.0 / self.world)
        return sums

    def norm(self, direction: SeededDirection) -> float:
        """‖ĝ‖, taking the z_i as orthogonal (exact for n = 1; in high dimension nearly so)."""
        return math.sqrt(sum(c * c * n2 for c, n2 in zip(direction.coefficients, self.norms)))


@dataclass
class SeededSGD:
    """MeZO-SGD, the update rule: θ ← θ − η (Σ_i c_i z(s_i) + λ θ), from the seeds, parameter by
    parameter, with η the optimiser's current learning rate (the schedule applies) and weight decay λ
    on matrices only (not biases or norms, as the paper). No gradient tensor, no optimiser state. A
    non-finite estimate is not applied."""
    params: list
    optimizer: torch.optim.Optimizer
    estimator: MeZO
    weight_decay: float = 0.0

    def __call__(self, step, gradients, apply):
        sums = gradients()
        direction = sums.direction
        if not direction.finite() or not math.isfinite(sums.objective):
            return sums, float("nan")
        lr = self.optimizer.param_groups[0]["lr"]
        with torch.no_grad():
            if self.weight_decay:
                for p in self.params:
                    if p.ndim >= 2:
                        p.mul_(1 - lr * self.weight_decay)
            for seed, c in zip(direction.seeds, direction.coefficients):
                perturb(self.params, seed, -lr * c)
        return sums, self.estimator.norm(direction)
