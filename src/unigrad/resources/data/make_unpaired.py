"""Writes the example ``unpaired`` dataset shipped in data/unpaired/ (deterministic) from the shipped pairs.

    python data/make_unpaired.py

Each of the first 100 training pairs (20 held-out pairs) gives two records: its chosen answer labelled
desirable (``"label": true``) and its rejected answer labelled undesirable (``false``), with the pair's
prompt, so a held-out margin compares the two answers to the same prompts. Record 2j is pair j's chosen
answer and record 2j + 1 pair (j + n/2)'s rejected one: neighbouring records never share a prompt, so
KTO's mismatched rows (prompt i with completion i − 1) always pair a prompt with another question's answer.
"""
from __future__ import annotations

import json
from pathlib import Path

from make_examples import write_jsonl   # run as a script from data/, beside it

HERE = Path(__file__).resolve().parent


def unpaired(pairs: list[dict]) -> list[dict]:
    n, out = len(pairs), []
    for j in range(n):
        good, bad = pairs[j], pairs[(j + n // 2) % n]
        out.append({"prompt": good["prompt"], "completion": good["chosen"], "label": True})
        out.append({"prompt": bad["prompt"], "completion": bad["rejected"], "label": False})
    return out


def _read(path: Path, n: int) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()][:n]


def main() -> None:
    write_jsonl(HERE / "unpaired" / "train.jsonl", unpaired(_read(HERE / "pairs" / "train.jsonl", 100)))
    write_jsonl(HERE / "unpaired" / "eval.jsonl", unpaired(_read(HERE / "pairs" / "eval.jsonl", 20)))


if __name__ == "__main__":
    main()
