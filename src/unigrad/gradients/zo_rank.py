"""ZO-RankSGD (Tang et al., ICLR 2024, "Zeroth-Order Optimization Meets Human Feedback: Provable
Learning via Ranking Oracles", Algorithm 1): a descent direction from a ranking of perturbed points,
never from the values themselves.

Query m points θ + μ ξ_i, ξ_i ~ N(0, I_d). An (m, k)-ranking oracle orders the best k of them; the
pairs it reveals form the DAG E of (i, j) with i ranked above j — among the top k, and from each of
the top k to each unranked point — so |E| = k(k−1)/2 + k(m−k). The direction and the step are

    S = (1/|E|) Σ_{(i,j)∈E} (ξ_j − ξ_i),        θ ← θ − η S.

Collecting terms, the point ranked r-th (0-based, r < k) has coefficient −(m − 1 − 2r)/|E| and each
unranked point +k/|E|. The ranking comes from the oracle's keys (``oracles``, lower ranks higher, ties
by query order, summed over processes): the objective value, −mean reward of greedy completions, or
minus total wins under pairwise preferences of the points' completions. The points are made in
place from seeds as in MeZO (``seeded``), so the direction leaves the step as a ``SeededDirection``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from unigrad.gradients.base import StepSums
from unigrad.gradients.oracles import ObjectiveOracle, ranking
from unigrad.gradients.seeded import SeededDirection, forward_only, materialise, perturb, seed_of


def order_coefficients(order: list[int], k: int) -> list[float]:
    """Each query's coefficient in S, from the ranking ``order`` (best first) with its top k revealed."""
    m = len(order)
    edges = k * (k - 1) // 2 + k * (m - k)
    coefficients = [k / edges] * m
    for r, i in enumerate(order[:k]):
        coefficients[i] = -(m - 1 - 2 * r) / edges
    return coefficients


def rank_coefficients(values: list[float], k: int) -> list[float]:
    """Each query's coefficient in S, from the values (lower ranks higher) and the top k revealed."""
    return order_coefficients(ranking(values), k)


def observe_queries(model, params, seeds: list[int], mu: float, oracle, micro_batches, sums: StepSums):
    """The oracle's observation at θ + μ ξ(s) for each seed (θ restored after each) and ‖ξ(s)‖²."""
    observations, norms2 = [], []
    with forward_only(model):
        for i, seed in enumerate(seeds):
            norms2.append(perturb(params, seed, mu, norm=True))
            observations.append(oracle.observe(micro_batches, sums if i == 0 else None))
            perturb(params, seed, -mu)
    return observations, norms2


@dataclass
class ZORank:
    """m seeded queries θ + μ ξ_i ranked by the oracle (see the module docstring); ``top``: k
    (None: all m ranked). Shares MeZO's seeding and in-place path."""
    model: torch.nn.Module
    params: list
    queries: int = 4
    mu: float = 1e-3
    top: int | None = None
    seed: int = 0
    total: Callable[[float], float] = lambda value: value
    world: int = 1
    into_grad: bool = True
    oracle: object = field(default_factory=ObjectiveOracle)

    def __call__(self, micro_batches, backward, key: int = 0) -> StepSums:
        sums = StepSums()
        seeds = [seed_of(self.seed, key, i) for i in range(self.queries)]
        observations, norms2 = observe_queries(self.model, self.params, seeds, self.mu, self.oracle, micro_batches, sums)
        local = self.oracle.keys(observations)
        values = [self.total(v) for v in local]
        coefficients = rank_coefficients(values, self.queries if self.top is None else self.top)
        sums.tokens *= self.queries
        sums.objective = sums.surrogate = sum(local) / self.queries
        sums.metrics["best_query_objective"] = min(values)
        sums.direction = SeededDirection(tuple(seeds), tuple(coefficients), tuple(norms2))
        if self.into_grad:
            materialise(self.params, sums.direction, 1.0 / self.world)
        return sums

    @staticmethod
    def norm(direction: SeededDirection) -> float:
        return direction.norm()
