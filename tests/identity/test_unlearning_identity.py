"""Gradient identity for the unlearning methods: ∂(unigrad surrogate)/∂logp == ∂(canonical)/∂logp.

Canonical losses: tests/canonical/unlearning.py (never imports unigrad). Batches: float64, variable
lengths, forget (sign −1) and retain (sign +1) rows shuffled together. IHL is also checked w.r.t.
its second differentiable input, ``extra["logp_top_other"]``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ → `canonical` importable

from canonical import unlearning as can  # noqa: E402

SEEDS = [0, 1, 2]
CASES = [
    ("ga", {}),
    ("grad-diff", {}),
    ("grad-diff", {"retain_weight": 0.5}),
    ("grad-diff", {"retain": "kl"}),
    ("grad-diff", {"retain": "kl", "kl_estimator": "k2", "retain_weight": 2.0}),
    ("npo", {"beta": 0.1}),
    ("npo", {"beta": 1.0}),
    ("npo", {"beta": 0.5, "retain_weight": 1.0}),
    ("ihl", {}),
    ("ihl", {"retain_weight": 0.0}),
    ("safe-align", {"lam": 0.5}),
    ("safe-align", {"lam": 1.0, "loss_threshold": 1.5}),
] + [("flat", {"divergence": d}) for d in sorted(can.FLAT)]
USES_REF = {"npo", "grad-diff"}


def _case_id(case):
    name, params = case
    return name + ("[" + ",".join(f"{k}={v}" for k, v in params.items()) + "]" if params else "")


def unlearning_batch(seed: int, rows: int = 8, max_len: int = 7) -> dict:
    """Forget and retain rows (≥ 2 of each), shuffled; logp, logp_ref < 0 and 0 where masked;
    logp_top_other = log((1 − p(y_t))·u), u ∈ (0, 1), a valid best-competitor log-prob."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (rows,), generator=gen)
    mask = (torch.arange(max_len)[None, :] < lengths[:, None]).to(torch.float64)
    logp = -2.0 * F.softplus(torch.randn(rows, max_len, generator=gen, dtype=torch.float64)) * mask
    logp_ref = -2.0 * F.softplus(torch.randn(rows, max_len, generator=gen, dtype=torch.float64)) * mask
    u = torch.rand(rows, max_len, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    top_other = torch.log(-torch.expm1(logp.clamp(max=-1e-3)) * u)
    sign = torch.tensor([-1.0, 1.0] * (rows // 2), dtype=torch.float64)
    perm = torch.randperm(rows, generator=gen)
    return dict(logp=logp[perm], mask=mask[perm], logp_ref=logp_ref[perm], sign=sign[perm],
                logp_top_other=top_other[perm])


def _needs_ref(name, params):
    return name == "npo" or (name == "grad-diff" and params.get("retain") == "kl")


def _canonical_value_and_grads(name, params, d):
    logp = d["logp"].clone().requires_grad_(True)
    other = d["logp_top_other"].clone().requires_grad_(True)
    kw = {"sign": d["sign"]}
    if _needs_ref(name, params):
        kw["logp_ref"] = d["logp_ref"]
    if name == "ihl":
        kw["logp_top_other"] = other
    value = can.canonical(name, logp, d["mask"], **kw, **params)
    inputs = (logp, other) if name == "ihl" else (logp,)
    grads = torch.autograd.grad(value, inputs)
    return value.detach(), grads


def _unigrad_out_and_grads(name, params, d):
    import unigrad as ug

    logp = d["logp"].clone().requires_grad_(True)
    other = d["logp_top_other"].clone().requires_grad_(True)
    batch = ug.Batch(logp=logp, mask=d["mask"], sign=d["sign"],
                     logp_ref=d["logp_ref"] if _needs_ref(name, params) else None,
                     extra={"logp_top_other": other} if name == "ihl" else {})
    out = ug.method(name, **params).loss(batch)
    inputs = (logp, other) if name == "ihl" else (logp,)
    return out, torch.autograd.grad(out.loss, inputs)


class TestCanonicalSelfChecks:
    @pytest.mark.parametrize("case", [c for c in CASES if c[0] not in ("safe-align",)], ids=_case_id)
    def test_gradient_matches_finite_differences(self, case):
        name, params = case
        d = unlearning_batch(seed=7, rows=4, max_len=4)
        kw = {"sign": d["sign"]}
        if _needs_ref(name, params):
            kw["logp_ref"] = d["logp_ref"]
        if name == "ihl":
            kw["logp_top_other"] = d["logp_top_other"]
        f = lambda lp: can.canonical(name, lp, d["mask"], **kw, **params)  # noqa: E731
        assert torch.autograd.gradcheck(f, (d["logp"].clone().requires_grad_(True),), eps=1e-6, atol=1e-7)

    def test_npo_small_beta_is_sequence_ascent(self):
        """β → 0: −(2/β) log σ(−βh) = (2/β) log 2 + h + O(β): the gradient is GA on sequence sums."""
        d = unlearning_batch(3)
        logp = d["logp"].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(can.npo_loss(logp, d["mask"], d["sign"], d["logp_ref"], beta=1e-6), logp)
        forget = (d["sign"] < 0).double()
        expect = forget[:, None] * d["mask"] / forget.sum()
        # a limit, not an identity: the gradient is O(β) = O(1e-6) away from GA's, so rtol 1e-5, not 1e-10
        torch.testing.assert_close(g, expect, rtol=1e-5, atol=1e-9)

    def test_hand_computed_ihl(self):
        logp = torch.log(torch.tensor([[0.5, 0.2], [0.9, 0.1]], dtype=torch.float64))
        other = torch.log(torch.tensor([[0.3, 0.6], [0.05, 0.5]], dtype=torch.float64))
        mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
        sign = torch.tensor([-1.0, 1.0], dtype=torch.float64)
        value = can.ihl_loss(logp, mask, sign, other, retain_weight=0.0)
        torch.testing.assert_close(value, torch.tensor(((1 + 0.5 - 0.3) + (1 + 0.2 - 0.6)) / 2, dtype=torch.float64))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_gradient_identity(case, seed):
    name, params = case
    d = unlearning_batch(seed)
    can_value, g_can = _canonical_value_and_grads(name, params, d)
    out, g_ug = _unigrad_out_and_grads(name, params, d)
    for a, b in zip(g_ug, g_can):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.as_tensor(out.objective, dtype=torch.float64), can_value, rtol=1e-10, atol=1e-12)
    masked = d["mask"] == 0
    for g in (*g_ug, *g_can):
        assert torch.all(g[masked] == 0), "non-zero gradient at a masked position"


def test_safe_align_gate_bites():
    """The threshold must actually switch some red rows off in the gated case (else that case tests nothing)."""
    d = unlearning_batch(0)
    nll = -(d["logp"] * d["mask"]).sum(1) / d["mask"].sum(1)
    red = d["sign"] < 0
    assert (nll[red] < 1.5).any() and (nll[red] >= 1.5).any()


def test_ihl_needs_its_extra_field():
    import unigrad as ug
    d = unlearning_batch(0)
    batch = ug.Batch(logp=d["logp"], mask=d["mask"], sign=d["sign"])
    assert "logp_top_other" in ug.method("ihl").requires
    with pytest.raises(ValueError, match="logp_top_other"):
        ug.method("ihl").loss(batch)


def test_retain_kl_refuses_k1():
    import unigrad as ug
    with pytest.raises(ValueError, match="k1"):
        ug.method("grad-diff", retain="kl", kl_estimator="k1")


def _wrong_ihl(logp, mask, sign, other, mutation):
    """IHL's canonical with one plausible mistake (the retain NLL as in the canonical)."""
    forget = (sign < 0).to(logp.dtype)[:, None] * mask
    if mutation == "log-probs":          # the hinge on log-probabilities instead of probabilities
        per_token = 1 + logp - other
    elif mutation == "no-competitor":    # the best competing token's term dropped
        per_token = 1 + torch.exp(logp)
    else:
        per_token = 1 + torch.exp(logp) - torch.exp(other)
    if mutation == "all-tokens":         # the forget mean over every token of the batch
        hinge = (per_token * forget).sum() / mask.sum()
    else:
        hinge = (per_token * forget).sum() / forget.sum()
    return hinge + can.nll_retain(logp, mask, sign)


def test_identity_check_can_fail():
    """Wrong canonicals must NOT match: NPO with β doubled; IHL on log-probs, without its competing
    token, or normalised by every token (gradients w.r.t. both of IHL's inputs)."""
    d = unlearning_batch(0)
    _, (g_wrong,) = _canonical_value_and_grads("npo", {"beta": 0.2}, d)
    _, (g_ug,) = _unigrad_out_and_grads("npo", {"beta": 0.1}, d)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(g_ug, g_wrong, rtol=1e-6, atol=1e-12)
    _, g_ihl = _unigrad_out_and_grads("ihl", {}, d)
    _, g_right = _canonical_value_and_grads("ihl", {}, d)
    for a, b in zip(g_ihl, g_right):                     # the unmutated check passes ...
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for mutation in ("log-probs", "no-competitor", "all-tokens"):   # ... and each mutation fails it
        logp = d["logp"].clone().requires_grad_(True)
        other = d["logp_top_other"].clone().requires_grad_(True)
        g_wrong = torch.autograd.grad(_wrong_ihl(logp, d["mask"], d["sign"], other, mutation), (logp, other),
                                      allow_unused=True)
        g_wrong = [torch.zeros_like(logp) if g is None else g for g in g_wrong]
        with pytest.raises(AssertionError):
            for a, b in zip(g_ihl, g_wrong):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)
