"""Gradient identity for the iteration methods against π_t, on the iterations producer's own data:

- dno: a step of DNO's iteration t — pairs made from π_t's samples by the margin rule, with π_t's
  log-probs fixed as the reference — has the gradient (float64, tight) of Rosset et al.'s Algorithm 2
  objective, −log σ(η log π(y⁺)/π_t(y⁺) − η log π(y⁻)/π_t(y⁻)), written pair by pair with probabilities
  (tests/canonical/preference.py's DPO loss is the same form);
- sppo: a step of SPPO's iteration t — every sample of π_t with its win rate — has the gradient of Wu et
  al.'s Algorithm 1 regression (log π(y)/π_t(y) − η(P̂(y ≻ π_t) − ½))², sample by sample with probabilities
  (tests/canonical/nash.py)."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ → `canonical` importable

from canonical import nash as can_nash  # noqa: E402
from canonical import preference as can  # noqa: E402


def _longer(prompts, a, b, answers=None):
    return torch.tensor([1.0 if len(x) > len(y) else 0.0 if len(x) < len(y) else 0.5 for x, y in zip(a, b)])


def _experience(tmp_path, seed, shape="pairs", prompts=5, batch=3):
    from unigrad.config import IterationsConfig, RolloutConfig
    from unigrad.experience.iterations import IterationPairs
    from unigrad.models import tiny_random_model, tiny_tokenizer
    from unigrad.reference import snapshot_logprobs
    from unigrad.rollout.hf import HFSampler
    tok, model = tiny_tokenizer(), tiny_random_model(seed=seed)
    examples = [SimpleNamespace(prompt_ids=tuple(tok.encode(f"q {i} =")), prompt_text=f"q{i}", answer=None,
                                demonstration=None, extra={}) for i in range(prompts)]
    settings = IterationsConfig(steps=2, samples=3, margin=0.4)
    producer = IterationPairs(examples, HFSampler(model, tok), _longer,
                              lambda rows: snapshot_logprobs(model, rows, tok.pad_token_id, 4),
                              RolloutConfig(max_new_tokens=5), settings, tok, batch, model, tmp_path, seed=seed, shape=shape)
    made = producer(1)
    again = IterationPairs(examples, None, None, None, RolloutConfig(max_new_tokens=5), settings, tok, batch, model,
                           tmp_path, seed=seed, shape=shape)(1)   # read back from the iteration's files
    assert [s.completion_ids for s in again.sequences] == [s.completion_ids for s in made.sequences]
    return made


def _pair_loop_loss(logp, logp_ref, mask, sign, group, eta):
    """(1/P) Σ_pairs −log σ(η [log π(y⁺)/π_t(y⁺) − log π(y⁻)/π_t(y⁻)]), σ written as 1/(1 + e^{−z})."""
    total, pairs = 0.0, sorted(set(group.tolist()))
    for g in pairs:
        rows = (group == g).nonzero().flatten().tolist()
        plus = next(r for r in rows if sign[r] > 0)
        minus = next(r for r in rows if sign[r] < 0)
        ratio = lambda r: ((logp[r] - logp_ref[r]) * mask[r]).sum()
        z = eta * (ratio(plus) - ratio(minus))
        total = total - torch.log(1 / (1 + torch.exp(-z)))
    return total / len(pairs)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eta", [0.1, 0.5])
def test_dno_step_has_the_gradient_of_the_iteration_objective_against_pi_t(tmp_path, seed, eta):
    import unigrad as ug
    experience = _experience(tmp_path, seed)
    whole = experience.step_batch("cpu")
    mask, sign, group = whole.mask.double(), whole.sign.double(), whole.group
    logp_ref = whole.logp_ref.double()
    assert float(logp_ref.abs().sum()) > 0                     # π_t's log-probs of the pairs, fixed at sampling
    leaf = (-torch.rand(mask.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 * mask)
    leaf.requires_grad_(True)
    out = ug.method("dno", beta=eta).loss(ug.Batch(logp=leaf * mask, mask=mask, logp_ref=logp_ref, group=group,
                                                   sign=sign))
    (mine,) = torch.autograd.grad(out.loss, leaf)
    reference = leaf.detach().clone().requires_grad_(True)
    canonical = _pair_loop_loss(reference * mask, logp_ref, mask, sign, group, eta)
    (theirs,) = torch.autograd.grad(canonical, reference)
    torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)
    assert math.isclose(float(out.objective), float(canonical.detach()), rel_tol=1e-10)
    same = can.dpo_loss(reference * mask, mask, logp_ref, group, sign, eta)
    assert math.isclose(float(same.detach()), float(canonical.detach()), rel_tol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("beta", [0.5, 0.05])
def test_sppo_step_has_the_gradient_of_the_regression_onto_win_rates(tmp_path, seed, beta):
    import unigrad as ug
    experience = _experience(tmp_path, seed, shape="samples", prompts=3, batch=4)
    whole = experience.step_batch("cpu")
    mask, logp_ref = whole.mask.double(), whole.logp_ref.double()
    win = experience.fields["win_rate"].double()
    assert whole.sign.eq(1).all() and float(logp_ref.abs().sum()) > 0 and ((win >= 0) & (win <= 1)).all()
    leaf = (-torch.rand(mask.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 * mask)
    leaf.requires_grad_(True)
    out = ug.method("sppo", beta=beta).loss(ug.Batch(logp=leaf * mask, mask=mask, logp_ref=logp_ref,
                                                     group=whole.group, extra={"win_rate": win}))
    (mine,) = torch.autograd.grad(out.loss, leaf)
    reference = leaf.detach().clone().requires_grad_(True)
    canonical = can_nash.sppo_loss(torch.exp(reference), mask, torch.exp(logp_ref), win, 1 / beta)
    (theirs,) = torch.autograd.grad(canonical, reference)
    torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)
    assert math.isclose(float(out.objective), float(canonical.detach()), rel_tol=1e-10)
