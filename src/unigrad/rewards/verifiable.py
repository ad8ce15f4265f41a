"""Verifiable rewards: rule-based functions of ``(prompt, completion, answer, **meta) -> float``.

Answer extraction (``extract_answer``), in order of precedence:
1. the content of the last ``<answer>…</answer>`` tag;
2. else the content of the last ``\\boxed{…}`` (nested braces allowed);
3. else the last number in the completion.
"""
from __future__ import annotations

import math
import re
import threading

_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
# A number: optional sign (only where it cannot be a binary minus, e.g. not in "5-3"), digits with
# optional thousands commas, optional decimals; or a bare decimal like ".5".
_NUM = r"(?:(?<![\w)\]}])[-−+])?(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)"
_FRAC_TEX = re.compile(r"(-?)\\d?frac\s*\{\s*(" + _NUM + r")\s*\}\s*\{\s*(" + _NUM + r")\s*\}")
_FRAC = re.compile(r"(" + _NUM + r")\s*/\s*(" + _NUM + r")(?![\d.])")
_NUMBER = re.compile(_NUM + r"(?:[eE][-+]?\d+)?")


def boxed_content(text: str) -> str | None:
    """The content of the last ``\\boxed{…}`` (or ``\\fbox{…}``) in ``text``, braces balanced; None if absent."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
    return None


def extract_answer(text: str) -> str | None:
    """The answer part of a completion: last ``<answer>`` tag, else last ``\\boxed{}``, else the last
    number (as written); None when there is none of these."""
    tags = _TAG.findall(text)
    if tags:
        return tags[-1].strip()
    boxed = boxed_content(text)
    if boxed is not None:
        return boxed.strip()
    matches = list(_FRAC.finditer(text)) + list(_NUMBER.finditer(text))
    if not matches:
        return None
    return max(matches, key=lambda m: (m.end(), -m.start())).group(0)  # the last, longest (a/b over b)


def _to_float(s: str) -> float:
    return float(s.replace(",", "").replace("−", "-"))


def parse_number(text: str | None) -> float | None:
    """The value of the last number in ``text`` (a fraction ``a/b`` or ``\\frac{a}{b}`` counts as one
    number); None when ``text`` holds no number. Thousands commas and a unicode minus are understood."""
    if text is None:
        return None
    candidates: list[tuple[int, float]] = []
    spans: list[tuple[int, int]] = []
    for m in _FRAC_TEX.finditer(text):
        den = _to_float(m.group(3))
        value = _to_float(m.group(2)) / den if den != 0 else math.nan
        candidates.append((m.start(), -value if m.group(1) else value))
        spans.append(m.span())
    for m in _FRAC.finditer(text):
        if any(a <= m.start() < b for a, b in spans):
            continue
        den = _to_float(m.group(2))
        candidates.append((m.start(), _to_float(m.group(1)) / den if den != 0 else math.nan))
        spans.append(m.span())
    for m in _NUMBER.finditer(text):
        if any(a <= m.start() < b for a, b in spans):
            continue
        candidates.append((m.start(), _to_float(m.group(0))))
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[0])[1]


def numeric_match(prompt: str, completion: str, answer: str | None, tolerance: float = 1e-6, **meta) -> float:
    """1.0 if the completion's answer (see ``extract_answer``) equals the reference number, else 0.0.

    Equal means ``|pred - ref| <= tolerance * max(1, |ref|)``. The reference is the last number in
    ``answer``; a missing or non-numeric reference raises ValueError (a data problem, not a 0).
    """
    ref = parse_number(str(answer)) if answer is not None else None
    if ref is None:
        raise ValueError(f"numeric_match needs a numeric reference answer, got {answer!r}")
    pred = parse_number(extract_answer(completion))
    if pred is None or not math.isfinite(pred):
        return 0.0
    return 1.0 if abs(pred - ref) <= tolerance * max(1.0, abs(ref)) else 0.0


def math_verify_match(prompt: str, completion: str, answer: str | None, **meta) -> float:
    """1.0 if ``math_verify.verify(parse(answer), parse(completion answer))``, else 0.0.

    Uses Hugging Face's math-verify (``pip install math-verify``): LaTeX and plain expressions,
    fractions, sets, intervals ... are compared symbolically. The content of an ``<answer>`` tag is
    parsed when present, else the whole completion (math-verify finds ``\\boxed{}`` itself).
    """
    try:
        from math_verify import parse, verify
    except ImportError as e:
        raise ImportError("math_verify_match needs the math-verify package: pip install math-verify") from e
    if answer is None:
        raise ValueError("math_verify_match needs a reference answer, got None")
    # math-verify's timeouts use SIGALRM, which only works in the main thread.
    t = 5 if threading.current_thread() is threading.main_thread() else None
    gold = parse(str(answer), parsing_timeout=t)
    if not gold:
        raise ValueError(f"math_verify_match could not parse the reference answer {answer!r}")
    tags = _TAG.findall(completion)
    pred = parse(tags[-1] if tags else completion, parsing_timeout=t)
    if not pred:
        return 0.0
    return 1.0 if verify(gold, pred, timeout_seconds=t) else 0.0


def format_reward(prompt: str, completion: str, answer: str | None = None, **meta) -> float:
    """1.0 if the completion gives its answer in a non-empty ``<answer>…</answer>`` tag, else 0.0."""
    return 1.0 if any(t.strip() for t in _TAG.findall(completion)) else 0.0


__all__ = ["boxed_content", "extract_answer", "format_reward", "math_verify_match", "numeric_match", "parse_number"]
