"""Extragradient as an update rule: with SGD it is Korpelevich's step (the canonical loop in
tests/canonical/extragradient.py); with Adam the optimiser state after an update is one step from
θ_k's state with the half-point gradient; on the bilinear game it converges where simultaneous
gradient descent spirals out; a non-finite evaluation restores θ_k; DeepSpeed and updates inside
backward are refused."""
import copy
import math
from types import SimpleNamespace

import pytest
import torch

from tests.canonical.extragradient import (bilinear_field, extragradient_step, gradient_descent_step,
                                           iterate)
from unigrad.config import ConfigError
from unigrad.gradients import Backprop
from unigrad.guards import finite
from unigrad.optim import apply_update
from unigrad.parallel.replicated import Replicated
from unigrad.parallel.zero import ZeRO
from unigrad.updates import OptimizerStep, check_update_rule, update_rule

G = torch.Generator().manual_seed(0)
M = torch.randn(4, 3, generator=G, dtype=torch.float64)
T = torch.randn(4, generator=G, dtype=torch.float64)


def f(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A smooth non-quadratic loss of two parameter tensors."""
    return torch.log1p((M @ w + b - T) ** 2).sum() + 0.25 * (w ** 4).sum()


def grad_f(theta: torch.Tensor) -> torch.Tensor:
    theta = theta.detach().clone().requires_grad_(True)
    f(theta[:3], theta[3:]).backward()
    return theta.grad


class Module(torch.nn.Module):
    def __init__(self, theta: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(theta[:3].clone())
        self.b = torch.nn.Parameter(theta[3:].clone())

    def flat(self) -> torch.Tensor:
        return torch.cat([self.w.detach(), self.b.detach()])


THETA0 = torch.tensor([0.8, -0.5, 0.3, 0.2, -0.7, 0.4, 0.1], dtype=torch.float64)


def closures(params, optimizer, loss, objective=None, max_grad_norm=None):
    """``gradients()`` and ``apply()`` as ``train.optimise`` builds them (backprop, one micro-batch)."""
    latest = []

    def micro_batch():
        value = loss()
        return SimpleNamespace(loss=value, objective=(objective() if objective else value).detach(), metrics={}), 1

    def gradients(fresh=False):   # fixed data: the same loss closure at the current weights
        latest[:] = [Backprop()([micro_batch], lambda value: value.backward(), 0)]
        return latest[0]

    def apply():
        skip = not finite(latest[0].surrogate, latest[0].objective)
        return apply_update(optimizer, params, max_grad_norm, skip)
    return gradients, apply


def test_with_sgd_it_is_the_canonical_extragradient_step():
    model = Module(THETA0)
    params = [model.w, model.b]
    optimizer = torch.optim.SGD(params, lr=0.1)
    rule = update_rule("extragradient", params, optimizer)
    gradients, apply = closures(params, optimizer, lambda: f(model.w, model.b))
    expected = iterate(extragradient_step, grad_f, THETA0, 0.1, 3)
    for k in range(3):
        sums, norm = rule(k, gradients, apply)
        half = gradient_descent_step(grad_f, expected[k], 0.1)
        assert float((model.flat() - expected[k + 1]).abs().max()) < 1e-12
        assert sums.metrics["half_step_objective"] == pytest.approx(float(f(expected[k][:3], expected[k][3:])), abs=1e-12)
        assert sums.objective == pytest.approx(float(f(half[:3], half[3:])), abs=1e-12)   # the full step's sums
        assert norm == pytest.approx(float(grad_f(half).norm()), abs=1e-12)
        assert sums.metrics["half_step_grad_norm"] == pytest.approx(float(grad_f(expected[k]).norm()), abs=1e-12)
    # ... and it is not gradient descent: the check above can tell the two apart
    descent = iterate(gradient_descent_step, grad_f, THETA0, 0.1, 3)[-1]
    assert float((descent - expected[-1]).abs().max()) > 1e-3


def _adam(params):
    return torch.optim.Adam(params, lr=0.05, betas=(0.8, 0.9), weight_decay=0.01, foreach=False)


def _one_adam_step(theta, state, gradient):
    """One Adam step from (θ, state) with the given gradient, on a fresh copy."""
    model = Module(theta)
    optimizer = _adam([model.w, model.b])
    optimizer.load_state_dict(copy.deepcopy(state))   # load_state_dict keeps the 'step' tensors, it would advance them
    model.w.grad, model.b.grad = gradient[:3].clone(), gradient[3:].clone()
    optimizer.step()
    return model.flat(), optimizer.state_dict()


@pytest.mark.parametrize("warm_steps", [0, 2])   # from an empty state, and from a state with history
def test_with_adam_the_state_is_one_step_with_the_half_point_gradient(warm_steps):
    model = Module(THETA0)
    params = [model.w, model.b]
    optimizer = _adam(params)
    gradients, apply = closures(params, optimizer, lambda: f(model.w, model.b))
    for k in range(warm_steps):
        OptimizerStep()(k, gradients, apply)
    theta_k = model.flat()
    state_k = copy.deepcopy(optimizer.state_dict())
    theta_half, _ = _one_adam_step(theta_k, state_k, grad_f(theta_k))
    theta_next, state_next = _one_adam_step(theta_k, state_k, grad_f(theta_half))

    update_rule("extragradient", params, optimizer)(warm_steps, gradients, apply)

    assert float((model.flat() - theta_next).abs().max()) < 1e-12
    got = optimizer.state_dict()["state"]
    assert sorted(got) == sorted(state_next["state"]) == [0, 1]
    for index, entry in state_next["state"].items():
        assert float(got[index]["step"]) == warm_steps + 1          # one step, not two
        for key in ("exp_avg", "exp_avg_sq"):
            assert float((got[index][key] - entry[key]).abs().max()) < 1e-12


def _bilinear(rule_name, steps=200, lr=0.1):
    """min_x max_y x·y as a descent on the field (∂f/∂x, −∂f/∂y) = (y, −x): the surrogate
    x·sg(y) − sg(x)·y has that gradient; its objective is x·y."""
    x = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    y = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    optimizer = torch.optim.SGD([x, y], lr=lr)
    gradients, apply = closures([x, y], optimizer, lambda: x * y.detach() - x.detach() * y, lambda: x * y)
    rule = update_rule(rule_name, [x, y], optimizer)
    path = [torch.stack([x.detach(), y.detach()]).clone()]
    for k in range(steps):
        rule(k, gradients, apply)
        path.append(torch.stack([x.detach(), y.detach()]).clone())
    return path


def test_bilinear_game_extragradient_converges_gradient_descent_spirals_out():
    z0 = torch.tensor([1.0, 1.0], dtype=torch.float64)
    eg, gd = _bilinear("extragradient"), _bilinear("optimizer_step")
    canonical_eg = iterate(extragradient_step, bilinear_field, z0, 0.1, 200)
    canonical_gd = iterate(gradient_descent_step, bilinear_field, z0, 0.1, 200)
    assert max(float((a - b).abs().max()) for a, b in zip(eg, canonical_eg)) < 1e-12
    assert max(float((a - b).abs().max()) for a, b in zip(gd, canonical_gd)) < 1e-12
    norms_eg, norms_gd = [float(z.norm()) for z in eg], [float(z.norm()) for z in gd]
    # |z_{k+1}| = √(1 − η² + η⁴) |z_k| for extragradient, √(1 + η²) |z_k| for gradient descent
    assert norms_eg[-1] == pytest.approx(math.sqrt(2) * 0.9901 ** 100, rel=1e-9)    # 0.5229
    assert norms_gd[-1] == pytest.approx(math.sqrt(2) * 1.01 ** 100, rel=1e-9)      # 3.825
    assert norms_eg[-1] < 0.53 and norms_gd[-1] > 3.8
    assert all(b < a for a, b in zip(norms_eg, norms_eg[1:]))
    assert all(b > a for a, b in zip(norms_gd, norms_gd[1:]))


@pytest.mark.parametrize("where", ["start", "half point"])
def test_a_non_finite_evaluation_restores_theta_k_and_the_optimiser_state(where):
    model = Module(THETA0)
    params = [model.w, model.b]
    optimizer = _adam(params)
    calls = [0]

    def loss():   # NaN at the first evaluation of the update ("start") or at the second ("half point")
        calls[0] += 1
        bad = calls[0] == {"start": 2, "half point": 3}[where]
        return f(model.w, model.b) * (float("nan") if bad else 1.0)
    gradients, apply = closures(params, optimizer, loss)
    OptimizerStep()(0, gradients, apply)                # one finite step: a state with history
    theta_k, state_k = model.flat(), copy.deepcopy(optimizer.state_dict())
    sums, norm = update_rule("extragradient", params, optimizer)(1, gradients, apply)
    assert not (finite(sums.objective) and math.isfinite(norm))      # reported, for the guard to count
    assert torch.equal(model.flat(), theta_k)
    after = optimizer.state_dict()["state"]
    for index, entry in state_k["state"].items():
        for key, value in entry.items():
            assert torch.equal(after[index][key], value), (index, key)
    assert all(p.grad is None for p in params)
    # the next update is an ordinary finite one
    sums, norm = update_rule("extragradient", params, optimizer)(2, gradients, apply)
    assert finite(sums.objective, norm) and not torch.equal(model.flat(), theta_k)


def test_refused_where_an_update_cannot_be_undone():
    check_update_rule("extragradient", Replicated(None), False)
    check_update_rule("optimizer_step", ZeRO(None), True)
    with pytest.raises(ConfigError, match="DeepSpeed"):
        check_update_rule("extragradient", ZeRO(None), False)
    with pytest.raises(ConfigError, match="optimizer_in_backward"):
        check_update_rule("extragradient", Replicated(None), True)
    with pytest.raises(ValueError, match="extragradient"):
        update_rule("mirror_descent")
