"""Rollouts: HFSampler's log-probs equal the log-prob engine's, seeding, EOS, padding, prefill sharing."""
from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from unigrad.data.packing import collate
from unigrad.logprobs import token_logprobs
from unigrad.models import load_model
from unigrad.rollout import HFSampler, Rollouts, Sampler
from unigrad.rollout.hf import _pick


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


@pytest.fixture(scope="module")
def prompts(tiny):
    _, tok = tiny
    out = []
    for text in ["hi", "what is 2+2? think step by step", "x"]:   # different lengths: left padding
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    assert len({len(p) for p in out}) == 3
    return out


@pytest.fixture(scope="module")
def eos_model(tiny):
    """The tiny model made peaky (output layer x10) with EOS likely (its output row a frequent token's, x1.02)."""
    model, tok = tiny
    m = copy.deepcopy(model)
    with torch.no_grad():
        w = m.lm_head.weight
        w *= 10
        w[tok.eos_token_id] = w[214] * 1.02
    return m


def _policy_logprobs(model, rollouts, pad_id):
    return token_logprobs(model, collate(rollouts.sequences(), pad_id))


def test_protocol_and_layout(tiny, prompts):
    model, tok = tiny
    sampler = HFSampler(model, tok)
    assert isinstance(sampler, Sampler)
    r = sampler.sample(prompts, num_generations=2, max_new_tokens=5, seed=0)
    assert isinstance(r, Rollouts) and len(r) == 6 and r.num_prompts == 3
    assert r.group.tolist() == [0, 0, 1, 1, 2, 2]
    assert [tuple(p) for p in r.prompt_ids] == [tuple(p) for p in prompts for _ in range(2)]
    seqs = r.sequences()
    assert [s.group for s in seqs] == [0, 0, 1, 1, 2, 2]
    assert [s.meta["sample"] for s in seqs] == [0, 1] * 3
    assert r.logp_policy.shape == r.mask.shape == (6, max(len(c) for c in r.completion_ids))


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.7, top_k=20, top_p=0.9), dict(temperature=0)])
def test_logp_policy_equals_token_logprobs(eos_model, tiny, prompts, kw):
    _, tok = tiny
    r = HFSampler(eos_model, tok).sample(prompts, num_generations=4, max_new_tokens=12, seed=2, **kw)
    assert r.finished.any() and (r.lengths < 12).any()          # rows of different lengths (rows leave the batch)
    ref = _policy_logprobs(eos_model, r, tok.pad_token_id)
    torch.testing.assert_close(r.logp_policy, ref.detach(), atol=1e-4, rtol=0)
    if kw["temperature"] > 0:
        ref_t = token_logprobs(eos_model, collate(r.sequences(), tok.pad_token_id), temperature=kw["temperature"])
        torch.testing.assert_close(r.logp_temperature, ref_t.detach(), atol=1e-4, rtol=0)
    assert (r.logp_sample * (1 - r.mask)).abs().sum() == 0


def test_logp_sample_is_the_truncated_distribution():
    torch.manual_seed(0)
    z = torch.randn(4, 50)
    gen = torch.Generator().manual_seed(0)
    tok, lp = _pick(z, temperature=0.5, top_k=10, top_p=0.8, gen=gen)
    for b in range(4):
        zt = z[b] / 0.5
        keep = torch.zeros(50, dtype=torch.bool)
        order = zt.argsort(descending=True)[:10]
        probs = torch.softmax(zt[order], -1)
        n = int(((probs.cumsum(0) - probs) < 0.8).sum())
        keep[order[:n]] = True
        assert keep[tok[b]]
        q = torch.softmax(zt.masked_fill(~keep, float("-inf")), -1)
        assert lp[2, b].item() == pytest.approx(q[tok[b]].log().item(), abs=1e-5)
        assert lp[0, b].item() == pytest.approx(torch.log_softmax(z[b], -1)[tok[b]].item(), abs=1e-5)
        assert lp[1, b].item() == pytest.approx(torch.log_softmax(zt, -1)[tok[b]].item(), abs=1e-5)


def test_plain_sampling_logps_agree(tiny, prompts):
    model, tok = tiny
    r = HFSampler(model, tok).sample(prompts, 2, 6, seed=3)
    torch.testing.assert_close(r.logp_sample, r.logp_policy)
    torch.testing.assert_close(r.logp_temperature, r.logp_policy)


def test_seeded_sampling_is_reproducible(tiny, prompts):
    model, tok = tiny
    s = HFSampler(model, tok)
    a = s.sample(prompts, 2, 8, seed=7)
    b = s.sample(prompts, 2, 8, seed=7)
    c = s.sample(prompts, 2, 8, seed=8)
    assert a.completion_ids == b.completion_ids
    torch.testing.assert_close(a.logp_policy, b.logp_policy)
    assert a.completion_ids != c.completion_ids


def test_prefill_sharing_matches_separate_prefill(eos_model, tiny, prompts):
    _, tok = tiny
    shared = HFSampler(eos_model, tok, share_prefill=True).sample(prompts, 3, 10, seed=5)
    separate = HFSampler(eos_model, tok, share_prefill=False).sample(prompts, 3, 10, seed=5)
    assert shared.completion_ids == separate.completion_ids
    torch.testing.assert_close(shared.logp_policy, separate.logp_policy, atol=1e-5, rtol=0)


def test_chunked_batches_match_one_batch_in_greedy(tiny, prompts):
    model, tok = tiny
    one = HFSampler(model, tok).sample(prompts, 2, 6, temperature=0)
    chunked = HFSampler(model, tok, max_batch_size=2).sample(prompts, 2, 6, temperature=0)
    assert one.completion_ids == chunked.completion_ids
    torch.testing.assert_close(one.logp_policy, chunked.logp_policy, atol=1e-5, rtol=0)


def test_greedy_equals_generate(eos_model, tiny, prompts):
    _, tok = tiny
    r = HFSampler(eos_model, tok).sample(prompts, 1, 10, temperature=0)
    pad = tok.pad_token_id
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (L - len(p)) + p for p in prompts])
    att = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    out = eos_model.generate(input_ids=ids, attention_mask=att, do_sample=False, max_new_tokens=10,
                             eos_token_id=tok.eos_token_id, pad_token_id=pad)
    for b, row in enumerate(out[:, L:].tolist()):
        if tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id) + 1]
        assert tuple(row) == r.completion_ids[b]
    assert r.finished.any()
    assert (r.logp_sample * r.mask).abs().sum() == 0        # greedy: the sampling distribution is a point mass


def test_eos_stopping_and_padding(eos_model, tiny, prompts):
    _, tok = tiny
    eos = tok.eos_token_id
    r = HFSampler(eos_model, tok).sample(prompts, 4, 12, seed=2)
    assert r.finished.any() and not r.finished.all()
    for c, fin, m in zip(r.completion_ids, r.finished.tolist(), r.mask):
        assert eos not in c[:-1]                             # stops at the first EOS
        assert fin == (c[-1] == eos)
        assert fin or len(c) == 12                           # unfinished rows ran to max_new_tokens
        assert m.sum().item() == len(c)
    assert (r.logp_policy[r.mask == 0] == 0).all()
    seqs = r.sequences()
    assert all(s.meta.get("truncated", False) == (not s.meta["finished"]) for s in seqs)


def test_custom_stop_tokens_and_texts(tiny, prompts):
    model, tok = tiny
    greedy = HFSampler(model, tok).sample(prompts, 1, 6, temperature=0)
    stop = greedy.completion_ids[0][1]
    r = HFSampler(model, tok, stop_token_ids=[stop]).sample(prompts[:1], 1, 6, temperature=0)
    assert r.completion_ids[0] == greedy.completion_ids[0][:2] and bool(r.finished[0])
    assert isinstance(r.texts(tok)[0], str)


def test_training_mode_restored_and_args_checked(tiny, prompts):
    model, tok = tiny
    s = HFSampler(model, tok)
    model.train()
    try:
        s.sample(prompts[:1], 1, 2, seed=0)
        assert model.training
    finally:
        model.eval()
    with pytest.raises(ValueError, match="num_generations"):
        s.sample(prompts, 0, 4)
    with pytest.raises(ValueError, match="top_p"):
        s.sample(prompts, 1, 4, top_p=0)
    with pytest.raises(ValueError, match="empty"):
        s.sample([[]], 1, 4)
    s.update_weights(model)
    assert s.model is model


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_sampler_needs_vllm():
    from unigrad.rollout import VLLMSampler

    with pytest.raises(ImportError, match=r"pip install vllm"):
        VLLMSampler("some/model")


def test_inverse_cdf_sampling_draws_from_the_given_distribution():
    from unigrad.rollout.hf import _inverse_cdf_sample
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.2, 0.3], [0.1, 0.0, 0.0, 0.0, 0.9]])
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([_inverse_cdf_sample(probs.repeat(2000, 1)[i::2], gen) for i in range(2)])   # [2, 2000]
    for row in range(2):
        freq = torch.bincount(draws[row], minlength=5).double() / draws.shape[1]
        assert (freq[probs[row] == 0] == 0).all()                   # never a zero-probability token
        assert float((freq - probs[row].double()).abs().max()) < 0.04  # 2000 draws: 4 standard errors ≈ 0.045
