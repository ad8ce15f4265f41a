"""OPMD, AsymRE, MDPO, COPO, f-DPG: parameter domains, the fields they need, the answer ids, and
f-DPG's baseline as state (idempotent within a step, restored from a checkpoint)."""
from __future__ import annotations

import json
import math

import pytest
import torch

import unigrad as ug
from unigrad.estimator.advantages.consistency import answer_entropy
from unigrad.estimator.advantages.dpg import FDivergenceTarget
from unigrad.estimator.checks import ParameterError
from unigrad.experience import RolloutSource
from unigrad.methods.compose import MethodSpecError, build_objective
from unigrad.rewards.answers import NO_ANSWER, answer_id, answer_ids, answer_key
from unigrad.state import join, split, stateful


@pytest.mark.parametrize("name, params, parameter", [
    ("opmd", {"tau": -0.1}, "tau"), ("asymre", {"tau": float("nan")}, "tau"), ("opmd", {"tau": True}, "tau"),
    ("mdpo", {"advantage": "gae"}, "advantage"), ("mdpo", {"kl_estimate": "k2"}, "kl_estimate"),
    ("copo", {"c": 1.0}, "c"), ("copo", {"k": -1.0}, "k"), ("copo", {"eps_low": 1.5}, "eps_low"),
    ("copo", {"forced": "yes"}, "forced"),
    ("f-dpg", {"divergence": "hellinger"}, "divergence"), ("f-dpg", {"beta": 0.0}, "beta"),
    ("f-dpg", {"target": "energy"}, "target"), ("f-dpg", {"window": 0}, "window"),
    ("f-dpg", {"divergence": "reverse-kl", "target": "product"}, "divergence"),
])
def test_parameters_outside_their_domain_are_refused(name, params, parameter):
    with pytest.raises(ParameterError) as error:
        ug.method(name, **params)
    assert error.value.parameter == parameter


def test_a_config_names_the_bad_key():
    with pytest.raises(MethodSpecError, match=r"method\.tau must be ≥ 0"):
        build_objective({"name": "opmd", "tau": -1})


def test_rollouts_provide_what_the_methods_read():
    provided = RolloutSource.fields(False) | {"logp_ref"}
    for name in ("opmd", "asymre", "mdpo", "copo", "f-dpg"):
        assert ug.method(name).requires - {"logp", "mask"} <= provided, name


def _batch(B=4, T=3, step=0, steps=4, reward=None, answer=None, group=None, logp=None):
    mask = torch.ones(B, T, dtype=torch.float64)
    logp = torch.full((B, T), -1.0, dtype=torch.float64) if logp is None else logp
    return ug.Batch(logp=logp, mask=mask, logp_old=logp - 0.1, logp_ref=logp + 0.2,
                    reward=torch.tensor([0.0, 1.0, 1.0, 0.5][:B], dtype=torch.float64) if reward is None else reward,
                    group=torch.zeros(B, dtype=torch.long) if group is None else group,
                    extra={"train_step": torch.full((B,), step), "train_steps": torch.full((B,), steps),
                           "answer_id": torch.arange(B) if answer is None else answer})


def test_mdpo_schedule_needs_a_step_inside_the_run():
    with pytest.raises(ValueError, match="train_step < train_steps"):
        ug.method("mdpo").loss(_batch(step=4, steps=4))
    with pytest.raises(ValueError, match="train_step < train_steps"):
        ug.method("mdpo").loss(_batch(step=0, steps=0))


def test_mdpo_metrics_exist_and_are_finite():
    out = ug.method("mdpo").loss(_batch(step=3, steps=4))
    assert out.metrics["mdpo/inverse_step"] == pytest.approx(4.0)
    assert math.isfinite(out.metrics["mdpo/kl_old"]) and out.metrics["mdpo/kl_old"] >= 0


def test_mdpo_controlled_kl_has_no_gradient_where_the_policy_has_not_moved():
    """On π_k itself (the first epoch) the controlled estimate's gradient is 0; the plain one's is −1/t_k per token."""
    batch = _batch(step=1, steps=4)
    batch = batch.replace(logp_old=batch.logp)
    kl = {name: ug.method("mdpo", kl_estimate=name).terms[1].objective.advantage(batch).weight
          for name in ("controlled", "plain")}
    assert torch.all(kl["controlled"] == 0) and torch.allclose(kl["plain"], torch.full_like(kl["plain"], -4 / 3))


def test_copo_needs_two_rollouts_per_prompt():
    with pytest.raises(ValueError, match="at least 2 rollouts"):
        ug.method("copo").loss(_batch(group=torch.tensor([0, 0, 0, 1])))


def test_answer_entropy_in_bits():
    group = torch.tensor([5, 5, 5, 5, 9, 9, 9, 9, 2, 2])
    answer = torch.tensor([1, 2, 3, 4, 7, 7, 7, 7, 1, 2])
    torch.testing.assert_close(answer_entropy(answer, group),
                               torch.tensor([2.0] * 4 + [0.0] * 4 + [1.0] * 2, dtype=torch.float64))


def test_answer_ids_agree_when_the_answers_do():
    assert answer_key("so <answer>1,000</answer>") == answer_key("it is 1000.0") == repr(1000.0)
    assert answer_id("<answer>12</answer>") == answer_id("\\boxed{12}") != answer_id("<answer>13</answer>")
    assert answer_key("no digits here") == NO_ANSWER and answer_id("none") == answer_id("nothing")
    assert answer_id("<answer>x + y</answer>") == answer_id("<answer> x + y </answer>")
    ids = answer_ids(["3", "4", "3"])
    assert ids.dtype == torch.long and ids[0] == ids[2] != ids[1]


def _f_dpg_advantages(part, steps_and_calls):
    """Â at each (step, number of loss calls on that step) of a run."""
    out = []
    for step, calls in steps_and_calls:
        reward = torch.tensor([0.2, 1.0, 0.5, 0.8], dtype=torch.float64) * (step + 1)
        logp = torch.full((4, 3), -1.0, dtype=torch.float64) + 0.1 * torch.arange(4, dtype=torch.float64)[:, None]
        for _ in range(calls):
            weighted = part(_batch(step=step, reward=reward, logp=logp))
        out.append(weighted)
    return out


def test_f_dpg_baseline_is_updated_once_per_step():
    once = _f_dpg_advantages(FDivergenceTarget("js", window=3), [(0, 1), (1, 1), (2, 1)])
    again = _f_dpg_advantages(FDivergenceTarget("js", window=3), [(0, 3), (1, 2), (2, 1)])
    for a, b in zip(once, again):
        torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    assert once[0].metrics["baseline"] == 0.0                   # none yet: Â is the pseudo-reward
    assert once[1].metrics["baseline"] == pytest.approx(float(once[0].weight[1:].mean()))   # the window's last 3


def test_f_dpg_baseline_survives_a_checkpoint():
    part = FDivergenceTarget("kl", window=5)
    _f_dpg_advantages(part, [(0, 1), (1, 1)])
    states = stateful(ug.Estimator(advantage=part))
    assert list(states) == ["f_dpg_baseline"]
    tensors, values = split(states)                          # as the checkpoint writes them
    saved = join(tensors, json.loads(json.dumps(values)))["f_dpg_baseline"]
    resumed = FDivergenceTarget("kl", window=5)
    resumed.baseline.restore_state(saved)
    expect = _f_dpg_advantages(part, [(2, 1)])[0].weight
    torch.testing.assert_close(_f_dpg_advantages(resumed, [(2, 1)])[0].weight, expect, rtol=0, atol=0)


def test_f_dpg_product_target_pushes_down_rows_outside_the_support():
    """b(y) = 0: t = π/p = ∞, so JS's pseudo-reward is −log 2 there; a prompt without any y in the
    support has no target, Â = 0."""
    part = FDivergenceTarget("js", target="product")
    reward = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    weight = part(_batch(reward=reward, group=torch.tensor([0, 0, 1, 1]))).weight
    assert weight[0] == pytest.approx(-math.log(2.0)) and torch.all(weight[2:] == 0) and torch.isfinite(weight).all()
    with pytest.raises(ValueError, match="b\\(y\\) ≥ 0"):
        part(_batch(reward=torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64), step=1))
