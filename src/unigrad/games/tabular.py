"""The tabular preference game: one prompt, n responses, an exact preference matrix, exact expectations.

A policy is π_θ = softmax(θ) over the n responses (``TabularPolicy``, a torch module); P[y, y′] =
P(y ≻ y′) with P + Pᵀ = 1 (``TabularGame``); μ the reference. The β-regularised game
max_π min_π′ P(π ≻ π′) − β KL(π‖μ) + β KL(π′‖μ) (Munos et al. 2024; Tiapkin et al. 2025) is symmetric,
and its equilibrium π* is the fixed point π*(y) ∝ μ(y) exp(P(y ≻ π*)/β) (``equilibrium``).

Exact expectations through the method's own ``Estimator``: ``exact_batch`` holds every response once
(row y, one token, logp = log π_θ(y), logp_ref = log μ(y)), with ``extra["preference"]`` the exact
P(y ≻ π′) = Σ_{y′} π′(y′) P[y, y′] against the opponent the method's advantage names, and, where the
objective requires it, ``extra["logp_anchor"]`` = log π_k. The sequence-sum likelihood averages the n
rows, so each row weighs 1/n; the policy's ``score`` decides what a row's gradient is:

- ``"exact"``: row y carries w_y ∇ log π_θ(y) with w_y = n π_θ(y) (detached; the importance weight of
  π_θ against the uniform enumeration), so the Estimator's gradient is exactly the policy gradient
  Σ_y π_θ(y) Â(y) ∇_θ log π_θ(y) = E_{y~π_θ}[Â ∇ log π_θ]. A gradient step on θ with it is a Euclidean
  step on the logits, not the papers' multiplicative update.
- ``"natural"``: row y carries ∇_θ θ_y (the log-normaliser detached), so the gradient is
  (1/n) Σ_y Â(y) e_y = (1/n) F⁺ E_π[Â ∇ log π] + c·1 — the natural gradient (F = diag π − ππᵀ is the
  softmax's Fisher). SGD with learning rate n·s is then exactly the mirror (multiplicative-weights)
  step π ← π exp(s Â)/Z of the papers' tabular algorithms.

``mirror_prox`` and ``mirror_descent`` are the papers' closed-form iterations, written from their
proximal problems (the reference the unigrad runs are compared with); ``train`` runs a method value
through ``unigrad.updates`` (``OptimizerStep`` or ``Extragradient``) with plain SGD.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.advantages.nash import ANCHOR, PREFERENCE, GeometricMixture
from unigrad.gradients import Backprop
from unigrad.guards import finite
from unigrad.optim import apply_update
from unigrad.updates import update_rule

DTYPE = torch.float64
Score = Literal["exact", "natural"]


def kl(log_p: Tensor, log_q: Tensor) -> float:
    """KL(p‖q) = Σ p (d + e^{−d} − 1), d = log p − log q, for normalised p and q: each term ≥ 0, so
    no cancellation between terms; accurate down to ~1e-30."""
    d = log_p - log_q
    return float((torch.exp(log_p) * (d + torch.expm1(-d))).sum())


@dataclass(frozen=True)
class TabularGame:
    """P[y, y′] = P(y ≻ y′) (n × n, P + Pᵀ = 1, entries in [0, 1]) and the reference's log μ [n]."""

    preference: Tensor
    log_reference: Tensor

    def __post_init__(self):
        P, n = self.preference, self.preference.shape[0]
        if P.shape != (n, n) or self.log_reference.shape != (n,):
            raise ValueError(f"preference must be n × n and log_reference [n], got {tuple(P.shape)} and "
                             f"{tuple(self.log_reference.shape)}")
        if not torch.allclose(P + P.T, torch.ones_like(P), atol=1e-12) or torch.any((P < 0) | (P > 1)):
            raise ValueError("preference must satisfy P + Pᵀ = 1 with entries in [0, 1]")
        if abs(float(torch.logsumexp(self.log_reference, 0))) > 1e-9:
            raise ValueError("log_reference must be a normalised log-distribution")

    @property
    def n(self) -> int:
        return self.preference.shape[0]

    def against(self, log_opponent: Tensor) -> Tensor:
        """P(y ≻ π′) = Σ_{y′} π′(y′) P[y, y′] for every response y: [n]."""
        return self.preference @ torch.exp(log_opponent)


def random_game(n: int, seed: int, reference: Literal["uniform", "random"] = "random") -> TabularGame:
    """P[y, y′] ~ U(0, 1) independently above the diagonal, 1 − P[y′, y] below, ½ on it; μ uniform or
    softmax of a standard normal vector."""
    gen = torch.Generator().manual_seed(seed)
    upper = torch.triu(torch.rand(n, n, generator=gen, dtype=DTYPE), 1)
    P = upper + torch.tril(1 - upper.T, -1) + 0.5 * torch.eye(n, dtype=DTYPE)
    logits = torch.zeros(n, dtype=DTYPE) if reference == "uniform" else torch.randn(n, generator=gen, dtype=DTYPE)
    return TabularGame(P, torch.log_softmax(logits, 0))


class TabularPolicy(torch.nn.Module):
    """π_θ = softmax(θ) over n responses; ``rows()`` are the batch's log-probs [n, 1] with the score
    ``score`` (module docstring)."""

    def __init__(self, logits: Tensor, score: Score = "natural"):
        super().__init__()
        if score not in ("exact", "natural"):
            raise ValueError(f"score must be 'exact' or 'natural', got {score!r}")
        self.theta = torch.nn.Parameter(logits.detach().clone().to(DTYPE))
        self.score = score

    def log_probs(self) -> Tensor:
        """log π_θ [n], detached."""
        return torch.log_softmax(self.theta.detach(), 0)

    def rows(self) -> Tensor:
        if self.score == "natural":
            logp = self.theta - torch.logsumexp(self.theta, 0).detach()
        else:
            logp = torch.log_softmax(self.theta, 0)
            weight = self.theta.shape[0] * torch.exp(logp.detach())
            logp = logp.detach() + weight * (logp - logp.detach())
        return logp[:, None]


def opponent_of(objective) -> GeometricMixture:
    """The opponent the objective's advantage plays against (through ``WithUpdateRule`` wrappers)."""
    inner = getattr(objective, "objective", objective)
    return inner.advantage.opponent


def exact_batch(game: TabularGame, policy: TabularPolicy, opponent: GeometricMixture,
                log_anchor: Tensor | None = None) -> Batch:
    """Every response once, with the exact preference against ``opponent`` (module docstring)."""
    log_pi = policy.log_probs()
    extra = {PREFERENCE: game.against(opponent.log_probs(log_pi, game.log_reference))}
    if log_anchor is not None:
        extra[ANCHOR] = log_anchor[:, None]
    return Batch(logp=policy.rows(), mask=torch.ones(game.n, 1, dtype=DTYPE),
                 logp_ref=game.log_reference[:, None], extra=extra)


def exact_gradient(game: TabularGame, objective, logits: Tensor, score: Score = "exact",
                   log_anchor: Tensor | None = None) -> Tensor:
    """∂(objective's surrogate)/∂θ on the exact batch at θ = ``logits``."""
    policy = TabularPolicy(logits, score)
    anchor = policy.log_probs() if log_anchor is None and ANCHOR in objective.requires else log_anchor
    loss = objective.loss(exact_batch(game, policy, opponent_of(objective), anchor)).loss
    return torch.autograd.grad(loss, policy.theta)[0]


def train(game: TabularGame, objective, logits: Tensor, lr: float, iterations: int,
          rule: str = "optimizer_step", score: Score = "natural") -> list[Tensor]:
    """[log π_0, …, log π_K]: ``objective`` descended by unigrad's update rule ``rule`` with plain SGD
    (learning rate ``lr``) on θ, each gradient from the exact batch at the current θ; the anchor π_k
    is the policy at the start of each update."""
    policy = TabularPolicy(logits, score)
    params = [policy.theta]
    optimizer = torch.optim.SGD(params, lr=lr)
    opponent, anchor = opponent_of(objective), {}
    latest = []

    def micro_batch():
        return objective.loss(exact_batch(game, policy, opponent, anchor.get("log"))), game.n

    def gradients(fresh: bool = False):   # the exact batch is always at the current θ
        latest[:] = [Backprop()([micro_batch], lambda loss: loss.backward(), 0)]
        return latest[0]

    def apply():
        return apply_update(optimizer, params, None, not finite(latest[0].surrogate, latest[0].objective))

    step = update_rule(rule, params, optimizer)
    path = [policy.log_probs()]
    for k in range(iterations):
        if ANCHOR in objective.requires:
            anchor["log"] = policy.log_probs()
        step(k, gradients, apply)
        path.append(policy.log_probs())
    return path


# ---- the papers' closed-form iterations (the reference), written from their proximal problems

def proximal_step(game: TabularGame, log_center: Tensor, log_opponent: Tensor, beta: float, eta: float) -> Tensor:
    """argmin_π (1/β) P(π′ ≻ π) + KL(π‖μ) + (1/η) KL(π‖π_c) over the simplex (Tiapkin et al. 2025):
    stationarity −(1/β) P(·≻π′) + log(π/μ) + (1/η) log(π/π_c) = const gives
    log π = [(η/β) P(·≻π′) + η log μ + log π_c] / (1 + η) − log Z."""
    logits = ((eta / beta) * game.against(log_opponent) + eta * game.log_reference + log_center) / (1 + eta)
    return torch.log_softmax(logits, 0)


def mirror_prox(game: TabularGame, log_pi0: Tensor, beta: float, eta: float, iterations: int) -> list[Tensor]:
    """Nash-MP: π_{k+½} = prox(π_k; opponent π_k), π_{k+1} = prox(π_k; opponent π_{k+½})."""
    path = [log_pi0.to(DTYPE)]
    for _ in range(iterations):
        half = proximal_step(game, path[-1], path[-1], beta, eta)
        path.append(proximal_step(game, path[-1], half, beta, eta))
    return path


def mirror_descent(game: TabularGame, log_pi0: Tensor, tau: float, eta: float, iterations: int) -> list[Tensor]:
    """Nash-MD (Munos et al. 2024, §5): π_{t+1} = argmax_π η P(π ≻ π_t^μ) − KL(π‖π_t^μ) with the
    regularised policy log π_t^μ = (1 − ητ) log π_t + ητ log μ − log Z, i.e.
    log π_{t+1} = log π_t^μ + η P(·≻π_t^μ) − log Z′. Needs ητ ≤ 1."""
    if not 0 <= eta * tau <= 1:
        raise ValueError(f"Nash-MD needs 0 ≤ ητ ≤ 1, got η = {eta}, τ = {tau}")
    path = [log_pi0.to(DTYPE)]
    for _ in range(iterations):
        log_mix = torch.log_softmax((1 - eta * tau) * path[-1] + eta * tau * game.log_reference, 0)
        path.append(torch.log_softmax(log_mix + eta * game.against(log_mix), 0))
    return path


def residual(game: TabularGame, log_pi: Tensor, beta: float) -> float:
    """The span of log π − log μ − P(·≻π)/β: 0 exactly at the equilibrium π*."""
    r = log_pi - game.log_reference - game.against(log_pi) / beta
    return float(r.max() - r.min())


def equilibrium(game: TabularGame, beta: float, tol: float = 1e-13, max_iterations: int = 100_000) -> Tensor:
    """log π* of the β-regularised game: mirror prox with η = min(1, 2β) (the step of its linear-rate
    guarantee) run until the fixed-point residual's span is below ``tol``."""
    log_pi, eta = game.log_reference.clone(), min(1.0, 2 * beta)
    for _ in range(max_iterations):
        half = proximal_step(game, log_pi, log_pi, beta, eta)
        log_pi = proximal_step(game, log_pi, half, beta, eta)
        if residual(game, log_pi, beta) < tol:
            return log_pi
    raise RuntimeError(f"the equilibrium did not converge: residual {residual(game, log_pi, beta):.3g} after "
                       f"{max_iterations} iterations")


__all__ = ["DTYPE", "TabularGame", "TabularPolicy", "equilibrium", "exact_batch", "exact_gradient", "kl",
           "mirror_descent", "mirror_prox", "opponent_of", "proximal_step", "random_game", "residual", "train"]
