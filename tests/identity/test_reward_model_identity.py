"""Gradient identity for `reward-model`: ∂(unigrad loss)/∂score == ∂(canonical Bradley–Terry loss)/∂score.

The canonical loss (tests/canonical/preference.py, ``reward_model_loss``) is written from Ouyang et al.
2022 with probabilities and a loop over pairs, and never imports unigrad. Scores are float64 leaves.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _batches import random_pair_batch  # noqa: E402
from canonical import preference as can  # noqa: E402

CASES = [{}, {"margin": 0.5}, {"center_rewards_coefficient": 0.01}, {"margin": 1.0, "center_rewards_coefficient": 0.1}]


def _data(seed: int, pair_margin: bool = False) -> dict:
    d = random_pair_batch(seed)
    gen = torch.Generator().manual_seed(100 + seed)
    d["score"] = 2.0 * torch.randn(d["sign"].shape[0], generator=gen, dtype=torch.float64)
    if pair_margin:   # one value per pair, on both of its rows
        per_group = {g: float(torch.rand((), generator=gen)) for g in d["group"].tolist()}
        d["margin"] = torch.tensor([per_group[g] for g in d["group"].tolist()], dtype=torch.float64)
    return d


def _batch(d: dict, score: torch.Tensor):
    import unigrad as ug
    extra = {"score": score, **({"margin": d["margin"]} if "margin" in d else {})}
    return ug.Batch(logp=torch.zeros_like(d["mask"]), mask=d["mask"], group=d["group"], sign=d["sign"], extra=extra)


def _both(d: dict, params: dict):
    import unigrad as ug
    s_can = d["score"].clone().requires_grad_(True)
    value = can.reward_model_loss(s_can, d["group"], d["sign"], pair_margin=d.get("margin"), **params)
    (g_can,) = torch.autograd.grad(value, s_can)
    s_ug = d["score"].clone().requires_grad_(True)
    out = ug.method("reward-model", **params).loss(_batch(d, s_ug))
    (g_ug,) = torch.autograd.grad(out.loss, s_ug)
    return value.detach(), g_can, out, g_ug


@pytest.mark.parametrize("params", CASES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "plain")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_and_value_equal_the_canonical_bradley_terry_loss(params, seed):
    value, g_can, out, g_ug = _both(_data(seed), params)
    torch.testing.assert_close(g_ug, g_can, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.objective, value, rtol=1e-12, atol=1e-12)
    assert g_ug.abs().sum() > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_a_per_pair_margin_from_the_data_is_added_to_the_constant(seed):
    d = _data(seed, pair_margin=True)
    value, g_can, out, g_ug = _both(d, {"margin": 0.25})
    torch.testing.assert_close(g_ug, g_can, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.objective, value, rtol=1e-12, atol=1e-12)
    plain, *_ = _both({k: v for k, v in d.items() if k != "margin"}, {"margin": 0.25})
    assert value > plain                       # a larger margin is harder to win by


def test_canonical_side_known_values():
    group, sign = torch.tensor([7, 7, 3, 3]), torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    equal = torch.zeros(4, dtype=torch.float64)
    torch.testing.assert_close(can.reward_model_loss(equal, group, sign), torch.log(torch.tensor(2.0, dtype=torch.float64)))
    s = torch.tensor([3.0, 1.0, 0.0, 0.5], dtype=torch.float64)   # margins 2 and 0.5
    expected = (torch.log1p(torch.exp(torch.tensor(-2.0))) + torch.log1p(torch.exp(torch.tensor(-0.5)))) / 2
    torch.testing.assert_close(can.reward_model_loss(s, group, sign), expected.double())


def test_micro_batches_add_up_to_the_whole_step_and_metrics_count_ties_half():
    import unigrad as ug
    d = _data(3)
    objective = ug.method("reward-model", margin=0.3)
    s = d["score"].clone().requires_grad_(True)
    whole = _batch(d, s)
    (g_whole,) = torch.autograd.grad(objective.loss(whole).loss, s)
    groups = torch.unique(d["group"])
    first = torch.isin(d["group"], groups[:2])
    s2 = d["score"].clone().requires_grad_(True)
    step = _batch(d, s2)
    total = sum(objective.loss(step.micro_batch(rows.nonzero().flatten())).loss for rows in (first, ~first))
    (g_parts,) = torch.autograd.grad(total, s2)
    torch.testing.assert_close(g_parts, g_whole, rtol=1e-12, atol=1e-12)
    tie = ug.Batch(logp=torch.zeros(4, 1), mask=torch.ones(4, 1), group=torch.tensor([0, 0, 1, 1]),
                   sign=torch.tensor([1.0, -1.0, 1.0, -1.0]), extra={"score": torch.tensor([1.0, 1.0, 2.0, 0.0])})
    assert objective.loss(tie).metrics["pair_accuracy"] == 0.75


def test_parameters_outside_their_domain_are_refused():
    import unigrad as ug
    with pytest.raises(ValueError, match="margin"):
        ug.method("reward-model", margin=-1.0)
    with pytest.raises(ValueError, match="center_rewards_coefficient"):
        ug.method("reward-model", center_rewards_coefficient=-0.1)
