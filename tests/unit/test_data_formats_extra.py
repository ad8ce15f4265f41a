"""The ``forget`` and ``scored`` data formats: record shapes, Sequences, error messages, shipped files."""
from __future__ import annotations

import pytest

from unigrad.data import DataError, load_dataset_sequences

def test_forget_records_become_signed_sequences(tmp_path, write_jsonl, tok):
    path = write_jsonl(tmp_path / "f.jsonl", [
        {"prompt": "Who is A?", "completion": "A is a painter.", "split": "forget"},
        {"prompt": "What is 2+2?", "completion": "4", "split": "retain"},
        {"messages": [{"role": "user", "content": "Where was A born?"}, {"role": "assistant", "content": "In B."}],
         "split": "forget"},
    ])
    seqs = load_dataset_sequences(str(path), "forget", tok, 256)
    assert [s.sign for s in seqs] == [-1.0, 1.0, -1.0]
    assert [s.group for s in seqs] == [0, 1, 2]
    assert tok.decode(seqs[1].completion_ids, skip_special_tokens=True) == "4"
    assert seqs[2].meta["line"] == 3


@pytest.mark.parametrize("record, message", [
    ({"prompt": "q", "completion": "a"}, 'line 1: missing field "split"'),
    ({"prompt": "q", "completion": "a", "split": "keep"}, 'line 1: field "split" must be "forget" or "retain", got "keep"'),
    ({"prompt": "q", "completion": "a", "split": 1}, 'field "split" must be "forget" or "retain", got int'),
    ({"prompt": "q", "split": "forget"}, 'line 1: missing field "completion"'),
])
def test_forget_errors_name_file_line_and_field(tmp_path, write_jsonl, tok, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [record])
    with pytest.raises(DataError) as e:
        load_dataset_sequences(str(path), "forget", tok, 256)
    assert str(path) in str(e.value) and message in str(e.value)


def test_scored_records_carry_reward_and_value_fields(tmp_path, write_jsonl, tok):
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"prompt": "What is 2+2?", "response": "4", "reward": 1},
        {"prompt": "What is 2+3?", "completion": "6", "reward": 0.25, "value": 0.5},
        {"prompt": "Hi", "response": "Hello", "reward": -1.5, "value": None},
    ])
    seqs = load_dataset_sequences(str(path), "scored", tok, 256)
    assert [s.meta["fields"] for s in seqs] == [{"reward": 1.0}, {"reward": 0.25, "value": 0.5}, {"reward": -1.5}]
    assert all(isinstance(s.meta["fields"]["reward"], float) for s in seqs)
    assert [s.sign for s in seqs] == [1.0, 1.0, 1.0] and [s.group for s in seqs] == [0, 1, 2]
    assert tok.decode(seqs[1].completion_ids, skip_special_tokens=True) == "6"
    assert seqs[0].meta["source"] == str(path)


@pytest.mark.parametrize("record, message", [
    ({"prompt": "q", "response": "a"}, 'line 2: missing field "reward"'),
    ({"prompt": "q", "response": "a", "reward": "high"}, 'line 2: field "reward" must be a number, got str'),
    ({"prompt": "q", "response": "a", "reward": True}, 'field "reward" must be a number, got bool'),
    ({"prompt": "q", "response": "a", "reward": None}, 'field "reward" must be a number, got null'),
    ('{"prompt": "q", "response": "a", "reward": NaN}', 'field "reward" must be a finite number'),
    ({"prompt": "q", "response": "a", "reward": 1, "value": "x"}, 'field "value" must be a number, got str'),
    ({"prompt": "q", "reward": 1}, 'line 2: missing field "response"'),
    ({"prompt": "q", "response": "", "reward": 1}, 'field "response" is empty'),
    ({"prompt": "q", "response": "a", "completion": "b", "reward": 1}, '"response" and "completion", not both'),
])
def test_scored_errors_name_file_line_and_field(tmp_path, write_jsonl, tok, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "response": "fine", "reward": 0.5}, record])
    with pytest.raises(DataError) as e:
        load_dataset_sequences(str(path), "scored", tok, 256)
    assert str(path) in str(e.value) and message in str(e.value)


def test_shipped_forget_and_scored_files_load(tok, shipped_data):
    forget = load_dataset_sequences(str(shipped_data / "forget" / "train.jsonl"), "forget", tok, 512)
    assert sum(s.sign < 0 for s in forget) == 30 and sum(s.sign > 0 for s in forget) == 60
    scored = load_dataset_sequences(str(shipped_data / "scored" / "train.jsonl"), "scored", tok, 512)
    rewards = [s.meta["fields"]["reward"] for s in scored]
    assert len(scored) == 60 and min(rewards) == 0.0 and max(rewards) == 1.0


def test_unknown_format_lists_the_new_ones(tmp_path, write_jsonl, tok):
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "q", "completion": "a"}])
    with pytest.raises(DataError, match="unknown data format") as e:
        load_dataset_sequences(str(path), "bogus", tok, 256)
    assert "forget" in str(e.value) and "scored" in str(e.value)
