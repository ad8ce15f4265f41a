"""Unit tests of the estimator's parts, combinators and config-built methods."""
import pytest
import torch

import unigrad as ug
from unigrad.estimator import (
    BehaviourPolicy, Constant, Estimator, Likelihood, PPOClip, SequenceMean, TokenMean, Weighted,
)
from unigrad.estimator.advantages import pair_rows
from unigrad.methods.compose import MethodSpecError, build_objective
from unigrad.objectives import KLPenalty, kl_estimate


def _pairs_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(4, 5, dtype=torch.float64)
    mask[1, 3:] = 0
    logp = (-torch.rand(4, 5, generator=g, dtype=torch.float64) * mask).requires_grad_()
    ref = -torch.rand(4, 5, generator=g, dtype=torch.float64) * mask
    return ug.Batch(logp=logp, mask=mask, logp_ref=ref, group=torch.tensor([3, 3, 8, 8]),
                    sign=torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def test_ppo_clip_mask_switches_off_only_outside_the_trust_region():
    clip = PPOClip(eps_low=0.2, eps_high=0.3)
    ratio = torch.tensor([0.7, 0.7, 1.0, 1.35, 1.35])
    adv = torch.tensor([-1.0, 1.0, 1.0, 1.0, -1.0])
    assert clip(ratio, adv, None).tolist() == [0.0, 1.0, 1.0, 0.0, 1.0]
    assert clip.value_ratio(ratio, adv, None).tolist() == pytest.approx([0.8, 0.7, 1.0, 1.3, 1.35])


def test_clipped_estimator_gradient_and_value_equal_ppo_surrogate():
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(3, 4, dtype=torch.float64)
    logp = (-torch.rand(3, 4, generator=g, dtype=torch.float64)).requires_grad_()
    old = logp.detach() + 0.4 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    batch = ug.Batch(logp=logp, mask=mask, logp_old=old)

    class Fixed(Constant):
        def __call__(self, b):
            return Weighted(adv)

    est = Estimator(mask=PPOClip(0.2, 0.2), denominator=BehaviourPolicy(), advantage=Fixed(),
                    likelihood=Likelihood("token", TokenMean()))
    out = est.loss(batch)
    ratio = torch.exp(logp - old)
    a = adv[:, None]
    ppo = -torch.minimum(ratio * a, ratio.clamp(0.8, 1.2) * a).mean()
    g1, = torch.autograd.grad(out.loss, logp)
    g2, = torch.autograd.grad(ppo, logp)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.objective, ppo.detach(), rtol=1e-10, atol=1e-12)


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    log_rho = ref - logp
    assert torch.allclose(kl_estimate(logp, ref, "k1"), -log_rho)
    assert torch.allclose(kl_estimate(logp, ref, "k2"), 0.5 * log_rho ** 2)
    assert torch.allclose(kl_estimate(logp, ref, "k3"), log_rho.exp() - 1 - log_rho)
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        KLPenalty("k4")


def test_sum_combines_losses_objectives_and_requirements():
    batch = _pairs_batch()
    combo = ug.Sum((ug.Term(1.0, ug.method("sft"), "sft"), ug.Term(0.5, ug.method("dpo"), "dpo")))
    out = combo.loss(batch)
    a, b = ug.method("sft").loss(batch), ug.method("dpo").loss(batch)
    torch.testing.assert_close(out.loss, a.loss + 0.5 * b.loss)
    torch.testing.assert_close(out.objective, a.objective + 0.5 * b.objective)
    assert combo.requires == ug.method("dpo").requires | ug.method("sft").requires
    assert "dpo/reward_margin" in out.metrics


def test_pairs_must_be_complete():
    with pytest.raises(ValueError, match="exactly one chosen"):
        pair_rows(torch.tensor([1, 1, 2]), torch.tensor([1.0, 1.0, -1.0]))


def test_missing_batch_field_is_named():
    batch = _pairs_batch().replace(logp_ref=None)
    with pytest.raises(ValueError, match="logp_ref"):
        ug.method("dpo").loss(batch)


def test_unknown_method_and_parameter_errors():
    with pytest.raises(ValueError, match="known methods"):
        ug.method("dpoo")
    with pytest.raises(ValueError, match="beta"):
        ug.method("dpo", bta=0.1)
    with pytest.raises(ValueError, match="0 < alpha < 1"):
        ug.method("f-dpo", divergence="alpha", alpha=1.5)


def test_methods_are_frozen_values():
    assert ug.method("dpo", beta=0.2) == ug.method("dpo", beta=0.2)
    assert ug.method("dpo", beta=0.2) != ug.method("dpo", beta=0.3)
    with pytest.raises(Exception):
        ug.method("dpo").advantage = None
    assert set(ug.methods()) >= {"sft", "dpo", "ipo", "simpo", "orpo", "f-dpo"}


def test_method_from_parts_equals_registered_method():
    spec = {"parts": {"mask": "none", "denominator": "current",
                      "advantage": {"name": "pairwise", "score": {"name": "implied_reward", "beta": 0.3}, "link": "logistic"},
                      "likelihood": {"unit": "sequence", "normaliser": {"name": "sequence_sum", "per": "group"}}}}
    assert build_objective(spec) == ug.method("dpo", beta=0.3)
    f_spec = {"parts": {"advantage": {"name": "pairwise", "score": {"name": "f_divergence_reward", "beta": 0.1,
                                                                    "divergence": "alpha", "alpha": 0.3}},
                        "likelihood": {"unit": "sequence", "normaliser": {"name": "sequence_sum", "per": "group"}}}}
    assert build_objective(f_spec) == ug.method("f-dpo", divergence="alpha", alpha=0.3)
    summed = build_objective({"sum": [{"weight": 1.0, "name": "sft"}, {"weight": 0.05, "kl": "k3"}]})
    assert summed.terms[1].objective == KLPenalty("k3") and summed.terms[1].weight == 0.05


@pytest.mark.parametrize("spec, message", [
    ({"parts": {"mask": "clipp"}}, "unknown mask 'clipp'"),
    ({"parts": {"advantage": {"name": "pairwise", "score": {"name": "implied_reward", "bta": 1}}}}, "bta"),
    ({"parts": {"maks": "none"}}, "unknown part"),
    ({"name": "dpo", "parts": {}}, "exactly one"),
])
def test_bad_method_specs_are_named(spec, message):
    with pytest.raises(MethodSpecError, match=message):
        build_objective(spec)


def test_sequence_level_ratio_is_length_normalised():
    """GSPO-style: r_b = exp(mean_t(ℓ − ℓ_old)), gradient r_b Â_b (1/|y_b|) Σ_t ∇ℓ_t."""
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.2, -0.3]], dtype=torch.float64, requires_grad=True)
    old = logp.detach() - 0.05
    est = Estimator(denominator=BehaviourPolicy(), likelihood=Likelihood("sequence", SequenceMean()))
    out = est.loss(ug.Batch(logp=logp, mask=mask, logp_old=old))
    g, = torch.autograd.grad(out.loss, logp)
    r = torch.exp(torch.tensor(0.05, dtype=torch.float64))
    expected = -(r * mask / mask.sum(1, keepdim=True)) / 2
    torch.testing.assert_close(g, expected)


def test_grpo_written_from_parts_equals_the_registered_grpo():
    spec = {"parts": {"mask": {"name": "ppo_clip", "eps_low": 0.2, "eps_high": 0.2}, "denominator": "behaviour",
                      "advantage": "group_normalised",
                      "likelihood": {"unit": "token", "normaliser": {"name": "sequence_mean"}}}}
    assert build_objective(spec) == ug.method("grpo")
    rloo = {"parts": {"advantage": "leave_one_out",
                      "likelihood": {"unit": "sequence", "normaliser": {"name": "sequence_sum"}}}}
    assert build_objective(rloo) == ug.method("rloo")
