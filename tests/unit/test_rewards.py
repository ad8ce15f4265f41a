"""Rewards: answer extraction, verifiable rewards, loading, robust scoring, reward models, ensembles."""
from __future__ import annotations

import math

import pytest
import torch

from unigrad.rewards import (
    Ensemble,
    RewardModel,
    best_of_n,
    extract_answer,
    format_reward,
    load_reward,
    math_verify_match,
    numeric_match,
    parse_number,
    score_rollouts,
)


@pytest.mark.parametrize("text, expected", [
    ("so the answer is 42.", 42),
    ("5-3=2", 2),
    ("x = -7", -7),
    ("The total is 1,234.5 dollars", 1234.5),
    ("<answer>17</answer> and then 3 more", 17),
    (r"we get \boxed{\frac{3}{4}} and 9", 0.75),
    (r"\boxed{-\frac{1}{2}}", -0.5),
    ("the ratio is 3/4", 0.75),
    ("2 − 3 = −1", -1),
    ("no number here", None),
    ("<answer>  </answer> 5", None),
])
def test_extraction(text, expected):
    value = parse_number(extract_answer(text))
    assert (value is None and expected is None) or value == pytest.approx(expected)


def test_numeric_match():
    assert numeric_match("q", "12 + 21 = 33. The answer is <answer>33</answer>.", "33") == 1.0
    assert numeric_match("q", "I think 33, no wait, 34", "33") == 0.0           # the last number counts
    assert numeric_match("q", r"\boxed{33.0000001}", "33") == 1.0               # within tolerance
    assert numeric_match("q", "0.3334", "1/3", tolerance=1e-3) == 1.0
    assert numeric_match("q", "nothing", "33") == 0.0
    assert numeric_match("q", "<answer>1,000</answer>", "1000") == 1.0
    with pytest.raises(ValueError, match="reference"):
        numeric_match("q", "33", None)


def test_math_verify_match():
    pytest.importorskip("math_verify")
    assert math_verify_match("q", r"so \boxed{\frac{1}{2}}", "0.5") == 1.0
    assert math_verify_match("q", "<answer>42</answer>", "42") == 1.0
    assert math_verify_match("q", "I think 41", "42") == 0.0


def test_format_reward():
    assert format_reward("q", "blah <answer>3</answer>") == 1.0
    assert format_reward("q", "blah 3") == 0.0
    assert format_reward("q", "<answer> </answer>") == 0.0


def test_load_reward(tmp_path):
    assert load_reward("numeric_match") is numeric_match
    assert load_reward("unigrad.rewards.verifiable:format_reward") is format_reward
    f = tmp_path / "my_reward.py"
    f.write_text("def length_reward(prompt, completion, answer=None, scale=1.0, **meta):\n"
                 "    return scale * len(completion)\n")
    fn = load_reward(f"{f}:length_reward", scale=2.0)
    assert fn("p", "abc", None) == 6.0
    with pytest.raises(ValueError, match="no attribute"):
        load_reward(f"{f}:missing")
    with pytest.raises(ValueError, match="no such file"):
        load_reward(f"{tmp_path}/nope.py:fn")
    with pytest.raises(ValueError, match="cannot import"):
        load_reward("no_such_module_xyz:fn")
    with pytest.raises(ValueError, match="not a built-in"):
        load_reward("no_such_reward")


def test_score_rollouts_fallback_and_report():
    def flaky(prompt, completion, answer, **meta):
        if completion == "boom":
            raise ZeroDivisionError("division by zero")
        if completion == "nan":
            return float("nan")
        return float(len(completion))

    rewards, report = score_rollouts(flaky, ["p0", "p1"], ["ab", "boom", "nan", "abcd"], fallback=-1.0)
    assert rewards.tolist() == [2.0, -1.0, -1.0, 4.0]                    # prompts repeated per group of 2
    assert report.num_samples == 4 and report.num_failed == 1 and report.num_nonfinite == 1
    assert report.num_fallback == 2 and not report.ok
    assert report.example_error == "ZeroDivisionError: division by zero (sample 1)"
    assert report.metrics()["reward/fallback_frac"] == 0.5
    assert "2 of 4" in str(report)

    rewards, report = score_rollouts(numeric_match, ["p"], ["7", "<answer>8</answer>"], answers=["8"])
    assert rewards.tolist() == [0.0, 1.0] and report.ok and report.example_error is None
    with pytest.raises(ValueError, match="do not match"):
        score_rollouts(numeric_match, ["a", "b", "c"], ["1", "2"])


def test_best_of_n():
    r = torch.tensor([0.1, 0.9, 0.5, float("nan"), 0.2, 0.2])
    assert best_of_n(r, num_generations=3).tolist() == [1, 1]              # NaN is lowest; ties → first
    assert best_of_n(r.view(2, 3)).tolist() == [1, 1]
    with pytest.raises(ValueError):
        best_of_n(r, num_generations=4)


def _const(v):
    return lambda prompt, completion, answer=None, **meta: v


def test_ensemble_modes():
    members = [_const(1.0), _const(3.0), lambda p, c, a=None, **m: float(len(c))]
    scores = Ensemble(members).member_scores(["p", "p"], ["ab", "abcde"])
    assert scores.tolist() == [[1.0, 1.0], [3.0, 3.0], [2.0, 5.0]]
    mean = Ensemble(members, mode="mean").score(["p", "p"], ["ab", "abcde"])
    torch.testing.assert_close(mean, torch.tensor([2.0, 3.0]))
    assert Ensemble(members, mode="min").score(["p", "p"], ["ab", "abcde"]).tolist() == [1.0, 1.0]
    unc = Ensemble(members, mode="uncertainty", lam=0.5).score(["p", "p"], ["ab", "abcde"])
    var = torch.tensor([2 / 3, (4 + 4 + 0) / 3])                            # population variance over members
    torch.testing.assert_close(unc, torch.tensor([2.0, 3.0]) - 0.5 * var)
    assert Ensemble(members, mode="uncertainty", lam=0.5)("p", "ab") == pytest.approx(2.0 - 0.5 * 2 / 3)
    with pytest.raises(ValueError, match="mode"):
        Ensemble(members, mode="max")
    rewards, report = score_rollouts(Ensemble(members), ["p"], ["ab", "abcde"])   # batched path
    assert rewards.tolist() == [2.0, 3.0] and report.ok


@pytest.fixture(scope="module")
def reward_model_folder(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from unigrad.models import tiny_tokenizer

    tok = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    folder = tmp_path_factory.mktemp("rm")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_reward_model_batched_equals_single(reward_model_folder):
    rm = RewardModel(reward_model_folder, batch_size=2)
    prompts = ["what is 1+1?", "hello", "tell me a joke please"]
    completions = ["2", "hi there, how can I help?", "no"]
    batched = rm.score(prompts, completions)
    single = torch.tensor([rm(p, c) for p, c in zip(prompts, completions)])
    assert batched.shape == (3,) and torch.isfinite(batched).all()
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    assert len(set(batched.tolist())) == 3
    ens = Ensemble([rm, _const(0.0)], mode="mean")
    torch.testing.assert_close(ens.score(prompts, completions), batched / 2)
    rewards, report = score_rollouts(rm, prompts, completions)
    torch.testing.assert_close(rewards, batched)
    assert report.ok


def test_reward_model_needs_one_label(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from unigrad.models import tiny_tokenizer

    tok = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_labels=2, pad_token_id=tok.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels=1"):
        RewardModel(tmp_path)


def test_score_rollouts_counts_non_numbers():
    rewards, report = score_rollouts(lambda p, c, a, **m: None if c == "x" else math.inf, ["p"], ["x", "y"])
    assert rewards.tolist() == [0.0, 0.0] and report.num_nonfinite == 2
