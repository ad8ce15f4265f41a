"""Validating raw records into examples of the two formats, ``sft`` and ``pairs``.

- ``sft``: ``{"prompt": str, "completion": str}`` or ``{"messages": [...]}`` whose last message is
  the assistant's (the completion) and whose earlier messages are the prompt.
- ``pairs``: ``{"prompt", "chosen", "rejected"}``, each a string or a list of messages (chosen and
  rejected as messages are the answering assistant message(s)); or TRL's implicit-prompt style
  ``{"chosen": [...], "rejected": [...]}``, full conversations whose shared prefix is the prompt.
- ``forget`` (unlearning): one file, every record an ``sft`` record plus ``"split": "forget"`` or
  ``"split": "retain"``, e.g. ``{"prompt": ..., "completion": ..., "split": "forget"}``.
- ``scored`` (offline RL, A-LoL): ``{"prompt", "response", "reward": number}`` (``"completion"`` may
  stand for ``"response"``; ``"messages"`` as in ``sft`` also works), optional ``"value": number``
  (a baseline V(x)). Numbers must be finite; booleans are not numbers.
- ``pairs`` records may carry ``"margin": number``, the score difference the chosen answer must win by
  (Llama 2's per-pair margin); pairs of a file that gives it on some records only get margin 0.
- ``unpaired`` (KTO, BCO; TRL's unpaired preference shape): ``{"prompt", "completion", "label": true|false}``,
  prompt and completion each a string or messages as in ``pairs`` (or ``{"messages": [...], "label": ...}``
  as in ``sft``); ``label`` true marks a desirable completion (sign +1), false an undesirable one (sign −1).

A prompt is always returned as a list of messages (a plain string becomes one user message).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from unigrad.data.errors import DataError, type_name
from unigrad.data.sources import Record

ROLES = ("system", "user", "assistant")
FORMATS = ("sft", "pairs", "forget", "scored", "unpaired")
SPLITS = ("forget", "retain")
Messages = tuple[tuple[str, str], ...]  # ((role, content), ...)


# Each example type declares the Batch fields its rows fill (besides the tokens): the rows of one
# example share ``group``; ``sign`` tells chosen from rejected and retain from forget rows; a scored
# example carries its numbers.

@dataclass(frozen=True)
class SFTExample:
    prompt: Messages
    completion: str
    record: Record
    provides: ClassVar[frozenset[str]] = frozenset({"group"})


@dataclass(frozen=True)
class PairExample:
    prompt: Messages
    chosen: str
    rejected: str
    record: Record
    fields: dict = field(default_factory=dict)   # {"margin": float} when the record gives one
    provides: ClassVar[frozenset[str]] = frozenset({"group", "sign"})


@dataclass(frozen=True)
class ForgetExample:
    prompt: Messages
    completion: str
    forget: bool              # True: forget set (sign -1); False: retain set (sign +1)
    record: Record
    provides: ClassVar[frozenset[str]] = frozenset({"group", "sign"})


@dataclass(frozen=True)
class ScoredExample:
    prompt: Messages
    completion: str
    fields: dict              # {"reward": float[, "value": float]}
    record: Record
    provides: ClassVar[frozenset[str]] = frozenset({"group", "reward", "value"})


@dataclass(frozen=True)
class UnpairedExample:
    prompt: Messages
    completion: str
    desirable: bool           # True: desirable (sign +1); False: undesirable (sign −1)
    record: Record
    # "mismatched": KTO's rows of a prompt with another example's completion, made when an objective
    # reads them (``experience.mismatched``)
    provides: ClassVar[frozenset[str]] = frozenset({"group", "sign", "mismatched"})


EXAMPLES = {"sft": SFTExample, "pairs": PairExample, "forget": ForgetExample, "scored": ScoredExample,
            "unpaired": UnpairedExample}


def provides(format: str) -> frozenset[str]:
    """The Batch fields rows of ``format`` fill."""
    return EXAMPLES[format].provides


def parse(records: list[Record], format: str) -> list:
    """Validate every record as ``format`` (one of FORMATS); raises DataError."""
    if format == "sft":
        return [parse_sft(r) for r in records]
    if format == "pairs":
        return _uniform_margins([parse_pair(r) for r in records])
    if format == "forget":
        return [parse_forget(r) for r in records]
    if format == "scored":
        return [parse_scored(r) for r in records]
    if format == "unpaired":
        return [parse_unpaired(r) for r in records]
    raise DataError(f"unknown data format {format!r}; expected one of {', '.join(FORMATS)}")


def parse_sft(record: Record) -> SFTExample:
    obj = _object(record)
    if obj.get("messages") is not None:
        messages = _messages(record, obj["messages"], "messages")
        if len(messages) < 2:
            _fail(record, 'field "messages" needs at least one prompt message before the final assistant message')
        role, content = messages[-1]
        if role != "assistant":
            _fail(record, f'field "messages" must end with the assistant\'s message (the completion), got role "{role}"')
        if not content.strip():
            _fail(record, f'field "messages[{len(messages) - 1}].content" (the completion) is empty')
        return SFTExample(messages[:-1], content, record)
    if "prompt" not in obj and "completion" not in obj:
        _missing(record, '"prompt" (sft records need "prompt" and "completion", or "messages")')
    prompt = _string(record, obj, "prompt", allow_empty=True)
    completion = _string(record, obj, "completion")
    return SFTExample((("user", prompt),), completion, record)


def parse_forget(record: Record) -> ForgetExample:
    obj = _object(record)
    if "split" not in obj:
        _missing(record, '"split" (forget records need "prompt", "completion" and "split": "forget" or "retain")')
    split = obj["split"]
    if split not in SPLITS:
        shown = f'"{split}"' if isinstance(split, str) else type_name(split)
        _fail(record, f'field "split" must be "forget" or "retain", got {shown}')
    example = parse_sft(record)
    return ForgetExample(example.prompt, example.completion, split == "forget", record)


def parse_scored(record: Record) -> ScoredExample:
    obj = _object(record)
    if "response" in obj and "completion" in obj:
        _fail(record, 'give one of the fields "response" and "completion", not both')
    if obj.get("messages") is None:
        if "response" not in obj and "completion" not in obj:
            _missing(record, '"response" (scored records need "prompt", "response" and a numeric "reward")')
        if "response" in obj:
            obj = dict(obj, completion=_string(record, obj, "response"))
    example = parse_sft(Record(obj, record.source, record.line, record.row))
    if "reward" not in obj:
        _missing(record, '"reward" (scored records need "prompt", "response" and a numeric "reward")')
    fields = {"reward": _number(record, obj, "reward")}
    if obj.get("value") is not None:
        fields["value"] = _number(record, obj, "value")
    return ScoredExample(example.prompt, example.completion, fields, record)


def _number(record: Record, obj: dict, name: str) -> float:
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(record, f'field "{name}" must be a number, got {type_name(value)}')
    try:
        number = float(value)
    except OverflowError:   # an int beyond float's range
        number = math.inf
    if not math.isfinite(number):
        _fail(record, f'field "{name}" must be a finite number, got {value if isinstance(value, float) else "an integer beyond float range"}')
    return number


def parse_pair(record: Record) -> PairExample:
    obj = _object(record)
    for name in ("chosen", "rejected"):
        if name not in obj:
            _missing(record, f'"{name}" (pairs records need "prompt", "chosen" and "rejected")')
    if obj.get("prompt") is None:
        if "prompt" in obj or not (isinstance(obj["chosen"], list) and isinstance(obj["rejected"], list)):
            _missing(record, '"prompt" (pairs records need "prompt", "chosen" and "rejected"; '
                             'without "prompt", "chosen" and "rejected" must be full conversations sharing the prompt)')
        return _implicit_pair(record, obj)
    prompt_value = obj["prompt"]
    if isinstance(prompt_value, str):
        prompt: Messages = (("user", _text(record, prompt_value, "prompt")),)
    elif isinstance(prompt_value, list):
        prompt = _messages(record, prompt_value, "prompt")
        if not prompt:
            _fail(record, 'field "prompt" is an empty list of messages')
    else:
        _fail(record, f'field "prompt" must be a string or a list of messages, got {type_name(prompt_value)}')
    return PairExample(prompt, _answer(record, obj, "chosen", prompt), _answer(record, obj, "rejected", prompt), record,
                       _margin(record, obj))


def _margin(record: Record, obj: dict) -> dict:
    """``{"margin": m}`` when a pairs record gives a margin (null: none)."""
    return {"margin": _number(record, obj, "margin")} if obj.get("margin") is not None else {}


def _uniform_margins(examples: list[PairExample]) -> list[PairExample]:
    """Every pair with a margin when any has one (0: no margin), so the per-row field is never missing."""
    if not any(example.fields for example in examples):
        return examples
    return [example if example.fields else dataclasses.replace(example, fields={"margin": 0.0}) for example in examples]


def parse_unpaired(record: Record) -> UnpairedExample:
    """An unpaired record: a prompt, one completion and whether it is desirable (KTO's data)."""
    obj = _object(record)
    if "label" not in obj:
        _missing(record, '"label" (unpaired records need "prompt", "completion" and "label": true or false)')
    label = obj["label"]
    if not isinstance(label, bool):
        _fail(record, f'field "label" must be true (desirable) or false (undesirable), got {type_name(label)}')
    if obj.get("messages") is not None:
        example = parse_sft(record)
        return UnpairedExample(example.prompt, example.completion, label, record)
    for name in ("prompt", "completion"):
        if name not in obj:
            _missing(record, f'"{name}" (unpaired records need "prompt", "completion" and "label": true or false)')
    prompt_value = obj["prompt"]
    if isinstance(prompt_value, str):
        prompt: Messages = (("user", _text(record, prompt_value, "prompt")),)
    elif isinstance(prompt_value, list):
        prompt = _messages(record, prompt_value, "prompt")
    else:
        _fail(record, f'field "prompt" must be a string or a list of messages, got {type_name(prompt_value)}')
    return UnpairedExample(prompt, _answer(record, obj, "completion", prompt), label, record)


def _implicit_pair(record: Record, obj: dict) -> PairExample:
    chosen = _messages(record, obj["chosen"], "chosen")
    rejected = _messages(record, obj["rejected"], "rejected")
    k = 0
    while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
        k += 1
    if k == 0:
        _fail(record, 'fields "chosen" and "rejected" are conversations without a shared prompt; '
                      'give a "prompt" field or start both with the same prompt messages')
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        for i in range(k, len(conv)):
            if conv[i][0] != "assistant":
                _fail(record, f'field "{name}[{i}]" must be an assistant message after the prompt shared with the other answer, got role "{conv[i][0]}"')
    return PairExample(chosen[:k], _join(record, chosen[k:], "chosen"), _join(record, rejected[k:], "rejected"), record)


def _answer(record: Record, obj: dict, name: str, prompt: Messages) -> str:
    value = obj[name]
    if isinstance(value, str):
        if not value.strip():
            _fail(record, f'field "{name}" is empty')
        return _text(record, value, name)
    if not isinstance(value, list):
        _fail(record, f'field "{name}" must be a non-empty string or a list of messages, got {type_name(value)}')
    messages = _messages(record, value, name)
    if messages[: len(prompt)] == prompt and len(messages) > len(prompt):
        messages = messages[len(prompt):]  # a full conversation repeating the prompt
    for i, (role, _) in enumerate(messages):
        if role != "assistant":
            _fail(record, f'field "{name}[{i}]" must be an assistant message (the answer), got role "{role}"')
    return _join(record, messages, name)


def _join(record: Record, messages: Messages, name: str) -> str:
    text = "\n".join(content for _, content in messages)
    if not text.strip():
        _fail(record, f'field "{name}" is empty')
    return text


def _object(record: Record) -> dict:
    if not isinstance(record.value, dict):
        _fail(record, f"expected a JSON object, got {type_name(record.value)}")
    return record.value


def _string(record: Record, obj: dict, name: str, allow_empty: bool = False) -> str:
    if name not in obj:
        _missing(record, f'"{name}"')
    value = obj[name]
    if not isinstance(value, str):
        _fail(record, f'field "{name}" must be a string, got {type_name(value)}')
    if not allow_empty and not value.strip():
        _fail(record, f'field "{name}" is empty')
    return _text(record, value, name)


def _messages(record: Record, value: Any, name: str) -> Messages:
    if not isinstance(value, list):
        _fail(record, f'field "{name}" must be a list of messages, got {type_name(value)}')
    if not value:
        _fail(record, f'field "{name}" is an empty list of messages')
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            _fail(record, f'field "{name}[{i}]" must be a message object with "role" and "content", got {type_name(m)}')
        for key in ("role", "content"):
            if key not in m:
                _fail(record, f'missing field "{name}[{i}].{key}"')
            if not isinstance(m[key], str):
                _fail(record, f'field "{name}[{i}].{key}" must be a string, got {type_name(m[key])}')
            _text(record, m[key], f"{name}[{i}].{key}")
        if m["role"] not in ROLES:
            _fail(record, f'field "{name}[{i}].role" must be one of {", ".join(ROLES)}, got "{m["role"]}"')
        out.append((m["role"], m["content"]))
    return tuple(out)


def _text(record: Record, value: str, name: str) -> str:
    """``value`` if it is valid Unicode; a lone surrogate (a broken ``\\ud800`` escape in JSON) is a DataError."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        _fail(record, f'field "{name}" holds an unpaired surrogate \\u{ord(value[e.start]):04x} at character {e.start + 1} '
                      '(a broken \\u escape: UTF-16 surrogates come in pairs); fix the text')
    return value


def _missing(record: Record, what: str) -> None:
    """DataError for a missing field, listing the fields the record has (wrong columns show at once)."""
    fields = ", ".join(f'"{k}"' for k in list(record.value)[:20]) if isinstance(record.value, dict) else ""
    _fail(record, f"missing field {what}" + (f"; the record's fields are {fields}" if fields else "; the record is empty"))


def _fail(record: Record, message: str) -> None:
    raise DataError(f"{record.where}: {message}")
