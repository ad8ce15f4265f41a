"""Reading raw records from JSONL, JSON, Parquet, ``save_to_disk`` folders and the Hub.

Every record remembers where it came from, so that errors can point at it: JSONL records carry
their 1-based line number; records from other sources carry their 0-based row index.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from unigrad.data.errors import DataError, type_name


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

    ``path`` is a ``.jsonl``/``.json``/``.parquet`` file, a ``Dataset.save_to_disk`` folder, or
    ``hf:name[:split]`` for a Hugging Face Hub dataset (split defaults to ``train``).
    """
    source = os.fspath(path)
    if source.startswith("hf:"):
        it = _iter_hub(source)
    elif os.path.isdir(source):
        it = _iter_disk(source)
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
        raise DataError(f"{source}: no records (the dataset is empty)")
    return records


def _iter_jsonl(path: str) -> Iterator[Record]:
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {number}: invalid JSON ({e})") from None
            yield Record(value, path, line=number)


def _iter_json(path: str) -> Iterator[Record]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(value, list):
        raise DataError(f"{path}: a .json dataset must be a list of objects, got {type_name(value)} (use .jsonl for one object per line)")
    for i, item in enumerate(value):
        yield Record(item, path, row=i)


def _iter_rows(rows: Any, source: str) -> Iterator[Record]:
    for i, item in enumerate(rows):
        yield Record(item, source, row=i)


def _iter_parquet(path: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read Parquet file ({e})") from None
    yield from _iter_rows(table.to_pylist(), path)


def _iter_disk(path: str) -> Iterator[Record]:
    import datasets

    try:
        ds = datasets.load_from_disk(path)
    except Exception as e:
        raise DataError(f"{path}: not a folder written by datasets' save_to_disk ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: a DatasetDict without a 'train' split (splits: {', '.join(ds)}); save a single split")
        ds = ds["train"]
    yield from _iter_rows(ds, path)


def _iter_hub(source: str) -> Iterator[Record]:
    import datasets

    name, _, split = source[len("hf:"):].partition(":")
    if not name:
        raise DataError(f"{source}: expected hf:name[:split]")
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:
        raise DataError(f"{source}: cannot load Hub dataset ({type(e).__name__}: {e})") from None
    yield from _iter_rows(ds, source)


def resolve_data_path(path: str, config_source: str | None) -> str:
    """``path`` as given if it exists, else relative to the config file, else to the data shipped
    with unigrad (so ``data/pairs/train.jsonl`` works from any folder)."""
    from importlib import resources
    candidates = [Path(path)]
    if config_source:
        candidates.append(Path(config_source).parent / path)
    candidates.append(Path(str(resources.files("unigrad").joinpath("resources"))) / path)
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    return path  # the data layer reports it missing, naming it
