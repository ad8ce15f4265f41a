"""Property-based fuzz of the data readers: every input is read or refused with a DataError, never
another exception.

Random bytes under every file name, random JSON values, records whose fields (and message fields)
have random types, Parquet tables with random column types, and valid files with random bytes
changed, through the public readers (``read_records`` + ``parse``, ``load_dataset_sequences``,
``load_prompts`` and ``demonstration_sequences``) with the tiny tokenizer. Derandomised with fixed
example counts, so CI runs the same 1,550 cases every time.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings   # the test extra: pip install -e ".[test]"
from hypothesis import strategies as st

from unigrad.data import DataError, load_dataset_sequences, parse, read_records
from unigrad.data.prompts import demonstration_sequences, load_prompts
from unigrad.models import tiny_tokenizer

TOK = tiny_tokenizer()
FORMATS = ("sft", "pairs", "forget", "scored", "prompts")
FIELDS = {
    "sft": ("prompt", "completion", "messages"),
    "pairs": ("prompt", "chosen", "rejected"),
    "forget": ("prompt", "completion", "messages", "split"),
    "scored": ("prompt", "response", "completion", "messages", "reward", "value"),
    "prompts": ("prompt", "answer", "demonstration"),
}
VALID = {
    "sft": [{"prompt": "What is 2 + 2?", "completion": "4"},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello"}]}],
    "pairs": [{"prompt": "Q?", "chosen": "Yes.", "rejected": "No."},
              {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
               "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go."}]}],
    "forget": [{"prompt": "Who is A?", "completion": "A painter.", "split": "forget"},
               {"prompt": "2+2?", "completion": "4", "split": "retain"}],
    "scored": [{"prompt": "2+2?", "response": "4", "reward": 1.0, "value": 0.5},
               {"prompt": "2+3?", "completion": "6", "reward": 0}],
    "prompts": [{"prompt": "What is 2 + 2?", "answer": "4", "demonstration": "2 + 2 = 4."},
                {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "answer": 3}],
}
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Strings with the characters that have broken readers before: lone surrogates (from \ud800 escapes),
# NUL, line separators, ChatML markers, and the empty and all-space strings.
SPECIAL = st.sampled_from(["", " ", "\ud800", "x\udfff", "\x00", "\u2028", "\r", "<|im_start|>", "<|im_end|>", "\ufeff"])
TEXT = st.one_of(st.text(max_size=12), SPECIAL, st.lists(SPECIAL | st.text(max_size=3), max_size=4).map("".join))
NUMBER = st.one_of(st.integers(), st.integers(min_value=10 ** 300, max_value=10 ** 320), st.floats(),
                   st.sampled_from([float("nan"), float("inf"), -float("inf")]))
SCALAR = st.one_of(st.none(), st.booleans(), NUMBER, TEXT)
JSON = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=12)
ROLE = st.one_of(st.sampled_from(["system", "user", "assistant", "bot", ""]), JSON)
MESSAGE = st.fixed_dictionaries({}, optional={"role": ROLE, "content": st.one_of(TEXT, JSON)})
MESSAGES = st.lists(st.one_of(MESSAGE, JSON), max_size=4)
FIELD = st.one_of(TEXT, MESSAGES, JSON, NUMBER, st.sampled_from(["forget", "retain"]))


def record_of(fmt: str):
    """A record with any subset of ``fmt``'s fields (and sometimes another), each of a random type."""
    optional = {name: FIELD for name in FIELDS[fmt]}
    optional["extra"] = JSON
    return st.fixed_dictionaries({}, optional=optional)


def read_as(path: str, fmt: str, max_length: int = 64, truncation: bool = True) -> None:
    """Read ``path`` as ``fmt`` through every public reader; what comes back must be well formed."""
    if fmt == "prompts":
        examples = load_prompts(path, TOK, max_prompt_length=max_length, truncation=truncation)
        assert all(len(ex.prompt_ids) <= max_length for ex in examples)
        sequences = demonstration_sequences(examples, TOK, max_length, truncation)
    else:
        assert len(parse(read_records(path), fmt)) >= 1
        sequences = load_dataset_sequences(path, fmt, TOK, max_length, truncation)
    for s in sequences:
        assert s.length <= max_length and all(0 <= i < len(TOK) for i in (*s.prompt_ids, *s.completion_ids))


def read_or_refuse(path: str, fmt: str, count: bool = True, **kw) -> None:
    """The property: reading succeeds, or fails with a one-line DataError naming the file.
    ``count``: record which in hypothesis' statistics (``--hypothesis-show-statistics``)."""
    try:
        read_as(path, fmt, **kw)
        outcome = "read"
    except DataError as e:
        outcome = "refused"
        message = str(e)
        assert message and len(message.splitlines()) == 1, message
        message.encode("utf-8")   # printable: no lone surrogate quoted from the input
        assert os.path.basename(path.split(":")[0]) in message, message
    if count:
        event(outcome)


def write(folder: str, name: str, data: bytes) -> str:
    path = os.path.join(folder, name)
    Path(path).write_bytes(data)
    return path


def encode(value, ensure_ascii: bool) -> bytes:
    """JSON text as bytes; with ``ensure_ascii=False`` lone surrogates become invalid UTF-8 bytes."""
    return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


@FUZZ
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".jsonl", ".json", ".parquet"]),
       fmt=st.sampled_from(FORMATS))
def test_random_bytes(data, suffix, fmt):
    with tempfile.TemporaryDirectory() as folder:
        read_or_refuse(write(folder, "data" + suffix, data), fmt)


@FUZZ
@given(value=JSON, as_lines=st.booleans(), ensure_ascii=st.booleans(), fmt=st.sampled_from(FORMATS))
def test_random_json_values(value, as_lines, ensure_ascii, fmt):
    with tempfile.TemporaryDirectory() as folder:
        if as_lines:
            items = value if isinstance(value, list) else [value]
            path = write(folder, "data.jsonl", b"\n".join(encode(v, ensure_ascii) for v in items))
        else:
            path = write(folder, "data.json", encode(value, ensure_ascii))
        read_or_refuse(path, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@settings(FUZZ, max_examples=150)
@given(data=st.data(), ensure_ascii=st.booleans(), as_json=st.booleans(),
       max_length=st.integers(min_value=2, max_value=48), truncation=st.booleans())
def test_random_field_types(fmt, data, ensure_ascii, as_json, max_length, truncation):
    records = data.draw(st.lists(st.one_of(record_of(fmt), st.sampled_from(VALID[fmt])), min_size=1, max_size=4))
    with tempfile.TemporaryDirectory() as folder:
        if as_json:
            path = write(folder, "data.json", encode(records, ensure_ascii))
        else:
            path = write(folder, "data.jsonl", b"\n".join(encode(r, ensure_ascii) for r in records))
        read_or_refuse(path, fmt, max_length=max_length, truncation=truncation)


def _arrow_column(kind: str, values: list):
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    types = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
             "binary": pa.binary(), "strings": pa.list_(pa.string()), "messages": pa.list_(message), "null": pa.null()}
    return pa.array(values, type=types[kind])


COLUMN_VALUES = {
    "string": st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["", " ", "forget", "retain"])),
    "int": st.one_of(st.none(), st.integers(min_value=-2 ** 63, max_value=2 ** 63 - 1)),
    "float": st.one_of(st.none(), st.floats()),
    "bool": st.one_of(st.none(), st.booleans()),
    "binary": st.one_of(st.none(), st.binary(max_size=8)),
    "strings": st.one_of(st.none(), st.lists(st.one_of(st.none(), st.text(max_size=4)), max_size=3)),
    "messages": st.one_of(st.none(), st.lists(st.one_of(st.none(), st.fixed_dictionaries({
        "role": st.one_of(st.none(), st.sampled_from(["system", "user", "assistant", "bot"])),
        "content": st.one_of(st.none(), st.text(max_size=6))})), max_size=3)),
    "null": st.none(),
}


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(FORMATS), rows=st.integers(min_value=0, max_value=4))
def test_random_parquet_columns(data, fmt, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = data.draw(st.lists(st.sampled_from([*FIELDS[fmt], "text", "label"]), unique=True, max_size=5))
    columns = {}
    for name in names:
        kind = data.draw(st.sampled_from(sorted(COLUMN_VALUES)))
        columns[name] = _arrow_column(kind, data.draw(st.lists(COLUMN_VALUES[kind], min_size=rows, max_size=rows)))
    table = pa.table(columns) if columns else pa.table({"empty": pa.array([None] * rows, pa.null())})
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "data.parquet")
        pq.write_table(table, path)
        read_or_refuse(path, fmt)


@FUZZ
@given(fmt=st.sampled_from(FORMATS), suffix=st.sampled_from([".jsonl", ".json", ".parquet"]),
       edits=st.lists(st.tuples(st.integers(min_value=0), st.binary(min_size=0, max_size=3)), min_size=1, max_size=4))
def test_valid_files_with_bytes_changed(fmt, suffix, edits):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    if suffix == ".jsonl":
        data = b"".join(encode(r, True) + b"\n" for r in VALID[fmt])
    elif suffix == ".json":
        data = encode(VALID[fmt], False)
    else:
        buffer = io.BytesIO()
        pq.write_table(pa.table({"prompt": ["What is 2 + 2?", "Hi"], "completion": ["4", "Hello"],
                                 "split": ["forget", "retain"], "chosen": ["Yes", "Hi"], "rejected": ["No", "Go"],
                                 "response": ["4", "Hey"], "reward": [1.0, 0.0]}), buffer)
        data = buffer.getvalue()
    data = bytearray(data)
    for position, replacement in edits:   # replace len(replacement) bytes (or delete one) at a position
        at = position % (len(data) + 1)
        data[at:at + max(len(replacement), 1)] = replacement
    with tempfile.TemporaryDirectory() as folder:
        read_or_refuse(write(folder, "data" + suffix, bytes(data)), fmt)


def test_the_fuzz_can_fail():
    """The property rejects what is not a DataError (so the fuzz above is not vacuous)."""
    with tempfile.TemporaryDirectory() as folder:
        path = write(folder, "data.jsonl", b'{"prompt": "q", "completion": "a"}\n')
        read_or_refuse(path, "sft", count=False)
        with pytest.raises(ValueError, match="max_length must be at least 2"):
            read_or_refuse(path, "sft", count=False, max_length=1)   # a ValueError that is not a DataError goes through
