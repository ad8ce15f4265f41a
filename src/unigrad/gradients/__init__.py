"""Gradient estimators: how a step's objective becomes a gradient.

The loop hands an estimator the step's micro-batches as closures; the estimator leaves the step's
gradient (summed over micro-batches, before the processes' reduction) in the trainable parameters'
``.grad`` — or, for MeZO-SGD, as a seeded direction its update rule applies — and returns the step's
sums. ``backprop``: reverse-mode autograd. ``mezo``: SPSA from forward passes only (``mezo.py``).
``zo-rank``: ZO-RankSGD's direction from ranked perturbations (``zo_rank.py``).
"""
from __future__ import annotations

from unigrad.gradients.backprop import Backprop
from unigrad.gradients.base import GradientEstimator, StepSums
from unigrad.gradients.mezo import MeZO, SeededDirection, SeededSGD
from unigrad.gradients.zo_rank import ZORank

ZEROTH_ORDER = ("mezo", "zo-rank")


def estimator(config, model=None, params=(), procs=None, seed: int = 0, into_grad: bool = True) -> GradientEstimator:
    """The estimator ``config`` (``train.gradient``) names, over the trainable ``params`` of ``model``."""
    if config.name == "backprop":
        return Backprop()
    total = procs.sum if procs is not None else (lambda value: value)
    world = procs.world if procs is not None else 1
    if config.name == "mezo":
        return MeZO(model, list(params), config.samples, config.eps, seed, total, world, into_grad)
    if config.name == "zo-rank":
        return ZORank(model, list(params), config.samples, config.eps, config.top, seed, total, world, into_grad)
    raise ValueError(f"unknown gradient estimator {config.name!r}; available: backprop, mezo, zo-rank")


__all__ = ["Backprop", "GradientEstimator", "MeZO", "SeededDirection", "SeededSGD", "StepSums", "ZEROTH_ORDER", "ZORank",
           "estimator"]
