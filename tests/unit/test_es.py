"""Antithetic ES: the estimate is the canonical formula for the same noise (with and without centred
ranks), its mean approaches the gradient, centred ranks make it invariant to a monotone transform
of the loss, it repeats from its seeds; the rank-from-preferences rule; MeZO-SGD's clipping; the
oracle settings refused with the reason."""
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.canonical.zeroth_order import antithetic_es
from tests.unit.test_mezo import Quadratic
from unigrad.gradients import ES, MeZO, SeededSGD, ZORank
from unigrad.gradients.es import centered_ranks
from unigrad.gradients.oracles import ObjectiveOracle, RulePreference, ranking, total_wins
from unigrad.gradients.seeded import perturb, seed_of

ROOT = Path(__file__).resolve().parents[2]


def noise(model, seed, key, n):
    out = []
    for i in range(n):
        zeros = [torch.zeros_like(p) for p in (model.w, model.b)]
        perturb(zeros, seed_of(seed, key, i), 1.0)
        out.append(torch.cat([zeros[0].flatten(), zeros[1]]))
    return out


def grad_of(model):
    return torch.cat([model.w.grad.flatten(), model.b.grad])


@pytest.mark.parametrize("shaping", ["none", "centered-ranks"])
def test_es_is_the_canonical_antithetic_estimate_and_restores_the_weights(shaping):
    model = Quadratic()
    before = model.flat().clone()
    es = ES(model, [model.w, model.b], pairs=5, sigma=1e-2, shaping=shaping, seed=3)
    sums = es(model.micro_batches(), None, key=7)
    expected = antithetic_es(model.f, before, noise(model, 3, 7, 5), 1e-2, centred_ranks=shaping != "none")
    torch.testing.assert_close(grad_of(model), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(model.flat(), before, rtol=0, atol=1e-14)
    assert sums.tokens == 10
    assert sums.direction.norms2 == pytest.approx([float(z @ z) for z in noise(model, 3, 7, 5)], rel=1e-6)


def test_es_mean_approaches_the_gradient():
    model = Quadratic(d1=(4, 4), d2=4)
    truth = model.gradient()
    es = ES(model, [model.w, model.b], pairs=4000, sigma=1e-3, seed=0)
    es(model.micro_batches(), None, 0)
    estimate = grad_of(model)
    assert float(estimate @ truth / (estimate.norm() * truth.norm())) >= 0.95


def test_centred_ranks_are_salimans_and_make_es_invariant_to_a_monotone_transform():
    assert centered_ranks([3.0, -1.0, 10.0, 0.5, 0.5, 7.0]) == pytest.approx([0.1, -0.5, 0.5, -0.2, -0.2, 0.3])  # ties: mean rank
    assert centered_ranks([2.0] * 4) == [0.0] * 4
    model = Quadratic()
    params = [model.w, model.b]
    ES(model, params, pairs=6, sigma=1e-2, shaping="centered-ranks", seed=1)(model.micro_batches(), None, 2)
    ranked = grad_of(model).clone()
    squashed = [lambda: (SimpleNamespace(objective=math.exp(model.f(model.flat())), metrics={}), 1)]
    ES(model, params, pairs=6, sigma=1e-2, shaping="centered-ranks", seed=1)(squashed, None, 2)
    torch.testing.assert_close(grad_of(model), ranked, rtol=0, atol=0)
    ES(model, params, pairs=6, sigma=1e-2, seed=1)(squashed, None, 2)            # unshaped: it changes
    assert not torch.allclose(grad_of(model), ranked)


def test_es_repeats_from_its_seeds_and_sgd_applies_it_from_them():
    model = Quadratic()
    before = model.flat().clone()
    es = ES(model, [model.w, model.b], pairs=3, sigma=1e-2, seed=5)
    first = es(model.micro_batches(), None, 4).direction
    twin = Quadratic()                                       # the same θ, another process or a resumed run
    again = ES(twin, [twin.w, twin.b], pairs=3, sigma=1e-2, seed=5)(twin.micro_batches(), None, 4).direction
    other = es(model.micro_batches(), None, 5).direction
    assert first == again and not set(first.seeds) & set(other.seeds)
    es.into_grad = False
    optimizer = torch.optim.SGD([model.w, model.b], lr=0.1)
    SeededSGD([model.w, model.b], optimizer, es)(0, lambda: es(model.micro_batches(), None, 4), None)
    expected = before - 0.1 * antithetic_es(model.f, before, noise(model, 5, 4, 3), 1e-2)
    torch.testing.assert_close(model.flat(), expected, rtol=1e-9, atol=1e-12)


def test_seeded_sgd_clips_by_the_estimates_norm_as_clip_grad_norm():
    model = Quadratic()
    before = model.flat().clone()
    mezo = MeZO(model, [model.w, model.b], samples=1, eps=1e-3, seed=1, into_grad=True)
    mezo(model.micro_batches(), None, 3)
    g = grad_of(model).clone()
    torch.nn.utils.clip_grad_norm_([model.w, model.b], 0.1)
    clipped = grad_of(model).clone()
    mezo.into_grad = False
    _, norm = SeededSGD([model.w, model.b], torch.optim.SGD([model.w, model.b], lr=0.5), mezo, max_grad_norm=0.1)(
        0, lambda: mezo(model.micro_batches(), None, 3), None)
    assert norm == pytest.approx(float(g.norm()), rel=1e-6) and norm > 0.1     # ‖z‖² in float32
    torch.testing.assert_close(model.flat(), before - 0.5 * clipped, rtol=0, atol=1e-8)


def test_rank_from_preferences_counts_total_wins_ties_by_query_order():
    # P[a][b] per prompt (2 prompts): 0 beats 1 once and ties once; 2 beats everyone; 1 and 3 tie
    table = {(0, 1): [1.0, 0.5], (0, 2): [0.0, 0.0], (0, 3): [1.0, 0.0], (1, 2): [0.0, 0.0],
             (1, 3): [0.5, 0.5], (2, 3): [1.0, 1.0]}
    wins = total_wins(4, lambda a, b: torch.tensor(table[(a, b)]))
    assert wins == [2.5, 1.5, 6.0, 2.0]
    assert ranking([-w for w in wins]) == [2, 0, 3, 1]
    assert ranking([-1.0, -1.0, -2.0]) == [2, 0, 1]                      # tie: query order
    prefer = RulePreference(lambda prompts, texts: torch.tensor([float(len(t)) for t in texts], dtype=torch.float64))
    assert prefer(["p", "q", "r"], ["aa", "b", "c"], ["a", "bb", "c"]).tolist() == [1.0, 0.0, 0.5]


class ValuePreference:
    """A ranking oracle from pairwise comparisons of the points' values (lower is preferred)."""
    comparative = True

    def observe(self, micro_batches, sums=None):
        return ObjectiveOracle().observe(micro_batches, sums)

    def keys(self, observations):
        return [-w for w in total_wins(len(observations),
                                       lambda a, b: torch.tensor([float(observations[a] < observations[b])]))]


def test_zo_rank_by_preferences_is_zo_rank_by_values_when_they_agree():
    model = Quadratic()
    ZORank(model, [model.w, model.b], queries=5, mu=1e-2, top=3, seed=2)(model.micro_batches(), None, 1)
    by_value = grad_of(model).clone()
    ZORank(model, [model.w, model.b], queries=5, mu=1e-2, top=3, seed=2, oracle=ValuePreference())(
        model.micro_batches(), None, 1)
    torch.testing.assert_close(grad_of(model), by_value, rtol=0, atol=0)


@pytest.mark.parametrize("config, overrides, message", [
    ("tiny-dpo", ["train.gradient.name=es", "train.gradient.oracle=reward"], "needs an online run"),
    ("tiny-dpo", ["train.gradient.name=zo-rank", "train.gradient.samples=4", "train.gradient.oracle=preference"],
     "needs an online run"),
    ("tiny-hpt", ["train.gradient.name=es", "train.gradient.oracle=preference"], "only train.gradient.name: zo-rank"),
    ("tiny-hpt", ["train.gradient.oracle=reward"], "needs a zeroth-order estimator"),
    ("tiny-hpt", ["train.gradient.name=mezo", "train.gradient.shaping=centered-ranks"], "use train.gradient.name: es"),
    ("tiny-hpt", ["train.gradient.name=es", "train.gradient.samples=0"], "at least 1 antithetic pair"),
])
def test_oracle_and_shaping_settings_refused_with_the_reason(config, overrides, message):
    from unigrad.config import ConfigError, load_config
    from unigrad.run import check_gradient
    with pytest.raises(ConfigError, match=message):
        check_gradient(load_config(str(ROOT / "configs" / f"{config}.yaml"), overrides))
