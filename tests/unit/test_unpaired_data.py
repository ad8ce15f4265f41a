"""The ``unpaired`` data format, KTO's mismatched rows, and the per-pair ``margin`` of ``pairs``."""
from __future__ import annotations

import json

import pytest
import torch

from unigrad.data import DataError, formats, load_dataset_sequences
from unigrad.experience import Split
from unigrad.experience.mismatched import with_mismatched

def test_unpaired_rows_are_signed_by_label(tmp_path, write_jsonl, tok):
    path = write_jsonl(tmp_path / "u.jsonl", [
        {"prompt": "What is 2+2?", "completion": "4", "label": True},
        {"prompt": "What is 2+2?", "completion": "5", "label": False},
        {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}],
         "label": False},
        {"messages": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye"}], "label": True},
    ])
    seqs = load_dataset_sequences(str(path), "unpaired", tok, 256)
    assert [s.sign for s in seqs] == [1.0, -1.0, -1.0, 1.0]
    assert [s.group for s in seqs] == [0, 1, 2, 3]
    assert tok.decode(seqs[2].completion_ids, skip_special_tokens=True) == "Hello"
    assert tok.decode(seqs[3].completion_ids, skip_special_tokens=True) == "Goodbye"
    assert seqs[3].meta["line"] == 4
    assert formats.provides("unpaired") >= {"group", "sign"}


@pytest.mark.parametrize("record, message", [
    ({"prompt": "q", "completion": "a"}, 'line 1: missing field "label"'),
    ({"prompt": "q", "completion": "a", "label": 1}, 'field "label" must be true (desirable) or false (undesirable), got int'),
    ({"prompt": "q", "completion": "a", "label": "yes"}, 'field "label" must be true (desirable) or false (undesirable), got str'),
    ({"prompt": "q", "label": True}, 'line 1: missing field "completion"'),
    ({"completion": "a", "label": True}, 'line 1: missing field "prompt"'),
    ({"prompt": 3, "completion": "a", "label": True}, 'field "prompt" must be a string or a list of messages, got int'),
    ({"prompt": "q", "completion": " ", "label": False}, 'field "completion" is empty'),
    ({"prompt": "q", "completion": [{"role": "user", "content": "a"}], "label": False},
     'field "completion[0]" must be an assistant message'),
])
def test_unpaired_errors_name_file_line_and_field(tmp_path, write_jsonl, tok, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [record])
    with pytest.raises(DataError) as e:
        load_dataset_sequences(str(path), "unpaired", tok, 256)
    assert str(path) in str(e.value) and message in str(e.value)


def test_pair_margin_parsed_and_filled(tmp_path, write_jsonl, tok):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "q1", "chosen": "a", "rejected": "b", "margin": 2},
        {"prompt": "q2", "chosen": "a", "rejected": "b"},
        {"prompt": "q3", "chosen": "a", "rejected": "b", "margin": 0.5},
    ])
    seqs = load_dataset_sequences(str(path), "pairs", tok, 256)
    assert [s.meta["fields"]["margin"] for s in seqs] == [2.0, 2.0, 0.0, 0.0, 0.5, 0.5]
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    assert "fields" not in load_dataset_sequences(str(plain), "pairs", tok, 256)[0].meta


@pytest.mark.parametrize("margin, message", [("1", "got str"), (True, "got bool"), ([1], "got list"),
                                             (1e400, "finite number")])
def test_pair_margin_errors(tmp_path, write_jsonl, tok, margin, message):
    path = write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": "q", "chosen": "a", "rejected": "b"}',
                                           json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"})[:-1]
                                           + ', "margin": ' + json.dumps(margin) + "}"])
    with pytest.raises(DataError) as e:
        load_dataset_sequences(str(path), "pairs", tok, 256)
    assert f"{path}, line 2" in str(e.value) and 'field "margin" must be' in str(e.value) and message in str(e.value)


def test_pair_margin_reaches_the_batch_and_the_reward_model_loss(tmp_path, write_jsonl, tok):
    """margin → meta["fields"] → Experience.fields → Batch.extra["margin"], read by the reward-model loss."""
    from unigrad.batch import Batch
    from unigrad.objectives.reward_model import BradleyTerryLoss

    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q1", "chosen": "a", "rejected": "b", "margin": 3},
                                         {"prompt": "q2", "chosen": "c", "rejected": "d", "margin": 1}])
    split = Split.of("train", load_dataset_sequences(str(path), "pairs", tok, 256))
    experience = split.experience([1, 0])
    step = experience.step_batch("cpu")
    assert step.extra["margin"].tolist() == [1.0, 1.0, 3.0, 3.0]
    score = torch.tensor([0.5, 0.0, 2.0, 0.0], dtype=torch.float64)
    batch = Batch(logp=score[:, None], mask=torch.ones(4, 1), group=step.group, sign=step.sign,
                  extra={**step.extra, "score": score})
    out = BradleyTerryLoss().loss(batch)
    expect = torch.nn.functional.softplus(-(torch.tensor([0.5, 2.0]) - torch.tensor([1.0, 3.0]))).mean()
    torch.testing.assert_close(out.objective.float(), expect.float())


def test_mismatched_rows(tmp_path, write_jsonl, tok):
    path = write_jsonl(tmp_path / "u.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}", "label": i % 2 == 0} for i in range(3)])
    split = with_mismatched(Split.of("train", load_dataset_sequences(str(path), "unpaired", tok, 256)), 256)
    assert split.units == [[0, 1], [2, 3], [4, 5]]
    seqs = split.sequences
    assert [s.meta["fields"]["mismatched"] for s in seqs] == [0.0, 1.0] * 3
    assert [s.sign for s in seqs] == [1.0, 0.0, -1.0, 0.0, 1.0, 0.0]
    for i in range(3):       # x_i with y_{i−1}, cyclically
        assert seqs[2 * i + 1].prompt_ids == seqs[2 * i].prompt_ids
        assert seqs[2 * i + 1].completion_ids == seqs[2 * ((i - 1) % 3)].completion_ids
    assert split.experience([2]).fields["mismatched"].tolist() == [0.0, 1.0]
    with pytest.raises(DataError, match="at least 2"):
        with_mismatched(Split.of("one", seqs[:1]), 256)


def test_shipped_unpaired_dataset(tok, shipped_data):
    for name, n in (("train", 200), ("eval", 40)):
        seqs = load_dataset_sequences(str(shipped_data / "unpaired" / f"{name}.jsonl"), "unpaired", tok, 512)
        assert len(seqs) == n and sum(s.sign > 0 for s in seqs) == n // 2
        assert all(a.prompt_ids != b.prompt_ids for a, b in zip(seqs, seqs[-1:] + seqs[:-1]))  # mismatched really are


def test_kto_warns_when_the_weighted_class_ratio_is_outside_the_papers_range(tmp_path, write_jsonl, tok, caplog):
    from unigrad.methods import method
    from unigrad.methods.unpaired import prepare_splits

    path = write_jsonl(tmp_path / "u.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}", "label": i == 0} for i in range(4)])
    split = Split.of("train", load_dataset_sequences(str(path), "unpaired", tok, 256))
    with caplog.at_level("WARNING", logger="unigrad"):
        prepare_splits(method("kto", lambda_d=3.5), [split, None], 256)       # 3.5·1 / (1·3) ∈ [1, 4/3]: quiet
        assert not caplog.records
        train, missing = prepare_splits(method("kto"), [split, None], 256)    # 1 / 3
    assert missing is None and len(train.sequences) == 8
    assert len(caplog.records) == 1 and "outside [1, 4/3]" in caplog.records[0].getMessage()
    assert prepare_splits(method("bco"), [split, None], 256)[0] is split       # BCO reads no mismatched rows
