"""Combinators: objectives built from objectives, the way optax's ``chain`` builds transformations.

An objective is any value with ``requires`` (the Batch fields it reads) and ``loss(batch) -> Output``
(``unigrad.estimator.protocols.Objective``). ``Sum`` weighs several: L = Σ_i w_i L_i.
"""
from __future__ import annotations

from dataclasses import dataclass

from unigrad.batch import Batch
from unigrad.estimator.protocols import Objective, Output


@dataclass(frozen=True)
class Term:
    weight: float
    objective: Objective
    name: str = ""


@dataclass(frozen=True)
class Sum:
    """L = Σ_i w_i L_i, with objective Σ_i w_i objective_i; metrics prefixed by each term's name."""

    terms: tuple[Term, ...]

    @property
    def requires(self) -> frozenset[str]:
        return frozenset().union(*(term.objective.requires for term in self.terms))

    def loss(self, batch: Batch) -> Output:
        loss, objective, metrics = 0.0, 0.0, {}
        for index, term in enumerate(self.terms):
            out = term.objective.loss(batch)
            loss = loss + term.weight * out.loss
            objective = objective + term.weight * out.objective
            name = term.name or f"term{index}"
            metrics.update({f"{name}/{key}": value for key, value in out.metrics.items()})
            metrics[f"{name}/objective"] = float(out.objective)
        return Output(loss=loss, objective=objective, metrics=metrics)
