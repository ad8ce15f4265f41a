"""Model merging: plain and Fisher-weighted averaging, the diagonal Fisher, ``unigrad merge``."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from unigrad.merge import average_merge, diagonal_fisher, fisher_merge
from unigrad.models import tiny_random_model, tiny_tokenizer
from unigrad.data.packing import collate
from unigrad.logprobs import token_logprobs
from unigrad.tokens import Sequence


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _seqs(tok, texts):
    out = []
    for g, (p, c) in enumerate(texts):
        out.append(Sequence(tuple(tok(p)["input_ids"]), tuple(tok(c)["input_ids"]) + (tok.eos_token_id,), group=g))
    return out


TEXTS = [("copy: abc", "abc"), ("copy: hello", "hello"), ("upper: xy", "XY")]


def _params(m):
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def test_merging_identical_models_gives_the_same_model(tok):
    a = tiny_random_model(seed=3, tokenizer=tok)
    b = copy.deepcopy(a)
    fa = diagonal_fisher(a, tok, _seqs(tok, TEXTS[:2]))
    fb = diagonal_fisher(b, tok, _seqs(tok, TEXTS[1:]))
    for merged in (fisher_merge([a, b], [fa, fb]), average_merge([a, b]), fisher_merge([a, b], [fa, fb], normalize=True)):
        for n, p in merged.named_parameters():
            torch.testing.assert_close(p, dict(a.named_parameters())[n], rtol=1e-6, atol=1e-7)
    assert merged is not a


def test_fisher_weights_favour_the_model_with_larger_fisher_per_parameter():
    a, b = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, 1.0]]))
        b.weight.copy_(torch.tensor([[-1.0, -1.0]]))
    fa = {"weight": torch.tensor([[9.0, 1.0]])}     # a is sure about w0, b about w1
    fb = {"weight": torch.tensor([[1.0, 3.0]])}
    merged = fisher_merge([a, b], [fa, fb], eps=1e-12)
    torch.testing.assert_close(merged.weight, torch.tensor([[(9 - 1) / 10, (1 - 3) / 4]]))
    torch.testing.assert_close(average_merge([a, b]).weight, torch.zeros(1, 2))
    # merging weights λ multiply the Fishers; equal Fishers give the λ-weighted average
    same = {"weight": torch.ones(1, 2)}
    torch.testing.assert_close(fisher_merge([a, b], [same, same], weights=[3, 1]).weight, torch.full((1, 2), 0.5))
    # a parameter neither Fisher sees falls back to the plain average through the floor
    zero = {"weight": torch.zeros(1, 2)}
    torch.testing.assert_close(fisher_merge([a, b], [zero, zero]).weight, torch.zeros(1, 2))
    # normalize: scaling one Fisher by a constant changes nothing
    big = {"weight": fa["weight"] * 100}
    torch.testing.assert_close(fisher_merge([a, b], [big, fb], eps=1e-12, normalize=True).weight,
                               fisher_merge([a, b], [fa, fb], eps=1e-12, normalize=True).weight)


def test_diagonal_fisher_is_the_mean_of_per_example_squared_gradients(tok):
    model = tiny_random_model(seed=1, tokenizer=tok)
    seqs = _seqs(tok, TEXTS)
    fisher = diagonal_fisher(model, tok, seqs)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for s in seqs:
        model.zero_grad()
        token_logprobs(model, collate([s], tok.pad_token_id)).sum().backward()
        for n, p in model.named_parameters():
            expected[n] += p.grad ** 2 / len(seqs)
    assert set(fisher) == set(expected)
    for n in expected:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-4, atol=1e-10)
    # per-example squares, not the square of the mean gradient
    assert float(fisher["lm_head.weight"].sum()) > 0


def test_sampled_label_fisher_is_finite_and_positive(tok):
    model = tiny_random_model(seed=2, tokenizer=tok)
    fisher = diagonal_fisher(model, tok, _seqs(tok, TEXTS), labels="sampled", max_new_tokens=6)
    total = sum(float(f.sum()) for f in fisher.values())
    assert total > 0 and all(torch.isfinite(f).all() for f in fisher.values())


def test_merge_rejects_mismatched_models(tok):
    a = tiny_random_model(seed=0, tokenizer=tok)
    b = tiny_random_model(seed=0, tokenizer=tok, hidden=32)
    with pytest.raises(ValueError, match="shape"):
        average_merge([a, b])
    with pytest.raises(ValueError, match="Fishers for 2 models"):
        fisher_merge([a, a], [{}])


def test_merge_cli_writes_a_loadable_merged_model(tmp_path):
    from unigrad.cli import main
    from unigrad.models import load_model, save_model

    tok = tiny_tokenizer()
    a, b = tiny_random_model(seed=0, tokenizer=tok), tiny_random_model(seed=1, tokenizer=tok)
    save_model(a, tok, tmp_path / "a")
    save_model(b, tok, tmp_path / "b")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in TEXTS))
    assert main(["merge", "--method", "average", "--models", str(tmp_path / "a"), str(tmp_path / "b"),
                 "--out", str(tmp_path / "avg")]) == 0
    assert main(["merge", "--method", "fisher", "--models", str(tmp_path / "a"), str(tmp_path / "b"),
                 "--data", str(data), str(data), "--format", "sft", "--out", str(tmp_path / "fish")]) == 0
    avg, _ = load_model(str(tmp_path / "avg"))
    fish, _ = load_model(str(tmp_path / "fish"))
    w = "model.layers.0.mlp.up_proj.weight"
    pa, pb = dict(a.named_parameters())[w], dict(b.named_parameters())[w]
    torch.testing.assert_close(dict(avg.named_parameters())[w], (pa + pb) / 2)
    pf = dict(fish.named_parameters())[w]
    lo, hi = torch.minimum(pa, pb), torch.maximum(pa, pb)
    assert bool(((pf >= lo - 1e-6) & (pf <= hi + 1e-6)).all())     # a convex combination per parameter
    assert not torch.allclose(pf, (pa + pb) / 2)
    # one data file for two models is a user error (exit 2, no traceback)
    assert main(["merge", "--method", "fisher", "--models", str(tmp_path / "a"), str(tmp_path / "b"),
                 "--data", str(data), "--out", str(tmp_path / "x")]) == 2
