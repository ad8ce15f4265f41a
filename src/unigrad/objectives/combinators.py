"""Combinators: objectives built from objectives, the way optax's ``chain`` builds transformations.

An objective is any value with ``requires`` (the Batch fields it reads) and ``loss(batch) -> Output``
(``unigrad.estimator.protocols.Objective``). ``Sum`` weighs several: L = Σ_i w_i L_i.
"""
from __future__ import annotations

from dataclasses import dataclass

from unigrad.batch import Batch
from unigrad.estimator.checks import ParameterError, number, part
from unigrad.estimator.protocols import Objective, Output


@dataclass(frozen=True)
class Term:
    """One weighted objective of a ``Sum``; ``name`` prefixes its metrics."""

    weight: float
    objective: Objective
    name: str = ""

    def __post_init__(self):
        number(self, "weight", self.weight, "the multiple of its objective in the sum")
        part(self, "objective", self.objective, "objective", "loss", "requires")
        if not isinstance(self.name, str):
            raise ParameterError(self, "name", self.name, "a string", "it prefixes the term's metrics")


@dataclass(frozen=True)
class Sum:
    """L = Σ_i w_i L_i, with objective Σ_i w_i objective_i; metrics prefixed by each term's name."""

    terms: tuple[Term, ...]

    def __post_init__(self):
        if not isinstance(self.terms, (tuple, list)) or not self.terms or not all(isinstance(t, Term) for t in self.terms):
            raise ParameterError(self, "terms", self.terms, "a non-empty sequence of Term(weight, objective, name)")
        object.__setattr__(self, "terms", tuple(self.terms))      # a list would make the value unhashable

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
