"""Gradient accumulation: k micro-batches that know their optimiser step give the gradient of one
batch of k, for every method (the loop relies on it; so will multi-process training)."""
import pytest
import torch

import unigrad as ug

CASES = [("sft", {}), ("dpo", {"beta": 0.1}), ("ipo", {"tau": 0.5}), ("simpo", {}), ("orpo", {"lam": 0.5}),
         ("f-dpo", {"divergence": "js"})]


@pytest.mark.parametrize("name, params", CASES)
def test_micro_batches_sum_to_the_full_batch_gradient(name, params):
    g = torch.Generator().manual_seed(0)
    pairs, T = 4, 7
    mask = (torch.arange(T)[None] < torch.randint(1, T + 1, (2 * pairs, 1), generator=g)).double()
    logp = (-2 * torch.rand(2 * pairs, T, generator=g, dtype=torch.float64) * mask).requires_grad_()
    ref = -2 * torch.rand(2 * pairs, T, generator=g, dtype=torch.float64) * mask
    group = torch.arange(pairs).repeat_interleave(2)
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(pairs)
    objective = ug.method(name, **params)
    step = ug.Batch(logp=logp, mask=mask, logp_ref=ref, group=group, sign=sign)
    full = objective.loss(step)
    g_full, = torch.autograd.grad(full.loss, logp)
    halves = (torch.arange(0, 4), torch.arange(4, 8))
    parts = [objective.loss(step.micro_batch(rows)) for rows in halves]
    g_acc, = torch.autograd.grad(sum(p.loss for p in parts), logp)
    torch.testing.assert_close(g_acc, g_full, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(sum(p.objective for p in parts), full.objective, rtol=1e-12, atol=1e-14)
    # A micro-batch that does not know its step is normalised by its own size: not equal.
    local = [objective.loss(step.micro_batch(rows).replace(step=None, rows=None)) for rows in halves]
    g_local, = torch.autograd.grad(sum(p.loss for p in local), logp)
    assert not torch.allclose(g_local, g_full)


# Methods with rewards, behaviour and reference log-probs, and forget/retain signs. Every method whose
# loss is a sum of per-row terms over step-level statistics splits exactly; FLAT and ASFT are non-linear
# in batch means, SinKD couples tokens across the batch, so they are left out by design.
STEP_CASES = [("grpo", {"beta": 0.05}), ("dr-grpo", {}), ("dapo", {}), ("gspo", {}), ("rloo", {}),
              ("reinforce", {"batch_mean": True}), ("reinforce++", {}), ("ga", {}), ("grad-diff", {}),
              ("npo", {"retain_weight": 1.0}), ("a-lol", {}), ("a-lol-seq", {}), ("ddo", {})]


@pytest.mark.parametrize("name, params", STEP_CASES)
def test_micro_batches_that_know_their_step_sum_to_the_full_gradient(name, params):
    g = torch.Generator().manual_seed(1)
    prompts, n, T = 4, 4, 6
    B = prompts * n
    mask = (torch.arange(T)[None] < torch.randint(1, T + 1, (B, 1), generator=g)).double()
    logp = (-2 * torch.rand(B, T, generator=g, dtype=torch.float64) * mask).requires_grad_()
    old = (logp.detach() + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)) * mask
    ref = -2 * torch.rand(B, T, generator=g, dtype=torch.float64) * mask
    reward = torch.randint(0, 2, (B,), generator=g).double() + 0.1 * torch.rand(B, generator=g, dtype=torch.float64)
    group = torch.arange(prompts).repeat_interleave(n)
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(B // 2)
    step = ug.Batch(logp=logp, mask=mask, logp_old=old, logp_ref=ref, reward=reward, group=group, sign=sign)
    objective = ug.method(name, **params)
    full = objective.loss(step)
    g_full, = torch.autograd.grad(full.loss, logp)
    halves = (torch.arange(0, B // 2), torch.arange(B // 2, B))   # whole prompts in each half
    parts = [objective.loss(step.micro_batch(rows)) for rows in halves]
    g_acc, = torch.autograd.grad(sum(p.loss for p in parts), logp)
    torch.testing.assert_close(g_acc, g_full, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sum(p.objective for p in parts), full.objective, rtol=1e-10, atol=1e-12)
