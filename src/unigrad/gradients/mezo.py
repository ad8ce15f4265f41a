"""MeZO: the gradient from forward passes only (Malladi et al. 2023, "Fine-Tuning Language Models
with Just Forward Passes", Algorithm 1), i.e. SPSA (Spall 1992) with the perturbation regenerated
from a seed instead of stored.

For each of n samples i, with z_i ~ N(0, I_d) over the trainable parameters drawn from seed s_i and
the same step data B for both evaluations,

    p_i = [F(θ + ε z_i; B) − F(θ − ε z_i; B)] / (2ε)          (the projected gradient, one scalar)
    ĝ   = (1/n) Σ_i p_i z_i                                   E[ĝ] = ∇F(θ) + O(ε²)

F is the oracle's value (``oracles``): by default the method's objective value (``Output.objective``,
the canonical loss), never the surrogate, whose value does not change with θ; or −mean reward of
greedy completions. θ is perturbed in place — θ += εz, θ −= 2εz, θ += εz — one parameter tensor at
a time, so no copy of the weights and no z is kept (``seeded``); the forwards run without autograd
and with dropout off. Across processes only the scalars F(θ ± εz) are summed.

The estimate leaves the step as a ``SeededDirection`` — the (s_i, p_i / n) pairs, from which any
process regenerates ĝ — and, for an optimiser with state (MeZO with Adam's moments), also in
``param.grad``. ``SeededSGD`` is MeZO-SGD: θ ← θ − η (ĝ + λ θ) applied from the seeds, with no
gradient tensor and no optimiser state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from unigrad.gradients.base import StepSums
from unigrad.gradients.oracles import ObjectiveOracle
from unigrad.gradients.seeded import (CHUNK, SEED_STRIDE, SeededDirection, antithetic, clip_factor, directions,
                                      forward_only, materialise, perturb, seed_of)


def antithetic_values(model, params, seeds: list[int], scale: float, oracle, micro_batches, sums: StepSums):
    """F(θ ± scale·z(s)) for each seed s (this process's values) and ‖z(s)‖²; the first evaluation
    records the step's tokens and metrics in ``sums``."""
    plus, minus, norms2 = [], [], []
    with forward_only(model):
        for i, seed in enumerate(seeds):
            calls = iter([sums if i == 0 else None, None])     # what the + and the − evaluation record into
            p, m, n2 = antithetic(params, seed, scale, lambda: oracle.observe(micro_batches, next(calls)))
            plus.append(p)
            minus.append(m)
            norms2.append(n2)
    return plus, minus, norms2


def finish(sums: StepSums, direction: SeededDirection, local: float, evaluations: int, params, world: int,
           into_grad: bool) -> StepSums:
    """The step's sums around an estimate: tokens of all evaluations, the mean value, the direction
    (and ``.grad``, each process holding ĝ / world, when the estimate goes through an optimiser)."""
    sums.tokens *= evaluations
    sums.objective = sums.surrogate = local
    sums.metrics["projected_gradient"] = sum(direction.coefficients)
    sums.direction = direction
    if into_grad:
        materialise(params, direction, 1.0 / world)
    return sums


@dataclass
class MeZO:
    """n-SPSA with in-place, seeded perturbations (see the module docstring). ``total`` sums a scalar
    over processes; ``world`` is their number; ``into_grad``: also write ĝ into ``param.grad`` (the
    layout then sums the processes' gradients, so each holds ĝ / world); ``oracle``: F."""
    model: torch.nn.Module
    params: list
    samples: int = 1
    eps: float = 1e-3
    seed: int = 0
    total: Callable[[float], float] = lambda value: value
    world: int = 1
    into_grad: bool = True
    oracle: object = field(default_factory=ObjectiveOracle)

    def seed_of(self, key: int, sample: int) -> int:
        return seed_of(self.seed, key, sample)

    def __call__(self, micro_batches, backward, key: int = 0) -> StepSums:
        sums = StepSums()
        seeds = [self.seed_of(key, i) for i in range(self.samples)]
        plus, minus, norms2 = antithetic_values(self.model, self.params, seeds, self.eps, self.oracle, micro_batches, sums)
        coefficients = [(self.total(p) - self.total(m)) / (2 * self.eps) / self.samples for p, m in zip(plus, minus)]
        direction = SeededDirection(tuple(seeds), tuple(coefficients), tuple(norms2))
        local = sum(plus + minus) / (2 * self.samples)
        return finish(sums, direction, local, 2 * self.samples, self.params, self.world, self.into_grad)

    @staticmethod
    def norm(direction: SeededDirection) -> float:
        return direction.norm()


@dataclass
class SeededSGD:
    """MeZO-SGD, the update rule: θ ← θ − η (c · Σ_i c_i z(s_i) + λ θ), from the seeds, parameter by
    parameter, with η the optimiser's current learning rate (the schedule applies) and weight decay λ
    on matrices only (not biases or norms, as the paper). No gradient tensor, no optimiser state. A
    non-finite estimate is not applied. The estimate is clipped as every other path clips a gradient
    (``train.max_grad_norm``, as ``torch.nn.utils.clip_grad_norm_``): c = min(1, max/(‖ĝ‖ + 1e-6)),
    ‖ĝ‖ from the coefficients and the ‖z_i‖² (``SeededDirection.norm``); the returned norm is ‖ĝ‖
    before clipping. MeZO's paper does not clip: set ``max_grad_norm: null`` for its update."""
    params: list
    optimizer: torch.optim.Optimizer
    estimator: object = None
    weight_decay: float = 0.0
    max_grad_norm: float | None = None

    def __call__(self, step, gradients, apply):
        sums = gradients()
        direction = sums.direction
        if not direction.finite() or not math.isfinite(sums.objective):
            return sums, float("nan")
        lr = self.optimizer.param_groups[0]["lr"]
        norm = direction.norm()
        scale = lr * clip_factor(norm, self.max_grad_norm)
        with torch.no_grad():
            if self.weight_decay:
                for p in self.params:
                    if p.ndim >= 2:
                        p.mul_(1 - lr * self.weight_decay)
            for seed, c in zip(direction.seeds, direction.coefficients):
                perturb(self.params, seed, -scale * c)
        return sums, norm


__all__ = ["CHUNK", "SEED_STRIDE", "MeZO", "SeededDirection", "SeededSGD", "antithetic_values", "directions", "finish",
           "materialise", "perturb"]
