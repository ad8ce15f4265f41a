"""Gradient identity for nash-md and each half step of nash-mp: ∂(unigrad surrogate)/∂logp equals ∂(canonical
loss)/∂logp on random sampled batches, and on the tabular game ∂/∂θ of unigrad's exact batch equals autograd
of the paper's exact objective; unigrad's nash-mp through the extragradient rule is the canonical Nash-MP
iteration. Canonicals: tests/canonical/nash.py (never imports unigrad)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ → `canonical` importable

from canonical import nash as can  # noqa: E402

SEEDS = [0, 1, 2]


def sampled_batch(seed: int, B: int = 6, T: int = 7, rule: bool = False) -> dict:
    """Rows of variable length, logp < 0, a reference, preferences in [0, 1] (a rule's {0, ½, 1} with ``rule``)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    logp = -2.0 * F.softplus(torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    logp_ref = (logp + 0.5 * torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    if rule:
        preference = torch.randint(0, 3, (B,), generator=gen).to(torch.float64) / 2
    else:
        preference = torch.rand(B, generator=gen, dtype=torch.float64)
    return dict(logp=logp, mask=mask, logp_ref=logp_ref, preference=preference)


def _unigrad(name, params, d, anchor=None):
    import unigrad as ug
    logp = d["logp"].clone().requires_grad_(True)
    extra = {"preference": d["preference"], **({"logp_anchor": anchor} if anchor is not None else {})}
    out = ug.method(name, **params).loss(ug.Batch(logp=logp, mask=d["mask"], logp_ref=d["logp_ref"], extra=extra))
    return out, torch.autograd.grad(out.loss, logp)[0]


def _canonical(fn, d, *args, **params):
    logp = d["logp"].clone().requires_grad_(True)
    return torch.autograd.grad(fn(logp, d["mask"], d["logp_ref"], *args, d["preference"], **params), logp)[0]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("tau, beta, rule", [(0.008, 0.125, False), (0.3, 0.375, True), (1.0, 0.0, False)])
def test_nash_md_gradient_identity(seed, tau, beta, rule):
    d = sampled_batch(seed, rule=rule)
    out, g = _unigrad("nash-md", {"tau": tau, "beta": beta}, d)
    torch.testing.assert_close(g, _canonical(can.nash_md_pg_loss, d, tau=tau), rtol=1e-10, atol=1e-12)
    value = can.payoff_estimate_loss(d["logp"], d["mask"], d["logp_ref"], d["preference"], tau)
    torch.testing.assert_close(torch.as_tensor(out.objective, dtype=torch.float64), value, rtol=1e-10, atol=1e-12)
    assert torch.all(g[d["mask"] == 0] == 0) and torch.any(g != 0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("step", ["half", "full"])
@pytest.mark.parametrize("eta", [0.5, 1.0, 2.0])
def test_nash_mp_half_steps_gradient_identity(seed, step, eta):
    """Both proximal problems are taken at their centre π_k (logp_anchor = logp); they differ in the opponent
    the preferences were sampled against (π_k, then π_{k+½}): other draws for the full step."""
    d = sampled_batch(seed + (100 if step == "full" else 0))
    beta = 0.1
    _, g = _unigrad("nash-mp", {"beta": beta}, d, anchor=d["logp"])
    expect = _canonical(can.nash_mp_step_loss, d, d["logp"], beta=beta, eta=eta)
    torch.testing.assert_close(g, expect, rtol=1e-10, atol=1e-12)


# ---- the tabular game: unigrad's exact batch against the papers' exact objectives

def _game(seed: int, n: int = 7):
    from unigrad.games.tabular import random_game
    game = random_game(n, seed)
    gen = torch.Generator().manual_seed(1000 + seed)
    return game, torch.randn(n, generator=gen, dtype=torch.float64)


def _autograd(fn, theta, *args):
    theta = theta.clone().requires_grad_(True)
    return torch.autograd.grad(-fn(theta, *args), theta)[0]


@pytest.mark.parametrize("seed", SEEDS)
def test_nash_md_exact_gradient_is_the_papers_objective(seed):
    import unigrad as ug
    from unigrad.games.tabular import exact_gradient
    game, theta = _game(seed)
    tau, mixture = 0.2, 0.3
    got = exact_gradient(game, ug.method("nash-md", tau=tau, beta=mixture), theta, "exact")
    mu = torch.exp(game.log_reference)
    expect = _autograd(can.nash_md_payoff, theta, game.preference, mu, tau, mixture)
    torch.testing.assert_close(got, expect, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("step", ["half", "full"])
def test_nash_mp_exact_half_steps_are_the_papers_proximal_problems(seed, step):
    """At θ_k: the half step's proximal problem (opponent π_k) and the full step's (opponent π_{k+½}, the
    canonical half-step solution), with the opponent given to unigrad through the batch's preference."""
    import unigrad as ug
    from unigrad.batch import Batch
    from unigrad.games.tabular import TabularPolicy
    game, theta = _game(seed)
    beta, eta = 0.1, 1.0
    P, mu, pi_k = game.preference, torch.exp(game.log_reference), torch.softmax(theta, 0)
    opponent = pi_k if step == "half" else can.nash_mp_iteration(P, mu, pi_k, beta, eta)[0]
    policy = TabularPolicy(theta, "exact")
    batch = Batch(logp=policy.rows(), mask=torch.ones(game.n, 1, dtype=torch.float64),
                  logp_ref=game.log_reference[:, None],
                  extra={"preference": can.prob_beats(P, opponent), "logp_anchor": torch.log(pi_k)[:, None]})
    got = torch.autograd.grad(ug.method("nash-mp", beta=beta).loss(batch).loss, policy.theta)[0]
    expect = _autograd(can.proximal_payoff, theta, P, mu, opponent, pi_k.detach(), beta, eta)
    torch.testing.assert_close(got, expect, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("eta", [1.0, 0.2])
def test_nash_mp_through_extragradient_is_the_canonical_iteration(eta):
    import unigrad as ug
    from unigrad.games.tabular import train
    from unigrad.methods.nash import mirror_prox_step
    game, theta = _game(3, n=9)
    beta = 0.1
    path = train(game, ug.method("nash-mp", beta=beta), theta, game.n * mirror_prox_step(beta, eta), 6,
                 "extragradient", "natural")
    P, mu, pi = game.preference, torch.exp(game.log_reference), torch.softmax(theta, 0)
    for log_pi in path[1:]:
        pi = can.nash_mp_iteration(P, mu, pi, beta, eta)[1]
        torch.testing.assert_close(log_pi, torch.log(pi), rtol=0, atol=1e-12)
    assert float((torch.exp(path[-1]) - torch.softmax(theta, 0)).abs().max()) > 1e-2    # it moved


def test_canonical_proximal_solution_is_stationary():
    """The closed form maximises its proximal problem: the gradient in θ at the solution is 0."""
    game, theta = _game(5)
    P, mu, pi_k = game.preference, torch.exp(game.log_reference), torch.softmax(theta, 0)
    opponent = torch.softmax(torch.randn(game.n, dtype=torch.float64), 0)
    solution = can.proximal_solution(P, mu, opponent, pi_k, 0.1, 1.0)
    g = _autograd(can.proximal_payoff, torch.log(solution), P, mu, opponent, pi_k, 0.1, 1.0)
    assert float(g.abs().max()) < 1e-12
    assert float(_autograd(can.proximal_payoff, theta, P, mu, opponent, pi_k, 0.1, 1.0).abs().max()) > 1e-3
