"""Gradient identity: ∂(unigrad surrogate)/∂logp == ∂(canonical paper loss)/∂logp.

The canonical losses (tests/canonical/preference.py) are written from the papers and never import
unigrad. Each case builds a random float64 batch (shuffled rows, non-contiguous group ids, variable
lengths), differentiates both sides on separate leaf copies of logp and compares. The first block
of tests checks the canonical side on its own (finite differences, limits, known reductions).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ → `canonical` importable
sys.path.insert(0, str(Path(__file__).resolve().parent))       # tests/identity → `_batches`

from _batches import random_pair_batch, random_sft_batch  # noqa: E402
from canonical import preference as can  # noqa: E402

SEEDS = [0, 1, 2]

# (unigrad method name, parameters) — the same keywords go to ug.method and to the canonical loss.
CASES = [
    ("sft", {}),
    ("dpo", {"beta": 0.1}),
    ("dpo", {"beta": 0.5}),
    ("ipo", {"tau": 0.1}),
    ("ipo", {"tau": 1.0}),
    ("simpo", {"beta": 2.0, "gamma": 0.5}),
    ("simpo", {"beta": 2.0, "gamma": 0.0}),
    ("orpo", {"lam": 0.1}),
    ("orpo", {"lam": 1.0}),
    ("f-dpo", {"beta": 0.1, "divergence": "reverse_kl"}),
    ("f-dpo", {"beta": 0.1, "divergence": "forward_kl"}),
    ("f-dpo", {"beta": 0.1, "divergence": "js"}),
    ("f-dpo", {"beta": 0.1, "divergence": "alpha", "alpha": 0.5}),
]
USES_REF = {"dpo", "ipo", "f-dpo"}


def _case_id(case):
    name, params = case
    return name + ("[" + ",".join(f"{k}={v}" for k, v in params.items()) + "]" if params else "")


def _data(name: str, seed: int) -> dict:
    return random_sft_batch(seed) if name == "sft" else random_pair_batch(seed)


def _canonical_kwargs(name: str, d: dict) -> dict:
    if name == "sft":
        return {}
    kw = {"group": d["group"], "sign": d["sign"]}
    if name in USES_REF:
        kw["logp_ref"] = d["logp_ref"]
    return kw


def _canonical_value_and_grad(name, params, d):
    logp = d["logp"].clone().requires_grad_(True)
    value = can.canonical(name, logp, d["mask"], **_canonical_kwargs(name, d), **params)
    (grad,) = torch.autograd.grad(value, logp)
    return value.detach(), grad


def _unigrad_out_and_grad(name, params, d):
    import unigrad as ug

    logp = d["logp"].clone().requires_grad_(True)
    if name == "sft":
        batch = ug.Batch(logp=logp, mask=d["mask"])
    else:
        batch = ug.Batch(logp=logp, mask=d["mask"], group=d["group"], sign=d["sign"],
                         logp_ref=d["logp_ref"] if name in USES_REF else None)
    out = ug.method(name, **params).loss(batch)
    (grad,) = torch.autograd.grad(out.loss, logp)
    return out, grad


# =========================================================================== canonical self-checks
class TestCanonicalSelfChecks:
    """The reference side must itself be right: checked without unigrad."""

    @pytest.mark.parametrize("case", CASES, ids=_case_id)
    def test_gradient_matches_finite_differences(self, case):
        name, params = case
        d = _data(name, seed=7)
        kw = _canonical_kwargs(name, d)
        f = lambda lp: can.canonical(name, lp, d["mask"], **kw, **params)  # noqa: E731
        assert torch.autograd.gradcheck(f, (d["logp"].clone().requires_grad_(True),), eps=1e-6, atol=1e-7)

    @pytest.mark.parametrize("case", CASES, ids=_case_id)
    def test_row_order_and_group_ids_do_not_matter(self, case):
        name, params = case
        d = _data(name, seed=3)
        v = can.canonical(name, d["logp"], d["mask"], **_canonical_kwargs(name, d), **params)
        perm = torch.randperm(d["logp"].shape[0], generator=torch.Generator().manual_seed(5))
        e = {k: t[perm] for k, t in d.items()}
        if "group" in e:
            e["group"] = e["group"] * 7 + 1000  # relabel the pairs
        w = can.canonical(name, e["logp"], e["mask"], **_canonical_kwargs(name, e), **params)
        torch.testing.assert_close(v, w, rtol=1e-12, atol=0)

    def test_hand_computed_single_pair(self):
        # rows: [rejected, chosen], lengths 2 and 1, group id 42
        logp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], dtype=torch.float64)
        ref = torch.tensor([[-1.5, -1.0], [-1.0, 0.0]], dtype=torch.float64)
        mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
        group, sign = torch.tensor([42, 42]), torch.tensor([-1.0, 1.0], dtype=torch.float64)
        h_w, h_l = -0.5 - (-1.0), (-3.0) - (-2.5)      # 0.5, -0.5
        beta = 0.5
        expect = -torch.log(torch.sigmoid(torch.tensor(beta * (h_w - h_l), dtype=torch.float64)))
        torch.testing.assert_close(can.dpo_loss(logp, mask, ref, group, sign, beta=beta), expect)
        tau = 0.25
        torch.testing.assert_close(can.ipo_loss(logp, mask, ref, group, sign, tau=tau),
                                   torch.tensor((h_w - h_l - 1 / (2 * tau)) ** 2, dtype=torch.float64))
        lw, ll = -0.5, -1.5                              # length-normalised
        torch.testing.assert_close(can.simpo_loss(logp, mask, group, sign, beta=2.0, gamma=0.3),
                                   -F.logsigmoid(torch.tensor(2.0 * lw - 2.0 * ll - 0.3, dtype=torch.float64)))
        lo = lambda m: torch.log(torch.exp(torch.tensor(m, dtype=torch.float64)) / (1 - torch.exp(torch.tensor(m, dtype=torch.float64))))  # noqa: E731
        expect_orpo = -lw + 0.7 * -F.logsigmoid(lo(lw) - lo(ll))
        torch.testing.assert_close(can.orpo_loss(logp, mask, group, sign, lam=0.7), expect_orpo)
        torch.testing.assert_close(can.sft_loss(logp, mask), torch.tensor(3.5 / 3, dtype=torch.float64))

    @pytest.mark.parametrize("seed", SEEDS)
    def test_reverse_kl_f_dpo_is_dpo(self, seed):
        d = random_pair_batch(seed)
        args = (d["logp"], d["mask"], d["logp_ref"], d["group"], d["sign"])
        torch.testing.assert_close(can.f_dpo_loss(*args, beta=0.3, divergence="reverse_kl"),
                                   can.dpo_loss(*args, beta=0.3), rtol=1e-13, atol=0)

    @pytest.mark.parametrize("seed", SEEDS)
    def test_alpha_divergence_limits(self, seed):
        """(1 − u^{−α})/α → log u as α → 0 (reverse KL up to the constant 1, which cancels in the
        pair difference) and → 1 − 1/u as α → 1 (forward KL up to the constant 1)."""
        d = random_pair_batch(seed)
        args = (d["logp"], d["mask"], d["logp_ref"], d["group"], d["sign"])
        near0 = can.f_dpo_loss(*args, beta=0.3, divergence="alpha", alpha=1e-7)
        near1 = can.f_dpo_loss(*args, beta=0.3, divergence="alpha", alpha=1 - 1e-7)
        # a limit, not an identity: the error is O(α) = O(1e-7) in the pair logit, so rtol 1e-5, not 1e-10
        torch.testing.assert_close(near0, can.f_dpo_loss(*args, beta=0.3, divergence="reverse_kl"), rtol=1e-5, atol=0)
        torch.testing.assert_close(near1, can.f_dpo_loss(*args, beta=0.3, divergence="forward_kl"), rtol=1e-5, atol=0)

    @pytest.mark.parametrize("seed", SEEDS)
    def test_js_closed_form(self, seed):
        """log(2u/(1+u)) = log 2 + h − softplus(h) with h = log u: the pair logit is
        β(h_w − h_l) − β(softplus(h_w) − softplus(h_l))."""
        d = random_pair_batch(seed)
        h = can.seq_logp(d["logp"], d["mask"]) - can.seq_logp(d["logp_ref"], d["mask"])
        w, l = can.pair_indices(d["group"], d["sign"])
        beta = 0.1
        expect = -F.logsigmoid(beta * (h[w] - h[l]) - beta * (F.softplus(h[w]) - F.softplus(h[l]))).mean()
        got = can.f_dpo_loss(d["logp"], d["mask"], d["logp_ref"], d["group"], d["sign"], beta=beta, divergence="js")
        torch.testing.assert_close(got, expect, rtol=1e-12, atol=0)


# =========================================================================== the identity itself
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_gradient_identity(case, seed):
    name, params = case
    d = _data(name, seed)
    can_value, g_can = _canonical_value_and_grad(name, params, d)
    out, g_ug = _unigrad_out_and_grad(name, params, d)

    torch.testing.assert_close(g_ug, g_can, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.as_tensor(out.objective, dtype=torch.float64).detach(), can_value,
                               rtol=1e-10, atol=1e-12)
    masked = d["mask"] == 0
    assert torch.all(g_ug[masked] == 0), "unigrad gradient is non-zero at masked positions"
    assert torch.all(g_can[masked] == 0)


def test_identity_check_can_fail():
    """A deliberately wrong canonical (DPO with β doubled) must NOT match unigrad's DPO."""
    d = random_pair_batch(0)
    _, g_wrong = _canonical_value_and_grad("dpo", {"beta": 0.2}, d)
    _, g_ug = _unigrad_out_and_grad("dpo", {"beta": 0.1}, d)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(g_ug, g_wrong, rtol=1e-6, atol=1e-12)
