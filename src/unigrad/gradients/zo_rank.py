"""ZO-RankSGD (Tang et al., ICLR 2024, "Zeroth-Order Optimization Meets Human Feedback: Provable
Learning via Ranking Oracles", Algorithm 1): a descent direction from a ranking of perturbed points,
never from the values themselves.

Query m points θ + μ ξ_i, ξ_i ~ N(0, I_d). An (m, k)-ranking oracle orders the best k of them; the
pairs it reveals form the DAG E of (i, j) with i ranked above j — among the top k, and from each of
the top k to each unranked point — so |E| = k(k−1)/2 + k(m−k). The direction and the step are

    S = (1/|E|) Σ_{(i,j)∈E} (ξ_j − ξ_i),        θ ← θ − η S.

Collecting terms, the point ranked r-th (0-based, r < k) has coefficient −(m − 1 − 2r)/|E| and each
unranked point +k/|E|. Here the oracle ranks by the method's objective value on the step's data
(lower is better; ties keep the query order), summed over processes; the points are made in place
from seeds as in MeZO, so the direction leaves the step as a ``SeededDirection``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from unigrad.gradients.base import StepSums
from unigrad.gradients.mezo import MeZO, SeededDirection, _forward_only, materialise, perturb


def rank_coefficients(values: list[float], k: int) -> list[float]:
    """Each query's coefficient in S, from the objective values (lower ranks higher) and the top k revealed."""
    m = len(values)
    order = sorted(range(m), key=lambda i: (values[i], i))
    edges = k * (k - 1) // 2 + k * (m - k)
    coefficients = [k / edges] * m
    for r, i in enumerate(order[:k]):
        coefficients[i] = -(m - 1 - 2 * r) / edges
    return coefficients


@dataclass
class ZORank:
    """m seeded queries θ + μ ξ_i ranked by the objective (see the module docstring); ``top``: k
    (None: all m ranked). Shares MeZO's seeding, evaluation and update path."""
    model: torch.nn.Module
    params: list
    queries: int = 4
    mu: float = 1e-3
    top: int | None = None
    seed: int = 0
    total: Callable[[float], float] = lambda value: value
    world: int = 1
    into_grad: bool = True
    norms: list = field(default_factory=list)

    def __call__(self, micro_batches, backward, key: int = 0) -> StepSums:
        probe = MeZO(self.model, self.params, seed=self.seed)          # its seeding and evaluation
        sums, seeds, values, local = StepSums(), [], [], []
        self.norms = []
        with _forward_only(self.model):
            for i in range(self.queries):
                seed = probe.seed_of(key, i)
                self.norms.append(perturb(self.params, seed, self.mu))
                value = probe._value(micro_batches, sums if i == 0 else None)
                perturb(self.params, seed, -self.mu)
                seeds.append(seed)
                local.append(value)
                values.append(self.total(value))
        k = self.queries if self.top is None else self.top
        coefficients = rank_coefficients(values, k)
        sums.tokens *= self.queries
        sums.objective = sums.surrogate = sum(local) / self.queries
        sums.metrics["best_query_objective"] = min(values)
        sums.direction = SeededDirection(tuple(seeds), tuple(coefficients))
        if self.into_grad:
            materialise(self.params, sums.direction, 1.0 / self.world)
        return sums

    norm = MeZO.norm
