"""Gradient estimators: how a step's objective becomes gradients in ``param.grad``.

The loop hands an estimator the step's micro-batches as closures; the estimator leaves the step's
gradient (summed over micro-batches, before the processes' reduction) in the trainable parameters'
``.grad`` and returns the step's sums. Backprop is the first estimator; estimators that need only
objective values (zeroth-order SPSA/MeZO, ranking oracles, evolution strategies) plug in here.
"""
from __future__ import annotations

from unigrad.gradients.backprop import Backprop
from unigrad.gradients.base import GradientEstimator, StepSums


def estimator(name: str = "backprop") -> GradientEstimator:
    if name == "backprop":
        return Backprop()
    raise ValueError(f"unknown gradient estimator {name!r}; available: backprop")


__all__ = ["Backprop", "GradientEstimator", "StepSums", "estimator"]
