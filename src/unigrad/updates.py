"""Update rules: how a step's gradients become new parameters.

An update rule receives two closures, ``gradients()`` (run the gradient estimator on the step; it may
be called more than once, e.g. by extragradient's two half steps) and ``apply()`` (the layout's
reduction, clip and optimiser step; returns the gradient norm before clipping), and returns the
step's sums and gradient norm. One optimiser step is the first rule; extragradient and rules that
refresh a curvature estimate every k steps (Sophia) plug in here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable


@runtime_checkable
class UpdateRule(Protocol):
    def __call__(self, step: int, gradients: Callable[[], object], apply: Callable[[], float]) -> tuple[object, float]: ...


@dataclass(frozen=True)
class OptimizerStep:
    """θ ← optimiser(θ, g): one gradient evaluation, one optimiser step."""

    def __call__(self, step, gradients, apply):
        sums = gradients()
        return sums, apply()


def update_rule(name: str = "optimizer_step") -> UpdateRule:
    if name == "optimizer_step":
        return OptimizerStep()
    raise ValueError(f"unknown update rule {name!r}; available: optimizer_step")
