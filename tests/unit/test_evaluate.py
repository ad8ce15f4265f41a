"""Evaluation: the pass@k estimator against enumeration over subsets, and evaluate_prompts on the tiny model."""
from __future__ import annotations

import itertools
import json
import math

import pytest

from unigrad.evaluate import evaluate_prompts, format_table, mean_pass_at_k, pass_at_k
from unigrad.models import load_model
from unigrad.tasks.arithmetic import make_splits


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (the first c correct) holding at least one correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_enumeration_over_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_closed_forms_and_stability():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)                      # pass@1 = c / n
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 6, 5) == 1.0                                     # n - c < k
    # large n: the binomials overflow floats, the product form does not
    n, c, k = 2000, 7, 100
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-10)
    assert mean_pass_at_k([0, 1, 2], 4, 2) == pytest.approx((0 + 0.5 + 5 / 6) / 3)


def test_pass_at_k_rejects_bad_arguments():
    for args in [(3, 1, 4), (3, 4, 1), (3, 1, 0)]:
        with pytest.raises(ValueError):
            pass_at_k(*args)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


def nonempty(prompt, completion, answer, **meta):
    return float(len(completion) > 0)


def test_evaluate_prompts_on_the_tiny_model(tiny):
    model, tok = tiny
    records = make_splits(0, 3, seed=0)[1]
    out = evaluate_prompts(model, tok, records, nonempty, k=[1, 2], num_samples=3, max_new_tokens=4,
                           batch_size=4, seed=1)
    assert out["num_prompts"] == 3 and out["num_samples"] == 3
    for key in ("accuracy", "reward_mean", "pass@1", "pass@2", "sample_accuracy", "sample_reward_mean",
                "best_of_n_accuracy", "finished_frac", "seconds"):
        assert 0.0 <= out[key] <= 1.0 or key == "seconds"
    assert out["accuracy"] == 1.0 and out["pass@2"] == 1.0     # the tiny model writes something every time
    assert len(out["records"]) == 3
    rec = out["records"][0]
    assert rec["prompt"] == records[0]["prompt"] and rec["answer"] == records[0]["answer"]
    assert isinstance(rec["completion"], str) and rec["reward"] == 1.0 and rec["correct"]
    assert len(rec["samples"]) == 3 and rec["num_correct"] == 3 and 0 <= rec["best_of_n"] < 3
    json.dumps(out)                                             # JSON-ready
    assert "pass@2" in format_table(out)
    again = evaluate_prompts(model, tok, records, nonempty, k=[1, 2], num_samples=3, max_new_tokens=4,
                             batch_size=4, seed=1)
    assert [r["samples"] for r in again["records"]] == [r["samples"] for r in out["records"]]   # seeded


def test_evaluate_prompts_pass_at_k_and_best_of_n_follow_the_rewards(tiny):
    """A reward true for exactly one of the n samples of a prompt: pass@1 = 1/n, pass@n = 1, and
    best-of-n picks that sample when it is the selector, whatever the main reward says."""
    model, tok = tiny
    n = 4
    out = evaluate_prompts(model, tok, ["a", "bb"], nonempty, k=[1, n], num_samples=n, max_new_tokens=3, seed=0)

    def first_sample_only(prompt, completion, answer, **meta):
        texts = [s["completion"] for s in samples[prompt]]
        return float(completion == texts[0] and texts.count(completion) == 1)

    samples = {r["prompt"]: r["samples"] for r in out["records"]}
    if any(len({s["completion"] for s in v}) < n for v in samples.values()):
        pytest.skip("repeated samples: the one-correct construction needs distinct completions")
    res = evaluate_prompts(model, tok, ["a", "bb"], first_sample_only, k=[1, n], num_samples=n, max_new_tokens=3,
                           seed=0, select_reward=nonempty)
    assert res["pass@1"] == pytest.approx(1 / n) and res[f"pass@{n}"] == 1.0
    assert res["best_of_n_accuracy"] == 1.0   # nonempty ties → first sample, the correct one
    inverted = evaluate_prompts(model, tok, ["a", "bb"], first_sample_only, k=1, num_samples=n, max_new_tokens=3,
                                seed=0, select_reward=lambda p, c, a, **m: 1.0 - first_sample_only(p, c, a))
    assert inverted["best_of_n_accuracy"] == 0.0


def test_greedy_only_when_no_samples(tiny):
    model, tok = tiny
    out = evaluate_prompts(model, tok, ["hi"], nonempty, k=None, num_samples=0, max_new_tokens=2)
    assert "num_samples" not in out and "samples" not in out["records"][0]
    with pytest.raises(ValueError):
        evaluate_prompts(model, tok, ["hi"], nonempty, k=[4], num_samples=2, max_new_tokens=2)
