"""MeZO (SPSA with seeded, in-place perturbations): its estimate is the canonical SPSA of the paper
for the same directions, its mean approaches the true gradient at the 1/√n rate, MeZO-SGD applies
it without gradient tensors, and a run resumes exactly."""
import math
from types import SimpleNamespace

import pytest
import torch

from tests.canonical.zeroth_order import mezo_sgd_step, spsa
from unigrad.gradients import MeZO, SeededSGD
from unigrad.gradients.mezo import perturb


class Quadratic(torch.nn.Module):
    """f(θ) = ½ (θ − c)ᵀ A (θ − c) over two parameter tensors (a matrix and a vector)."""

    def __init__(self, d1=(3, 2), d2=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(*d1, generator=g, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(d2, generator=g, dtype=torch.float64))
        d = self.w.numel() + d2
        m = torch.randn(d, d, generator=g, dtype=torch.float64)
        self.A = m @ m.T / d + torch.eye(d, dtype=torch.float64)
        self.c = torch.randn(d, generator=g, dtype=torch.float64)

    def f(self, theta: torch.Tensor) -> float:
        r = theta - self.c
        return float(0.5 * r @ self.A @ r)

    def flat(self) -> torch.Tensor:
        return torch.cat([self.w.detach().flatten(), self.b.detach()])

    def gradient(self) -> torch.Tensor:
        return self.A @ (self.flat() - self.c)

    def micro_batches(self):
        return [lambda: (SimpleNamespace(objective=self.f(self.flat()), metrics={}), 1)]


def directions(model, mezo, key):
    """The z_i MeZO draws, read back by perturbing a zero copy of the parameters."""
    out = []
    for i in range(mezo.samples):
        zeros = [torch.zeros_like(p) for p in (model.w, model.b)]
        perturb(zeros, mezo.seed_of(key, i), 1.0)
        out.append(torch.cat([zeros[0].flatten(), zeros[1]]))
    return out


def test_mezo_estimate_is_the_canonical_spsa_and_restores_the_weights():
    model = Quadratic()
    before = model.flat().clone()
    mezo = MeZO(model, [model.w, model.b], samples=5, eps=1e-3, seed=3)
    mezo(model.micro_batches(), backward=None, key=7)
    estimate = torch.cat([model.w.grad.flatten(), model.b.grad])
    expected = spsa(model.f, before, directions(model, mezo, 7), 1e-3)
    torch.testing.assert_close(estimate, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(model.flat(), before, rtol=0, atol=1e-14)     # θ + εz − 2εz + εz


def test_mezo_sgd_is_the_papers_update_without_gradient_tensors():
    model = Quadratic()
    before = model.flat().clone()
    mezo = MeZO(model, [model.w, model.b], samples=2, eps=1e-3, seed=1, into_grad=False)
    optimizer = torch.optim.SGD([model.w, model.b], lr=0.05)
    sums, norm = SeededSGD([model.w, model.b], optimizer, mezo)(0, lambda: mezo(model.micro_batches(), None, 4), None)
    assert model.w.grad is None and model.b.grad is None and not optimizer.state
    expected = mezo_sgd_step(before, spsa(model.f, before, directions(model, mezo, 4), 1e-3), 0.05)
    torch.testing.assert_close(model.flat(), expected, rtol=1e-9, atol=1e-12)
    assert math.isfinite(norm) and norm > 0 and sums.direction.finite()


def test_mezo_mean_approaches_the_gradient_at_the_inverse_root_rate():
    model = Quadratic(d1=(4, 4), d2=4)
    truth = model.gradient()
    errors = {}
    for n in (64, 4096):
        mezo = MeZO(model, [model.w, model.b], samples=n, eps=1e-4, seed=0)
        mezo(model.micro_batches(), None, 0)
        estimate = torch.cat([model.w.grad.flatten(), model.b.grad])
        errors[n] = float((estimate - truth).norm() / truth.norm())
        cosine = float(estimate @ truth / (estimate.norm() * truth.norm()))
    assert cosine >= 0.95
    # 64× the samples: the error falls about 8× (1/√n); allow the noise of one draw
    assert 4 < errors[64] / errors[4096] < 16


def test_mezo_skips_a_non_finite_estimate():
    model = Quadratic()
    before = model.flat().clone()
    mezo = MeZO(model, [model.w, model.b], into_grad=False)
    bad = [lambda: (SimpleNamespace(objective=float("nan"), metrics={}), 1)]
    _, norm = SeededSGD([model.w, model.b], torch.optim.SGD([model.w], lr=0.1), mezo)(0, lambda: mezo(bad, None, 0), None)
    assert math.isnan(norm)
    torch.testing.assert_close(model.flat(), before, rtol=0, atol=1e-14)


def test_zo_rank_direction_is_the_papers_dag_sum_for_every_k():
    from tests.canonical.zeroth_order import zo_rank_direction
    from unigrad.gradients import ZORank
    for k in (None, 1, 3, 6):
        model = Quadratic()
        before = model.flat().clone()
        rank = ZORank(model, [model.w, model.b], queries=6, mu=1e-2, top=k, seed=2)
        rank(model.micro_batches(), None, key=5)
        direction = torch.cat([model.w.grad.flatten(), model.b.grad])
        probe = MeZO(model, [model.w, model.b], samples=6, seed=2)
        zs = directions(model, probe, 5)
        values = [model.f(before + 1e-2 * z) for z in zs]
        torch.testing.assert_close(direction, zo_rank_direction(values, zs, k or 6), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(model.flat(), before, rtol=0, atol=1e-14)


def test_zo_rank_expected_direction_is_the_gradients():
    """Tang et al., Lemma 1/Thm. 1: for small μ, E[S] is a positive multiple of ∇f (S ranks descent)."""
    from unigrad.gradients import ZORank
    model = Quadratic(d1=(3, 3), d2=3)
    truth = model.gradient()
    total = torch.zeros_like(truth)
    rank = ZORank(model, [model.w, model.b], queries=5, mu=1e-4, seed=0)
    for key in range(3000):
        rank(model.micro_batches(), None, key=key)
        total += torch.cat([model.w.grad.flatten(), model.b.grad])
    cosine = float(total @ truth / (total.norm() * truth.norm()))
    assert cosine >= 0.95
