"""Antithetic evolution strategies (Salimans et al. 2017, "Evolution Strategies as a Scalable
Alternative to Reinforcement Learning", §2 and Algorithm 2 with mirrored sampling; for LLM
fine-tuning, Qiu et al. 2025, "Evolution Strategies at Scale: LLM Fine-Tuning Beyond Reinforcement
Learning"): a search gradient for a black-box objective, from values only.

With N antithetic pairs ε_i ~ N(0, I_d) (seeded, made in place as MeZO's perturbations, ``seeded``)
and a loss F (for a reward oracle F = −reward, ``oracles``),

    ĝ = (1/(2Nσ)) Σ_i [u(F(θ + σε_i)) − u(F(θ − σε_i))] ε_i,        θ ← θ − η ĝ

u the fitness shaping: ``none`` (u(F) = F: ĝ estimates ∇ of the Gaussian smoothing E[F(θ + σε)],
and equals MeZO's n-SPSA with n = N, ε = σ), or ``centered-ranks`` (Salimans et al. §2.2 and their
code's ``compute_centered_ranks``: the 2N values of the step replaced by their ranks, 0 for the
lowest, scaled to [−½, ½] by rank/(2N − 1) − ½; tied values share their mean rank — the paper does not
say, and the authors' argsort breaks ties arbitrarily, which for a discrete reward would push θ
along a spurious Σ ±ε_i), which makes the step invariant to monotone transformations of F and robust to outliers. The
values are summed over processes before shaping; only scalars cross processes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from unigrad.gradients.base import StepSums
from unigrad.gradients.mezo import antithetic_values, finish
from unigrad.gradients.oracles import ObjectiveOracle
from unigrad.gradients.seeded import SeededDirection, seed_of

SHAPINGS = ("none", "centered-ranks")


def centered_ranks(values: list[float]) -> list[float]:
    """rank(v)/(n − 1) − ½ for each value, ranks 0..n−1 from the lowest; tied values share the mean of
    their ranks, so equal values shape equal."""
    n = len(values)
    if n < 2:
        return [0.0] * n
    order = sorted(range(n), key=lambda i: values[i])
    ranks = [0.0] * n
    start = 0
    while start < n:
        end = start
        while end + 1 < n and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 / (n - 1) - 0.5
        start = end + 1
    return ranks


def shape(plus: list[float], minus: list[float], shaping: str) -> tuple[list[float], list[float]]:
    """u(F) of the + and − evaluations, over all 2N of them together."""
    if shaping == "none":
        return list(plus), list(minus)
    if shaping == "centered-ranks":
        ranked = centered_ranks([v for pair in zip(plus, minus) for v in pair])
        return ranked[0::2], ranked[1::2]
    raise ValueError(f"unknown fitness shaping {shaping!r}; available: {', '.join(SHAPINGS)}")


def es_coefficients(plus: list[float], minus: list[float], sigma: float, shaping: str = "none") -> list[float]:
    """c_i of ĝ = Σ_i c_i ε_i: [u(F_i⁺) − u(F_i⁻)] / (2Nσ)."""
    up, um = shape(plus, minus, shaping)
    return [(a - b) / (2 * len(plus) * sigma) for a, b in zip(up, um)]


@dataclass
class ES:
    """N antithetic pairs θ ± σε_i, seeded and in place (see the module docstring); the estimate leaves
    the step as a ``SeededDirection`` (applied by ``SeededSGD``) and, with ``into_grad``, in ``.grad``."""
    model: torch.nn.Module
    params: list
    pairs: int = 1
    sigma: float = 1e-3
    shaping: str = "none"
    seed: int = 0
    total: Callable[[float], float] = lambda value: value
    world: int = 1
    into_grad: bool = True
    oracle: object = field(default_factory=ObjectiveOracle)

    def __call__(self, micro_batches, backward, key: int = 0) -> StepSums:
        sums = StepSums()
        seeds = [seed_of(self.seed, key, i) for i in range(self.pairs)]
        plus, minus, norms2 = antithetic_values(self.model, self.params, seeds, self.sigma, self.oracle, micro_batches,
                                                sums)
        coefficients = es_coefficients([self.total(v) for v in plus], [self.total(v) for v in minus], self.sigma,
                                       self.shaping)
        direction = SeededDirection(tuple(seeds), tuple(coefficients), tuple(norms2))
        sums.metrics["es_value_spread"] = max(plus + minus) - min(plus + minus)
        local = sum(plus + minus) / (2 * self.pairs)
        return finish(sums, direction, local, 2 * self.pairs, self.params, self.world, self.into_grad)
