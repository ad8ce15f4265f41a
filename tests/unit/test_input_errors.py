"""Every kind of bad input is a clear error naming the file (and line or row) and what to do.

Data files that are not UTF-8 or not text at all, Parquet files with the wrong columns or that are
not Parquet, dataset folders without the split, chat templates missing or failing, model folders
with pickle-only weights, tokenizers without EOS or pad, empty files, JSON of the wrong shape; and
through the command line, that such errors are one paragraph with exit 2, never an "internal error".
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest

from unigrad.data import DataError, load_dataset_sequences, read_records
from unigrad.data.prompts import load_prompts
from unigrad.models import ModelError, load_model, tiny_random_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def data_error(path, fmt="pairs", tok=None) -> str:
    """The DataError message of loading ``path``; one line, naming the file."""
    with pytest.raises(DataError) as e:
        load_dataset_sequences(str(path), fmt, tok or tiny_tokenizer(), 256)
    message = str(e.value)
    assert "\n" not in message and str(path).split(":")[0] in message, message
    return message


def jsonl(*records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


# ------------------------------------------------------------------------------ encodings, binary files


def test_jsonl_not_utf8_names_line_byte_and_fix(tmp_path, tok):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(jsonl(GOOD) + '{"prompt": "Café?", "chosen": "Oui.", "rejected": "Non."}\n'.encode("latin-1"))
    message = data_error(path, tok=tok)
    assert message.startswith(f"{path}, line 2: not valid UTF-8 (byte 0xe9 at character 16)")
    assert "re-save it as UTF-8" in message


def test_json_not_utf8_names_line(tmp_path, tok):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[\n {"prompt": "Q?", "chosen": "a", "rejected": "b"},\n {"prompt": "\xe9t\xe9", "chosen": "a", "rejected": "b"}\n]')
    assert data_error(path, tok=tok).startswith(f"{path}, line 3: not valid UTF-8 (byte 0xe9")


def test_utf8_byte_order_mark_is_read(tmp_path, tok):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + jsonl(GOOD, GOOD))
    assert [r.value for r in read_records(path)] == [GOOD, GOOD]
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([GOOD]).encode())
    assert [r.value for r in read_records(tmp_path / "bom.json")] == [GOOD]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_image_named_as_text_says_what_it_is(tmp_path, tok, suffix):
    path = tmp_path / f"picture{suffix}"
    path.write_bytes(PNG)
    message = data_error(path, tok=tok)
    assert "line 1" in message and "looks like a PNG image" in message


def test_utf16_and_parquet_under_a_text_name(tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "utf16.jsonl"
    path.write_bytes(json.dumps(GOOD).encode("utf-16"))
    assert "UTF-16 text (save it as UTF-8)" in data_error(path, tok=tok)
    path = tmp_path / "table.jsonl"
    pq.write_table(pa.Table.from_pylist([GOOD]), path)
    assert "looks like a Parquet file (name it .parquet)" in data_error(path, tok=tok)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_random_bytes_are_refused_with_the_file_named(tmp_path, tok, suffix):
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(random.Random(7).randbytes(4096))
    data_error(path, tok=tok)


def test_nul_bytes_are_called_binary(tmp_path, tok):
    path = tmp_path / "nul.jsonl"
    path.write_bytes(b"\x00" * 64 + b"\n")
    message = data_error(path, tok=tok)
    assert "line 1: invalid JSON (the text holds NUL bytes)" in message


def test_unpaired_surrogate_escape_names_the_field(tmp_path, tok):
    path = tmp_path / "surrogate.jsonl"
    path.write_bytes(jsonl(GOOD) + b'{"prompt": "Q?", "chosen": "ok \\ud800", "rejected": "No."}\n')
    message = data_error(path, tok=tok)
    assert message.startswith(f"{path}, line 2: field \"chosen\" holds an unpaired surrogate \\ud800")


def test_integer_beyond_float_range_is_not_a_finite_reward(tmp_path, tok):
    path = tmp_path / "scored.jsonl"
    path.write_text(json.dumps({"prompt": "q", "response": "a", "reward": 10 ** 400}) + "\n")
    assert 'line 1: field "reward" must be a finite number' in data_error(path, "scored", tok)


def test_json_nested_too_deeply_or_int_too_long(tmp_path, tok):
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "\n")
    assert "line 1: invalid JSON (nested too deeply)" in data_error(path, tok=tok)
    path = tmp_path / "long.json"
    path.write_text("[" + "9" * 5000 + "]")   # past Python's int-string limit (3.11+)
    assert "invalid JSON (" in data_error(path, tok=tok)


# ---------------------------------------------------------------------------------------- Parquet


def test_parquet_with_the_wrong_columns_lists_them(tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "wrong.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "hello", "label": 1}] * 3), path)
    message = data_error(path, "sft", tok)
    assert message.startswith(f'{path}, row 0: missing field "prompt"')
    assert "the record's fields are \"text\", \"label\"" in message


def test_not_parquet_says_so(tmp_path, tok):
    path = tmp_path / "text.parquet"
    path.write_bytes(jsonl(GOOD))
    message = data_error(path, tok=tok)
    assert "cannot read Parquet file" in message and "the file is not Parquet" in message
    path = tmp_path / "png.parquet"
    path.write_bytes(PNG)
    assert "looks like a PNG image" in data_error(path, tok=tok)


# ------------------------------------------------------------------------------- datasets folders


def test_dataset_folder_without_the_split(tmp_path, tok):
    import datasets

    rows = [GOOD, GOOD]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    message = data_error(tmp_path / "dd", tok=tok)
    assert "has no 'train' split (splits: test)" in message and f"write {tmp_path / 'dd'}:SPLIT" in message
    assert [r.value for r in read_records(f"{tmp_path / 'dd'}:test")] == rows   # the suggested fix works
    message = data_error(f"{tmp_path / 'dd'}:validation", tok=tok)
    assert "has no 'validation' split" in message
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    assert "a single Dataset" in data_error(f"{tmp_path / 'single'}:test", tok=tok)


def test_folder_that_is_not_a_saved_dataset(tmp_path, tok):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.jsonl").write_bytes(jsonl(GOOD))
    assert "not a folder written by datasets' save_to_disk" in data_error(tmp_path / "plain", tok=tok)


def test_split_suffix_resolves_relative_to_the_config(tmp_path):
    import datasets

    from unigrad.data.sources import resolve_data_path

    datasets.DatasetDict({"test": datasets.Dataset.from_list([GOOD])}).save_to_disk(str(tmp_path / "dd"))
    assert resolve_data_path("dd:test", str(tmp_path / "run.yaml")) == f"{tmp_path / 'dd'}:test"


# ---------------------------------------------------------------------------------- chat templates


def _without_template():
    tok = tiny_tokenizer()
    tok.chat_template = None
    return tok


def test_conversation_without_a_chat_template_is_written_as_text_and_said(tmp_path, caplog):
    path = tmp_path / "chat.jsonl"
    path.write_bytes(jsonl({"prompt": "plain", "completion": "a"},
                           {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                         {"role": "assistant", "content": "Hello"}]}))
    tok = _without_template()
    with caplog.at_level(logging.WARNING, logger="unigrad.data"):
        seqs = load_dataset_sequences(str(path), "sft", tok, 256)
    assert tok.decode(seqs[1].prompt_ids) == "system: Be brief.\n\nuser: Hi\n\nassistant:"
    warning = [r.getMessage() for r in caplog.records if "no chat template" in r.getMessage()]
    assert len(warning) == 1 and warning[0].startswith(f"{path}, line 2:") and "tokenizer.chat_template" in warning[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unigrad.data"):
        load_dataset_sequences(str(path), "sft", tiny_tokenizer(), 256)     # a template: nothing to say
    assert not [r for r in caplog.records if "no chat template" in r.getMessage()]


def test_chat_template_that_fails_names_the_record(tmp_path):
    tok = tiny_tokenizer()
    tok.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                         "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    path = tmp_path / "chat.jsonl"
    path.write_bytes(jsonl({"prompt": "ok", "completion": "a"},
                           {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
                            "chosen": "a", "rejected": "b"}))
    with pytest.raises(DataError) as e:
        load_prompts(path, tok)
    message = str(e.value)
    assert message.startswith(f"{path}, line 2: the tokenizer's chat template fails on this prompt (roles: system, user)")
    assert "System role not supported" in message and "tokenizer.chat_template" in message


# ----------------------------------------------------------------------------------- model folders


def _tiny_folder(folder: Path, tokenizer=None, safetensors: bool = True) -> Path:
    """A small model folder as save_pretrained writes it; ``safetensors=False``: the weights as a pickle
    ``pytorch_model.bin`` instead (what older checkpoints ship)."""
    import torch

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    model = tiny_random_model(tokenizer=tokenizer, hidden=16, layers=1, heads=2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if not safetensors:
        for f in folder.glob("*.safetensors"):
            f.unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def test_pickle_only_weights_are_refused_saying_why_and_how_to_convert(tmp_path):
    folder = _tiny_folder(tmp_path / "m", safetensors=False)
    with pytest.raises(ModelError) as e:
        load_model(str(folder))
    message = str(e.value)
    assert message.startswith(f"{folder}: the weights are pickle files only (pytorch_model.bin)")
    assert "safetensors only" in message and "runs whatever code" in message and "safe_serialization=True" in message


def test_model_folder_without_config_weights_or_tokenizer(tmp_path):
    folder = _tiny_folder(tmp_path / "m")
    (folder / "config.json").rename(tmp_path / "config.json")
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(folder))
    (tmp_path / "config.json").rename(folder / "config.json")
    for f in folder.glob("tokenizer*"):
        f.unlink()
    (folder / "special_tokens_map.json").unlink(missing_ok=True)
    with pytest.raises(ModelError, match="no tokenizer files"):
        load_model(str(folder))
    for f in folder.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelError, match=r"no weights \(\*\.safetensors\)"):
        load_model(str(folder))


def test_corrupt_safetensors_is_a_model_error(tmp_path):
    folder = _tiny_folder(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"not really safetensors")
    with pytest.raises(ModelError, match="cannot load the model folder"):
        load_model(str(folder))


def _plain_tokenizer(eos: str | None, pad: str | None):
    """A byte-level tokenizer without ChatML tokens, so nothing can stand in for a missing EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>"])}
    for ch in pre_tokenizers.ByteLevel.alphabet():
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad)


def test_tokenizer_without_eos_is_refused_naming_the_folder(tmp_path):
    folder = _tiny_folder(tmp_path / "m", _plain_tokenizer(eos=None, pad="<pad>"))
    with pytest.raises(ModelError) as e:
        load_model(str(folder))
    message = str(e.value)
    assert message.startswith(f"{folder}: the tokenizer has no EOS token") and "eos_token" in message


def test_tokenizer_without_pad_pads_with_eos_and_says_so(tmp_path, caplog):
    folder = _tiny_folder(tmp_path / "m", _plain_tokenizer(eos="<eos>", pad=None))
    with caplog.at_level(logging.INFO, logger="unigrad.models"):
        _, tokenizer = load_model(str(folder))
    assert tokenizer.pad_token == "<eos>" and tokenizer.pad_token_id == tokenizer.eos_token_id == 1
    assert any("no pad token; padding with its EOS token" in r.getMessage() and str(folder) in r.getMessage()
               for r in caplog.records)


# ----------------------------------------------------------------------------- empty, JSON shapes


def test_empty_files_of_every_kind(tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_bytes(b"")
    (tmp_path / "b.json").write_bytes(b"[]")
    (tmp_path / "c.json").write_bytes(b"  \n")
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), tmp_path / "d.parquet")
    for name in ("a.jsonl", "b.json", "c.json", "d.parquet"):
        assert "no records (the dataset is empty)" in data_error(tmp_path / name, tok=tok)


@pytest.mark.parametrize("value, expected", [
    (3, "got int"),
    ("text", "got str"),
    (None, "got null"),
    ({}, "got an empty object"),
    (GOOD, 'got an object whose field "prompt" is str, not a list'),
    ({"prompt": ["a", "b"], "completion": ["x"]}, 'lists of one length, got "prompt": 2, "completion": 1'),
    ({"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
      "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "No"}]},
     "looks like one record of messages"),
])
def test_json_top_level_neither_list_nor_columns(tmp_path, tok, value, expected):
    path = tmp_path / "shape.json"
    path.write_text(json.dumps(value))
    message = data_error(path, "sft", tok)
    assert expected in message


def test_json_object_of_columns_is_read_as_rows(tmp_path):
    path = tmp_path / "columns.json"
    path.write_text(json.dumps({"prompt": ["a", "b"], "completion": ["x", "y"]}))
    records = read_records(path)
    assert [r.value for r in records] == [{"prompt": "a", "completion": "x"}, {"prompt": "b", "completion": "y"}]
    assert [r.row for r in records] == [0, 1]


def test_jsonl_content_in_a_json_file_says_to_rename(tmp_path, tok):
    path = tmp_path / "lines.json"
    path.write_bytes(jsonl(GOOD, GOOD))
    message = data_error(path, tok=tok)
    assert message.startswith(f"{path}, line 2: invalid JSON (Extra data") and "name the file .jsonl" in message


# --------------------------------------------------------------------------------------- rewards


def test_reward_module_failing_at_import_is_a_value_error(tmp_path, monkeypatch):
    from unigrad.rewards import load_reward

    (tmp_path / "broken_reward_mod.py").write_text("raise RuntimeError('no GPU here')\n")
    (tmp_path / "notes.txt").write_text("x")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="importing module 'broken_reward_mod' failed .RuntimeError: no GPU here"):
        load_reward("broken_reward_mod:fn")
    with pytest.raises(ValueError, match="is not a Python file"):
        load_reward(f"{tmp_path / 'notes.txt'}:fn")


# ---------------------------------------------------------------------------------- command line


def _cli(capsys, *args) -> tuple[int, str]:
    from unigrad.cli import main

    code = main(["train", str(ROOT / "configs" / "tiny-dpo.yaml"), *args, "--no-progress"])
    return code, capsys.readouterr().err


def test_cli_input_errors_are_one_paragraph_with_exit_2(tmp_path, capsys):
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(jsonl(GOOD) + '{"prompt": "Café?"}\n'.encode("latin-1"))
    picture = tmp_path / "pairs.parquet"
    picture.write_bytes(PNG)
    pickled = _tiny_folder(tmp_path / "pickled", safetensors=False)
    no_eos = _tiny_folder(tmp_path / "no_eos", _plain_tokenizer(eos=None, pad="<pad>"))
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    cases = [([f"data.train={latin}"], f"{latin}, line 2: not valid UTF-8"),
             ([f"data.train={picture}"], "looks like a PNG image"),
             ([f"data.train={empty}"], "no records (the dataset is empty)"),
             ([f"model={pickled}"], "pickle files only"),
             ([f"model={no_eos}"], "the tokenizer has no EOS token")]
    for overrides, expected in cases:
        code, err = _cli(capsys, f"output_dir={tmp_path / 'run'}", "data.eval=null", *overrides)
        assert code == 2, err
        assert "internal error" not in err and "Traceback" not in err
        errors = [line for line in err.splitlines() if line.startswith("unigrad: error")]
        assert len(errors) == 1 and expected in errors[0], err
