"""Entropy diagnostics: the sampler's per-token policy entropy and the covariance of log π and Â."""
from __future__ import annotations

import math

import pytest
import torch

from unigrad.diagnostics import logp_advantage_covariance
from unigrad.models import load_model
from unigrad.rollout import HFSampler


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


def _entropy_from_a_full_forward(model, prompt: list[int], completion: tuple[int, ...]) -> torch.Tensor:
    """−Σ_v p log p at each completion token's context, from one plain forward pass of prompt + completion."""
    ids = torch.tensor([prompt + list(completion)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    at = logits[len(prompt) - 1:len(prompt) - 1 + len(completion)]
    logp = torch.log_softmax(at, -1)
    return -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("temperature, top_k", [(0.0, 0), (0.7, 20)])
def test_sampler_entropy_is_the_policy_entropy_recomputed_from_the_logits(tiny, temperature, top_k):
    """Untempered (T = 1, before top-k) whatever the sampling temperature; left padding and the KV cache
    change nothing beyond float noise."""
    model, tok = tiny
    prompts = [[1, 5, 9, 13], [2, 7], [3, 4, 5, 6, 7, 8]]
    r = HFSampler(model, tok).sample(prompts, 2, 5, temperature=temperature, top_k=top_k, seed=1)
    assert r.entropy is not None and r.entropy.shape == r.mask.shape
    assert (r.entropy * (1 - r.mask)).abs().sum() == 0
    for row, completion in enumerate(r.completion_ids):
        expect = _entropy_from_a_full_forward(model, list(r.prompt_ids[row]), completion)
        torch.testing.assert_close(r.entropy[row, :len(completion)].double(), expect, atol=2e-4, rtol=0)
    tokens = r.mask.sum()
    assert r.entropy_metrics()["entropy"] == pytest.approx(float(r.entropy.sum() / tokens), rel=1e-5)
    assert 0 < r.entropy_metrics()["entropy"] <= math.log(model.config.vocab_size) + 1e-4


def test_covariance_metrics_against_a_direct_computation():
    gen = torch.Generator().manual_seed(0)
    B, T = 5, 6
    lengths = torch.tensor([6, 1, 4, 3, 5])
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    logp = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3 * mask
    adv = torch.randn(B, generator=gen, dtype=torch.float64)
    pairs = [(float(logp[b, t]), float(adv[b])) for b in range(B) for t in range(int(lengths[b]))]
    n = len(pairs)
    mean_l, mean_a = sum(p[0] for p in pairs) / n, sum(p[1] for p in pairs) / n
    cov = sorted(((l - mean_l) * (a - mean_a) for l, a in pairs), reverse=True)
    k = 3                                                          # ratio 0.1 of 19 tokens → ⌈1.9⌉ = 2, ratio 0.15 → 3
    got = logp_advantage_covariance(logp, adv, mask, top_ratio=0.15)
    assert got["entropy/cov_logp_adv"] == pytest.approx(sum(cov) / n, rel=1e-12)
    assert got["entropy/cov_top_mean"] == pytest.approx(sum(cov[:k]) / k, rel=1e-12)
    assert got["entropy/cov_top_fraction"] == pytest.approx(sum(c for c in cov[:k] if c > 0) / sum(c for c in cov if c > 0),
                                                            rel=1e-12)
    per_token = logp_advantage_covariance(logp, adv[:, None].expand(B, T), mask, top_ratio=0.15)
    assert per_token == pytest.approx(got, rel=1e-12)
    assert logp_advantage_covariance(logp, torch.ones(B, dtype=torch.float64), mask) == {}   # constant Â (SFT)


def test_estimator_reports_the_covariance():
    import unigrad as ug
    gen = torch.Generator().manual_seed(1)
    mask = torch.ones(4, 3, dtype=torch.float64)
    logp = -torch.rand(4, 3, generator=gen, dtype=torch.float64)
    batch = ug.Batch(logp=logp, mask=mask, reward=torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64),
                     group=torch.tensor([0, 0, 1, 1]))
    out = ug.method("rloo").loss(batch)
    direct = logp_advantage_covariance(logp, torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64), mask)
    assert out.metrics["entropy/cov_logp_adv"] == pytest.approx(direct["entropy/cov_logp_adv"], rel=1e-12)
