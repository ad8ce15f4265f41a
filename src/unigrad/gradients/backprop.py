"""Backpropagation: ∇_θ L by reverse-mode autograd through each micro-batch's surrogate loss."""
from __future__ import annotations

from dataclasses import dataclass

from unigrad.gradients.base import StepSums


@dataclass(frozen=True)
class Backprop:
    """g = Σ_i ∇_θ L_i over the step's micro-batches i: each surrogate L_i is already divided by
    the whole step's counts (``Batch.step``), so the sum is the step's gradient exactly."""

    def __call__(self, micro_batches, backward, key: int = 0):
        sums = StepSums()
        for loss_of in micro_batches:
            out, tokens = loss_of()
            backward(out.loss)
            sums.surrogate += float(out.loss.detach())
            sums.objective += float(out.objective)
            sums.tokens += tokens
            for key, value in out.metrics.items():
                sums.metrics[key] = sums.metrics.get(key, 0.0) + float(value) / len(micro_batches)
        return sums
