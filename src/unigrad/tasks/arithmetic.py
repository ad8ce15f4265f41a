"""A built-in, deterministic arithmetic task producing ``prompts`` records.

Each problem is an integer expression with ``+``, ``-`` and ``*`` (usual precedence), e.g.
``What is 12 + 7 * 3?``. A record holds the prompt, the answer (``"33"``) and a short worked
demonstration that ends in a fixed, parseable form::

    7 * 3 = 21. 12 + 21 = 33. The answer is <answer>33</answer>.

Difficulty levels (``LEVELS``):

    1: a ± b,               a, b in 1..20
    2: a op b,              op in + - *;  ± operands 10..99, * operands 2..12
    3: a op b op c,         op in + - *;  ± operands 1..30,  * operands 2..9
    4: a op b op c,         op in + - *;  ± operands 10..99, * operands 2..12
    5: a op b op c op d,    op in + - *;  ± operands 10..99, * operands 2..12

The default level is 2. SmolLM2-135M-Instruct (greedy, max_new_tokens=48, scored with
``numeric_match`` on the 50 problems of ``make_splits(100, 50, seed=0, difficulty=d)[1]``) gets
20% at level 1, 16% at level 2 and 6% at level 3; it never uses the ``<answer>`` tag unprompted by
training (format reward 0), so there is room to learn both the format and the arithmetic.

The same ``seed`` always gives the same problems (Python's ``random.Random``; no global state).
``make_splits`` gives disjoint train/test sets (no expression in both), and the test set depends
only on ``(n_test, seed, difficulty)``, not on ``n_train``.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

INSTRUCTION = "Give the final answer as <answer>number</answer>."
WORDINGS = {   # the prompt around an expression: "question" is the training wording, the others test transfer
    "question": "What is {expression}? " + INSTRUCTION,
    "imperative": "Calculate {expression} and write the result between <answer> and </answer>.",
}


@dataclass(frozen=True)
class Level:
    operands: int
    ops: str               # allowed operators
    add_range: tuple[int, int]
    mul_range: tuple[int, int]


LEVELS: dict[int, Level] = {
    1: Level(2, "+-", (1, 20), (2, 9)),
    2: Level(2, "+-*", (10, 99), (2, 12)),
    3: Level(3, "+-*", (1, 30), (2, 9)),
    4: Level(3, "+-*", (10, 99), (2, 12)),
    5: Level(4, "+-*", (10, 99), (2, 12)),
}
DEFAULT_DIFFICULTY = 2


def _level(difficulty: int) -> Level:
    if difficulty not in LEVELS:
        raise ValueError(f"difficulty must be one of {sorted(LEVELS)}, got {difficulty!r}")
    return LEVELS[difficulty]


def _draw(rng: random.Random, level: Level) -> tuple[list[int], list[str]]:
    ops = [rng.choice(level.ops) for _ in range(level.operands - 1)]
    nums = []
    for i in range(level.operands):
        touches_mul = (i > 0 and ops[i - 1] == "*") or (i < len(ops) and ops[i] == "*")
        lo, hi = level.mul_range if touches_mul else level.add_range
        nums.append(rng.randint(lo, hi))
    return nums, ops


def expression(nums: list[int], ops: list[str]) -> str:
    out = str(nums[0])
    for op, n in zip(ops, nums[1:]):
        out += f" {op} {n}"
    return out


def solve(nums: list[int], ops: list[str]) -> tuple[int, list[str]]:
    """The value of the expression and the worked steps (products first, then left to right)."""
    nums, ops = list(nums), list(ops)
    steps = []
    i = 0
    while i < len(ops):                     # multiplications first
        if ops[i] == "*":
            value = nums[i] * nums[i + 1]
            steps.append(f"{nums[i]} * {nums[i + 1]} = {value}")
            nums[i:i + 2] = [value]
            del ops[i]
        else:
            i += 1
    while ops:                              # then + and - from left to right
        a, op, b = nums[0], ops[0], nums[1]
        value = a + b if op == "+" else a - b
        steps.append(f"{a} {op} {b} = {value}")
        nums[0:2] = [value]
        del ops[0]
    return nums[0], steps


def reworded(record: dict, wording: str) -> dict:
    """The same problem with its prompt in another wording (a key of ``WORDINGS``)."""
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {sorted(WORDINGS)}, got {wording!r}")
    return {**record, "prompt": WORDINGS[wording].format(expression=record["expression"])}


def make_problem(rng: random.Random, difficulty: int = DEFAULT_DIFFICULTY) -> dict:
    """One ``prompts`` record: prompt, answer, demonstration (and the bare expression, difficulty)."""
    nums, ops = _draw(rng, _level(difficulty))
    expr = expression(nums, ops)
    value, steps = solve(nums, ops)
    demonstration = " ".join(f"{s}." for s in steps) + f" The answer is <answer>{value}</answer>."
    return {
        "prompt": WORDINGS["question"].format(expression=expr),
        "answer": str(value),
        "demonstration": demonstration,
        "expression": expr,
        "difficulty": difficulty,
    }


def generate(n: int, seed: int = 0, difficulty: int = DEFAULT_DIFFICULTY, unique: bool = True) -> list[dict]:
    """``n`` problems from ``seed``; with ``unique`` no expression repeats (ValueError if the level
    has too few distinct problems)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"unigrad-arithmetic-{seed}-{difficulty}")
    out, seen = [], set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"difficulty {difficulty} has too few distinct problems for n={n}")
        rec = make_problem(rng, difficulty)
        if unique:
            if rec["expression"] in seen:
                continue
            seen.add(rec["expression"])
        out.append(rec)
    return out


def make_splits(n_train: int, n_test: int, seed: int = 0,
                difficulty: int = DEFAULT_DIFFICULTY) -> tuple[list[dict], list[dict]]:
    """Disjoint (train, test) record lists: one stream of distinct problems, the first ``n_test`` for
    test and the next ``n_train`` for train."""
    problems = generate(n_train + n_test, seed=seed, difficulty=difficulty, unique=True)
    return problems[n_test:], problems[:n_test]


def write_jsonl(records: list[dict], path: str | os.PathLike) -> str:
    """Write records as JSONL (one object per line); returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


__all__ = ["DEFAULT_DIFFICULTY", "INSTRUCTION", "LEVELS", "WORDINGS", "reworded", "expression", "generate", "make_problem", "make_splits",
           "solve", "write_jsonl"]
