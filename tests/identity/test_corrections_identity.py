"""Gradient identity for CISPO, SAPO, PPO's dual clip and the rollout corrections (TIS / MIS, token and
sequence level) wrapped around GRPO and DAPO: ∂(unigrad surrogate)/∂logp == ∂(canonical loss)/∂logp in
float64, and ``out.objective`` == the canonical loss value (CISPO: gradient only, as its paper's J is a
weighted log-likelihood whose value is not an objective).

Batches: G prompts × n rollouts, rows shuffled, group ids random, variable lengths; logp_old = logp +
noise so that the clips act on some tokens (and r > c on some negative-advantage ones), logp_sampler =
logp_old + noise so that the corrections truncate or mask some tokens and sequences but not all (checked
with the canonical helpers only).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ → `canonical` importable

from canonical import corrections as can  # noqa: E402
from canonical.rl import grpo_advantage  # noqa: E402

SEEDS = [0, 1, 2]


def rollout_batch(seed: int, prompts: int = 4, n: int = 4, T: int = 7, noise: float = 0.6,
                  sampler_noise: float = 0.5) -> dict:
    gen = torch.Generator().manual_seed(seed)
    B = prompts * n
    group = torch.randperm(1000, generator=gen)[:prompts].repeat_interleave(n)
    reward = torch.randn(B, generator=gen, dtype=torch.float64)
    lengths = torch.randint(2, T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    logp = -2.0 * F.softplus(torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    logp_old = (logp + noise * torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    logp_sampler = (logp_old + sampler_noise * torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    perm = torch.randperm(B, generator=gen)
    d = dict(logp=logp, mask=mask, logp_old=logp_old, logp_sampler=logp_sampler, reward=reward, group=group)
    return {key: value[perm] for key, value in d.items()}


def _batch(d, logp):
    import unigrad as ug
    return ug.Batch(logp=logp, mask=d["mask"], logp_old=d["logp_old"], reward=d["reward"], group=d["group"],
                    extra={"logp_sampler": d["logp_sampler"]})


def _objective(name, params, correction):
    import unigrad as ug
    from unigrad.estimator.corrections import MaskedIS, TruncatedIS, with_correction
    objective = ug.method(name, **params)
    if correction is None:
        return objective
    kind, level, options = correction
    return with_correction(objective, (TruncatedIS if kind == "tis" else MaskedIS)(level=level, **options))


def _unigrad(name, params, correction, d):
    logp = d["logp"].clone().requires_grad_(True)
    out = _objective(name, params, correction).loss(_batch(d, logp))
    (grad,) = torch.autograd.grad(out.loss, logp)
    return out, grad


def _canonical(fn, cparams, correction, d):
    weight = None
    if correction is not None:
        kind, level, options = correction
        weight = can.correction_weights(d["mask"], d["logp_old"], d["logp_sampler"], kind, level, **options)
    logp = d["logp"].clone().requires_grad_(True)
    value = fn(logp, d["mask"], d["logp_old"], d["reward"], d["group"], weight=weight, **cparams)
    (grad,) = torch.autograd.grad(value, logp)
    return value.detach(), grad


CORRECTIONS = [
    ("tis", "token", {"cap": 2.0}), ("tis", "sequence", {"cap": 2.0}), ("tis", "token", {"cap": 1.2}),
    ("mis", "token", {"low": 0.5, "high": 2.0}), ("mis", "sequence", {"low": 0.0, "high": 3.0}),
    ("mis", "sequence", {"low": 0.2, "high": 1.5}),
]
# (unigrad name, its parameters, canonical loss, its parameters, correction)
CASES = [
    ("cispo", {}, can.cispo_loss, {}, None),
    ("cispo", {"eps_low": 0.2, "eps_high": 0.28}, can.cispo_loss, {"eps_low": 0.2, "eps_high": 0.28}, None),
    ("sapo", {}, can.sapo_loss, {}, None),
    ("sapo", {"tau_pos": 2.0, "tau_neg": 3.0}, can.sapo_loss, {"tau_pos": 2.0, "tau_neg": 3.0}, None),
    ("grpo", {"dual_clip": 3.0}, can.grpo_dual_clip_loss, {"eps": 0.2, "c": 3.0}, None),
    ("grpo", {"eps": 0.1, "dual_clip": 1.5}, can.grpo_dual_clip_loss, {"eps": 0.1, "c": 1.5}, None),
    ("dapo", {"dual_clip": 2.0}, can.dapo_dual_clip_loss, {"c": 2.0}, None),
    *[("grpo", {}, can.grpo_dual_clip_loss, {"eps": 0.2, "c": None}, c) for c in CORRECTIONS],
    *[("dapo", {}, can.dapo_dual_clip_loss, {}, c) for c in CORRECTIONS],
    ("grpo", {"dual_clip": 3.0}, can.grpo_dual_clip_loss, {"eps": 0.2, "c": 3.0}, CORRECTIONS[1]),
    ("cispo", {}, can.cispo_loss, {}, CORRECTIONS[0]),
    ("sapo", {}, can.sapo_loss, {}, CORRECTIONS[4]),
]


def _case_id(case):
    name, params, _, _, correction = case
    said = ",".join(f"{k}={v}" for k, v in params.items())
    if correction:
        said += (";" if said else "") + "-".join([correction[0], correction[1], *map(str, correction[2].values())])
    return f"{name}[{said}]"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_gradient_identity(case, seed):
    name, params, fn, cparams, correction = case
    d = rollout_batch(seed)
    value, g_can = _canonical(fn, cparams, correction, d)
    out, g_ug = _unigrad(name, params, correction, d)
    torch.testing.assert_close(g_ug, g_can, rtol=1e-10, atol=1e-12)
    if name != "cispo":
        torch.testing.assert_close(torch.as_tensor(out.objective, dtype=torch.float64), value, rtol=1e-10, atol=1e-12)
    assert torch.all(g_ug[d["mask"] == 0] == 0) and torch.any(g_can != 0)


def _ratio_and_advantage(d):
    r = torch.exp(d["logp"] - d["logp_old"])[d["mask"] > 0]
    a = grpo_advantage(d["reward"], d["group"])[:, None].expand_as(d["mask"])[d["mask"] > 0]
    return r, a


def test_batches_exercise_the_dual_clip_and_the_corrections():
    """Else a wrong dual clip or correction could pass: each cuts some terms and keeps others."""
    dual, cut = [], {c[:2] + tuple(c[2].values()): [] for c in CORRECTIONS}
    for seed in SEEDS:
        d = rollout_batch(seed)
        r, a = _ratio_and_advantage(d)
        dual.append(float(((a < 0) & (r > 3.0)).double().mean()))
        for kind, level, options in CORRECTIONS:
            w = can.correction_weights(d["mask"], d["logp_old"], d["logp_sampler"], kind, level, **options)
            rho = torch.tensor(sum(can.token_rho(d["mask"], d["logp_old"], d["logp_sampler"]), []) if level == "token"
                               else can.sequence_rho(d["mask"], d["logp_old"], d["logp_sampler"]), dtype=torch.float64)
            kept = w[d["mask"] > 0] if level == "token" else w[:, 0]
            cut[(kind, level, *options.values())].append(float((kept != rho).double().mean()))
    assert any(0 < f < 1 for f in dual), dual
    for key, fractions in cut.items():
        assert any(0 < f < 1 for f in fractions), (key, fractions)


@pytest.mark.parametrize("correction", CORRECTIONS, ids=lambda c: f"{c[0]}-{c[1]}")
def test_correction_metrics(correction):
    """Mean ρ and the truncated / masked fraction, over completion tokens or over sequences."""
    kind, level, options = correction
    d = rollout_batch(0)
    out, _ = _unigrad("dapo", {}, correction, d)
    rho = (sum(can.token_rho(d["mask"], d["logp_old"], d["logp_sampler"]), []) if level == "token"
           else can.sequence_rho(d["mask"], d["logp_old"], d["logp_sampler"]))
    weight = [can.tis(x, options["cap"]) if kind == "tis" else can.mis(x, options["low"], options["high"]) for x in rho]
    assert out.metrics["correction/rho_mean"] == pytest.approx(sum(rho) / len(rho), rel=1e-9)
    name = "truncated" if kind == "tis" else "masked"
    assert out.metrics[f"correction/{name}_fraction"] == pytest.approx(
        sum(w != x for w, x in zip(weight, rho)) / len(rho), rel=1e-12)


def test_micro_batches_add_up_to_the_whole_step():
    """A sequence correction reads only its own rows: two accumulated micro-batches give the step's gradient."""
    d = rollout_batch(1)
    objective = _objective("dapo", {}, CORRECTIONS[4])
    logp = d["logp"].clone().requires_grad_(True)
    whole = _batch(d, logp)
    rows = torch.randperm(logp.shape[0], generator=torch.Generator().manual_seed(0))
    parts = [objective.loss(whole.replace(logp=logp).micro_batch(half)).loss for half in (rows[:6], rows[6:])]
    (g_parts,) = torch.autograd.grad(sum(parts), logp)
    (g_whole,) = torch.autograd.grad(objective.loss(whole).loss, logp)
    torch.testing.assert_close(g_parts, g_whole, rtol=1e-10, atol=1e-12)


def test_identity_check_can_fail():
    """A missing dual clip, a correction at the other level, and SAPO's τ swapped must all NOT match."""
    d = rollout_batch(0)
    _, g = _unigrad("grpo", {"dual_clip": 3.0}, None, d)
    _, g_plain = _canonical(can.grpo_dual_clip_loss, {"eps": 0.2, "c": None}, None, d)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(g, g_plain, rtol=1e-6, atol=1e-12)
    _, g = _unigrad("grpo", {}, ("tis", "token", {"cap": 2.0}), d)
    _, g_other = _canonical(can.grpo_dual_clip_loss, {"c": None}, ("tis", "sequence", {"cap": 2.0}), d)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(g, g_other, rtol=1e-6, atol=1e-12)
    _, g = _unigrad("sapo", {"tau_pos": 2.0, "tau_neg": 3.0}, None, d)
    _, g_swapped = _canonical(can.sapo_loss, {"tau_pos": 3.0, "tau_neg": 2.0}, None, d)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(g, g_swapped, rtol=1e-6, atol=1e-12)
