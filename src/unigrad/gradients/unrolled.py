"""Meta-gradients of unrolled computation graphs: truncated backprop, truncated ES, PES and ES-Single.

An *inner problem* (an inner optimisation run, a dynamical system) evolves a state s under outer
parameters θ for T steps and is then reset; it is cut into truncations of K steps, and truncation t
has a loss L_t. The meta-objective is the sum of the truncation losses of one inner problem,
L(θ) = Σ_t L_t(θ), and its meta-gradient is the total derivative dL/dθ, through every state. An
estimator produces, after each truncation, an estimate ĝ_t of dL_t/dθ that the outer optimiser can
use at once (online); summed over an inner problem's truncations they estimate dL/dθ.

- **Truncated backprop** (TBPTT): backprop through the last truncation only, the incoming state
  detached. Cheap and exact for K ≥ T, biased otherwise: it ignores how θ shaped the state.
- **Truncated ES**: ε_i = σ·N(0, I) in N/2 antithetic pairs, ĝ = Σ_i L_i ε_i / (N σ²), every particle
  unrolled from the one unperturbed state (which then advances under θ). The smoothed version of
  truncated backprop, and as biased.
- **PES** (Vicol, Metz & Sohl-Dickstein, "Unbiased Gradient Estimation in Unrolled Computation Graphs
  with Persistent Evolution Strategies", ICML 2021, arXiv 2112.13835): each particle i keeps its own
  state, unrolled under θ + ε_t^(i) with a fresh antithetic ε_t^(i) per truncation, and an
  accumulator ξ^(i) ← ξ^(i) + ε_t^(i) (before use); ĝ_t = Σ_i L_t^(i) ξ_t^(i) / (N σ²); states and ξ
  reset with the inner problem. Unbiased for the Gaussian-smoothed objective (exactly unbiased for
  dL_t/dθ when L_t is quadratic in the perturbations); its variance grows with the truncation index.
- **ES-Single** (Vicol, Kolter & Swersky, "Low-Variance Gradient Estimation in Unrolled Computation
  Graphs with ES-Single", ICML 2023, arXiv 2304.11153): one antithetic ε^(i) per particle, drawn when
  the inner problem starts and kept over all its truncations; ĝ_t = Σ_i ε^(i) L_t(θ_t + ε^(i)) /
  (N σ²) (= Σ_pairs ε (L⁺ − L⁻) / (N σ²)). Unbiased for quadratic inner problems, with a variance that
  does not grow with the number of truncations.

The formulas are those of the authors' code (google-research ``persistent_es/gradient_estimators.py``;
ES-Single also in OscarcarLi/Noise-Reuse-Evolution-Strategies); see ../shared/FORMULAS.md §23.

The toys below are the papers'; ``gradients.hyper.ScheduleTuning`` is a real use: the learning-rate
schedule of a short unigrad training run.

Shapes: θ is a float64 vector (d,); a *state* is a tensor whose first axis indexes particles (one row
per particle), so an estimator holds N states in one tensor; ``unroll`` takes θ as (P, d) — one row
per particle — and returns the (P,) losses. Randomness comes from an explicitly seeded
``torch.Generator``.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

DTYPE = torch.float64


@runtime_checkable
class UnrolledProblem(Protocol):
    """An inner problem unrolled in truncations. ``T``: inner steps before it resets; ``dim``: the
    size of θ; ``init_state(P)``: P fresh states (first axis the particle); ``unroll(state, theta,
    K)``: K inner steps of every particle, θ of shape (P, d), returning (new state, (P,) losses of
    this truncation) — a differentiable torch function of θ where truncated backprop or
    ``exact_gradient`` is to be used (the ES estimators need only its values)."""
    T: int
    dim: int

    def init_state(self, particles: int) -> Tensor: ...

    def unroll(self, state: Tensor, theta: Tensor, K: int) -> tuple[Tensor, Tensor]: ...


def _check(problem: UnrolledProblem, K: int, particles: int = 2, sigma: float = 1.0) -> None:
    if K < 1 or problem.T % K:
        raise ValueError(f"the truncation length K = {K} must be ≥ 1 and divide T = {problem.T}")
    if particles < 2 or particles % 2:
        raise ValueError(f"the number of particles must be even (antithetic pairs) and ≥ 2, got {particles}")
    if not sigma > 0:
        raise ValueError(f"σ must be positive, got {sigma}")


def antithetic(generator: torch.Generator, particles: int, dim: int, sigma: float) -> Tensor:
    """N perturbations σ·z in N/2 antithetic pairs: rows i and i + N/2 are ε and −ε."""
    half = sigma * torch.randn(particles // 2, dim, generator=generator, dtype=DTYPE)
    return torch.cat([half, -half])


def exact_gradient(problem: UnrolledProblem, theta: Tensor, K: int) -> tuple[float, Tensor]:
    """L(θ) = Σ_t L_t over one whole inner problem from a fresh state, and dL/dθ by backprop through
    all T steps (the total derivative every estimator is judged against)."""
    _check(problem, K)
    theta = theta.detach().to(DTYPE).clone().requires_grad_(True)
    state, total = problem.init_state(1), theta.new_zeros(())
    for _ in range(problem.T // K):
        state, loss = problem.unroll(state, theta[None], K)
        total = total + loss.sum()
    grad, = torch.autograd.grad(total, theta)
    return float(total.detach()), grad.detach()


def meta_loss(problem: UnrolledProblem, theta: Tensor, K: int) -> float:
    """L(θ) = Σ_t L_t over one whole inner problem from a fresh state (truncations of K steps: where
    a truncation's loss is taken at its end, as on the influence toy, L depends on K), no gradients."""
    _check(problem, K)
    with torch.no_grad():
        state, total = problem.init_state(1), 0.0
        for _ in range(problem.T // K):
            state, loss = problem.unroll(state, theta.detach().to(DTYPE)[None], K)
            total += float(loss.sum())
    return total


class Estimator:
    """An online meta-gradient estimator: ``step(θ)`` unrolls the next truncation, returns ĝ_t and
    advances the inner problem (resetting it after T steps). ``t`` counts inner steps done."""
    name = "estimator"

    def __init__(self, problem: UnrolledProblem, K: int):
        _check(problem, K)
        self.problem, self.K, self.t = problem, K, 0

    def step(self, theta: Tensor) -> Tensor:
        if self.t == 0:
            self.reset()
        grad = self._estimate(theta.detach().to(DTYPE))
        self.t += self.K
        if self.t >= self.problem.T:
            self.t = 0
        return grad

    def reset(self) -> None:
        raise NotImplementedError

    def _estimate(self, theta: Tensor) -> Tensor:
        raise NotImplementedError

    def inner_problem(self, theta: Tensor) -> Tensor:
        """Σ_t ĝ_t over one whole fresh inner problem at a fixed θ: an estimate of dL/dθ."""
        self.t = 0
        return sum(self.step(theta) for _ in range(self.problem.T // self.K))


class TruncatedBackprop(Estimator):
    """TBPTT: ĝ_t = ∂L_t/∂θ through the last K steps, the state entering the truncation detached."""
    name = "TBPTT"

    def reset(self) -> None:
        self.state = self.problem.init_state(1)

    def _estimate(self, theta: Tensor) -> Tensor:
        theta = theta.clone().requires_grad_(True)
        state, loss = self.problem.unroll(self.state.detach(), theta[None], self.K)
        grad, = torch.autograd.grad(loss.sum(), theta)
        self.state = state.detach()
        return grad


class _Particles(Estimator):
    def __init__(self, problem: UnrolledProblem, K: int, particles: int, sigma: float, generator: torch.Generator):
        super().__init__(problem, K)
        _check(problem, K, particles, sigma)
        self.N, self.sigma, self.generator = particles, sigma, generator

    def _draw(self) -> Tensor:
        return antithetic(self.generator, self.N, self.problem.dim, self.sigma)

    def _weighted(self, losses: Tensor, weights: Tensor) -> Tensor:
        return (losses[:, None] * weights).sum(0) / (self.N * self.sigma ** 2)


class TruncatedES(_Particles):
    """Truncated ES: ĝ_t = Σ_i L_t(θ + ε_i) ε_i / (N σ²) from the one unperturbed state, fresh
    antithetic ε each truncation; the state then advances under θ."""
    name = "truncated ES"

    def reset(self) -> None:
        self.state = self.problem.init_state(1)

    @torch.no_grad()
    def _estimate(self, theta: Tensor) -> Tensor:
        eps = self._draw()
        _, losses = self.problem.unroll(self.state.expand(self.N, *self.state.shape[1:]), theta + eps, self.K)
        self.state, _ = self.problem.unroll(self.state, theta[None], self.K)
        return self._weighted(losses, eps)


class PES(_Particles):
    """PES: per-particle states under θ + ε_t^(i), ξ^(i) ← ξ^(i) + ε_t^(i), ĝ_t = Σ_i L_t^(i) ξ^(i) / (N σ²);
    states and ξ reset with the inner problem."""
    name = "PES"

    def reset(self) -> None:
        self.states = self.problem.init_state(self.N)
        self.xi = torch.zeros(self.N, self.problem.dim, dtype=DTYPE)

    @torch.no_grad()
    def _estimate(self, theta: Tensor) -> Tensor:
        eps = self._draw()
        self.states, losses = self.problem.unroll(self.states, theta + eps, self.K)
        self.xi = self.xi + eps
        return self._weighted(losses, self.xi)


class ESSingle(_Particles):
    """ES-Single: one antithetic ε^(i) per particle per inner problem, kept over its truncations;
    ĝ_t = Σ_i ε^(i) L_t(θ_t + ε^(i)) / (N σ²)."""
    name = "ES-Single"

    def reset(self) -> None:
        self.states = self.problem.init_state(self.N)
        self.eps = self._draw()

    @torch.no_grad()
    def _estimate(self, theta: Tensor) -> Tensor:
        self.states, losses = self.problem.unroll(self.states, theta + self.eps, self.K)
        return self._weighted(losses, self.eps)


ESTIMATORS = {"tbptt": TruncatedBackprop, "es": TruncatedES, "pes": PES, "es-single": ESSingle}


def make(name: str, problem: UnrolledProblem, K: int, particles: int = 100, sigma: float = 0.1,
         seed: int = 0) -> Estimator:
    """The estimator called ``name`` (tbptt, es, pes, es-single); the particle ones draw from a
    generator seeded with ``seed``."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown unrolled estimator {name!r}; available: {', '.join(ESTIMATORS)}")
    if name == "tbptt":
        return TruncatedBackprop(problem, K)
    return ESTIMATORS[name](problem, K, particles, sigma, torch.Generator().manual_seed(seed))


def meta_train(estimator: Estimator, theta0, iterations: int, optimiser, eval_every: int, evaluate=None) -> dict:
    """θ trained online: after every truncation, the estimator's ĝ_t is the outer optimiser's
    gradient (``optimiser([θ])``, e.g. Adam). Every ``eval_every`` iterations and at the end: θ and
    ``evaluate(θ)`` (a dict of numbers; default ``{"meta_loss": L(θ)}`` of a fresh inner problem)."""
    if evaluate is None:
        evaluate = lambda theta: {"meta_loss": meta_loss(estimator.problem, theta, estimator.K)}
    theta = torch.tensor(theta0, dtype=DTYPE, requires_grad=True)
    opt = optimiser([theta])
    curve = {"iteration": [], "theta": []}
    for it in range(iterations + 1):
        if it % eval_every == 0 or it == iterations:
            curve["iteration"].append(it)
            curve["theta"].append([float(v) for v in theta.detach()])
            for key, value in evaluate(theta.detach()).items():
                curve.setdefault(key, []).append(value)
        if it == iterations:
            break
        theta.grad = estimator.step(theta.detach())
        opt.step()
    return curve


# ---------------------------------------------------------------------------------------- toys

class InfluenceBalancing:
    """The influence-balancing toy (Tallec & Ollivier's UORO paper; PES §5, ``influence_balancing.py``):
    n = 23, A = 0.5 on the diagonal and the first superdiagonal, sign = (+1 ×10, −1 ×13),
    s ← A s + θ·sign from s₀ = 1, truncation loss ½(s[0] − 1)² after its K steps. θ's immediate effect
    on s[0] is +1 per step, but the −1 components reach s[0] through A over many steps and win (the
    steady state is s[0] = −6θ): truncated backprop sees only the first and is biased."""

    dim = 1

    def __init__(self, T: int = 100, n: int = 23, positive: int = 10):
        if not 0 < positive < n:
            raise ValueError(f"positive must lie in 1..n−1, got {positive} with n = {n}")
        self.T, self.n = T, n
        self.A = 0.5 * (torch.eye(n, dtype=DTYPE) + torch.diag(torch.ones(n - 1, dtype=DTYPE), 1))
        self.sign = torch.cat([torch.ones(positive, dtype=DTYPE), -torch.ones(n - positive, dtype=DTYPE)])

    def init_state(self, particles: int) -> Tensor:
        return torch.ones(particles, self.n, dtype=DTYPE)

    def unroll(self, state: Tensor, theta: Tensor, K: int) -> tuple[Tensor, Tensor]:
        drive = theta[:, :1] * self.sign            # (P, n): θ·sign for each particle
        for _ in range(K):
            state = state @ self.A.T + drive
        return state, 0.5 * (state[:, 0] - 1) ** 2


def toy_loss(x: Tensor) -> Tensor:
    """f(x) = √(x₀² + 5) − √5 + sin²(x₁)·e^{−5x₀²} + 0.25·|x₁ − 100| (PES ``toy_regression.py``), rowwise."""
    x0, x1 = x[..., 0], x[..., 1]
    return torch.sqrt(x0 ** 2 + 5) - 5 ** 0.5 + torch.sin(x1) ** 2 * torch.exp(-5 * x0 ** 2) + 0.25 * torch.abs(x1 - 100)


def toy_gradient(x: Tensor) -> Tensor:
    """∇f in closed form (so that the inner SGD is a plain differentiable function of θ)."""
    x0, x1 = x[..., 0], x[..., 1]
    bump = torch.exp(-5 * x0 ** 2)
    g0 = x0 / torch.sqrt(x0 ** 2 + 5) - 10 * x0 * torch.sin(x1) ** 2 * bump
    g1 = torch.sin(2 * x1) * bump + 0.25 * torch.sign(x1 - 100)
    return torch.stack([g0, g1], dim=-1)


class LearningRateSchedule:
    """Tuning a training hyper-parameter — the learning-rate schedule of a short inner run (PES §5,
    ``toy_regression.py``): inner SGD on ``toy_loss`` from x = (1, 1) for T = 100 steps with
    lr_t = e^{θ₀}(T − t)/T + e^{θ₁} t/T; a truncation's loss is the sum of f(x) after each of its K
    steps, so the meta-objective is the sum of the inner losses. State row: (x₀, x₁, t)."""

    dim = 2

    def __init__(self, T: int = 100, start: tuple[float, float] = (1.0, 1.0)):
        self.T, self.start = T, start

    def init_state(self, particles: int) -> Tensor:
        row = torch.tensor([*self.start, 0.0], dtype=DTYPE)
        return row.expand(particles, 3).clone()

    def learning_rate(self, theta: Tensor, t: Tensor) -> Tensor:
        return torch.exp(theta[:, 0]) * (self.T - t) / self.T + torch.exp(theta[:, 1]) * t / self.T

    def unroll(self, state: Tensor, theta: Tensor, K: int) -> tuple[Tensor, Tensor]:
        x, t = state[:, :2], state[:, 2]
        total = x.new_zeros(x.shape[0])
        for _ in range(K):
            x = x - self.learning_rate(theta, t)[:, None] * toy_gradient(x)
            t = t + 1
            total = total + toy_loss(x)
        return torch.cat([x, t[:, None]], dim=1), total


__all__ = ["DTYPE", "ESSingle", "ESTIMATORS", "Estimator", "InfluenceBalancing", "LearningRateSchedule", "PES",
           "TruncatedBackprop", "TruncatedES", "UnrolledProblem", "antithetic", "exact_gradient", "make", "meta_loss", "meta_train",
           "toy_gradient", "toy_loss"]
