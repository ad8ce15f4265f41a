"""Reading raw records from JSONL, JSON, Parquet, ``save_to_disk`` folders and the Hub.

Every record remembers where it came from, so that errors can point at it: JSONL records carry
their 1-based line number; records from other sources carry their 0-based row index.

Text files must be UTF-8 (a leading byte-order mark is allowed). A file that is not UTF-8, that is
binary (an image, a Parquet or gzip file under a text name), or whose JSON cannot be parsed is a
DataError naming the file, the line and what to do; so is every failure of pyarrow or ``datasets``
to read a file or folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from unigrad.data.errors import DataError, one_line, type_name

# The first bytes of binary files users have been seen to name .jsonl or .json by mistake.
MAGIC = {b"PAR1": "a Parquet file (name it .parquet)", b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image",
         b"PK\x03\x04": "a zip archive (unpack it first)", b"\x1f\x8b": "a gzip file (decompress it first)",
         b"%PDF": "a PDF document", b"ARROW1": "an Arrow file (read it with datasets and save it as .jsonl)",
         b"\xff\xfe": "UTF-16 text (save it as UTF-8)", b"\xfe\xff": "UTF-16 text (save it as UTF-8)"}
UTF8_HINT = "data files must be UTF-8 text; re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`)"


@dataclass(frozen=True)
class Record:
    """One raw record (normally a dict) and its source."""
    value: Any
    source: str
    line: int | None = None   # 1-based, JSONL only
    row: int | None = None    # 0-based, other sources

    @property
    def where(self) -> str:
        """``"data/x.jsonl, line 7"`` or ``"data/x.parquet, row 3"``."""
        if self.line is not None:
            return f"{self.source}, line {self.line}"
        return f"{self.source}, row {self.row}"

    @property
    def meta(self) -> dict[str, Any]:
        return {"source": self.source, "line": self.line} if self.line is not None else {"source": self.source, "row": self.row}


def read_records(path: str | os.PathLike, limit: int | None = None) -> list[Record]:
    """All records of ``path`` (at most ``limit``); raises DataError on unreadable or empty input.

    ``path`` is a ``.jsonl``/``.json``/``.parquet`` file, a ``Dataset.save_to_disk`` folder (a
    ``DatasetDict`` folder reads its ``train`` split, or ``FOLDER:SPLIT``), or ``hf:name[:split]`` for a
    Hugging Face Hub dataset (split defaults to ``train``).
    """
    source = os.fspath(path)
    folder, split = _disk_split(source)
    if source.startswith("hf:"):
        it = _iter_hub(source)
    elif folder is not None:
        it = _iter_disk(folder, split)
    elif not os.path.exists(source):
        raise DataError(f"{source}: no such file or folder (for a Hugging Face Hub dataset write hf:name[:split])")
    elif source.endswith(".jsonl"):
        it = _iter_jsonl(source)
    elif source.endswith(".json"):
        it = _iter_json(source)
    elif source.endswith(".parquet"):
        it = _iter_parquet(source)
    else:
        raise DataError(f"{source}: unknown file type; expected .jsonl, .json, .parquet, a save_to_disk folder or hf:name[:split]")
    records: list[Record] = []
    if limit is None or limit > 0:
        for record in it:
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    if not records:
        raise DataError(f"{source}: no records (the dataset is empty); give a file with at least one record")
    return records


def _disk_split(source: str) -> tuple[str | None, str | None]:
    """``(folder, split)`` when ``source`` is a folder or ``FOLDER:SPLIT``; ``(None, None)`` otherwise."""
    if source.startswith("hf:"):
        return None, None
    if os.path.isdir(source):
        return source, None
    folder, sep, split = source.rpartition(":")
    if sep and folder and split and os.sep not in split and os.path.isdir(folder):
        return folder, split
    return None, None


def _open_text(path: str):
    """``path`` opened as UTF-8 text (BOM dropped); undecodable bytes become surrogates for ``_check_utf8``."""
    try:
        return open(path, encoding="utf-8-sig", errors="surrogateescape")
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from None


def _kind_of(path: str) -> str | None:
    """What a binary file looks like from its first bytes (``MAGIC``), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    return next((kind for magic, kind in MAGIC.items() if head.startswith(magic)), None)


def _not_text(path: str, where: str, detail: str) -> DataError:
    kind = _kind_of(path)
    if kind:
        return DataError(f"{where}: {detail}; the file looks like {kind}, not {Path(path).suffix} text")
    return DataError(f"{where}: {detail}; {UTF8_HINT}")


def _check_utf8(path: str, text: str, first_line: int = 1) -> None:
    """DataError naming the line and byte of ``text`` that was not UTF-8 (a surrogate from ``_open_text``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        line = first_line + text.count("\n", 0, e.start)
        column = e.start - text.rfind("\n", 0, e.start)
        byte = ord(text[e.start]) - 0xDC00
        raise _not_text(path, f"{path}, line {line}", f"not valid UTF-8 (byte 0x{byte:02x} at character {column})") from None


def _loads(text: str, path: str, where: str, lines: bool = False) -> Any:
    """``json.loads`` with every failure a DataError at ``where`` (at the error's line when ``lines``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = f"{path}, line {e.lineno}" if lines else where
        if "\x00" in text or _kind_of(path):
            detail = "the text holds NUL bytes" if "\x00" in text else e.msg
            raise _not_text(path, at, f"invalid JSON ({detail})") from None
        hint = "; one object per line is JSONL: name the file .jsonl" if lines and e.msg == "Extra data" else ""
        raise DataError(f"{at}: invalid JSON ({e}){hint}") from None
    except (ValueError, RecursionError) as e:   # an int longer than Python converts; nesting past the recursion limit
        detail = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise DataError(f"{where}: invalid JSON ({detail})") from None


def _iter_jsonl(path: str) -> Iterator[Record]:
    with _open_text(path) as f:
        for number, text in enumerate(f, start=1):
            _check_utf8(path, text, number)
            if not text.strip():
                continue
            yield Record(_loads(text, path, f"{path}, line {number}"), path, line=number)


def _iter_json(path: str) -> Iterator[Record]:
    with _open_text(path) as f:
        text = f.read()
    _check_utf8(path, text)
    if not text.strip():
        return
    yield from _iter_rows(_json_rows(_loads(text, path, path, lines=True), path), path)


def _json_rows(value: Any, path: str) -> list:
    """The records of a .json file: a list of records, or an object of equal-length columns."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        if all(isinstance(m, dict) and "role" in m for column in value.values() for m in column):
            raise DataError(f"{path}: the top-level object looks like one record of messages, not columns; "
                            f"write the records as a list, [{{...}}, ...], or one per line in a .jsonl file")
        lengths = {name: len(column) for name, column in value.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f'"{name}": {n}' for name, n in lengths.items())
            raise DataError(f"{path}: an object of columns needs lists of one length, got {shown} "
                            f"(for one record write [{{...}}])")
        names = list(value)
        return [dict(zip(names, row)) for row in zip(*value.values())]
    detail = type_name(value)
    if isinstance(value, dict):
        if not value:
            detail = "an empty object"
        else:
            name, column = next((k, v) for k, v in value.items() if not isinstance(v, list))
            detail = f'an object whose field "{name}" is {type_name(column)}, not a list'
    raise DataError(f"{path}: a .json dataset must be a list of objects or an object of column lists, got {detail} "
                    f"(write one record as [{{...}}], or use .jsonl for one object per line)")


def _iter_rows(rows: Any, source: str) -> Iterator[Record]:
    it = iter(rows)
    i = 0
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception as e:   # datasets decodes features (images, audio) while iterating
            raise DataError(f"{source}, row {i}: cannot read the row ({type(e).__name__}: {one_line(e)})") from None
        yield Record(item, source, row=i)
        i += 1


def _iter_parquet(path: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for corrupt files
        kind = _kind_of(path)
        what = ("the file is damaged or cut short" if kind and kind.startswith("a Parquet")
                else f"the file looks like {kind}" if kind else "the file is not Parquet")
        raise DataError(f"{path}: cannot read Parquet file ({type(e).__name__}: {one_line(e)}); {what} "
                        f"(write one with pyarrow.parquet.write_table or Dataset.to_parquet)") from None
    yield from _iter_rows(rows, path)


def _iter_disk(path: str, split: str | None) -> Iterator[Record]:
    import datasets

    shown = f"{path}:{split}" if split else path
    try:
        ds = datasets.load_from_disk(path)
    except Exception as e:
        raise DataError(f"{shown}: not a folder written by datasets' save_to_disk ({type(e).__name__}: {one_line(e)}); "
                        f"give a .jsonl, .json or .parquet file, or a folder from Dataset.save_to_disk") from None
    if isinstance(ds, datasets.DatasetDict):
        want = split or "train"
        if want not in ds:
            raise DataError(f"{shown}: the saved DatasetDict has no {want!r} split (splits: {', '.join(ds) or 'none'}); "
                            f"write {path}:SPLIT to read another split")
        ds = ds[want]
    elif split:
        raise DataError(f"{shown}: the folder holds a single Dataset, not a DatasetDict with splits; write {path}")
    yield from _iter_rows(ds, shown)


def _iter_hub(source: str) -> Iterator[Record]:
    import datasets

    name, _, split = source[len("hf:"):].partition(":")
    if not name:
        raise DataError(f"{source}: expected hf:name[:split]")
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:
        raise DataError(f"{source}: cannot load Hub dataset ({type(e).__name__}: {one_line(e)})") from None
    yield from _iter_rows(ds, source)


def resolve_data_path(path: str, config_source: str | None) -> str:
    """``path`` as given if it exists, else relative to the config file, else to the data shipped
    with unigrad (so ``data/pairs/train.jsonl`` works from any folder). ``FOLDER:SPLIT`` resolves FOLDER."""
    from importlib import resources
    if path.startswith("hf:"):
        return path
    folder, sep, split = path.rpartition(":")
    base, tail = (folder, sep + split) if sep and folder and split and os.sep not in split and not Path(path).exists() else (path, "")
    candidates = [Path(base)]
    if config_source:
        candidates.append(Path(config_source).parent / base)
    candidates.append(Path(str(resources.files("unigrad").joinpath("resources"))) / base)
    for candidate in candidates:
        if candidate.exists():
            return str(candidate) + tail
    return path  # the data layer reports it missing, naming it
