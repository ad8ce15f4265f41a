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

from unigrad.batch import Batch
from unigrad.estimator.checks import part, text
from unigrad.estimator.protocols import Objective, Output
from unigrad.objectives.gate import routed


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
        return routed(batch, ((self.names[0], self.marked, flagged), (self.names[1], self.other, ~flagged)),
                      {f"{self.names[0]}_rows": float(flagged.double().mean())})
