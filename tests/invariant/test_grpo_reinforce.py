"""One on-policy GRPO step is REINFORCE with a group baseline.

With logp_old = logp (the first optimisation epoch on fresh rollouts) every ratio is 1, PPO's clip
never switches a token off, and GRPO's gradient is REINFORCE's with the group-mean baseline divided
by the group std, under the same per-sequence token-mean normalisation:

    ∇L = −(1/G) Σ_i (1/|y_i|) Σ_t Â_i ∇ℓ_{i,t},   Â_i = (R_i − mean_G R)/(std_G R + eps).
"""
import pytest
import torch

import unigrad as ug
from unigrad.estimator import (
    CurrentPolicy, Estimator, GroupNormalised, Likelihood, NoMask, SequenceMean,
)


def _batch(seed, rewards):
    g = torch.Generator().manual_seed(seed)
    prompts, n, T = 3, 4, 6
    B = prompts * n
    group = torch.randperm(100, generator=g)[:prompts].repeat_interleave(n)[torch.randperm(B, generator=g)]
    mask = (torch.arange(T)[None] < torch.randint(1, T + 1, (B, 1), generator=g)).double()
    logp = (-2 * torch.rand(B, T, generator=g, dtype=torch.float64) * mask).requires_grad_()
    reward = (torch.randint(0, 2, (B,), generator=g).double() if rewards == "binary"
              else torch.randn(B, generator=g, dtype=torch.float64))
    return logp, mask, reward, group


@pytest.mark.parametrize("rewards", ["binary", "continuous"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_on_policy_grpo_step_is_reinforce_with_group_normalised_baseline(seed, rewards):
    logp, mask, reward, group = _batch(seed, rewards)
    on_policy = ug.Batch(logp=logp, mask=mask, logp_old=logp.detach().clone(), reward=reward, group=group)
    out = ug.method("grpo", eps=0.2).loss(on_policy)
    g_grpo, = torch.autograd.grad(out.loss, logp)
    assert out.metrics["mask_kept"] == 1.0

    reinforce = Estimator(mask=NoMask(), denominator=CurrentPolicy(), advantage=GroupNormalised(),
                          likelihood=Likelihood("token", SequenceMean()))
    g_reinforce, = torch.autograd.grad(reinforce.loss(ug.Batch(logp=logp, mask=mask, reward=reward, group=group)).loss, logp)
    torch.testing.assert_close(g_grpo, g_reinforce, rtol=1e-12, atol=1e-15)

    # and explicitly: −Â_i / (|y_i| · G) on each completion token
    adv = torch.empty_like(reward)
    for gid in torch.unique(group):
        rows = group == gid
        adv[rows] = (reward[rows] - reward[rows].mean()) / (reward[rows].std() + 1e-6)
    expect = -adv[:, None] * mask / mask.sum(1, keepdim=True) / len(reward)
    torch.testing.assert_close(g_grpo, expect, rtol=1e-12, atol=1e-15)
