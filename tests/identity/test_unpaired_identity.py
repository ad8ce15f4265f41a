"""Gradient identity for KTO, BCO and CPO against the papers' losses (tests/canonical/unpaired.py), float64.

KTO's batch holds the examples and, for each, a mismatched row (its prompt with another completion)
marked ``extra["mismatched"]``; the canonical loss gets those rows separately and detaches z0, so the
gradient on the mismatched rows must be 0 on both sides. BCO's δ is checked over two steps.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _batches import random_pair_batch  # noqa: E402
from canonical import unpaired as can  # noqa: E402

TIGHT = dict(rtol=1e-10, atol=1e-12)


def _rows(seed: int, n: int, max_len: int = 7, positive_kl: bool = False) -> dict:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=gen)
    mask = (torch.arange(max_len)[None] < lengths[:, None]).to(torch.float64)
    logp = -2.0 * F.softplus(torch.randn(n, max_len, generator=gen, dtype=torch.float64)) * mask
    ref = -2.0 * F.softplus(torch.randn(n, max_len, generator=gen, dtype=torch.float64)) * mask
    if positive_kl:
        ref = ref - 0.5 * mask
    label = torch.where(torch.rand(n, generator=gen) < 0.5, 1.0, -1.0).to(torch.float64)
    label[0], label[1] = 1.0, -1.0
    return dict(logp=logp, mask=mask, logp_ref=ref, label=label)


def _kto_case(seed: int, positive_kl: bool):
    """Examples then their mismatched rows, interleaved in a random order."""
    ex, kl = _rows(seed, 5), _rows(seed + 100, 5, positive_kl=positive_kl)
    n = 5
    perm = torch.randperm(2 * n, generator=torch.Generator().manual_seed(seed))
    cat = {k: torch.cat([ex[k], kl[k]])[perm] for k in ("logp", "mask", "logp_ref")}
    mismatched = torch.cat([torch.zeros(n), torch.ones(n)])[perm].to(torch.float64)
    sign = torch.cat([ex["label"], torch.zeros(n, dtype=torch.float64)])[perm]
    return cat, mismatched, sign, perm


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("params", [dict(beta=0.1, lambda_d=1.0, lambda_u=1.0), dict(beta=0.7, lambda_d=1.3, lambda_u=0.6)])
@pytest.mark.parametrize("positive_kl", [False, True])
def test_kto_gradient_identity(seed, params, positive_kl):
    import unigrad as ug

    d, mismatched, sign, perm = _kto_case(seed, positive_kl)
    ex_rows = (mismatched == 0).nonzero().flatten()
    kl_rows = (mismatched == 1).nonzero().flatten()

    logp = d["logp"].clone().requires_grad_(True)
    value = can.kto_loss(logp[ex_rows], d["mask"][ex_rows], d["logp_ref"][ex_rows], sign[ex_rows],
                         logp[kl_rows], d["logp_ref"][kl_rows], d["mask"][kl_rows], **params)
    (expected,) = torch.autograd.grad(value, logp)

    logp2 = d["logp"].clone().requires_grad_(True)
    batch = ug.Batch(logp=logp2, mask=d["mask"], logp_ref=d["logp_ref"], group=torch.arange(10), sign=sign,
                     extra={"mismatched": mismatched})
    out = ug.method("kto", **params).loss(batch)
    (got,) = torch.autograd.grad(out.loss, logp2)
    torch.testing.assert_close(got, expected, **TIGHT)
    assert torch.all(got[kl_rows] == 0)
    torch.testing.assert_close(out.objective, value.detach(), **TIGHT)
    h = ((d["logp"] - d["logp_ref"]) * d["mask"]).sum(1)
    assert out.metrics["kl"] == pytest.approx(max(float(h[kl_rows].mean()), 0.0), rel=1e-12, abs=1e-15)


def test_kto_is_mean_over_examples_across_micro_batches():
    """Counts are the step's examples: two micro-batches, each with its own examples and their
    mismatched rows and the same z0, sum to the whole batch's gradient."""
    import unigrad as ug

    d, mismatched, sign, _ = _kto_case(3, positive_kl=False)
    d["logp_ref"] = d["logp"] + 0.0                  # z0 = 0 in every micro-batch: the split cannot change it
    step = ug.Batch(logp=d["logp"], mask=d["mask"], logp_ref=d["logp_ref"], group=torch.arange(10), sign=sign,
                    extra={"mismatched": mismatched})
    objective = ug.method("kto", beta=0.3)
    logp = d["logp"].clone().requires_grad_(True)
    (whole,) = torch.autograd.grad(objective.loss(step.replace(logp=logp)).loss, logp)
    logp2 = d["logp"].clone().requires_grad_(True)
    total = 0.0
    for rows in (torch.arange(0, 4), torch.arange(4, 10)):
        part = step.micro_batch(rows).replace(logp=logp2[rows])
        total = total + objective.loss(part).loss
    (split,) = torch.autograd.grad(total, logp2)
    torch.testing.assert_close(split, whole, **TIGHT)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_bco_gradient_identity_and_delta_over_two_steps(beta):
    """δ at step 1 is the mean of step 1's rewards; at step 2 the mean of both steps' rewards (step 2's
    at the current log-probs); evaluating step 1 twice does not count its rewards twice."""
    import unigrad as ug

    objective = ug.method("bco", beta=beta)
    running = can.BCORunningMean()
    for step_seed in (11, 12):
        d = _rows(step_seed, 6)
        r = (beta * ((d["logp"] - d["logp_ref"]) * d["mask"]).sum(1)).tolist()
        delta = running.update(r)
        logp = d["logp"].clone().requires_grad_(True)
        value = can.bco_loss(logp, d["mask"], d["logp_ref"], d["label"], beta=beta, delta=delta)
        (expected,) = torch.autograd.grad(value, logp)
        batch = ug.Batch(logp=d["logp"], mask=d["mask"], logp_ref=d["logp_ref"], group=torch.arange(6), sign=d["label"])
        for _ in range(2):                                  # e.g. extragradient's second evaluation of the step
            logp2 = d["logp"].clone().requires_grad_(True)
            out = objective.loss(_same_step(batch, logp2))
            (got,) = torch.autograd.grad(out.loss, logp2)
            torch.testing.assert_close(got, expected, **TIGHT)
            torch.testing.assert_close(out.objective, value.detach(), **TIGHT)
            assert out.metrics["delta"] == pytest.approx(delta, rel=1e-12)


def _same_step(step, logp):
    """The whole step as one micro-batch of itself, moved as the loop moves it (a new ``Batch.step``
    object on every evaluation, holding the same tensors)."""
    return step.micro_batch(torch.arange(step.logp.shape[0])).replace(logp=logp).to_device("cpu")


def test_bco_delta_survives_checkpoint_and_ignores_evaluation():
    import unigrad as ug

    a, b = _rows(21, 6), _rows(22, 6)
    steps = [ug.Batch(logp=x["logp"], mask=x["mask"], logp_ref=x["logp_ref"], sign=x["label"]) for x in (a, b)]
    uninterrupted = ug.method("bco")
    deltas = [uninterrupted.loss(_same_step(step, step.logp)).metrics["delta"] for step in steps]
    first = ug.method("bco")
    first.loss(_same_step(steps[0], steps[0].logp))
    with torch.no_grad():                                   # held-out evaluation reads δ only
        first.loss(steps[1])
    saved = first.advantage.running.checkpoint_state()
    resumed = ug.method("bco")
    resumed.advantage.running.restore_state(saved)
    out = resumed.loss(_same_step(steps[1], steps[1].logp))
    assert out.metrics["delta"] == deltas[1] and deltas[0] != deltas[1]
    assert resumed.advantage.running.checkpoint_state() == uninterrupted.advantage.running.checkpoint_state()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("params", [dict(beta=0.1, alpha=1.0), dict(beta=0.5, alpha=0.3)])
def test_cpo_gradient_identity(seed, params):
    import unigrad as ug

    d = random_pair_batch(seed)
    logp = d["logp"].clone().requires_grad_(True)
    value = can.cpo_loss(logp, d["mask"], d["group"], d["sign"], **params)
    (expected,) = torch.autograd.grad(value, logp)
    logp2 = d["logp"].clone().requires_grad_(True)
    out = ug.method("cpo", **params).loss(ug.Batch(logp=logp2, mask=d["mask"], group=d["group"], sign=d["sign"]))
    (got,) = torch.autograd.grad(out.loss, logp2)
    torch.testing.assert_close(got, expected, **TIGHT)
    torch.testing.assert_close(out.objective, value.detach(), **TIGHT)


def test_canonical_kto_and_bco_by_hand():
    """One desirable and one undesirable row of one token each, one mismatched row."""
    one = torch.ones(1, 1, dtype=torch.float64)
    logp, ref = torch.tensor([[-1.0], [-2.0]], dtype=torch.float64), torch.tensor([[-1.5], [-1.0]], dtype=torch.float64)
    mask, label = torch.ones(2, 1, dtype=torch.float64), torch.tensor([1.0, -1.0], dtype=torch.float64)
    kl, kl_ref = -0.2 * one, -0.5 * one                                   # z0 = 0.3
    s = lambda x: 1 / (1 + torch.exp(torch.tensor(-x, dtype=torch.float64)))  # noqa: E731
    expect = ((1 - s(0.5 * (0.5 - 0.3))) + (1 - s(0.5 * (0.3 + 1.0)))) / 2
    got = can.kto_loss(logp, mask, ref, label, kl, kl_ref, one, beta=0.5, lambda_d=1.0, lambda_u=1.0)
    torch.testing.assert_close(got, expect)
    delta = 0.1
    expect = -(torch.log(s(0.5 * 0.5 - delta)) + torch.log(1 - s(0.5 * -1.0 - delta))) / 2
    torch.testing.assert_close(can.bco_loss(logp, mask, ref, label, beta=0.5, delta=delta), expect)
