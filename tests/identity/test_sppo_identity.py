"""Gradient identity for sppo: a step of SPPO's iteration t — every sample of π_t with its win rate, π_t's
log-probs fixed when the samples were made — has the gradient (float64, tight) of Wu et al.'s Algorithm 1
regression (log π(y)/π_t(y) − η(P̂(y ≻ π_t) − ½))², written sample by sample with probabilities."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ → `canonical` importable

from canonical import nash as can  # noqa: E402


def _longer(prompts, a, b, answers=None):
    return torch.tensor([1.0 if len(x) > len(y) else 0.0 if len(x) < len(y) else 0.5 for x, y in zip(a, b)])


def _experience(tmp_path, seed):
    from unigrad.config import IterationsConfig, RolloutConfig
    from unigrad.experience.iterations import IterationPairs
    from unigrad.models import tiny_random_model, tiny_tokenizer
    from unigrad.reference import snapshot_logprobs
    from unigrad.rollout.hf import HFSampler
    tok, model = tiny_tokenizer(), tiny_random_model(seed=seed)
    examples = [SimpleNamespace(prompt_ids=tuple(tok.encode(f"q {i} =")), prompt_text=f"q{i}", answer=None,
                                demonstration=None, extra={}) for i in range(3)]
    producer = IterationPairs(examples, HFSampler(model, tok), _longer,
                              lambda rows: snapshot_logprobs(model, rows, tok.pad_token_id, 4),
                              RolloutConfig(max_new_tokens=5), IterationsConfig(steps=2, samples=3), tok, 4,
                              model, tmp_path, seed=seed, shape="samples")
    first = producer(1)
    again = IterationPairs(examples, None, None, None, RolloutConfig(max_new_tokens=5), IterationsConfig(steps=2, samples=3),
                           tok, 4, model, tmp_path, seed=seed, shape="samples")(1)   # read back from disk
    assert [s.completion_ids for s in again.sequences] == [s.completion_ids for s in first.sequences]
    assert torch.equal(again.fields["win_rate"], first.fields["win_rate"])
    return first


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("beta", [0.5, 0.05])
def test_sppo_step_has_the_gradient_of_the_regression_onto_win_rates(tmp_path, seed, beta):
    import unigrad as ug
    experience = _experience(tmp_path, seed)
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
    canonical = can.sppo_loss(torch.exp(reference), mask, torch.exp(logp_ref), win, 1 / beta)
    (theirs,) = torch.autograd.grad(canonical, reference)
    torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)
    assert math.isclose(float(out.objective), float(canonical.detach()), rel_tol=1e-10)
