"""Gradient identity for the offline methods (ASFT, DDO, A-LoL and its variants).

Canonical losses: tests/canonical/offline.py (never imports unigrad). float64 batches, shuffled
rows, variable lengths; the gradient w.r.t. logp and the objective value must match, masked
positions get zero gradient.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ → `canonical` importable
sys.path.insert(0, str(Path(__file__).resolve().parent))       # tests/identity → `_batches`

from _batches import random_pair_batch  # noqa: E402
from canonical import offline as can  # noqa: E402

SEEDS = [0, 1, 2]
CASES = [
    ("asft", {"lam": 0.1}),
    ("asft", {"lam": 1.0}),
    ("ddo", {"beta": 0.1, "alpha": 0.5}),
    ("ddo", {"beta": 1.0, "alpha": 1.0}),
    ("a-lol", {"clip": 0.9}),
    ("a-lol", {"clip": 0.2}),
    ("a-lol-ref-free", {}),
    ("a-lol-seq", {"clip": 0.9}),
    ("a-lol-seq", {"clip": 0.2}),
    ("a-lol-kl", {"kl_beta": 0.1}),
]


def _case_id(case):
    name, params = case
    return name + ("[" + ",".join(f"{k}={v}" for k, v in params.items()) + "]" if params else "")


def _data(seed: int, value: bool = True) -> dict:
    """A shuffled pair batch (reused for every method: ASFT reads pairs, DDO reads sign as
    data/reference, A-LoL reads reward/value/group) with a reward and a per-prompt value.
    logp is moved to logp_ref + small noise so that the clamp of π/π_ref binds for some rows and
    tokens but not all."""
    d = random_pair_batch(seed, n_pairs=4, max_len=6)
    gen = torch.Generator().manual_seed(100 + seed)
    d["logp"] = (d["logp_ref"] + 0.4 * torch.randn(d["logp"].shape, generator=gen, dtype=torch.float64)).clamp(max=-1e-3) * d["mask"]
    B = d["logp"].shape[0]
    d["reward"] = torch.rand(B, generator=gen, dtype=torch.float64)
    d["value"] = torch.rand(B, generator=gen, dtype=torch.float64) if value else None
    return d


def _canonical(name, params, d, logp):
    if name == "asft":
        return can.asft_loss(logp, d["mask"], d["group"], d["sign"], **params)
    if name == "ddo":
        return can.ddo_loss(logp, d["mask"], d["sign"], d["logp_ref"], **params)
    return can.a_lol_loss(logp, d["mask"], d["logp_ref"], d["reward"], value=d["value"], group=d["group"],
                          variant=name, **params)


def _canonical_value_and_grad(name, params, d):
    logp = d["logp"].clone().requires_grad_(True)
    value = _canonical(name, params, d, logp)
    (grad,) = torch.autograd.grad(value, logp)
    return value.detach(), grad


def _unigrad_out_and_grad(name, params, d):
    import unigrad as ug

    logp = d["logp"].clone().requires_grad_(True)
    extra = {"value": d["value"]} if d["value"] is not None else {}
    batch = ug.Batch(logp=logp, mask=d["mask"], group=d["group"], sign=d["sign"], logp_ref=d["logp_ref"],
                     reward=d["reward"], extra=extra)
    out = ug.method(name, **params).loss(batch)
    (grad,) = torch.autograd.grad(out.loss, logp)
    return out, grad


class TestCanonicalSelfChecks:
    @pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("asft", "ddo")], ids=_case_id)
    def test_gradient_matches_finite_differences(self, case):
        name, params = case
        d = _data(7)
        f = lambda lp: _canonical(name, params, d, lp)  # noqa: E731
        assert torch.autograd.gradcheck(f, (d["logp"].clone().requires_grad_(True),), eps=1e-6, atol=1e-7)

    def test_asft_closed_form(self):
        """−(1+λ) ℓ̄(y_w) − λ log(1 − p(y_l)), mean over pairs (σ(log odds) = p)."""
        d = _data(1)
        lam = 0.3
        mean = (d["logp"] * d["mask"]).sum(1) / d["mask"].sum(1)
        w, l = d["sign"] > 0, d["sign"] < 0
        # pairs share group: order chosen/rejected by group id to pair them up
        gw, gl = d["group"][w].argsort(), d["group"][l].argsort()
        expect = (-(1 + lam) * mean[w][gw] - lam * torch.log(1 - torch.exp(mean[l][gl]))).mean()
        torch.testing.assert_close(can.asft_loss(d["logp"], d["mask"], d["group"], d["sign"], lam=lam), expect)

    def test_clamp_binds_somewhere(self):
        """The batches must exercise the clamp (else the a-lol cases would not test it)."""
        d = _data(0)
        r_seq = torch.exp(((d["logp"] - d["logp_ref"]) * d["mask"]).sum(1))
        r_tok = torch.exp(d["logp"] - d["logp_ref"])[d["mask"] > 0]
        assert ((r_seq < 0.8) | (r_seq > 1.2)).any() and ((r_tok < 0.8) | (r_tok > 1.2)).any()
        A = d["reward"] - d["value"]
        assert (A > 0).any() and (A <= 0).any()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_gradient_identity(case, seed):
    name, params = case
    d = _data(seed)
    can_value, g_can = _canonical_value_and_grad(name, params, d)
    out, g_ug = _unigrad_out_and_grad(name, params, d)
    torch.testing.assert_close(g_ug, g_can, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.as_tensor(out.objective, dtype=torch.float64), can_value, rtol=1e-10, atol=1e-12)
    masked = d["mask"] == 0
    assert torch.all(g_ug[masked] == 0) and torch.all(g_can[masked] == 0)


@pytest.mark.parametrize("name", ["a-lol", "a-lol-seq"])
def test_a_lol_group_mean_baseline(name):
    """Without extra['value'], V(x) is the mean reward of the rows sharing the prompt's group."""
    d = _data(2, value=False)
    can_value, g_can = _canonical_value_and_grad(name, {}, d)
    out, g_ug = _unigrad_out_and_grad(name, {}, d)
    torch.testing.assert_close(g_ug, g_can, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.as_tensor(out.objective, dtype=torch.float64), can_value, rtol=1e-10, atol=1e-12)


def test_identity_check_can_fail():
    """Wrong canonicals must NOT match: A-LoL with a different clip; DDO with α doubled."""
    d = _data(0)
    _, g_wrong = _canonical_value_and_grad("a-lol", {"clip": 0.1}, d)
    _, g_ug = _unigrad_out_and_grad("a-lol", {"clip": 0.9}, d)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(g_ug, g_wrong, rtol=1e-6, atol=1e-12)
    _, g_wrong = _canonical_value_and_grad("ddo", {"beta": 0.1, "alpha": 1.0}, d)
    _, g_ug = _unigrad_out_and_grad("ddo", {"beta": 0.1, "alpha": 0.5}, d)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(g_ug, g_wrong, rtol=1e-6, atol=1e-12)
