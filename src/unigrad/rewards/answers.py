"""Answer identity: one integer per completion, equal for completions that give the same answer.

COPO's consistency reward (Han et al. 2025, "COPO: Consistency-Aware Policy Optimization", arXiv
2508.04138) needs the distribution of a prompt's extracted answers. The answer is taken as the
verifiable rewards take it (``extract_answer``); a numeric answer is keyed by its value, so "1,000"
and "1000.0" agree as ``numeric_match`` would have them agree; any other answer by its stripped text; a
completion without an answer by one shared key (the official code counts its missing answers as one
category too). The key is hashed with BLAKE2b to a signed 64-bit integer: stable across processes
and runs, unlike Python's salted ``hash``, so ids computed on different ranks or after a resume agree.
"""
from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

from unigrad.rewards.verifiable import extract_answer, parse_number

NO_ANSWER = "\x00no answer"


def answer_key(completion: str) -> str:
    """The canonical text of ``completion``'s answer (``NO_ANSWER`` when it has none)."""
    answer = extract_answer(completion)
    if answer is None:
        return NO_ANSWER
    value = parse_number(answer)
    if value is not None and math.isfinite(value):
        return repr(float(value))
    return answer.strip()


def answer_id(completion: str) -> int:
    """A stable signed 64-bit id of ``completion``'s answer key."""
    digest = hashlib.blake2b(answer_key(completion).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def answer_ids(completions: list[str]) -> Tensor:
    """[N] long: ``answer_id`` of each completion."""
    return torch.tensor([answer_id(c) for c in completions], dtype=torch.long)
