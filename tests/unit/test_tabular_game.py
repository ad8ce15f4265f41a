"""The tabular preference game (unigrad.games.tabular): its exact batch gives the expected gradient of sampled
batches; π* is the regularised game's fixed point; the natural score makes SGD the mirror step and the exact
score does not; nash-mp declares the extragradient update rule; bad games and preferences are refused."""
import pytest
import torch

import unigrad as ug
from unigrad.config import ConfigError
from unigrad.games import tabular as T
from unigrad.methods.nash import check_update_rule_for, required_update_rule
from unigrad.objectives import Sum, Term

DT = torch.float64


def test_exact_gradient_is_the_mean_of_sampled_batches():
    """Monte Carlo: rows y ~ π_θ, opponents y′ ~ the geometric mixture, a 0/1 preference drawn with probability
    P[y, y′]; the mean of many batches' gradients is within 4 standard errors of the exact batch's."""
    game = T.random_game(5, 1)
    theta = torch.tensor([0.3, -0.8, 1.1, 0.0, -0.2], dtype=DT)
    objective = ug.method("nash-md", tau=0.3, beta=0.25)
    exact = T.exact_gradient(game, objective, theta, "exact")
    pi = torch.softmax(theta, 0)
    log_opp = objective.advantage.opponent.log_probs(torch.log(pi), game.log_reference)
    gen = torch.Generator().manual_seed(0)
    draws = []
    for _ in range(300):
        y = torch.multinomial(pi, 64, replacement=True, generator=gen)
        y2 = torch.multinomial(torch.exp(log_opp), 64, replacement=True, generator=gen)
        won = (torch.rand(64, generator=gen, dtype=DT) < game.preference[y, y2]).to(DT)
        t = theta.clone().requires_grad_(True)
        logp = torch.log_softmax(t, 0)[y][:, None]
        batch = ug.Batch(logp=logp, mask=torch.ones(64, 1, dtype=DT), logp_ref=game.log_reference[y][:, None],
                         extra={"preference": won})
        draws.append(torch.autograd.grad(objective.loss(batch).loss, t)[0])
    draws = torch.stack(draws)
    mean, se = draws.mean(0), draws.std(0) / len(draws) ** 0.5
    assert torch.all((mean - exact).abs() <= 4 * se + 1e-12), (mean, exact, se)
    assert float(exact.abs().max()) > 10 * float(se.max())          # the check can tell a wrong gradient


def test_the_equilibrium_is_a_fixed_point():
    game, beta = T.random_game(12, 2), 0.1
    star = T.equilibrium(game, beta)
    assert T.residual(game, star, beta) < 1e-12
    assert T.residual(game, game.log_reference, beta) > 1.0
    for log_pi in T.mirror_prox(game, star, beta, 1.0, 5):
        assert float((log_pi - star).abs().max()) < 1e-12
    moved = T.train(game, ug.method("nash-mp", beta=beta), star, 100.0, 3, "extragradient")
    assert float((moved[-1] - star).abs().max()) < 1e-11
    assert T.kl(star, game.log_reference) > 1e-3 and T.kl(star, star) == 0.0


def test_natural_score_makes_sgd_the_mirror_step_and_the_exact_score_does_not():
    game = T.random_game(6, 4)
    theta = torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=DT)
    objective, s = ug.method("nash-md", tau=0.1, beta=0.1), 1.0
    natural = T.train(game, objective, theta, game.n * s, 1, score="natural")[-1]
    euclid = T.train(game, objective, theta, s, 1, score="exact")[-1]
    mirror = T.mirror_descent(game, torch.log_softmax(theta, 0), 0.1, s, 1)[-1]
    assert float((natural - mirror).abs().max()) < 1e-13
    assert float((euclid - mirror).abs().max()) > 1e-2


def test_nash_mp_asks_for_the_extragradient_rule():
    mp = ug.method("nash-mp")
    assert required_update_rule(mp) == "extragradient" and required_update_rule(ug.method("nash-md")) is None
    assert required_update_rule(Sum((Term(1.0, mp, "game"), Term(0.1, ug.method("sft"), "sft")))) == "extragradient"
    check_update_rule_for(mp, "extragradient")
    check_update_rule_for(ug.method("nash-md"), "optimizer_step")
    with pytest.raises(ConfigError, match="set train.update_rule: extragradient"):
        check_update_rule_for(mp, "optimizer_step")
    assert mp.requires >= {"preference", "logp_ref", "logp_anchor"}


def test_bad_games_and_preferences_are_refused():
    game = T.random_game(4, 0)
    with pytest.raises(ValueError, match="P \\+ Pᵀ = 1"):
        T.TabularGame(game.preference + 0.1, game.log_reference)
    with pytest.raises(ValueError, match="normalised"):
        T.TabularGame(game.preference, game.log_reference + 1)
    logp = torch.log_softmax(torch.zeros(4, dtype=DT), 0)[:, None]
    batch = ug.Batch(logp=logp, mask=torch.ones(4, 1, dtype=DT), logp_ref=logp, extra={"preference": torch.full((4,), 1.5, dtype=DT)})
    with pytest.raises(ValueError, match="all in \\[0, 1\\]"):
        ug.method("nash-md").loss(batch)
