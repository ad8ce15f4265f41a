"""Route: rows marked by a per-row flag train one objective, the other rows another.

    L = L_marked(rows with extra[field])  +  L_other(the other rows)

A producer that mixes two kinds of rows in one step marks them (DPH-RL's rehearsal samples of the
initial policy, ``extra["is_rehearsal"]``, beside fresh rollouts). Like the HPT gate (``gate.py``),
each objective receives ``batch.subset(its rows)``, whose whole step is its rows of the step, so its
normaliser counts only them and accumulated micro-batches add up to the full step exactly. Unlike the
gate, the route is given by the data, not decided from the rewards.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from unigrad.batch import Batch
from unigrad.estimator.checks import part, text
from unigrad.estimator.protocols import Objective, Output


@dataclass(frozen=True)
class Route:
    """``marked`` on the rows whose ``batch.extra[field]`` is true, ``other`` on the rest; the loss is
    the sum of the two. Metrics: ``{names[0]}_rows`` (the marked share of the step's rows) and each
    objective's metrics prefixed by its name."""

    field: str = "is_rehearsal"
    marked: Objective | None = None
    other: Objective | None = None
    names: tuple[str, str] = ("marked", "other")

    def __post_init__(self):
        if self.marked is None or self.other is None:
            raise ValueError("Route needs both objectives: marked= (the flagged rows) and other= (the rest)")
        part(self, "marked", self.marked, "objective", "loss", "requires")
        part(self, "other", self.other, "objective", "loss", "requires")
        text(self, "field", self.field, "the Batch.extra field flagging the rows of `marked`")

    @property
    def requires(self) -> frozenset[str]:
        return self.marked.requires | self.other.requires | frozenset({self.field})

    def loss(self, batch: Batch) -> Output:
        flagged = batch.whole.require(self.field).bool()
        loss = batch.logp.sum() * 0.0              # keeps the graph when a route is empty
        objective = torch.zeros((), dtype=batch.logp.dtype, device=batch.logp.device)
        metrics = {f"{self.names[0]}_rows": float(flagged.double().mean())}
        for name, objective_of, keep in ((self.names[0], self.marked, flagged), (self.names[1], self.other, ~flagged)):
            sub = batch.subset(keep)
            if sub.logp.shape[0] == 0:
                continue
            out = objective_of.loss(sub)
            loss = loss + out.loss
            objective = objective + out.objective
            metrics.update({f"{name}/{key}": value for key, value in out.metrics.items()})
            metrics[f"{name}/objective"] = float(out.objective)
        return Output(loss=loss, objective=objective.detach(), metrics=metrics)


__all__ = ["Route"]
