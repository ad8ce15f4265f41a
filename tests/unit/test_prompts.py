"""The ``prompts`` data format and the built-in arithmetic task."""
from __future__ import annotations

import json

import pytest

from unigrad.data import DataError, encode_prompt
from unigrad.data.prompts import demonstration_sequences, load_prompts, parse_prompts
from unigrad.data.sources import Record
from unigrad.models import tiny_tokenizer
from unigrad.rewards import format_reward, numeric_match
from unigrad.tasks import arithmetic


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _write(tmp_path, rows, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_prompts(tmp_path, tok):
    path = _write(tmp_path, [
        {"prompt": "What is 2 + 2?", "answer": "4", "demonstration": "2 + 2 = 4.", "source": "toy"},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        {"prompt": "Half of 3?", "answer": 1.5},
    ])
    ex = load_prompts(path, tok)
    assert [e.answer for e in ex] == ["4", None, "1.5"]
    assert ex[0].demonstration == "2 + 2 = 4." and ex[1].demonstration is None
    assert ex[0].extra == {"source": "toy"}
    assert ex[0].prompt == (("user", "What is 2 + 2?"),) and ex[0].prompt_text == "What is 2 + 2?"
    assert list(ex[1].prompt_ids) == encode_prompt(tok, ex[1].prompt)
    assert ex[0].record.line == 1
    seqs = demonstration_sequences(ex, tok, max_length=256)
    assert len(seqs) == 1 and seqs[0].group == 0 and seqs[0].completion_ids[-1] == tok.eos_token_id
    assert load_prompts(path)[0].prompt_ids is None                      # no tokenizer: not tokenised


@pytest.mark.parametrize("row, message", [
    ({"answer": "4"}, 'line 2: missing field "prompt"'),
    ({"prompt": ""}, 'line 2: field "prompt" is empty'),
    ({"prompt": 5}, 'line 2: field "prompt" must be a string or a list of messages, got int'),
    ({"prompt": "q", "answer": ["4"]}, 'line 2: field "answer" must be a string or a number, got list'),
    ({"prompt": "q", "answer": True}, 'field "answer" must be a string or a number, got bool'),
    ({"prompt": "q", "answer": " "}, 'line 2: field "answer" is empty'),
    ({"prompt": "q", "demonstration": 3}, 'line 2: field "demonstration" must be a string, got int'),
    ({"prompt": [{"role": "user"}]}, 'line 2: missing field "prompt[0].content"'),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
     'line 2: field "prompt[1]" is an assistant message'),
    ([1, 2], "line 2: expected a JSON object, got list"),
])
def test_prompts_errors_name_file_line_field(tmp_path, row, message):
    path = _write(tmp_path, [{"prompt": "fine"}, row])
    with pytest.raises(DataError) as e:
        load_prompts(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_required_fields_and_length(tmp_path, tok):
    path = _write(tmp_path, [{"prompt": "q", "answer": "1"}, {"prompt": "r"}])
    with pytest.raises(DataError, match=r'line 2: missing field "answer"'):
        load_prompts(path, require_answer=True)
    with pytest.raises(DataError, match=r'line 1: missing field "demonstration"'):
        load_prompts(path, require_demonstration=True)
    with pytest.raises(DataError, match="max_prompt_length=5"):
        load_prompts(path, tok, max_prompt_length=5)
    cut = load_prompts(path, tok, max_prompt_length=5, truncation=True)
    assert all(len(e.prompt_ids) == 5 for e in cut)


def test_parse_prompts_from_records():
    ex = parse_prompts([Record({"prompt": "q", "answer": "1"}, "mem", row=0)])
    assert ex[0].answer == "1" and ex[0].record.where == "mem, row 0"


# ---------------------------------------------------------------------------------- arithmetic

def test_arithmetic_is_deterministic_and_correct():
    a = arithmetic.generate(40, seed=3, difficulty=4)
    assert a == arithmetic.generate(40, seed=3, difficulty=4)
    assert a != arithmetic.generate(40, seed=4, difficulty=4)
    for r in a:
        assert int(r["answer"]) == eval(r["expression"])                 # the expression is valid Python
        assert r["expression"] in r["prompt"]
        assert r["demonstration"].endswith(f"The answer is <answer>{r['answer']}</answer>.")
        assert numeric_match(r["prompt"], r["demonstration"], r["answer"]) == 1.0
        assert format_reward(r["prompt"], r["demonstration"]) == 1.0
    assert arithmetic.solve([12, 7, 3], ["+", "*"]) == (33, ["7 * 3 = 21", "12 + 21 = 33"])


@pytest.mark.parametrize("difficulty", sorted(arithmetic.LEVELS))
def test_arithmetic_levels(difficulty):
    level = arithmetic.LEVELS[difficulty]
    for r in arithmetic.generate(30, seed=0, difficulty=difficulty):
        assert r["expression"].count(" ") == 2 * (level.operands - 1)
        assert int(r["answer"]) == eval(r["expression"])


def test_make_splits_disjoint(tmp_path, tok):
    train, test = arithmetic.make_splits(60, 20, seed=1)
    assert len(train) == 60 and len(test) == 20
    assert not {r["expression"] for r in train} & {r["expression"] for r in test}
    assert arithmetic.make_splits(10, 20, seed=1)[1] == test             # test set independent of n_train
    assert arithmetic.make_splits(60, 20, seed=1) == (train, test)
    path = arithmetic.write_jsonl(train, tmp_path / "train.jsonl")
    ex = load_prompts(path, tok, require_answer=True, require_demonstration=True)
    assert len(ex) == 60 and ex[0].extra["expression"] == train[0]["expression"]
    with pytest.raises(ValueError, match="difficulty"):
        arithmetic.generate(5, difficulty=9)
    with pytest.raises(ValueError, match="too few"):
        arithmetic.generate(1000, difficulty=1)
