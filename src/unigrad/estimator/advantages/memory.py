"""TRICE's advantage: Â of the memory rationales and the proposals, with the control variate.

Phan, Hoffman et al. 2023, "Training Chain-of-Thought via Latent-Variable Inference", NeurIPS,
arXiv 2312.02179. Each example m of the step (group m) has the memory rationale z_m (after this step's
acceptance) and the step's proposal z̃_m ~ π_θ(z | x_m); the gradient estimate of (1/M) Σ_m log p(y_m | x_m) is

    ĝ = (1/M) Σ_m [ ∇ log π_θ(z_m | x_m) − β_m ∇ log π_θ(z̃_m | x_m) ],
    β_m = (1/(M − 1)) Σ_{m' ≠ m} 1[z̃_{m'} accepted]         (leave-one-out acceptance rate; 0 when M = 1)

The subtracted term is a control variate: E_{z̃ ~ π_θ}[∇ log π_θ(z̃ | x)] = 0 and β_m does not depend on
z̃_m, so ĝ stays unbiased; when z̃_m is accepted z_m = z̃_m and its term is (1 − β_m) ∇ log π_θ(z̃_m), which
vanishes as the acceptance rate → 1. As weights on rows (what the producer ``experience.memory`` emits):

    memory row (z_m, rejected proposal)    Â = 1
    proposal row (z̃_m, rejected)           Â = −β_m     (0 when the example has no memory yet)
    accepted row (z_m = z̃_m, one row)      Â = 1 − β_m

with the sequence sum of ∇ℓ_t and Z = M (``SequenceSum("group")``). An example with no correct rationale
found yet has no term (its proposal row is there for β and for Z = M). ``control_variate=False`` is the
paper's "TRICE no CV": Â = 1 on memory rows, 0 on proposals. Rows are flagged by ``extra["memory"]`` (the
row is z_m) and ``extra["proposal"]`` (the row is z̃_m); β is computed on the whole step (``batch.whole``),
so micro-batches accumulate to the step's estimate. The reported objective is −(1/M) Σ_m log π_θ(z_m | x_m)
over the examples with a memory: the memory's negative log-likelihood, an upper bound of −log p(y | x).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.advantages.group import group_sums
from unigrad.estimator.checks import flag
from unigrad.estimator.protocols import Weighted

MEMORY_FIELDS = frozenset({"group", "memory", "proposal"})


def _flag(batch: Batch, name: str) -> Tensor:
    return (batch.require(name).detach() > 0).to(batch.logp.dtype)


def memory_weights(batch: Batch, control_variate: bool = True) -> tuple[Tensor, Tensor]:
    """(Â per row, β per row) on ``batch`` taken as a whole step (module docstring)."""
    memory, proposal = _flag(batch, "memory"), _flag(batch, "proposal")
    accepted = memory * proposal
    proposals = float(proposal.sum())
    beta = (accepted.sum() - accepted) / (proposals - 1) if proposals > 1 else torch.zeros_like(accepted)
    if not control_variate:
        return memory, torch.zeros_like(memory)
    has_memory = (group_sums(memory, batch.require("group")) > 0).to(memory.dtype)
    return memory - beta * proposal * has_memory, beta * proposal


@dataclass(frozen=True)
class MemoryControlVariate:
    """Â = 1 on the memory rationale, −β_m on the proposal, 1 − β_m when they are one (module docstring)."""

    control_variate: bool = True
    requires: ClassVar[frozenset[str]] = MEMORY_FIELDS

    def __post_init__(self):
        flag(self, "control_variate", self.control_variate,
             "subtract β_m ∇ log π(z̃_m), the leave-one-out acceptance rate times the proposal's score")

    def __call__(self, batch: Batch) -> Weighted:
        whole = batch.whole
        weight, beta = memory_weights(whole, self.control_variate)
        memory = _flag(batch, "memory")
        nll = -(memory * (batch.logp.detach() * batch.mask.to(batch.logp.dtype)).sum(-1)).sum() / batch.groups_total
        proposal = _flag(whole, "proposal")
        metrics = {"trice/beta": float((beta.sum() / proposal.sum().clamp(min=1)))}
        return Weighted(batch.from_whole(weight), objective=nll, metrics=metrics)


__all__ = ["MEMORY_FIELDS", "MemoryControlVariate", "memory_weights"]
