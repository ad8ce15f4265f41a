"""Gradient estimators: how a step's objective becomes a gradient.

The loop hands an estimator the step's micro-batches as closures (``MicroBatch``); the estimator
leaves the step's gradient (summed over micro-batches, before the processes' reduction) in the
trainable parameters' ``.grad`` — or, for the zeroth-order estimators under plain SGD, as a seeded
direction ``SeededSGD`` applies — and returns the step's sums.

- ``backprop``: reverse-mode autograd.
- ``mezo``: SPSA from forward passes only (``mezo.py``).
- ``es``: antithetic evolution strategies with optional centred-rank fitness shaping (``es.py``).
- ``zo-rank``: ZO-RankSGD's direction from ranked perturbations (``zo_rank.py``).

The zeroth-order ones share the seeded, in-place perturbations (``seeded.py``) and evaluate an
oracle at each perturbed point (``oracles.py``, ``train.gradient.oracle``): the method's objective,
the mean reward of the policy's greedy completions, or (for ``zo-rank``) pairwise preferences
between the points' completions.
"""
from __future__ import annotations

from unigrad.gradients.backprop import Backprop
from unigrad.gradients.base import GradientEstimator, MicroBatch, StepSums
from unigrad.gradients.es import ES
from unigrad.gradients.mezo import MeZO, SeededSGD
from unigrad.gradients.oracles import ObjectiveOracle, Oracle, PreferenceOracle, RewardOracle
from unigrad.gradients.seeded import SeededDirection
from unigrad.gradients.zo_rank import ZORank

ZEROTH_ORDER = ("mezo", "es", "zo-rank")


def estimator(config, model=None, params=(), procs=None, seed: int = 0, into_grad: bool = True,
              oracle: Oracle | None = None) -> GradientEstimator:
    """The estimator ``config`` (``train.gradient``) names, over the trainable ``params`` of ``model``,
    evaluating ``oracle`` (default: the method's objective) at each perturbed point."""
    if config.name == "backprop":
        return Backprop()
    total = procs.sum if procs is not None else (lambda value: value)
    world = procs.world if procs is not None else 1
    oracle = oracle or ObjectiveOracle()
    if config.name == "mezo":
        return MeZO(model, list(params), config.samples, config.eps, seed, total, world, into_grad, oracle)
    if config.name == "es":
        return ES(model, list(params), config.samples, config.eps, config.shaping, seed, total, world, into_grad, oracle)
    if config.name == "zo-rank":
        return ZORank(model, list(params), config.samples, config.eps, config.top, seed, total, world, into_grad,
                      oracle)
    raise ValueError(f"unknown gradient estimator {config.name!r}; available: backprop, {', '.join(ZEROTH_ORDER)}")


__all__ = ["Backprop", "ES", "GradientEstimator", "MeZO", "MicroBatch", "ObjectiveOracle", "Oracle", "PreferenceOracle",
           "RewardOracle", "SeededDirection", "SeededSGD", "StepSums", "ZEROTH_ORDER", "ZORank", "estimator"]
