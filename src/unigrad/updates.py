"""Update rules: how a step's gradients become new parameters.

An update rule receives two closures, ``gradients()`` (run the gradient estimator on the step; it may
be called more than once, e.g. by extragradient's two half steps) and ``apply()`` (the layout's
reduction, clip and optimiser step; returns the gradient norm before clipping; it skips the step when
the sums of the latest ``gradients()`` or the norm are not finite), and returns the step's sums and
gradient norm. One optimiser step is the first rule; extragradient is the second; ``CurvatureRefresh``
wraps either for Sophia, refreshing its curvature estimate every k steps (``gradients(estimator)`` runs
another estimator, here a curvature estimate, on the same step).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

import torch

from unigrad.config import ConfigError
from unigrad.guards import finite


@runtime_checkable
class UpdateRule(Protocol):
    def __call__(self, step: int, gradients: Callable[[], object], apply: Callable[[], float]) -> tuple[object, float]: ...


@dataclass(frozen=True)
class OptimizerStep:
    """θ ← optimiser(θ, g): one gradient evaluation, one optimiser step."""

    def __call__(self, step, gradients, apply):
        sums = gradients()
        return sums, apply()


@dataclass(frozen=True, eq=False)
class Extragradient:
    """Extragradient (Korpelevich 1976, "The extragradient method for finding saddle points and other
    problems"; Nemirovski 2004, "Prox-method with rate of convergence O(1/t) for variational inequalities with
    Lipschitz continuous monotone operators and smooth convex-concave saddle point problems", mirror prox
    in the Euclidean geometry):

        θ_{k+½} = θ_k − η ∇f(θ_k)          (the half step, with the gradient at θ_k)
        θ_{k+1} = θ_k − η ∇f(θ_{k+½})      (the full step from θ_k, with the gradient at the half point)

    with "θ − η g" generalised to one step of the base optimiser U (``train.optimizer``) from its state
    s_k: (θ_{k+½}, ·) = U(θ_k, s_k, g(θ_k)), then (θ_{k+1}, s_{k+1}) = U(θ_k, s_k, g(θ_{k+½})). So the
    trainable parameters and the optimiser state (tensors deep-copied, and the parameter groups' settings)
    are snapshotted before the half step and restored before the full step: it costs one extra copy of
    the trainable weights and of the optimiser state, and two gradient evaluations per update.

    The gradient at the half point is taken on the step's experience drawn again at θ_{k+½} where the
    producer can (``gradients(fresh=True)``, ``Experience.again``: samples of the policy at the half point,
    as Nash-MP's second proximal step plays against π_{k+½}); fixed data are reused.

    Returns the full step's sums and gradient norm; the half step's objective (summed over processes)
    and gradient norm go into the metrics (``half_step_objective``, ``half_step_grad_norm``). If either
    evaluation is not finite, θ_k and s_k are restored and nothing is applied (the full step's ``apply()``
    skips on its own non-finite sums). ``total`` sums a number over processes, so every process takes
    the same branch. Needs a layout that can skip and an optimiser that steps after backward
    (``check_update_rule``)."""
    params: list
    optimizer: object
    total: Callable[[float], float] = field(default=lambda value: value)

    def __call__(self, step, gradients, apply):
        saved = snapshot(self.params, self.optimizer)
        half = gradients()                    # ∇f(θ_k)
        half_norm = apply()                   # θ ← θ_{k+½}
        bad = not finite(half.surrogate, half.objective, half_norm)
        if self.total(float(bad)) > 0:        # on any process: nothing applied, θ_k and s_k as they were
            restore(self.params, self.optimizer, saved)
            return half, half_norm
        half_objective = self.total(half.objective)
        full = gradients(fresh=True)          # ∇f(θ_{k+½}), left in .grad; on-policy data drawn at θ_{k+½}
        restore(self.params, self.optimizer, saved)
        norm = apply()                        # θ_{k+1} = U(θ_k, s_k, ∇f(θ_{k+½})); skipped if non-finite
        full.metrics = {**full.metrics, "half_step_objective": half_objective, "half_step_grad_norm": half_norm}
        return full, norm


@dataclass(frozen=True, eq=False)
class CurvatureRefresh:
    """Sophia's curvature refresh around another rule (Liu et al. 2024, Algorithm 3, "if t mod k = 1"):
    on every k-th step (0-based step ≡ 0 mod k), before the update, the curvature estimator runs on the
    step's data (``gradients(estimate)``, its own backward) and ``optimizer.refresh`` folds ĥ into
    h ← β2 h + (1 − β2) ĥ; then ``rule`` takes the update. A non-finite ĥ is not folded in
    (``curvature_skipped`` = 1 in the metrics)."""
    rule: UpdateRule
    optimizer: object
    estimate: Callable
    every: int

    def __call__(self, step, gradients, apply):
        refreshed = None
        if step % self.every == 0:
            estimates = gradients(self.estimate).direction
            refreshed = all(bool(torch.isfinite(e).all()) for e in estimates)
            if refreshed:
                self.optimizer.refresh(dict(zip(self.estimate.params, estimates)))
        sums, norm = self.rule(step, gradients, apply)
        if refreshed is not None:
            sums.metrics = {**sums.metrics, "curvature_skipped": float(not refreshed)}
        return sums, norm


def _copy(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)


def snapshot(params: list, optimizer) -> tuple:
    """Copies of the parameters, of the optimiser's per-parameter state and of its groups' settings."""
    with torch.no_grad():
        weights = [p.detach().clone() for p in params]
    state = {p: {key: _copy(value) for key, value in entry.items()} for p, entry in optimizer.state.items()}
    groups = [{key: _copy(value) for key, value in group.items() if key != "params"}
              for group in optimizer.param_groups]
    return weights, state, groups


def restore(params: list, optimizer, saved: tuple) -> None:
    """Back to ``snapshot``'s parameters and optimiser state (entries created since are removed); the
    saved copies become the live state, so ``saved`` is used once."""
    weights, state, groups = saved
    with torch.no_grad():
        for p, w in zip(params, weights):
            p.copy_(w)
    optimizer.state.clear()
    optimizer.state.update(state)
    for group, settings in zip(optimizer.param_groups, groups):
        group.update(settings)


RULES = ("optimizer_step", "extragradient")


def check_update_rule(name: str, layout, optimizer_in_backward: bool) -> None:
    """Extragradient restores the weights and optimiser state between its two steps: refused where an
    update cannot be undone (DeepSpeed's engine, updates inside backward)."""
    if name != "extragradient":
        return
    why = []
    if not getattr(layout, "skips_updates", True):
        why.append("DeepSpeed (its engine applies an update it cannot take back)")
    if optimizer_in_backward:
        why.append("train.optimizer_in_backward (each parameter is updated inside backward, so the gradient at "
                   "the half point would move the weights before θ_k is restored)")
    if why:
        raise ConfigError("train.update_rule=extragradient: takes a half step, then restores the weights and "
                          "optimiser state to take the full step from θ_k; not possible with " + "; ".join(why))


def update_rule(name: str = "optimizer_step", params: list = (), optimizer=None,
                total: Callable[[float], float] = lambda value: value) -> UpdateRule:
    """The rule ``train.update_rule`` names; extragradient acts on ``params`` and ``optimizer``, with
    ``total`` the sum over processes."""
    if name == "optimizer_step":
        return OptimizerStep()
    if name == "extragradient":
        return Extragradient(list(params), optimizer, total)
    raise ValueError(f"unknown update rule {name!r}; available: {', '.join(RULES)}")
