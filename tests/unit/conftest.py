"""Shared by the data-format tests: the tiny tokenizer, the shipped data folder, and a JSONL writer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from unigrad.models import tiny_tokenizer

DATA = Path(__file__).resolve().parents[2] / "src" / "unigrad" / "resources" / "data"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def write_jsonl():
    """``write_jsonl(path, records)``: one JSON record (or raw string line) per line; returns ``path``."""
    def write(path: Path, records) -> Path:
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
        return path
    return write


@pytest.fixture(scope="module")
def shipped_data() -> Path:
    """The data folder shipped in the package (src/unigrad/resources/data)."""
    return DATA
