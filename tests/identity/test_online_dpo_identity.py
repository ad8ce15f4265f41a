"""Gradient identity for online-dpo: the pairs the on-policy producer emits, trained with unigrad's
``online-dpo``, have the gradient (float64, tight) of the canonical DPO loss (tests/canonical/preference.py,
Rafailov et al. eq. 7) on the pairs ranked as Guo et al. 2024 rank them (Alg. 1: per prompt two policy
samples, chosen = the one the preference model prefers; here ties, P = ½, dropped). Both sides
differentiate the same per-sample log-prob leaves."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ → `canonical` importable

from canonical import preference as can  # noqa: E402

SEEDS = [0, 1, 2]
T = 6


def _setting(seed: int):
    """8 prompts; distinct completion texts; per-sample random log-probs; P(y ≻ y′) with some ties."""
    from unigrad.models import tiny_tokenizer
    from unigrad.rollout.base import Rollouts
    tokenizer = tiny_tokenizer()
    gen = torch.Generator().manual_seed(seed)
    texts = [f"s{k}" + "x" * int(torch.randint(0, T - 2, (1,), generator=gen)) for k in range(16)]
    p_table = {}

    class Sampler:
        def sample(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, seed=None):
            ids = [tuple(tokenizer.encode(texts[r], add_special_tokens=False)) for r in range(len(prompts) * n)]
            width = max(len(c) for c in ids)
            mask = torch.tensor([[1.0] * len(c) + [0.0] * (width - len(c)) for c in ids])
            return Rollouts([tuple(p) for p in prompts for _ in range(n)], ids, -mask, -mask, -mask, mask,
                            torch.arange(len(prompts)).repeat_interleave(n), torch.ones(len(ids), dtype=torch.bool), n)

    def prefer(prompts, a, b, answers=None):
        p = torch.rand(len(a), generator=gen, dtype=torch.float64)
        p[torch.rand(len(a), generator=gen) < 0.3] = 0.5
        p_table.update({(x, y): float(v) for x, y, v in zip(a, b, p)})
        return p

    examples = [SimpleNamespace(prompt_ids=(259, 40 + i), prompt_text=f"q{i}", answer=None, extra={}) for i in range(8)]
    lengths = torch.tensor([len(tokenizer.encode(t, add_special_tokens=False)) for t in texts])
    mask = (torch.arange(T)[None] < lengths[:, None]).to(torch.float64)
    logp = -2.0 * F.softplus(torch.randn(16, T, generator=gen, dtype=torch.float64)) * mask
    logp_ref = (logp + 0.5 * torch.randn(16, T, generator=gen, dtype=torch.float64)) * mask
    rollout = SimpleNamespace(num_generations=2, max_new_tokens=T, temperature=1.0, top_p=1.0, top_k=0, epochs=1)
    return tokenizer, Sampler(), prefer, p_table, examples, texts, mask, logp, logp_ref, rollout


def _canonical_pairs(texts, p_table):
    """Guo et al. Alg. 1 on prompt i's samples (texts[2i], texts[2i+1]): (chosen, rejected) sample indices."""
    chosen, rejected = [], []
    for i in range(8):
        a, b = 2 * i, 2 * i + 1
        p = p_table[(texts[a], texts[b])]
        if p == 0.5:
            continue
        w, l = (a, b) if p > 0.5 else (b, a)
        chosen.append(w)
        rejected.append(l)
    return chosen, rejected


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_online_dpo_on_the_emitted_pairs_is_canonical_dpo_on_the_ranked_samples(seed, beta):
    import unigrad as ug
    from unigrad.experience.preference_pairs import PreferencePairs
    tokenizer, sampler, prefer, p_table, examples, texts, mask, logp, logp_ref, rollout = _setting(seed)
    experience = PreferencePairs(examples, sampler, prefer, rollout, tokenizer, batch_size=8, ties="drop", seed=seed)(0)
    chosen, rejected = _canonical_pairs(texts, p_table)
    assert chosen, "the seed gave no untied pair"

    # unigrad: the emitted rows, each row's log-probs the leaf of its sample
    index = {t: k for k, t in enumerate(texts)}
    rows = torch.tensor([index[tokenizer.decode(list(s.completion_ids))] for s in experience.sequences])
    leaf = logp.clone().requires_grad_(True)
    batch = ug.Batch(logp=leaf[rows], mask=mask[rows], logp_ref=logp_ref[rows],
                     group=torch.tensor([s.group for s in experience.sequences]),
                     sign=torch.tensor([s.sign for s in experience.sequences], dtype=torch.float64))
    out = ug.method("online-dpo", beta=beta).loss(batch)
    (grad,) = torch.autograd.grad(out.loss, leaf)

    # canonical: DPO on the pairs ranked from the raw samples and the preference
    leaf_c = logp.clone().requires_grad_(True)
    sel = torch.tensor(chosen + rejected)
    group = torch.cat([torch.arange(len(chosen)), torch.arange(len(chosen))]) * 3 + 11
    sign = torch.cat([torch.ones(len(chosen)), -torch.ones(len(chosen))]).to(torch.float64)
    value = can.dpo_loss(leaf_c[sel], mask[sel], logp_ref[sel], group, sign, beta=beta)
    (grad_c,) = torch.autograd.grad(value, leaf_c)

    assert len(experience.units) == len(chosen)
    torch.testing.assert_close(grad, grad_c, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.objective.to(torch.float64), value.detach(), rtol=1e-10, atol=1e-12)
    assert float(grad.abs().sum()) > 0
