"""Gradient identity for DPH-RL (tests/canonical/dph.py, float64).

1. Against the f-divergence definitions: on a categorical over V tokens, the rehearsal term's gradient
   averaged over the stored token a ~ π_ref (Σ_v π_ref(v) · ∇ of the term on the row holding v) equals
   ∇_θ D_f(π_θ ‖ π_ref) with D_f = Σ_v Q f(P/Q) written in probabilities, and its value averaged the
   same way equals D_f: the term is an unbiased estimate of the divergence and of its gradient.
2. Against the paper's sampled loss: on a batch of rollouts and stored rows, ∂(unigrad surrogate)/∂logp
   equals ∂(DAPO on the rollouts + η · token mean of the per-token term on the stored rows)/∂logp, and
   the objective equals that loss — which also fixes the per-sample form (k3's linear term), where
   (1) only sees the expectation.
3. Two micro-batches of the step give the whole step's gradient.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ → `canonical` importable

from canonical import dph as can  # noqa: E402

DIVERGENCES = ["forward-kl", "js", "alpha"]
SEEDS = [0, 1, 2]


def _categorical(seed: int, V: int = 7):
    gen = torch.Generator().manual_seed(seed)
    theta = (1.5 * torch.randn(V, generator=gen, dtype=torch.float64)).requires_grad_(True)
    log_q = torch.log_softmax(1.5 * torch.randn(V, generator=gen, dtype=torch.float64), -1)
    return theta, log_q


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_expected_gradient_is_the_gradient_of_the_divergence(divergence, seed):
    import unigrad as ug
    from unigrad.methods.dph import rehearsal_term

    theta, log_q = _categorical(seed)
    term = rehearsal_term(divergence, alpha=0.2)
    expected_grad, expected_value = torch.zeros_like(theta), torch.zeros((), dtype=torch.float64)
    for v in range(theta.numel()):        # the stored sample is token v, with probability Q(v)
        logp = torch.log_softmax(theta, -1)[v].reshape(1, 1)
        batch = ug.Batch(logp=logp, mask=torch.ones(1, 1, dtype=torch.float64),
                         extra={"logp_rehearsal": log_q[v].reshape(1, 1)})
        out = term.loss(batch)
        (grad,) = torch.autograd.grad(out.loss, theta)
        expected_grad += torch.exp(log_q[v]) * grad
        expected_value += torch.exp(log_q[v]) * out.objective
    P, Q = torch.softmax(theta, -1), torch.exp(log_q)
    definition = can.DEFINITIONS[divergence](P, Q, 0.2)
    (grad_definition,) = torch.autograd.grad(definition, theta)
    torch.testing.assert_close(expected_grad, grad_definition, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(expected_value, definition.detach(), rtol=1e-10, atol=1e-12)
    assert definition > 1e-3 and grad_definition.abs().max() > 1e-3     # not a trivial point (P = Q)


def test_canonical_js_is_twice_the_jensen_shannon_divergence():
    P = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    Q = torch.tensor([0.6, 0.1, 0.3], dtype=torch.float64)
    M = (P + Q) / 2
    jsd = 0.5 * (P * (P / M).log()).sum() + 0.5 * (Q * (Q / M).log()).sum()
    generator = (Q * can.sampled_term(P, Q, "js")).sum()          # Σ Q f(P/Q) with the paper's f
    torch.testing.assert_close(can.js_definition(P, Q), 2 * jsd, rtol=1e-14, atol=0)
    torch.testing.assert_close(generator, 2 * jsd, rtol=1e-12, atol=0)


def dph_batch(seed: int, prompts: int = 3, n: int = 4, stored: int = 5, T: int = 6, noise: float = 0.3) -> dict:
    """G prompts × n rollouts (binary rewards, prompt 0 with one correct) and ``stored`` rehearsal rows
    whose π_ref log-probs differ from logp by noise; rows shuffled, variable lengths, plain float64."""
    gen = torch.Generator().manual_seed(seed)
    R = prompts * n
    B = R + stored
    ids = torch.randperm(1000, generator=gen)[:prompts + stored]
    group = torch.cat([ids[:prompts].repeat_interleave(n), ids[prompts:]])
    reward = torch.cat([torch.randint(0, 2, (R,), generator=gen).double(), torch.ones(stored, dtype=torch.float64)])
    reward[:n] = 0.0
    reward[0] = 1.0
    is_rehearsal = torch.cat([torch.zeros(R, dtype=torch.bool), torch.ones(stored, dtype=torch.bool)])
    lengths = torch.randint(2, T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    logp = -2.0 * F.softplus(torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    logp_old = (logp + noise * torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    logp_ref = (logp + 0.7 * torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask * is_rehearsal[:, None]
    perm = torch.randperm(B, generator=gen)
    d = dict(logp=logp, mask=mask, logp_old=logp_old, reward=reward, group=group, is_rehearsal=is_rehearsal,
             logp_ref=logp_ref)
    return {key: value[perm] for key, value in d.items()}


def _batch(d: dict, logp):
    import unigrad as ug
    return ug.Batch(logp=logp, mask=d["mask"], logp_old=d["logp_old"], reward=d["reward"], group=d["group"],
                    extra={"is_rehearsal": d["is_rehearsal"], "logp_rehearsal": d["logp_ref"]})


CASES = [({"divergence": "js"}, {"divergence": "js", "eta": 0.05}),
         ({"divergence": "forward-kl", "eta": 0.3}, {"divergence": "forward-kl", "eta": 0.3}),
         ({"divergence": "alpha", "eta": 0.5, "alpha": 0.3}, {"divergence": "alpha", "eta": 0.5, "alpha": 0.3}),
         ({"divergence": "js", "eta": 1.0, "eps_low": 0.1, "eps_high": 0.4},
          {"divergence": "js", "eta": 1.0, "eps_low": 0.1, "eps_high": 0.4})]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("params, canonical", CASES, ids=[c[0]["divergence"] + str(i) for i, c in enumerate(CASES)])
def test_gradient_identity_with_the_sampled_loss(params, canonical, seed):
    import unigrad as ug
    d = dph_batch(seed)
    logp = d["logp"].clone().requires_grad_(True)
    value = can.dph_loss(logp, d["mask"], d["logp_old"], d["reward"], d["group"], d["is_rehearsal"], d["logp_ref"],
                         **canonical)
    (g_can,) = torch.autograd.grad(value, logp)
    logp = d["logp"].clone().requires_grad_(True)
    out = ug.method("dph-rl", **params).loss(_batch(d, logp))
    (g_ug,) = torch.autograd.grad(out.loss, logp)
    torch.testing.assert_close(g_ug, g_can, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.as_tensor(out.objective, dtype=torch.float64), value.detach(), rtol=1e-10, atol=1e-12)
    assert g_can[d["is_rehearsal"]].abs().max() > 1e-4 and g_can[~d["is_rehearsal"]].abs().max() > 1e-4
    assert out.metrics["pef_rows"] == pytest.approx(5 / 17)


def test_the_divergences_give_different_gradients():
    """The identity would not see a swapped divergence if the terms coincided on these batches."""
    import unigrad as ug
    d = dph_batch(0)
    grads = []
    for divergence in DIVERGENCES:
        logp = d["logp"].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(ug.method("dph-rl", divergence=divergence, eta=1.0).loss(_batch(d, logp)).loss, logp)
        grads.append(g)
    assert all((a - b).abs().max() > 1e-3 for i, a in enumerate(grads) for b in grads[i + 1:])


def test_two_micro_batches_give_the_whole_step():
    import unigrad as ug
    d = dph_batch(1)
    method = ug.method("dph-rl", divergence="forward-kl", eta=0.2)
    logp = d["logp"].clone().requires_grad_(True)
    whole = _batch(d, logp)
    (g_whole,) = torch.autograd.grad(method.loss(whole).loss, logp)
    step = _batch(d, torch.zeros_like(d["logp"]))
    total = torch.zeros_like(g_whole)
    for rows in torch.arange(len(d["reward"])).tensor_split(2):
        logp = d["logp"].clone().requires_grad_(True)
        part = step.micro_batch(rows).replace(logp=logp[rows])
        (g,) = torch.autograd.grad(method.loss(part).loss, logp)
        total += g
    torch.testing.assert_close(total, g_whole, rtol=1e-10, atol=1e-12)
