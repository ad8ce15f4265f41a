"""A deterministic stand-in reward for TRICE's tests: about a third of the tiny random model's samples are
"correct" (the decoded completion's length is a multiple of 3), so the memory moves every few steps."""


def coin(prompt, completion, answer=None, **meta) -> float:
    return float(len(completion) % 3 == 0)
