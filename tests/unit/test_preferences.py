"""Preference models behind one protocol: rule (1 / 0 / ½), pairwise judge (both orders averaged), user
function, tabular matrix; and ``build_preference`` from the ``preference:`` config section."""
from __future__ import annotations

import pytest
import torch

from unigrad.config import ConfigError, load_config
from unigrad.models import load_model
from unigrad.rewards import numeric_match
from unigrad.rewards.preferences import (
    DEFAULT_TEMPLATE, PairwiseJudge, Preference, RulePreference, Tabular, UserPreference, build_preference,
    check_template,
)

PROMPTS = ["What is 2 + 3?", "What is 4 * 5?", "What is 9 - 1?", "What is 6 / 2?"]
ANSWERS = ["5", "20", "8", "3"]


def test_rule_preference_of_a_verifiable_reward_is_one_zero_or_a_half():
    prefer = RulePreference.of_reward(numeric_match)
    a = ["The answer is 5.", "It is 21.", "8", "3"]
    b = ["6", "20", "7", "3.0"]
    p = prefer(PROMPTS, a, b, ANSWERS)          # right/wrong, wrong/right, right/wrong, both right
    assert p.dtype == torch.float64 and p.tolist() == [1.0, 0.0, 1.0, 0.5]
    assert prefer(PROMPTS, ["1"] * 4, ["2"] * 4, ANSWERS).tolist() == [0.5] * 4        # both wrong: a tie
    assert isinstance(prefer, Preference)


def test_rule_preference_of_a_batch_score_and_a_failing_reward():
    by_length = RulePreference(lambda prompts, texts: torch.tensor([float(len(t)) for t in texts]))
    assert by_length(["p", "q", "r"], ["aa", "b", "c"], ["a", "bb", "c"]).tolist() == [1.0, 0.0, 0.5]

    def fails_on_b(prompt, completion, answer=None):
        if completion == "b":
            raise ZeroDivisionError("no")
        return 1.0
    assert RulePreference.of_reward(fails_on_b, fallback=0.0)(["p"], ["a"], ["b"]).tolist() == [1.0]


@pytest.fixture(scope="module")
def judge():
    model, tokenizer = load_model("tiny-random:3")
    return PairwiseJudge(model, tokenizer, batch_size=3)


def test_judge_averages_both_orders_so_swapping_gives_one_minus(judge):
    a = ["5", "twenty", "8 is the answer", ""]
    b = ["6", "20", "seven", "3"]
    p = judge(PROMPTS, a, b)
    assert p.shape == (4,) and bool(torch.all((p > 0) & (p < 1)))
    torch.testing.assert_close(judge(PROMPTS, b, a), 1 - p, rtol=0, atol=1e-6)   # float32 forwards, other padding
    # P = ½[p_A(a, b) + p_B(b, a)], p_B = 1 − p_A, each renormalised over the tokens "A" and "B"
    first = judge.first_letter([judge.judging_ids(x, u, v) for x, u, v in zip(PROMPTS, a, b)])
    second = judge.first_letter([judge.judging_ids(x, v, u) for x, u, v in zip(PROMPTS, a, b)])
    torch.testing.assert_close(p, 0.5 * (first + 1 - second), rtol=0, atol=1e-6)
    assert not torch.allclose(first, 1 - second)      # the tiny judge is position-biased; the average cancels it
    torch.testing.assert_close(judge(PROMPTS[:1], ["x"], ["x"]), torch.tensor([0.5], dtype=torch.float64))


def test_judge_reads_the_two_letters_after_its_template(judge):
    model, tokenizer = judge.model, judge.tokenizer
    ids = judge.judging_ids("Q?", "yes", "no")
    text = tokenizer.decode(ids)
    assert "Answer A:\nyes" in text and "Answer B:\nno" in text and text.rstrip().endswith("assistant")
    with torch.no_grad():
        z = model(input_ids=torch.tensor([ids])).logits[0, -1]
    A, B = tokenizer.encode("A", add_special_tokens=False)[0], tokenizer.encode("B", add_special_tokens=False)[0]
    expect = torch.softmax(z[[A, B]].double(), 0)[0]
    torch.testing.assert_close(judge.first_letter([ids])[0], expect, rtol=0, atol=1e-6)
    custom = PairwiseJudge(model, tokenizer, template="{{x}} {prompt}|{a}|{b}")
    assert "{x} Q?|yes|no" in tokenizer.decode(custom.judging_ids("Q?", "yes", "no"))


@pytest.mark.parametrize("template", ["{prompt} {a}", "{prompt} {a} {b} {c}", "{prompt {a} {b}"])
def test_judge_template_needs_exactly_its_three_fields(template):
    with pytest.raises(ValueError, match="judge template"):
        check_template(template)
    assert check_template(DEFAULT_TEMPLATE) == DEFAULT_TEMPLATE


def test_user_preference_is_loaded_like_reward_functions_and_checked(tmp_path):
    (tmp_path / "judge.py").write_text(
        "def longer(prompts, a, b, answers=None):\n"
        "    return [1.0 if len(x) > len(y) else 0.0 if len(x) < len(y) else 0.5 for x, y in zip(a, b)]\n"
        "def broken(prompts, a, b, answers=None):\n"
        "    return [2.0 for _ in a]\n")
    prefer = UserPreference(f"{tmp_path / 'judge.py'}:longer")
    assert prefer(["p", "q", "r"], ["aa", "b", "c"], ["a", "bb", "c"]).tolist() == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        UserPreference(f"{tmp_path / 'judge.py'}:broken")(["p"], ["a"], ["b"])
    with pytest.raises(ValueError, match="has no attribute"):
        UserPreference(f"{tmp_path / 'judge.py'}:missing")
    with pytest.raises(ValueError, match="module:function"):
        UserPreference("numeric_match")


def test_tabular_reads_the_game_matrix():
    from unigrad.games.tabular import random_game
    game = random_game(5, seed=1)
    prefer = Tabular(game.preference)
    a, b = [0, 3, 4, 2], [1, 3, 0, 4]
    p = prefer([None] * 4, a, b)
    torch.testing.assert_close(p, game.preference[a, b])
    torch.testing.assert_close(p + prefer([None] * 4, b, a), torch.ones(4, dtype=torch.float64))
    named = Tabular(game.preference, responses=("r0", "r1", "r2", "r3", "r4"))
    assert float(named([None], ["r2"], ["r0"])[0]) == float(game.preference[2, 0])


def _config(*overrides):
    return load_config(None, ["model=tiny-random", "data.format=prompts", "data.task.name=arithmetic", *overrides],
                       text="{}")


def test_build_preference_from_the_config_section(tmp_path):
    assert isinstance(build_preference(_config()), RulePreference)             # the run's reward, by rule
    rule = build_preference(_config("preference.function=numeric_match"))
    assert rule(["q"], ["5"], ["4"], ["5"]).tolist() == [1.0]
    loaded = []

    def load(role):
        loaded.append(role)
        return load_model("tiny-random:1")
    judge = build_preference(_config("preference.kind=judge", "preference.model=tiny-random:1",
                                     "preference.batch_size=2"), load=load)
    assert isinstance(judge, PairwiseJudge) and judge.batch_size == 2 and judge.template == DEFAULT_TEMPLATE
    assert loaded[0].name == "preference" and loaded[0].source == "tiny-random:1" and not loaded[0].prepared
    with pytest.raises(ConfigError, match="preference.model"):
        build_preference(_config("preference.kind=judge"), load=load)
    with pytest.raises(ConfigError, match="judge template"):
        build_preference(_config("preference.kind=judge", "preference.model=x", "preference.template='only {a}'"), load=load)
    with pytest.raises(ConfigError, match="preference.function"):
        build_preference(_config("preference.kind=function"))
    with pytest.raises(ConfigError, match="preference.kind"):
        _config("preference.kind=oracle")


def test_build_preference_of_a_reward_model_role_is_bradley_terry():
    from unigrad.roles import Role
    roles = []

    def load(role: Role):
        roles.append(role)
        return load_model("tiny-random:2", head="score")
    prefer = build_preference(_config("preference.kind=reward-model", "preference.model=rm-folder"), load=load)
    assert roles[0].head == "score" and roles[0].source == "rm-folder"
    a, b = ["5", "twenty", "8"], ["6", "20", "8"]
    p = prefer(PROMPTS[:3], a, b, ANSWERS[:3])
    reward = prefer.inner.reward
    r_a, r_b = reward.score(PROMPTS[:3], a).double(), reward.score(PROMPTS[:3], b).double()
    torch.testing.assert_close(p, torch.sigmoid(r_a - r_b), rtol=0, atol=1e-6)      # σ(r(y) − r(y′))
    torch.testing.assert_close(prefer(PROMPTS[:3], b, a), 1 - p, rtol=0, atol=1e-6)
    assert float(p[2]) == pytest.approx(0.5, abs=1e-6)
