"""Gradient identity for the online-RL methods: ∂(unigrad surrogate)/∂logp == ∂(canonical loss)/∂logp,
and ``out.objective`` == the canonical loss value.

The canonical losses (tests/canonical/rl.py) are written from the papers with plain loops and never
import unigrad. Batches: G prompts × n rollouts (B = G·n), rows shuffled, group ids random and
non-contiguous, variable lengths, logp_old = logp + noise so that the clip is active on some tokens
(checked independently of unigrad: the clip fraction is strictly between 0 and 1), rewards in {0, 1}
or continuous. HPT batches add one demonstration row per prompt (``extra["is_demo"]``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ → `canonical` importable

from canonical import rl as can  # noqa: E402

SEEDS = [0, 1, 2]


def rollout_batch(seed: int, rewards: str = "binary", prompts: int = 4, n: int = 4, T: int = 7,
                  noise: float = 0.3, demos: bool = False) -> dict:
    """Plain float64 tensors (no unigrad). Binary rewards: prompt 0 has no correct rollout, prompt 1
    exactly one, the others random; continuous rewards: N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    B = prompts * n
    ids = torch.randperm(1000, generator=gen)[:prompts]
    group = ids.repeat_interleave(n)
    if rewards == "binary":
        reward = torch.randint(0, 2, (B,), generator=gen).to(torch.float64)
        reward[:n] = 0.0
        reward[n:2 * n] = 0.0
        reward[n] = 1.0
    else:
        reward = torch.randn(B, generator=gen, dtype=torch.float64)
    is_demo = torch.zeros(B, dtype=torch.bool)
    if demos:
        group = torch.cat([group, ids])
        reward = torch.cat([reward, torch.ones(prompts, dtype=torch.float64)])
        is_demo = torch.cat([is_demo, torch.ones(prompts, dtype=torch.bool)])
        B += prompts
    lengths = torch.randint(2, T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    logp = -2.0 * F.softplus(torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    logp_old = (logp + noise * torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    logp_ref = (logp + 0.5 * torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    perm = torch.randperm(B, generator=gen)
    d = dict(logp=logp, mask=mask, logp_old=logp_old, logp_ref=logp_ref, reward=reward, group=group, is_demo=is_demo)
    return {key: value[perm] for key, value in d.items()}


# (unigrad name, its parameters, canonical function, canonical parameters, batch options)
CASES = [
    ("grpo", {}, can.grpo_loss, {"eps": 0.2}, {}),
    ("grpo", {"eps": 0.1}, can.grpo_loss, {"eps": 0.1}, {"rewards": "continuous"}),
    ("grpo", {"eps": 0.2, "beta": 0.04}, can.grpo_loss, {"eps": 0.2, "beta": 0.04}, {}),
    ("dr-grpo", {"max_tokens": 16}, can.dr_grpo_loss, {"max_tokens": 16}, {}),
    ("dr-grpo", {"eps": 0.1, "max_tokens": 7}, can.dr_grpo_loss, {"eps": 0.1, "max_tokens": 7}, {"rewards": "continuous"}),
    ("dapo", {}, can.dapo_loss, {"eps_low": 0.2, "eps_high": 0.28}, {}),
    ("dapo", {"eps_low": 0.1, "eps_high": 0.3}, can.dapo_loss, {"eps_low": 0.1, "eps_high": 0.3}, {"rewards": "continuous"}),
    ("gspo", {}, can.gspo_loss, {"eps_low": 3e-4, "eps_high": 4e-4}, {"noise": 1e-3}),
    ("gspo", {"eps_low": 0.05, "eps_high": 0.1}, can.gspo_loss, {"eps_low": 0.05, "eps_high": 0.1},
     {"rewards": "continuous", "noise": 0.15}),
    ("rloo", {}, can.rloo_loss, {}, {}),
    ("rloo", {}, can.rloo_loss, {}, {"rewards": "continuous"}),
    ("reinforce", {}, can.reinforce_loss, {}, {}),
    ("reinforce", {"baseline": 0.5}, can.reinforce_loss, {"baseline": 0.5}, {"rewards": "continuous"}),
    ("reinforce", {"batch_mean": True}, can.reinforce_loss, {"batch_mean": True}, {"rewards": "continuous"}),
    ("reinforce++", {}, can.reinforce_pp_loss, {"eps": 0.2}, {}),
    ("reinforce++", {"eps": 0.1, "group_baseline": True}, can.reinforce_pp_loss, {"eps": 0.1, "group_baseline": True},
     {"rewards": "continuous"}),
    ("hpt", {}, can.hpt_loss, {"gamma": 0.0, "eps": 0.2}, {"demos": True}),
    ("hpt", {"gamma": 0.25, "eps": 0.1}, can.hpt_loss, {"gamma": 0.25, "eps": 0.1}, {"demos": True}),
    ("hpt", {"sft_weight": 0.3}, can.hpt_loss, {"sft_weight": 0.3}, {"demos": True}),
]
CLIPPED = {"grpo", "dr-grpo", "dapo", "gspo", "reinforce++", "hpt"}
ON_POLICY = {"rloo", "reinforce"}


def _case_id(case):
    name, params, *_ , options = case
    return name + "[" + ",".join(f"{k}={v}" for k, v in {**params, **options}.items()) + "]"


def _canonical_args(name, d):
    if name in ON_POLICY:
        args = {"mask": d["mask"], "reward": d["reward"]}
        return args if name == "reinforce" else {**args, "group": d["group"]}
    args = {"mask": d["mask"], "logp_old": d["logp_old"], "reward": d["reward"], "group": d["group"]}
    if name == "grpo":
        args["logp_ref"] = d["logp_ref"]
    if name == "hpt":
        args["is_demo"] = d["is_demo"]
    return args


def _canonical_value_and_grad(fn, name, params, d):
    logp = d["logp"].clone().requires_grad_(True)
    value = fn(logp, **_canonical_args(name, d), **params)
    (grad,) = torch.autograd.grad(value, logp)
    return value.detach(), grad


def _unigrad_out_and_grad(name, params, d, extra=None):
    import unigrad as ug

    logp = d["logp"].clone().requires_grad_(True)
    batch = ug.Batch(logp=logp, mask=d["mask"], logp_old=d["logp_old"], logp_ref=d["logp_ref"], reward=d["reward"],
                     group=d["group"], extra={"is_demo": d["is_demo"], **(extra or {})})
    out = ug.method(name, **params).loss(batch)
    (grad,) = torch.autograd.grad(out.loss, logp)
    return out, grad


def _clip_fraction(name, canonical_params, d) -> float:
    """Fraction of the terms where the clipped branch of min(r·Â, clip(r)·Â) is the smaller one,
    computed with the canonical helpers only (tokens, or sequences for GSPO)."""
    rows = ~d["is_demo"]
    mask, logp, old, reward, group = (d[k][rows] for k in ("mask", "logp", "logp_old", "reward", "group"))
    lo = canonical_params.get("eps_low", canonical_params.get("eps", 0.2))
    hi = canonical_params.get("eps_high", canonical_params.get("eps", 0.2))
    if name == "dr-grpo":
        adv = can.centred_advantage(reward, group)
    elif name == "reinforce++":
        adv = can.global_advantage(reward, group, mask, canonical_params.get("group_baseline", False))
    else:
        adv = can.grpo_advantage(reward, group)
    if name == "gspo":
        s = torch.exp(((logp - old) * mask).sum(1) / mask.sum(1))
        clipped = torch.clamp(s, 1 - lo, 1 + hi) * adv < s * adv
        return float(clipped.double().mean())
    ratio = torch.exp(logp - old)
    clipped = (torch.clamp(ratio, 1 - lo, 1 + hi) * adv[:, None] < ratio * adv[:, None]) & (mask > 0)
    return float(clipped.sum() / mask.sum())


# =========================================================================== canonical self-checks
class TestCanonicalSelfChecks:
    @pytest.mark.parametrize("case", CASES, ids=_case_id)
    def test_gradient_matches_finite_differences(self, case):
        name, _, fn, cparams, options = case
        d = rollout_batch(7, **options)
        f = lambda lp: fn(lp, **_canonical_args(name, d), **cparams)  # noqa: E731
        assert torch.autograd.gradcheck(f, (d["logp"].clone().requires_grad_(True),), eps=1e-7, atol=1e-6)

    def test_loo_advantage_closed_form(self):
        d = rollout_batch(3, rewards="continuous")
        n = 4
        expect = n / (n - 1) * can.centred_advantage(d["reward"], d["group"])
        torch.testing.assert_close(can.loo_advantage(d["reward"], d["group"]), expect, rtol=1e-12, atol=1e-12)

    def test_on_policy_grpo_is_the_sequence_mean_policy_gradient(self):
        """With logp_old = logp the clipped surrogate's gradient is Â_i/(|y_i| G) on every token."""
        d = rollout_batch(4, rewards="continuous")
        d["logp_old"] = d["logp"].clone()
        _, g = _canonical_value_and_grad(can.grpo_loss, "grpo", {"eps": 0.2}, d)
        adv = can.grpo_advantage(d["reward"], d["group"])
        expect = -adv[:, None] * d["mask"] / d["mask"].sum(1, keepdim=True) / d["logp"].shape[0]
        torch.testing.assert_close(g, expect, rtol=1e-12, atol=1e-15)


# =========================================================================== the identity itself
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_gradient_identity(case, seed):
    name, params, fn, cparams, options = case
    d = rollout_batch(seed, **options)
    can_value, g_can = _canonical_value_and_grad(fn, name, cparams, d)
    out, g_ug = _unigrad_out_and_grad(name, params, d)

    torch.testing.assert_close(g_ug, g_can, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.as_tensor(out.objective, dtype=torch.float64), can_value, rtol=1e-10, atol=1e-12)
    assert torch.all(g_ug[d["mask"] == 0] == 0), "unigrad gradient is non-zero at masked positions"
    assert torch.any(g_can != 0)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in CLIPPED], ids=_case_id)
def test_batches_exercise_the_clip(case):
    """The identity above would not see a wrong clip if nothing were clipped (or everything)."""
    name, _, _, cparams, options = case
    fractions = [_clip_fraction(name, cparams, rollout_batch(seed, **options)) for seed in SEEDS]
    assert any(0.0 < f < 1.0 for f in fractions), fractions


def test_hpt_routes_both_ways_and_reports_the_sft_fraction():
    d = rollout_batch(0, demos=True)
    out, _ = _unigrad_out_and_grad("hpt", {}, d)
    # prompt 0 has 0/4 correct, prompt 1 has 1/4: with γ = 0 at least one prompt goes each way
    assert 0.0 < out.metrics["sft_fraction"] < 1.0
    assert "below/objective" in out.metrics and "above/objective" in out.metrics


@pytest.mark.parametrize("seed", SEEDS)
def test_hpt_success_rate_given_in_extra(seed):
    """A given per-row success rate overrides the one computed from the rewards."""
    d = rollout_batch(seed, demos=True)
    ids = torch.unique(d["group"])
    rate_of = {int(g): float(i % 2) for i, g in enumerate(ids)}        # alternate SFT / RL
    rate = torch.tensor([rate_of[int(g)] for g in d["group"]], dtype=torch.float64)
    can_value, g_can = _canonical_value_and_grad(can.hpt_loss, "hpt", {"success_rate": rate}, d)
    out, g_ug = _unigrad_out_and_grad("hpt", {}, d, extra={"success_rate": rate})
    torch.testing.assert_close(g_ug, g_can, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.as_tensor(out.objective, dtype=torch.float64), can_value, rtol=1e-10, atol=1e-12)
    assert out.metrics["sft_fraction"] == pytest.approx(0.5)


def test_identity_check_can_fail():
    """Deliberately different canonicals must NOT match: another clip range, and a biased std."""
    d = rollout_batch(0)
    _, g_ug = _unigrad_out_and_grad("grpo", {"eps": 0.2}, d)
    _, g_other_clip = _canonical_value_and_grad(can.grpo_loss, "grpo", {"eps": 0.1}, d)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(g_ug, g_other_clip, rtol=1e-6, atol=1e-12)
    _, g_dapo = _canonical_value_and_grad(can.dapo_loss, "dapo", {"eps_low": 0.2, "eps_high": 0.2}, d)
    with pytest.raises(AssertionError):  # per-sequence token mean ≠ batch token mean
        torch.testing.assert_close(g_ug, g_dapo, rtol=1e-6, atol=1e-12)
