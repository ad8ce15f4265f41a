"""Gradient identity for OPMD, AsymRE, MDPO, COPO and f-DPG: ∂(unigrad surrogate)/∂logp equals the
gradient of the canonical loss (tests/canonical/rl_variants.py, written from the papers' forms with
loops, no unigrad import), in float64, and ``out.objective`` is the canonical loss value.

Batches: 4 prompts × 4 rollouts, rows shuffled, group ids random and non-contiguous, variable
lengths, logp_old = logp + noise; answers drawn so that one prompt agrees on one answer (H = 0), one
has four distinct answers (H = 2 bits); rewards binary (one prompt all 0, one prompt all 1) or continuous.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ → `canonical` importable

from canonical import rl_variants as can  # noqa: E402

SEEDS = [0, 1, 2]


def batch_data(seed: int, rewards: str = "binary", prompts: int = 4, n: int = 4, T: int = 6, noise: float = 0.3,
               step: int = 0, steps: int = 4) -> dict:
    gen = torch.Generator().manual_seed(seed)
    B = prompts * n
    ids = torch.randperm(1000, generator=gen)[:prompts]
    group = ids.repeat_interleave(n)
    if rewards == "binary":
        reward = torch.randint(0, 2, (B,), generator=gen).to(torch.float64)
        reward[:n], reward[n:2 * n] = 0.0, 1.0
        reward[2 * n], reward[2 * n + 1] = 0.0, 1.0
    else:
        reward = torch.rand(B, generator=gen, dtype=torch.float64) + 0.1      # > 0: also a product target's b(y)
    answer = torch.randint(0, 3, (B,), generator=gen)
    answer[:n] = 7                                   # prompt 0: one answer, H = 0
    answer[n:2 * n] = torch.arange(4)                # prompt 1: four answers, H = 2 bits
    lengths = torch.randint(2, T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    logp = -2.0 * F.softplus(torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    logp_old = (logp + noise * torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    logp_ref = (logp + 0.5 * torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    perm = torch.randperm(B, generator=gen)
    d = dict(logp=logp, mask=mask, logp_old=logp_old, logp_ref=logp_ref, reward=reward, group=group, answer=answer)
    d = {key: value[perm] for key, value in d.items()}
    d["step"], d["steps"] = step, steps
    return d


def unigrad_batch(d, logp):
    import unigrad as ug
    B = logp.shape[0]
    extra = {"answer_id": d["answer"], "train_step": torch.full((B,), d["step"]),
             "train_steps": torch.full((B,), d["steps"])}
    return ug.Batch(logp=logp, mask=d["mask"], logp_old=d["logp_old"], logp_ref=d["logp_ref"], reward=d["reward"],
                    group=d["group"], extra=extra)


def unigrad_grad(objective, d):
    logp = d["logp"].clone().requires_grad_(True)
    out = objective.loss(unigrad_batch(d, logp))
    (grad,) = torch.autograd.grad(out.loss, logp)
    return out, grad


def canonical_grad(fn, d, **kwargs):
    logp = d["logp"].clone().requires_grad_(True)
    value = fn(logp, **kwargs)
    (grad,) = torch.autograd.grad(value, logp)
    return value.detach(), grad


def _args(d, *names):
    return {name: d[name] for name in names}


def _check(out, g_ug, value, g_can, d):
    torch.testing.assert_close(g_ug, g_can, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.as_tensor(out.objective, dtype=torch.float64), value, rtol=1e-10, atol=1e-12)
    assert torch.all(g_ug[d["mask"] == 0] == 0) and torch.any(g_can != 0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rewards", ["binary", "continuous"])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_opmd_and_asymre(seed, rewards, tau):
    import unigrad as ug
    d = batch_data(seed, rewards)
    value, g_can = canonical_grad(can.opmd_loss, d, tau=tau, **_args(d, "mask", "logp_old", "reward", "group"))
    _check(*unigrad_grad(ug.method("opmd", tau=tau), d), value, g_can, d)
    value, g_can = canonical_grad(can.asymre_loss, d, tau=tau, **_args(d, "mask", "reward", "group"))
    _check(*unigrad_grad(ug.method("asymre", tau=tau), d), value, g_can, d)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("advantage", ["group", "batch"])
@pytest.mark.parametrize("step", [0, 2])
@pytest.mark.parametrize("kl_estimate", ["controlled", "plain"])
def test_mdpo(seed, advantage, step, kl_estimate):
    import unigrad as ug
    d = batch_data(seed, "continuous", step=step, steps=4)
    value, g_can = canonical_grad(can.mdpo_loss, d, step=step, steps=4, advantage=advantage, kl_estimate=kl_estimate,
                                  **_args(d, "mask", "logp_old", "reward", "group"))
    out, g_ug = unigrad_grad(ug.method("mdpo", advantage=advantage, kl_estimate=kl_estimate), d)
    _check(out, g_ug, value, g_can, d)
    assert out.metrics["mdpo/inverse_step"] == pytest.approx(4 / (4 - step), rel=1e-12)
    assert out.metrics["mdpo/kl_old"] == pytest.approx(can.mdpo_kl(d["logp"], d["mask"], d["logp_old"]), rel=1e-10)


COPO_CASES = [{}, {"k": 20.0, "b": 1.5}, {"forced": False},
              {"entropy_discount": False, "eps_low": 0.1, "eps_high": 0.28},
              {"c": 2.0}]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("params", COPO_CASES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "default")
def test_copo(seed, params):
    import unigrad as ug
    d = batch_data(seed, "binary", noise=0.8)
    names = ("mask", "logp_old", "reward", "group", "answer")
    value, g_can = canonical_grad(can.copo_loss, d, **params, **_args(d, *names))
    _check(*unigrad_grad(ug.method("copo", **params), d), value, g_can, d)


def test_copo_batches_exercise_both_clips():
    """Some tokens are cut by PPO's clip and some by the dual clip (Â < 0, r > c), with canonical helpers only."""
    ppo_cut = dual_cut = 0
    for seed in SEEDS:
        d = batch_data(seed, "binary", noise=0.8)
        a_glob, a_loc, _ = can.copo_advantages(d["reward"], d["group"], d["answer"])
        r = torch.exp(d["logp"] - d["logp_old"])
        for a in (a_glob, a_loc):
            on = d["mask"] > 0
            ppo_cut += int((((a[:, None] > 0) & (r > 1.2)) & on).sum())
            dual_cut += int((((a[:, None] < 0) & (r > 3.0)) & on).sum())
    assert ppo_cut > 0 and dual_cut > 0


def test_copo_on_micro_batches_equals_the_whole_step():
    """A_glob is standardised over the step's prompts: two micro-batches give the whole step's gradient."""
    import unigrad as ug
    d = batch_data(0, "binary", noise=0.8)
    objective = ug.method("copo")
    _, g_whole = unigrad_grad(objective, d)
    logp = d["logp"].clone().requires_grad_(True)
    step = unigrad_batch(d, logp)
    order = torch.argsort(d["group"])                  # a prompt's rollouts stay in one micro-batch
    total = sum(objective.loss(step.micro_batch(rows)).loss for rows in (order[:8], order[8:]))
    (g_micro,) = torch.autograd.grad(total, logp)
    torch.testing.assert_close(g_micro, g_whole, rtol=1e-10, atol=1e-13)


F_CASES = [("js", 1.0, "exponential"), ("kl", 0.5, "exponential"), ("reverse-kl", 2.0, "exponential"),
           ("tv", 1.0, "exponential"), ("js", 1.0, "product"), ("kl", 1.0, "product"), ("tv", 1.0, "product")]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", F_CASES, ids=lambda c: "-".join(map(str, c)))
def test_f_dpg_two_steps_with_the_moving_baseline(seed, case):
    """Step 0 has no baseline; step 1's is the mean of the last ``window`` pseudo-rewards of step 0, in row order."""
    import unigrad as ug
    divergence, beta, target = case
    objective = ug.method("f-dpg", divergence=divergence, beta=beta, target=target, window=5)
    names = ("mask", "logp_old", "logp_ref", "reward", "group")
    first = batch_data(seed, "continuous", step=0)
    kwargs = dict(divergence=divergence, beta=beta, target=target)
    value = can.f_dpg_divergence(first["logp"], **_args(first, *names), **kwargs)
    _, g_can = canonical_grad(can.f_dpg_loss, first, baseline=0.0, **kwargs, **_args(first, *names))
    _check(*unigrad_grad(objective, first), torch.tensor(value, dtype=torch.float64), g_can, first)
    earlier = can.f_dpg_pseudo_rewards(first["logp"], **_args(first, *names), **kwargs)
    second = batch_data(seed + 10, "continuous", step=1)
    value = can.f_dpg_divergence(second["logp"], **_args(second, *names), **kwargs)
    _, g_can = canonical_grad(can.f_dpg_loss, second, baseline=sum(earlier[-5:]) / 5, **kwargs, **_args(second, *names))
    out, g_ug = unigrad_grad(objective, second)
    _check(out, g_ug, torch.tensor(value, dtype=torch.float64), g_can, second)
    assert out.metrics["baseline"] == pytest.approx(sum(earlier[-5:]) / 5, rel=1e-12)


def test_f_dpg_on_micro_batches_equals_the_whole_step():
    import unigrad as ug
    grads = []
    for split in (False, True):
        objective = ug.method("f-dpg", window=6)
        for step in (0, 1):
            d = batch_data(step, "continuous", step=step)
            logp = d["logp"].clone().requires_grad_(True)
            batch = unigrad_batch(d, logp)
            order = torch.argsort(d["group"])
            parts = [batch.micro_batch(order[8:]), batch.micro_batch(order[:8])] if split else [batch]
            (g,) = torch.autograd.grad(sum(objective.loss(p).loss for p in parts), logp)
        grads.append(g)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-13)
