"""Data layer: reading, validation messages, tokenisation, truncation, shipped datasets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from unigrad.data import (
    DataError,
    count_truncated,
    encode_prompt,
    fit,
    load_dataset_sequences,
    read_records,
    tokenize,
)
from unigrad.tokens import Sequence

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _tokenizer(chat_template: str | None = TEMPLATE):
    """A byte-level tokenizer built locally (no download); adds BOS like many base models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in pre_tokenizers.ByteLevel.alphabet():
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", chat_template=chat_template)


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


@pytest.fixture(scope="module")
def plain_tok():
    return _tokenizer(None)


PAIRS = [
    {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
     "chosen": [{"role": "assistant", "content": "Paris."}], "rejected": [{"role": "assistant", "content": "Rome."}]},
    {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
     "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]},
]
SFT = [
    {"prompt": "What is 2 + 2?", "completion": "4."},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}]},
]


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def error_of(path, fmt="pairs", tok=None, **kw) -> str:
    with pytest.raises(DataError) as e:
        load_dataset_sequences(str(path), fmt, tok or _tokenizer(), kw.pop("max_length", 512), **kw)
    message = str(e.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- errors


GOOD = {"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}


@pytest.mark.parametrize("bad, field", [
    ({"prompt": "Q?", "chosen": "Yes."}, '"rejected"'),
    ({"chosen": "Yes.", "rejected": "No."}, '"prompt"'),
    ({"prompt": "Q?", "chosen": 3, "rejected": "No."}, '"chosen"'),
    ({"prompt": "Q?", "chosen": "Yes.", "rejected": "  "}, '"rejected"'),
    ({"prompt": "Q?", "chosen": "", "rejected": "No."}, '"chosen"'),
    ({"prompt": 7, "chosen": "Yes.", "rejected": "No."}, '"prompt"'),
    ({"prompt": [{"role": "bot", "content": "Q?"}], "chosen": "Yes.", "rejected": "No."}, '"prompt[0].role"'),
    ({"prompt": "Q?", "chosen": [{"role": "assistant"}], "rejected": "No."}, '"chosen[0].content"'),
])
def test_pairs_errors_name_file_line_and_field(tmp_path, tok, bad, field):
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD, "", GOOD, bad])  # blank line 2 is skipped
    message = error_of(path, tok=tok)
    assert message.startswith(f"{path}, line 4: ")
    assert field in message


def test_mistyped_field_message(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD] * 6 + [{"prompt": "Q?", "chosen": 1, "rejected": "No."}])
    assert error_of(path, tok=tok) == f'{path}, line 7: field "chosen" must be a non-empty string or a list of messages, got int'


def test_invalid_json_and_not_object(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, GOOD, '{"prompt": "Q?",, }'])
    message = error_of(path, tok=tok)
    assert message.startswith(f"{path}, line 3: invalid JSON (") and "column" in message
    path = write_jsonl(tmp_path / "q.jsonl", [GOOD, [1, 2]])
    assert error_of(path, tok=tok) == f"{path}, line 2: expected a JSON object, got list"


def test_empty_file(tmp_path, tok):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n")
    assert str(path) in error_of(path, tok=tok) and "empty" in error_of(path, tok=tok)


def test_sft_errors(tmp_path, tok):
    cases = [
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hi"}]}, '"messages"'),
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "wizard", "content": "Hi"}]}, '"messages[1].role"'),
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}, '"messages[1].content"'),
        ({"prompt": "Hi", "completion": ""}, '"completion"'),
        ({"prompt": "Hi"}, '"completion"'),
        ({"prompt": "Hi", "completion": None}, '"completion"'),
        ({"text": "Hi"}, '"prompt"'),
    ]
    for bad, field in cases:
        path = write_jsonl(tmp_path / "sft.jsonl", [SFT[0], bad])
        message = error_of(path, "sft", tok=tok)
        assert message.startswith(f"{path}, line 2: ") and field in message, message


def test_unknown_role_message(tmp_path, tok):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [{"role": "bot", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}])
    assert error_of(path, "sft", tok=tok) == (f'{path}, line 1: field "messages[0].role" must be one of system, user, '
                                              f'assistant, got "bot"')


def test_prompt_too_long_without_truncation(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, {"prompt": "x" * 100, "chosen": "Yes.", "rejected": "No."}])
    message = error_of(path, tok=tok, max_length=50)
    assert message.startswith(f"{path}, line 2: prompt has ")
    assert "more than max_length=50" in message and "data.truncation=true" in message


def test_shipped_bad_files(tok):
    message = error_of(REPO / "data/bad/malformed.jsonl", tok=tok)
    assert "malformed.jsonl, line 3: invalid JSON" in message
    message = error_of(REPO / "data/bad/missing_field.jsonl", tok=tok)
    assert "missing_field.jsonl, line 2:" in message and '"rejected"' in message


def test_missing_path_and_unknown_format(tmp_path, tok):
    assert "no such file" in error_of(tmp_path / "nope.jsonl", tok=tok)
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD])
    assert "unknown data format" in error_of(path, "dpo", tok=tok)


def test_rows_for_non_jsonl(tmp_path, tok):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([GOOD, GOOD, {"prompt": "Q?", "chosen": "Yes."}]))
    assert error_of(path, tok=tok).startswith(f"{path}, row 2: ")


# ---------------------------------------------------------------- tokenisation


def test_pairs_give_two_sequences(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    seqs = load_dataset_sequences(str(path), "pairs", tok, 512)
    assert len(seqs) == 6 and all(isinstance(s, Sequence) for s in seqs)
    assert [s.group for s in seqs] == [0, 0, 1, 1, 2, 2]
    assert [s.sign for s in seqs] == [1.0, -1.0] * 3
    for chosen, rejected in zip(seqs[::2], seqs[1::2]):
        assert chosen.prompt_ids == rejected.prompt_ids and chosen.completion_ids != rejected.completion_ids
        assert chosen.completion_ids[-1] == tok.eos_token_id
    assert seqs[2].meta == {"source": str(path), "line": 2}
    # the implicit-prompt (TRL) record: prompt = shared prefix, answers = the final assistant messages
    assert list(seqs[4].prompt_ids) == tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                                               tokenize=True)["input_ids"]
    assert tok.decode(seqs[5].completion_ids[:-1]) == "Go away."


def test_chat_template_applied(tok):
    records = read_records_of([SFT[0], SFT[1]])
    seqs = tokenize(records, tok, "sft", 512)
    expected = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True, tokenize=True)
    assert list(seqs[0].prompt_ids) == list(expected["input_ids"])
    assert tok.decode(seqs[1].prompt_ids) == "<|system|>Be brief.\n<|user|>Hi\n<|assistant|>"
    assert list(seqs[1].completion_ids) == tok("Hello!", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert [s.group for s in seqs] == [0, 1] and all(s.sign == 1.0 for s in seqs)


def test_no_chat_template(plain_tok):
    seqs = tokenize(read_records_of([SFT[0]]), plain_tok, "sft", 512)
    assert list(seqs[0].prompt_ids) == plain_tok("What is 2 + 2?")["input_ids"]
    assert seqs[0].prompt_ids[0] == plain_tok.bos_token_id
    assert list(seqs[0].completion_ids) == plain_tok("4.", add_special_tokens=False)["input_ids"] + [plain_tok.eos_token_id]
    # a conversation without a template becomes "role: content" text
    seqs = tokenize(read_records_of([SFT[1]]), plain_tok, "sft", 512)
    assert plain_tok.decode(seqs[0].prompt_ids, skip_special_tokens=True) == "system: Be brief.\n\nuser: Hi\n\nassistant:"


def read_records_of(objs: list) -> list:
    from unigrad.data import Record

    return [Record(o, "mem.jsonl", line=i + 1) for i, o in enumerate(objs)]


# ---------------------------------------------------------------- truncation


def test_fit():
    p, c = list(range(10)), list(range(100, 120))
    assert fit(p, c, 40, False) == (p, c, False)
    assert fit(p, c, 15, False) == (p, c[:5], True)
    assert fit(p, c, 15, True) == (p, c[:5], True)
    with pytest.raises(DataError, match="prompt has 10 tokens, more than max_length=8"):
        fit(p, c, 8, False, "f.jsonl, line 1")
    with pytest.raises(DataError):
        fit(p, c, 10, False)  # no room for any completion token
    assert fit(p, c, 8, True) == (p[-7:], c[:1], True)


def test_truncation_counts(tok):
    records = read_records_of([{"prompt": "Hi", "completion": "a" * 200}, {"prompt": "Hi", "completion": "ok"}])
    seqs = tokenize(records, tok, "sft", 32)
    assert all(s.length <= 32 for s in seqs)
    assert count_truncated(seqs) == 1 and seqs[0].meta["truncated"] and "truncated" not in seqs[1].meta
    assert seqs[0].completion_ids[-1] != tok.eos_token_id and seqs[1].completion_ids[-1] == tok.eos_token_id
    long_prompt = read_records_of([{"prompt": "x" * 100, "completion": "ok"}])
    with pytest.raises(DataError, match="data.truncation=true"):
        tokenize(long_prompt, tok, "sft", 32)
    (s,) = tokenize(long_prompt, tok, "sft", 32, truncation=True)
    full = encode_prompt(tok, (("user", "x" * 100),))
    assert s.length == 32 and list(s.prompt_ids) == full[-31:] and len(s.completion_ids) == 1


# ---------------------------------------------------------------- sources


def test_all_sources_read_the_same_records(tmp_path, tok):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": "No idea."} for i in range(5)]
    jsonl = write_jsonl(tmp_path / "d.jsonl", rows)
    js = tmp_path / "d.json"
    js.write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for path in (jsonl, js, tmp_path / "d.parquet", tmp_path / "saved"):
        records = read_records(str(path))
        assert [r.value for r in records] == rows, path
    assert [r.line for r in read_records(str(jsonl))] == [1, 2, 3, 4, 5]
    assert [r.row for r in read_records(str(tmp_path / "d.parquet"))] == [0, 1, 2, 3, 4]
    assert len(read_records(str(jsonl), limit=2)) == 2
    ref = load_dataset_sequences(str(jsonl), "pairs", tok, 128)
    for path in (js, tmp_path / "d.parquet", tmp_path / "saved"):
        assert load_dataset_sequences(str(path), "pairs", tok, 128) == ref


def test_parquet_mixed_sft_forms(tmp_path, tok):
    """Arrow fills missing keys with None; a messages row must not be read as a broken prompt row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    schema = pa.schema([("prompt", pa.string()), ("completion", pa.string()), ("messages", pa.list_(message))])
    pq.write_table(pa.Table.from_pylist(SFT, schema=schema), tmp_path / "s.parquet")
    seqs = load_dataset_sequences(str(tmp_path / "s.parquet"), "sft", tok, 128)
    assert seqs == tokenize(read_records_of(SFT), tok, "sft", 128)
    assert seqs[1].meta == {"source": str(tmp_path / "s.parquet"), "row": 1}


# ---------------------------------------------------------------- shipped datasets


@pytest.mark.parametrize("name, fmt, n", [("pairs/train", "pairs", 200), ("pairs/eval", "pairs", 40),
                                          ("sft/train", "sft", 200), ("sft/eval", "sft", 40)])
def test_shipped_datasets(tok, name, fmt, n):
    seqs = load_dataset_sequences(str(REPO / "data" / f"{name}.jsonl"), fmt, tok, 512)
    assert len(seqs) == (2 * n if fmt == "pairs" else n)
    assert count_truncated(seqs) == 0
    if fmt == "pairs":
        assert all(a.group == b.group and a.sign == 1.0 and b.sign == -1.0 for a, b in zip(seqs[::2], seqs[1::2]))
