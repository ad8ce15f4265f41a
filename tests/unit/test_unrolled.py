"""Meta-gradient estimators of unrolled computation graphs (``unigrad.gradients.unrolled``): PES and
ES-Single equal the papers' estimators written as plain loops (tests/canonical/unrolled.py) on the same
draws; the exact gradient by full backprop equals finite differences; on the influence-balancing toy
truncated backprop is biased and PES and ES-Single are not."""
import math

import pytest
import torch

from tests.canonical.unrolled import es_single, influence_unroll, pes
from unigrad.gradients.unrolled import (DTYPE, InfluenceBalancing, LearningRateSchedule, antithetic, exact_gradient,
                                        make, meta_loss)

SIGMA = 0.1


def draws(seed, count, particles, sigma=SIGMA):
    """The perturbations a particle estimator seeded with ``seed`` draws, in order, as float lists."""
    g = torch.Generator().manual_seed(seed)
    return [antithetic(g, particles, 1, sigma)[:, 0].tolist() for _ in range(count)]


def test_pes_equals_the_canonical_loop_on_the_same_draws_across_a_reset():
    problem, K, N, theta = InfluenceBalancing(T=12), 3, 6, 0.37
    estimator = make("pes", problem, K, particles=N, sigma=SIGMA, seed=5)
    ours = [float(estimator.step(torch.tensor([theta], dtype=DTYPE))[0]) for _ in range(8)]   # 2 inner problems
    eps = draws(5, 8, N)
    expected = (pes(influence_unroll, [1.0] * 23, theta, K, eps[:4], SIGMA)
                + pes(influence_unroll, [1.0] * 23, theta, K, eps[4:], SIGMA))
    assert ours == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_es_single_equals_the_canonical_loop_and_keeps_its_perturbation_over_the_inner_problem():
    problem, K, N, theta = InfluenceBalancing(T=12), 3, 6, -0.2
    estimator = make("es-single", problem, K, particles=N, sigma=SIGMA, seed=9)
    ours = [float(estimator.step(torch.tensor([theta], dtype=DTYPE))[0]) for _ in range(8)]
    eps = draws(9, 2, N)          # one draw per inner problem
    expected = (es_single(influence_unroll, [1.0] * 23, theta, K, 4, eps[0], SIGMA)
                + es_single(influence_unroll, [1.0] * 23, theta, K, 4, eps[1], SIGMA))
    assert ours == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_es_single_total_does_not_depend_on_the_truncation_length():
    """Σ_t ĝ_t = ε · Σ_t L_t / (N σ²): where the meta-objective is the sum of every inner loss (the
    learning-rate toy), cutting the inner problem differently changes nothing."""
    problem, theta = LearningRateSchedule(T=20), torch.tensor([-1.0, -1.5], dtype=DTYPE)
    totals = [make("es-single", problem, K, particles=8, sigma=0.3, seed=3).inner_problem(theta) for K in (1, 4, 20)]
    for total in totals[1:]:
        torch.testing.assert_close(total, totals[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("problem, theta, K", [
    (InfluenceBalancing(T=30), [0.5], 1),
    (LearningRateSchedule(T=20), [-1.0, -2.0], 5),
])
def test_exact_gradient_equals_central_finite_differences(problem, theta, K):
    theta = torch.tensor(theta, dtype=DTYPE)
    value, grad = exact_gradient(problem, theta, K)
    assert value == pytest.approx(meta_loss(problem, theta, K), rel=1e-12)
    h = 1e-6
    for j in range(problem.dim):
        e = torch.zeros_like(theta)
        e[j] = h
        fd = (meta_loss(problem, theta + e, K) - meta_loss(problem, theta - e, K)) / (2 * h)
        assert float(grad[j]) == pytest.approx(fd, rel=1e-6, abs=1e-6)


def test_truncated_backprop_over_the_whole_inner_problem_is_exact():
    problem, theta = InfluenceBalancing(T=30), torch.tensor([0.5], dtype=DTYPE)
    exact = exact_gradient(problem, theta, 30)[1]
    assert torch.allclose(make("tbptt", problem, 30).inner_problem(theta), exact, rtol=1e-12)


def test_truncated_backprop_is_biased_and_pes_and_es_single_are_not_on_influence_balancing():
    problem, theta = InfluenceBalancing(T=100), torch.tensor([0.5], dtype=DTYPE)
    exact = float(exact_gradient(problem, theta, 1)[1][0])
    tbptt = float(make("tbptt", problem, 1).inner_problem(theta)[0])
    assert tbptt * exact < 0                        # the wrong sign: θ's long-range influence is ignored
    for name in ("pes", "es-single"):
        estimator = make(name, problem, 1, particles=100, sigma=SIGMA, seed=1)
        values = torch.stack([estimator.inner_problem(theta)[0] for _ in range(100)])
        se = float(values.std()) / math.sqrt(len(values))
        assert abs(float(values.mean()) - exact) < 4 * se, name
        assert abs(tbptt - exact) > 20 * se, name


def test_pes_and_es_single_lower_the_learning_rate_schedule_meta_loss():
    problem = LearningRateSchedule(T=100)
    start = meta_loss(problem, torch.tensor([-4.0, -4.0], dtype=DTYPE), 10)
    for name in ("pes", "es-single"):
        estimator = make(name, problem, 10, particles=20, sigma=0.3, seed=0)
        theta = torch.tensor([-4.0, -4.0], dtype=DTYPE, requires_grad=True)
        opt = torch.optim.Adam([theta], lr=5e-2)
        for _ in range(200):
            theta.grad = estimator.step(theta.detach())
            opt.step()
        assert meta_loss(problem, theta.detach(), 10) < 0.95 * start, name


def test_errors_a_user_can_fix():
    problem = InfluenceBalancing(T=10)
    with pytest.raises(ValueError, match="divide"):
        make("pes", problem, 3)
    with pytest.raises(ValueError, match="even"):
        make("pes", problem, 2, particles=5)
    with pytest.raises(ValueError, match="σ"):
        make("es-single", problem, 2, particles=4, sigma=0.0)
    with pytest.raises(ValueError, match="unknown unrolled estimator"):
        make("rtrl", problem, 2)
