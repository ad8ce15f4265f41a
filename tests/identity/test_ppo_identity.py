"""PPO with a value model: GAE against the canonical sum of TD errors, the policy loss's gradient and the
value loss's gradient against canonical losses written from the formulas (tests/canonical/gae.py), float64,
whole batches and micro-batches of a step."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ → `canonical` importable

from canonical import gae as can  # noqa: E402

import unigrad as ug  # noqa: E402
from unigrad.estimator.advantages.gae import GAE, gae, token_rewards  # noqa: E402
from unigrad.methods.ppo import WithCritic, value_loss_of  # noqa: E402
from unigrad.objectives.value import ValueLoss  # noqa: E402

TIGHT = dict(rtol=1e-10, atol=1e-12)


def rollouts(seed: int, B: int = 6, T: int = 7, noise: float = 0.3) -> dict:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T
    mask = (torch.arange(T)[None] < lengths[:, None]).to(torch.float64)
    logp = -2.0 * F.softplus(torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    logp_old = (logp + noise * torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    values = torch.randn(B, T, generator=gen, dtype=torch.float64) * mask
    value_pred = (values + 0.6 * torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    reward = torch.randint(0, 2, (B,), generator=gen).to(torch.float64)
    per_token = torch.randn(B, T, generator=gen, dtype=torch.float64) * mask
    return dict(logp=logp, mask=mask, logp_old=logp_old, values=values, value_pred=value_pred, reward=reward,
                group=torch.arange(B), per_token=per_token, lengths=lengths)


def batch_of(d: dict, logp=None, token_level: bool = False, value_pred=None) -> ug.Batch:
    extra = {"values": d["values"]}
    if token_level:
        extra["token_rewards"] = d["per_token"]
    if value_pred is not None:
        extra["value_pred"] = value_pred
    return ug.Batch(logp=d["logp"] if logp is None else logp, mask=d["mask"], logp_old=d["logp_old"],
                    reward=d["reward"], group=d["group"], extra=extra)


def canonical_rewards(d: dict, token_level: bool) -> list[list[float]]:
    if not token_level:
        return can.rewards_at_last_token(d["reward"], d["mask"])
    return [[float(d["per_token"][i, t]) for t in range(int(d["lengths"][i]))] for i in range(d["mask"].shape[0])]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (1.0, 0.95), (0.9, 0.7), (0.99, 0.0)])
@pytest.mark.parametrize("token_level", [False, True])
def test_gae_matches_the_sum_of_td_errors(seed, gamma, lam, token_level):
    d = rollouts(seed)
    batch = batch_of(d, token_level=token_level)
    advantages, returns = gae(token_rewards(batch), d["values"], d["mask"], gamma, lam)
    want_a, want_r = can.gae(canonical_rewards(d, token_level), d["values"], d["mask"], gamma, lam)
    torch.testing.assert_close(advantages, want_a, **TIGHT)
    torch.testing.assert_close(returns, want_r, **TIGHT)
    weight = GAE(gamma, lam)(batch).weight
    torch.testing.assert_close(weight, can.whiten(want_a, d["mask"]), **TIGHT)


def test_monte_carlo_gae_is_return_minus_value():
    """γ = λ = 1 with a terminal reward: A_t = R − V_t and every return is R (verl's default)."""
    d = rollouts(3)
    advantages, returns = gae(token_rewards(batch_of(d)), d["values"], d["mask"], 1.0, 1.0)
    torch.testing.assert_close(returns, d["reward"][:, None] * d["mask"], **TIGHT)
    torch.testing.assert_close(advantages, (d["reward"][:, None] - d["values"]) * d["mask"], **TIGHT)


def _canonical_policy(d, params, token_level, dual_clip=None):
    a, _ = can.gae(canonical_rewards(d, token_level), d["values"], d["mask"], params.get("gamma", 1.0),
                   params.get("lam", 1.0))
    logp = d["logp"].clone().requires_grad_(True)
    loss = can.ppo_policy_loss(logp, d["logp_old"], d["mask"], can.whiten(a, d["mask"]), params.get("eps", 0.2), dual_clip)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad


def _ratio_clipped_fraction(d, eps):
    ratio = torch.exp(d["logp"] - d["logp_old"])[d["mask"] > 0]
    return float(((ratio > 1 + eps) | (ratio < 1 - eps)).double().mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("params,token_level", [({}, False), ({"eps": 0.1, "lam": 0.95}, False),
                                                ({"gamma": 0.9, "lam": 0.8}, True)])
def test_policy_gradient_identity(seed, params, token_level):
    d = rollouts(seed)
    assert 0 < _ratio_clipped_fraction(d, params.get("eps", 0.2)) < 1
    want_value, want_grad = _canonical_policy(d, params, token_level)
    method = ug.method("ppo", **params)
    logp = d["logp"].clone().requires_grad_(True)
    out = method.loss(batch_of(d, logp, token_level))
    (grad,) = torch.autograd.grad(out.loss, logp)
    torch.testing.assert_close(grad, want_grad, **TIGHT)
    torch.testing.assert_close(out.objective, want_value, **TIGHT)


def test_policy_gradient_over_micro_batches_is_the_step_gradient():
    d = rollouts(4)
    _, want_grad = _canonical_policy(d, {"lam": 0.95}, False)
    method = ug.method("ppo", lam=0.95)
    step = batch_of(d)
    logp = d["logp"].clone().requires_grad_(True)
    total = 0
    for rows in (torch.tensor([0, 3, 5]), torch.tensor([1, 2, 4])):
        micro = step.micro_batch(rows).replace(logp=logp[rows])
        total = total + method.loss(micro).loss
    (grad,) = torch.autograd.grad(total, logp)
    torch.testing.assert_close(grad, want_grad, **TIGHT)


def test_dual_clip_gradient_identity():
    d = rollouts(5, noise=1.2)
    ratio = torch.exp(d["logp"] - d["logp_old"])
    assert bool(((ratio > 2.0) & (d["mask"] > 0)).any())
    want_value, want_grad = _canonical_policy(d, {}, False, dual_clip=2.0)
    logp = d["logp"].clone().requires_grad_(True)
    out = ug.method("ppo", dual_clip=2.0).loss(batch_of(d, logp))
    (grad,) = torch.autograd.grad(out.loss, logp)
    torch.testing.assert_close(grad, want_grad, **TIGHT)
    torch.testing.assert_close(out.objective, want_value, **TIGHT)
    _, plain = _canonical_policy(d, {}, False)
    assert not torch.allclose(plain, want_grad)   # the dual clip cut some negative-advantage tokens


@pytest.mark.parametrize("clip,lam", [(0.5, 1.0), (0.2, 0.95), (None, 0.9)])
def test_value_loss_gradient_identity(clip, lam):
    d = rollouts(6)
    _, returns = can.gae(canonical_rewards(d, False), d["values"], d["mask"], 1.0, lam)
    v = d["value_pred"].clone().requires_grad_(True)
    want = can.value_loss(v, d["values"], returns, d["mask"], clip)
    (want_grad,) = torch.autograd.grad(want, v)
    loss = ValueLoss(1.0, lam, clip)
    v2 = d["value_pred"].clone().requires_grad_(True)
    step = batch_of(d)
    total, clipfrac = 0, 0.0
    for rows in (torch.tensor([0, 2]), torch.tensor([1, 3, 4, 5])):   # micro-batches of the step
        micro = step.micro_batch(rows)
        micro = micro.replace(extra={**micro.extra, "value_pred": v2[rows]})
        out = loss.loss(micro)
        total, clipfrac = total + out.loss, clipfrac + out.metrics["value_clipfrac"]
    (grad,) = torch.autograd.grad(total, v2)
    torch.testing.assert_close(grad, want_grad, **TIGHT)
    torch.testing.assert_close(total.detach(), want.detach(), **TIGHT)
    if clip is not None:
        assert 0 < clipfrac < 1


def test_ppo_declares_its_critic():
    method = ug.method("ppo", lam=0.95, value_clip=0.2)
    assert isinstance(method, WithCritic)
    assert value_loss_of(method) == ValueLoss(1.0, 0.95, 0.2)
    assert "values" in method.requires
    assert value_loss_of(ug.method("grpo")) is None
    with pytest.raises(ValueError, match="c"):
        ug.method("ppo", dual_clip=0.9)
