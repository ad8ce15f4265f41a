"""logprobs.best_other.token_logprobs_with_top_other against a naive full-logits computation (float64)."""
import random

import pytest
import torch

from unigrad.data.packing import collate
from unigrad.logprobs import token_logprobs, token_logprobs_with_top_other
from unigrad.models import tiny_random_model
from unigrad.tokens import Sequence

VOCAB = 260


@pytest.fixture(scope="module")
def model64():
    return tiny_random_model(seed=3, dtype=torch.float64)


def _sequences(seed=0, n=5):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p, c = rng.randint(1, 8), rng.randint(0 if i == n - 1 else 1, 10)   # the last may be empty
        out.append(Sequence(tuple(rng.randrange(VOCAB) for _ in range(p)),
                            tuple(rng.randrange(VOCAB) for _ in range(c)), group=i, sign=1.0 if i % 2 else -1.0))
    return out


def _naive(model, seqs):
    """Each sequence alone, full logits: (log p(y_t), log max_{v≠y_t} p(v)), [B, T] zero-padded."""
    T = max(len(s.completion_ids) for s in seqs)
    lps, tops = [], []
    for s in seqs:
        lp_row = torch.zeros(T, dtype=torch.float64)
        top_row = torch.zeros(T, dtype=torch.float64)
        p, c = len(s.prompt_ids), len(s.completion_ids)
        if c:
            ids = torch.tensor([s.prompt_ids + s.completion_ids])
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0], -1)[p - 1:p - 1 + c]   # [c, V]
            target = ids[0, p:p + c]
            lp = logprobs.gather(-1, target[:, None]).squeeze(-1)
            other = logprobs.clone()
            other[torch.arange(c), target] = float("-inf")
            top = other.max(-1).values
            lp_row = torch.cat([lp, lp_row[c:]])
            top_row = torch.cat([top, top_row[c:]])
        lps.append(lp_row)
        tops.append(top_row)
    return torch.stack(lps), torch.stack(tops)


def _grads(model, fn):
    model.zero_grad(set_to_none=True)
    lp, top = fn()
    w = torch.linspace(0.5, 1.5, lp.shape[1], dtype=torch.float64)
    ((lp * w).sum() - 2.0 * (top * w.flip(0)).sum()).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return lp.detach(), top.detach(), grads


@pytest.mark.parametrize("packed, chunk", [(False, 1024), (False, 3), (True, 4)])
def test_matches_naive_values_and_gradients(model64, packed, chunk):
    seqs = _sequences()
    tb = collate(seqs, pad_id=0, packed=packed)
    lp_n, top_n, g_n = _grads(model64, lambda: _naive(model64, seqs))
    lp, top, g = _grads(model64, lambda: token_logprobs_with_top_other(model64, tb, chunk_size=chunk))
    torch.testing.assert_close(lp, lp_n, atol=1e-10, rtol=0)
    torch.testing.assert_close(top, top_n, atol=1e-10, rtol=0)
    assert g.keys() == g_n.keys()
    for name in g:
        torch.testing.assert_close(g[name], g_n[name], atol=1e-9, rtol=0, msg=lambda m: f"{name}: {m}")
    mask = tb.completion_mask > 0
    assert (top[~mask] == 0).all() and (lp[~mask] == 0).all()
    # the competing token is never the target; log p(y) + log p(v*) ≤ log 1 jointly
    assert (torch.logaddexp(lp, top)[mask] <= 1e-12).all()


def test_logp_equals_token_logprobs(model64):
    tb = collate(_sequences(seed=1), pad_id=0)
    with torch.no_grad():
        lp, _ = token_logprobs_with_top_other(model64, tb, chunk_size=5)
        torch.testing.assert_close(lp, token_logprobs(model64, tb, chunk_size=5), atol=1e-12, rtol=0)


def test_float32_model_and_bad_arguments():
    model = tiny_random_model(seed=0)
    tb = collate(_sequences(seed=2), pad_id=0)
    lp, top = token_logprobs_with_top_other(model, tb)
    assert lp.dtype == top.dtype == torch.float32 and top.requires_grad
    with pytest.raises(ValueError):
        token_logprobs_with_top_other(model, tb, chunk_size=0)
    with pytest.raises(ValueError):
        token_logprobs_with_top_other(model, tb, temperature=0.0)
