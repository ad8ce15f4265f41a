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


def _canonical_shared_trunk(model, head, prompts, completions, reward, values_old, logp_old, coef, clip):
    """PPO with a value head on the trunk, from the definitions: for each sequence alone, the LM's softmax
    probability of each completion token and V = w·h + b on the final hidden state at the position before
    it (one full HF forward per sequence); L = L_π + c·L_V on those, GAE with γ = λ = 1."""
    B, T = len(prompts), max(map(len, completions))
    mask = torch.zeros(B, T, dtype=torch.float64)
    logp, value = [[None] * T for _ in range(B)], [[None] * T for _ in range(B)]
    zero = torch.zeros((), dtype=torch.float64)
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        ids = torch.tensor([list(prompt) + list(completion)])
        hidden = model.model(input_ids=ids).last_hidden_state[0]
        probs = torch.softmax(model.lm_head(hidden), dim=-1)
        for t, token in enumerate(completion):
            position = len(prompt) + t - 1          # the state that predicts completion token t
            logp[i][t] = torch.log(probs[position, token])
            value[i][t] = (head.weight[0] * hidden[position]).sum() + head.bias[0]
            mask[i, t] = 1.0
    logp = torch.stack([torch.stack([x if x is not None else zero for x in row]) for row in logp])
    value = torch.stack([torch.stack([x if x is not None else zero for x in row]) for row in value])
    advantage, returns = can.gae(can.rewards_at_last_token(reward, mask), values_old, mask, 1.0, 1.0)
    return (can.ppo_policy_loss(logp, logp_old, mask, can.whiten(advantage, mask), 0.2)
            + coef * can.value_loss(value, values_old, returns, mask, clip))


def test_shared_value_head_gradient_identity():
    """∇ of L_π + c·L_V w.r.t. every trunk, LM-head and value-head parameter, with log-probs and values from
    one chunked forward (``LogprobsAndValues``), equals the canonical built from per-sequence HF forwards."""
    from unigrad.data.packing import collate
    from unigrad.logprobs import LogprobsAndValues
    from unigrad.methods.ppo import WithValueHead
    from unigrad.models import tiny_random_model
    from unigrad.parallel import ModelCall
    from unigrad.tokens import Sequence

    model = tiny_random_model(hidden=16, layers=2, heads=2, seed=3).double()
    head = torch.nn.Linear(16, 1, dtype=torch.float64)
    gen = torch.Generator().manual_seed(7)
    prompts = [(5, 6, 7), (8, 9), (10, 11, 12, 13)]
    completions = [(20, 21, 22, 23), (24, 25), (26, 27, 28)]
    reward = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    T = max(map(len, completions))
    mask = torch.tensor([[1.0] * len(c) + [0.0] * (T - len(c)) for c in completions], dtype=torch.float64)
    values_old = torch.randn(3, T, generator=gen, dtype=torch.float64) * mask
    sequences = [Sequence(p, c, group=0) for p, c in zip(prompts, completions)]
    with torch.no_grad():
        logp_now, _ = LogprobsAndValues(head, 3)(ModelCall(model), sequences, collate(sequences, 0)).values()
    logp_old = (logp_now + 0.2 * torch.randn(3, T, generator=gen, dtype=torch.float64)) * mask
    params = [*model.parameters(), *head.parameters()]

    want = _canonical_shared_trunk(model, head, prompts, completions, reward, values_old, logp_old, 0.3, 0.2)
    want_grads = torch.autograd.grad(want, params, allow_unused=True)

    produced = LogprobsAndValues(head, 3)(ModelCall(model), sequences, collate(sequences, 0))   # 3 < 9 tokens: chunked
    batch = ug.Batch(logp=produced["logp"], mask=mask, logp_old=logp_old, reward=reward, group=torch.zeros(3, dtype=torch.long),
                     extra={"values": values_old, "value_pred": produced["value_pred"]})
    out = WithValueHead(ug.method("ppo", value_clip=0.2), 0.3).loss(batch)
    grads = torch.autograd.grad(out.loss, params, allow_unused=True)
    torch.testing.assert_close(out.objective.detach(), want.detach(), **TIGHT)
    assert grads[-2].abs().sum() > 0 and want_grads[0] is not None
    for got, expected in zip(grads, want_grads):
        if expected is None:
            assert got is None or got.abs().max() == 0
        else:
            torch.testing.assert_close(got, expected, **TIGHT)


@pytest.mark.parametrize("kl_coef,lam", [(0.1, 1.0), (0.5, 0.9)])
def test_kl_in_the_reward_gradient_identity(kl_coef, lam):
    """The KL folded into each token's reward, r_t − β(log π_old − log π_ref), written as the canonical's
    per-token reward list: the policy gradient and the value loss (its returns) match."""
    d = rollouts(8)
    gen = torch.Generator().manual_seed(9)
    logp_ref = (d["logp_old"] + 0.4 * torch.randn(d["mask"].shape, generator=gen, dtype=torch.float64)) * d["mask"]
    shaped = can.rewards_at_last_token(d["reward"], d["mask"])
    shaped = [[r - kl_coef * (float(d["logp_old"][i, t]) - float(logp_ref[i, t])) for t, r in enumerate(row)]
              for i, row in enumerate(shaped)]
    a, returns = can.gae(shaped, d["values"], d["mask"], 1.0, lam)
    logp = d["logp"].clone().requires_grad_(True)
    want = can.ppo_policy_loss(logp, d["logp_old"], d["mask"], can.whiten(a, d["mask"]), 0.2)
    (want_grad,) = torch.autograd.grad(want, logp)
    v = d["value_pred"].clone().requires_grad_(True)
    (want_value_grad,) = torch.autograd.grad(can.value_loss(v, d["values"], returns, d["mask"], 0.5), v)

    method = ug.method("ppo", lam=lam, kl_coef=kl_coef)
    assert {"logp_old", "logp_ref"} <= method.requires
    logp2, v2 = d["logp"].clone().requires_grad_(True), d["value_pred"].clone().requires_grad_(True)
    batch = batch_of(d, logp2, value_pred=v2).replace(logp_ref=logp_ref)
    (grad,) = torch.autograd.grad(method.loss(batch).loss, logp2)
    (value_grad,) = torch.autograd.grad(value_loss_of(method).loss(batch).loss, v2)
    torch.testing.assert_close(grad, want_grad, **TIGHT)
    torch.testing.assert_close(value_grad, want_value_grad, **TIGHT)
    (plain,) = torch.autograd.grad(ug.method("ppo", lam=lam).loss(batch_of(d, logp2)).loss, logp2)
    assert not torch.allclose(plain, want_grad)    # the KL term changed the advantages
