"""Gradient identity for the distillation objectives (kd-forward, kd-reverse, kd-js, bd-kd, sinkd, pld).

Canonical losses: tests/canonical/distill.py (never imports unigrad), float64. Two checks per case:
- from full-vocabulary student logits: unigrad's inputs are built by ``unigrad.logprobs.support_logprobs``
  (the function under every engine chunk) at the teacher's top-k; the canonical works on softmax
  probabilities over the whole vocabulary, coarse-grained or renormalised on the top-k by itself.
  Gradients w.r.t. the logits and the values must agree (float64, rtol 1e-10).
- from the category log-prob tensors themselves (the leaves with grad the objectives read).
Masked tokens get exactly zero gradient. ``test_identity_check_can_fail`` shows wrong canonicals fail.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ → `canonical` importable

from canonical import distill as can  # noqa: E402

B, T, V = 3, 5, 11
SEEDS = [0, 1, 2]
KS = [None, 4]
KD_CASES = [
    ("kd-forward", {}, "forward", {}),
    ("kd-reverse", {}, "reverse", {}),
    ("kd-js", {"beta": 0.5}, "js", {"beta": 0.5}),
    ("kd-js", {"beta": 0.1}, "js", {"beta": 0.1}),
    ("kd-js", {"beta": 0.9}, "js", {"beta": 0.9}),
    ("kd-js", {"beta": 0.0}, "forward", {}),
    ("kd-js", {"beta": 1.0}, "reverse", {}),
    ("bd-kd", {}, "bd", {"delta": 2.0}),
    ("bd-kd", {"delta": 5.0}, "bd", {"delta": 5.0}),
]
SUPPORTS = ["bucket", "renormalise"]


def _data(seed: int):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T, V, generator=gen, dtype=torch.float64) * 2.0
    teacher = torch.randn(B, T, V, generator=gen, dtype=torch.float64) * 2.5
    lengths = torch.tensor([T, 3, 1])[torch.randperm(B, generator=gen)]
    mask = (torch.arange(T)[None] < lengths[:, None]).to(torch.float64)
    target = torch.randint(0, V, (B, T), generator=gen)
    # make y_t sometimes the teacher's argmax, sometimes outside its top-k
    target[0, 0] = teacher[0, 0].argmax()
    return student, teacher, mask, target


def _fields(student_logits, teacher_logits, target, k):
    """The objectives' extra fields from logits, through unigrad.logprobs.support_logprobs (all positions)."""
    from unigrad.logprobs import support_logprobs

    flat_s = student_logits.reshape(B * T, V)
    flat_t = teacher_logits.reshape(B * T, V)
    y = target.reshape(-1)
    idx = None if k is None else torch.topk(flat_t, k, -1).indices
    with torch.no_grad():
        t = support_logprobs(flat_t, idx, y)
    s = support_logprobs(flat_s, idx, y)
    shape = lambda x: x.reshape(B, T, *x.shape[1:])  # noqa: E731
    in_topk = (torch.nn.functional.one_hot(y, V).bool() if idx is None else idx == y[:, None])
    fields = {"student_logp_topk": shape(s["topk"]), "teacher_logp_topk": shape(t["topk"]),
              "student_logp_rest": shape(s["rest"]), "teacher_logp_rest": shape(t["rest"]),
              "student_logp_tail": shape(s["tail"]), "student_logp_target": shape(s["target"]),
              "teacher_logp_target": shape(t["target"]), "target_in_topk": shape(in_topk)}
    if idx is not None:
        fields["topk_indices"] = shape(idx)
    return fields


def _batch(fields, mask):
    import unigrad as ug
    return ug.Batch(logp=torch.zeros(B, T, dtype=torch.float64), mask=mask, extra=fields)


def _unigrad_from_logits(name, params, student, teacher, mask, target, k):
    import unigrad as ug
    logits = student.clone().requires_grad_(True)
    out = ug.method(name, **params).loss(_batch(_fields(logits, teacher, target, k), mask))
    (grad,) = torch.autograd.grad(out.loss, logits)
    return out, grad


def _canonical_from_logits(fn):
    def run(student):
        logits = student.clone().requires_grad_(True)
        value = fn(logits)
        (grad,) = torch.autograd.grad(value, logits)
        return value.detach(), grad
    return run


def _assert_identity(out, grad, can_value, can_grad, mask):
    torch.testing.assert_close(grad, can_grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.objective.to(torch.float64), can_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.loss.detach().to(torch.float64), can_value, rtol=1e-10, atol=1e-12)
    masked = mask == 0
    assert torch.all(grad[masked] == 0) and torch.all(can_grad[masked] == 0), "gradient at a masked token"


def _kd_id(case):
    name, params, _, _ = case
    return name + ("[" + ",".join(f"{k}={v}" for k, v in params.items()) + "]" if params else "")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", KS, ids=lambda k: f"k={k}")
@pytest.mark.parametrize("support", SUPPORTS)
@pytest.mark.parametrize("case", KD_CASES, ids=_kd_id)
def test_kd_gradient_identity_from_logits(case, support, k, seed):
    name, params, kind, can_params = case
    student, teacher, mask, target = _data(seed)
    out, grad = _unigrad_from_logits(name, {**params, "support": support}, student, teacher, mask, target, k)
    can_value, can_grad = _canonical_from_logits(
        lambda s: can.kd_from_logits(s, teacher, mask, k, kind, support, **can_params))(student)
    _assert_identity(out, grad, can_value, can_grad, mask)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("support", SUPPORTS)
@pytest.mark.parametrize("case", KD_CASES, ids=_kd_id)
def test_kd_gradient_identity_wrt_student_logprobs(case, support, seed):
    """Gradients w.r.t. the student's category log-prob leaves (top-k and rest bucket), k = 4."""
    import unigrad as ug
    name, params, kind, can_params = case
    student, teacher, mask, target = _data(seed)
    fields = {key: value.detach() for key, value in _fields(student, teacher, target, 4).items()}
    s_topk = fields["student_logp_topk"].clone().requires_grad_(True)
    s_rest = fields["student_logp_rest"].clone().requires_grad_(True)
    out = ug.method(name, **params, support=support).loss(
        _batch({**fields, "student_logp_topk": s_topk, "student_logp_rest": s_rest}, mask))
    g_ug = torch.autograd.grad(out.loss, (s_topk, s_rest), allow_unused=True)
    c_topk = fields["student_logp_topk"].clone().requires_grad_(True)
    c_rest = fields["student_logp_rest"].clone().requires_grad_(True)
    value = can.kd_from_categories(c_topk, fields["teacher_logp_topk"], c_rest, fields["teacher_logp_rest"],
                                   mask, kind, support, **can_params)
    g_can = torch.autograd.grad(value, (c_topk, c_rest), allow_unused=True)
    for a, b in zip(g_ug, g_can):
        a = torch.zeros_like(s_rest) if a is None else a
        b = torch.zeros_like(s_rest) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert torch.all(a[mask == 0] == 0)
    torch.testing.assert_close(out.objective, value.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("params", [{}, {"epsilon": 0.5, "iterations": 5, "temperature": 1.0}],
                         ids=["default", "eps0.5"])
def test_sinkd_gradient_identity(params, seed):
    student, teacher, mask, target = _data(seed)
    out, grad = _unigrad_from_logits("sinkd", params, student, teacher, mask, target, None)
    can_value, can_grad = _canonical_from_logits(
        lambda s: can.sinkd_loss(torch.log_softmax(s, -1), torch.log_softmax(teacher, -1), mask, **params))(student)
    _assert_identity(out, grad, can_value, can_grad, mask)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", KS, ids=lambda k: f"k={k}")
@pytest.mark.parametrize("label", ["token", "teacher"])
def test_pld_gradient_identity(label, k, seed):
    student, teacher, mask, target = _data(seed)
    out, grad = _unigrad_from_logits("pld", {"label": label}, student, teacher, mask, target, k)
    can_value, can_grad = _canonical_from_logits(
        lambda s: can.pld_from_logits(s, teacher, target, mask, k, label))(student)
    _assert_identity(out, grad, can_value, can_grad, mask)


def test_pld_first_stage_is_weighted_cross_entropy():
    """PLD's hand-checkable piece: with V = 2 and label "token", L = p_T(y)·CE(y) + p_T(other)·0."""
    student = torch.tensor([[[0.3, -0.2]]], dtype=torch.float64)
    teacher = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.float64)
    target = torch.tensor([[1]])
    value = can.pld_from_logits(student, teacher, target, mask, None, "token")
    expect = torch.softmax(teacher[0, 0], -1)[1] * -torch.log_softmax(student[0, 0], -1)[1]
    torch.testing.assert_close(value, expect)


def test_canonical_bucket_bounds_full_kl():
    """Coarse-graining never increases KL (data processing); renormalising is a different quantity."""
    student, teacher, mask, _ = _data(0)
    full = can.kd_from_logits(student, teacher, mask, None, "forward")
    bucket = can.kd_from_logits(student, teacher, mask, 4, "forward", "bucket")
    assert bucket <= full + 1e-12


def test_full_vocabulary_supports_agree():
    """k = None: bucket and renormalise are the same exact full-vocabulary divergence."""
    import unigrad as ug
    student, teacher, mask, target = _data(1)
    fields = _fields(student, teacher, target, None)
    a = ug.method("kd-js", beta=0.3, support="bucket").loss(_batch(fields, mask)).objective
    b = ug.method("kd-js", beta=0.3, support="renormalise").loss(_batch(fields, mask)).objective
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_normaliser_uses_the_whole_step():
    """A micro-batch divides by the step's token count, so micro-batch losses add up to the step's loss."""
    import unigrad as ug
    student, teacher, mask, target = _data(2)
    fields = _fields(student, teacher, target, 4)
    step = _batch(fields, mask)
    obj = ug.method("kd-forward")
    total = sum(obj.loss(step.micro_batch(torch.tensor([i]))).objective for i in range(B))
    torch.testing.assert_close(total, obj.loss(step).objective, rtol=1e-10, atol=1e-12)


def test_bucket_needs_rest_fields_on_topk():
    import unigrad as ug
    student, teacher, mask, target = _data(0)
    fields = _fields(student, teacher, target, 4)
    del fields["student_logp_rest"], fields["teacher_logp_rest"]
    with pytest.raises(ValueError, match="rest"):
        ug.method("kd-forward").loss(_batch(fields, mask))


def test_sinkd_refuses_topk():
    import unigrad as ug
    student, teacher, mask, target = _data(0)
    with pytest.raises(ValueError, match="full-vocabulary"):
        ug.method("sinkd").loss(_batch(_fields(student, teacher, target, 4), mask))


def test_parameters_are_checked():
    import unigrad as ug
    with pytest.raises(ValueError):
        ug.method("kd-js", beta=1.5)
    with pytest.raises(ValueError):
        ug.method("kd-forward", support="nope")
    with pytest.raises(ValueError):
        ug.method("pld", label="nope")
    with pytest.raises(ValueError, match="data.on_policy_fraction"):
        ug.method("kd-js", lam=0.7)


def test_identity_check_can_fail():
    """Wrong canonicals must NOT match: β swapped, the other support rule, PLD without the label first,
    SinKD with the plan detached (the official code back-propagates through it)."""
    student, teacher, mask, target = _data(0)
    _, g = _unigrad_from_logits("kd-js", {"beta": 0.3}, student, teacher, mask, target, 4)
    _, g_wrong = _canonical_from_logits(lambda s: can.kd_from_logits(s, teacher, mask, 4, "js", "bucket", beta=0.7))(student)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(g, g_wrong, rtol=1e-6, atol=1e-12)
    _, g_wrong = _canonical_from_logits(lambda s: can.kd_from_logits(s, teacher, mask, 4, "js", "renormalise", beta=0.3))(student)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(g, g_wrong, rtol=1e-6, atol=1e-12)
    _, g = _unigrad_from_logits("pld", {}, student, teacher, mask, target, None)
    _, g_wrong = _canonical_from_logits(lambda s: can.pld_from_logits(s, teacher, target, mask, None, "teacher"))(student)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(g, g_wrong, rtol=1e-6, atol=1e-12)

    def detached_plan(s):
        keep = mask.reshape(-1) > 0
        p_s = torch.softmax(torch.log_softmax(s, -1).reshape(-1, V)[keep] / 2, -1)
        p_t = torch.softmax(torch.log_softmax(teacher, -1).reshape(-1, V)[keep] / 2, -1)
        w = (p_s[:, None] - p_t[None]).abs().sum(-1)
        plan = torch.exp(-w.detach() / 0.1)
        for _ in range(20):
            plan = plan / plan.sum(1, keepdim=True)
            plan = plan / plan.sum(0, keepdim=True)
        return (plan * w).sum() / mask.sum()
    _, g = _unigrad_from_logits("sinkd", {}, student, teacher, mask, target, None)
    _, g_wrong = _canonical_from_logits(detached_plan)(student)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(g, g_wrong, rtol=1e-6, atol=1e-12)
