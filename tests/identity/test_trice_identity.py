"""Gradient identity for TRICE: ∂(unigrad surrogate)/∂logp == ∂(canonical loss)/∂logp (float64), and
``out.objective`` == the memory's NLL. The canonical loss (tests/canonical/trice.py) loops over the
minibatch's examples in the paper's form; the batch here lays the same examples out as unigrad's rows
(an accepted proposal is one row, a rejected one is two: memory and proposal), shuffled, with random
non-contiguous group ids and variable lengths."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ → `canonical` importable

from canonical import trice as can  # noqa: E402

SCENARIOS = {   # each example: its proposal accepted, rejected (with a rationale in memory), or none yet
    "mixed": ["accepted", "rejected", "none", "rejected", "accepted", "rejected"],
    "all_accepted": ["accepted"] * 4,
    "no_memory_yet": ["none", "none", "accepted"],
    "one_example": ["accepted"],
}


def trice_batch(states: list[str], seed: int, T: int = 7) -> tuple[dict, list[dict]]:
    """(plain float64 row tensors, the canonical's examples pointing at those rows)."""
    gen = torch.Generator().manual_seed(seed)
    kinds = []                                     # (example, is_memory, is_proposal) per row, before shuffling
    for m, state in enumerate(states):
        kinds += {"accepted": [(m, True, True)], "rejected": [(m, True, False), (m, False, True)],
                  "none": [(m, False, True)]}[state]
    B = len(kinds)
    perm = torch.randperm(B, generator=gen).tolist()
    kinds = [kinds[p] for p in perm]
    ids = torch.randperm(1000, generator=gen)[:len(states)]
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    logp = -2.0 * F.softplus(torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask
    rows = dict(logp=logp, mask=mask, group=torch.stack([ids[m] for m, _, _ in kinds]),
                memory=torch.tensor([mem for _, mem, _ in kinds]), proposal=torch.tensor([p for _, _, p in kinds]))
    examples = []
    for m, state in enumerate(states):
        proposal = next(r for r, (e, _, p) in enumerate(kinds) if e == m and p)
        memory = next((r for r, (e, mem, _) in enumerate(kinds) if e == m and mem), None)
        examples.append({"proposal": proposal, "memory": memory, "accepted": state == "accepted"})
    return rows, examples


def _unigrad(d: dict, control_variate: bool = True, rows=None):
    import unigrad as ug
    logp = d["logp"].clone().requires_grad_(True)
    batch = ug.Batch(logp=logp, mask=d["mask"], group=d["group"], extra={"memory": d["memory"], "proposal": d["proposal"]})
    objective = ug.method("trice", control_variate=control_variate)
    if rows is None:
        out = objective.loss(batch)
        return out, torch.autograd.grad(out.loss, logp)[0]
    total, value = torch.zeros_like(logp), 0.0
    for part in rows:                                # micro-batches of the step, accumulated
        out = objective.loss(batch.micro_batch(torch.tensor(part)))
        total += torch.autograd.grad(out.loss, logp)[0]
        value += float(out.objective)
    return value, total


def _canonical(d: dict, examples: list[dict], control_variate: bool = True):
    logp = d["logp"].clone().requires_grad_(True)
    loss = can.trice_loss(logp, d["mask"], examples, control_variate)
    return loss.detach(), torch.autograd.grad(loss, logp)[0]


@pytest.mark.parametrize("control_variate", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_gradient_identity(scenario, seed, control_variate):
    d, examples = trice_batch(SCENARIOS[scenario], seed)
    _, g_can = _canonical(d, examples, control_variate)
    out, g_ug = _unigrad(d, control_variate)
    torch.testing.assert_close(g_ug, g_can, rtol=1e-10, atol=1e-12)
    nll = can.memory_nll(d["logp"], d["mask"], examples)
    torch.testing.assert_close(torch.as_tensor(out.objective, dtype=torch.float64), nll, rtol=1e-10, atol=1e-12)
    if scenario == "all_accepted" and control_variate:    # β_m = 1: every term (1 − β_m)∇ℓ vanishes
        assert torch.all(g_can == 0)
    else:
        assert torch.any(g_can != 0)


def test_micro_batches_accumulate_to_the_step():
    """β is the step's leave-one-out acceptance rate, whichever micro-batch a row is in."""
    d, examples = trice_batch(SCENARIOS["mixed"], 3)
    _, g_can = _canonical(d, examples)
    groups = d["group"].tolist()
    first = [r for r, g in enumerate(groups) if g in set(groups[:3])]
    value, g_ug = _unigrad(d, rows=[first, [r for r in range(len(groups)) if r not in first]])
    torch.testing.assert_close(g_ug, g_can, rtol=1e-10, atol=1e-12)
    assert value == pytest.approx(float(can.memory_nll(d["logp"], d["mask"], examples)), rel=1e-10)


def test_the_control_variate_changes_the_gradient_by_beta_times_the_proposals_score():
    """Can fail: with β computed on all M proposals (not leaving the example out) the identity breaks,
    and the difference from "no CV" is exactly −(1/M) Σ_m β_m ∇ℓ(z̃_m) on examples with a rationale."""
    d, examples = trice_batch(SCENARIOS["mixed"], 4)
    _, g_cv = _unigrad(d, True)
    _, g_plain = _unigrad(d, False)
    M, accepted = len(examples), [float(e["accepted"]) for e in examples]
    expect = torch.zeros_like(d["logp"])
    for m, ex in enumerate(examples):
        if ex["memory"] is not None:
            beta = (sum(accepted) - accepted[m]) / (M - 1)
            expect[ex["proposal"]] += beta * d["mask"][ex["proposal"]] / M
    torch.testing.assert_close(g_cv - g_plain, expect, rtol=1e-10, atol=1e-12)
    full = sum(accepted) / M
    wrong = torch.zeros_like(d["logp"])
    for ex in examples:
        if ex["memory"] is not None:
            wrong[ex["proposal"]] += full * d["mask"][ex["proposal"]] / M
    assert (g_cv - g_plain - wrong).abs().max() > 1e-3


def test_control_variate_is_checked():
    import unigrad as ug
    from unigrad.estimator.checks import ParameterError
    with pytest.raises(ParameterError, match="control_variate"):
        ug.method("trice", control_variate="yes")
