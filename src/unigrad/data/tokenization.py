"""Turning validated examples into token ``Sequence``s.

Prompt: the tokenizer's chat template with a generation prompt when it has one; otherwise the
plain prompt text (with BOS if the tokenizer adds it); a conversation (a system message or several
turns) without a template is written as ``role: content`` text, with a warning. A template that
fails on a record (e.g. one that refuses a system message) is a DataError naming the record.
Completion: the completion text's tokens (no special tokens) followed by EOS. Sequences longer than ``max_length`` are cut (see ``fit``);
a cut sequence has ``meta["truncated"] = True`` (``count_truncated`` counts them).
"""
from __future__ import annotations

import logging
from typing import Any

from unigrad.data.errors import DataError, one_line
from unigrad.data.formats import ForgetExample, Messages, PairExample, ScoredExample, UnpairedExample, parse
from unigrad.data.sources import Record, read_records
from unigrad.tokens import Sequence

log = logging.getLogger("unigrad.data")


def encode_prompt(tokenizer: Any, prompt: Messages, where: str = "") -> list[int]:
    """Token ids of a prompt, ending where the assistant's answer starts.

    ``where`` (``"file, line 3"``) names the record in the DataError raised when the chat template fails.
    """
    messages = [{"role": role, "content": content} for role, content in prompt]
    if not getattr(tokenizer, "chat_template", None):
        return _ids(tokenizer(prompt_text(prompt)))
    try:
        return _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    except Exception as e:  # noqa: BLE001 - the template is the model's, the messages the user's: either may be at fault
        prefix = f"{where}: " if where else ""
        roles = ", ".join(role for role, _ in prompt)
        raise DataError(f"{prefix}the tokenizer's chat template fails on this prompt (roles: {roles}) with "
                        f"{type(e).__name__}: {one_line(e)}; give messages in the order and roles the template accepts "
                        f"(some refuse a system message or need user and assistant to alternate), "
                        f"or set tokenizer.chat_template to one that does") from None


def needs_template(prompt: Messages) -> bool:
    """Whether ``prompt`` is a conversation that plain text cannot carry without inventing a format."""
    return not (len(prompt) == 1 and prompt[0][0] == "user")


def warn_without_template(tokenizer: Any, examples: list, what: str = "conversations") -> None:
    """Log once when a tokenizer without a chat template meets conversations (written as ``role: content``)."""
    if getattr(tokenizer, "chat_template", None):
        return
    first = next((ex for ex in examples if needs_template(ex.prompt)), None)
    if first is not None:
        log.warning("%s: the tokenizer has no chat template, so %s are written as plain 'role: content' text; "
                    "use a model whose tokenizer has one (or set tokenizer.chat_template) to train in its chat format",
                    first.record.where, what)


def prompt_text(prompt: Messages) -> str:
    """Plain text for a prompt when there is no chat template: a lone user message is its content;
    longer conversations are written ``role: content`` per message, then ``assistant:``."""
    if len(prompt) == 1 and prompt[0][0] == "user":
        return prompt[0][1]
    return "\n\n".join(f"{role}: {content}" for role, content in prompt) + "\n\nassistant:"


def encode_completion(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a completion: its text without special tokens, then EOS."""
    ids = _ids(tokenizer(text, add_special_tokens=False))
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def fit(prompt: list[int], completion: list[int], max_length: int, truncation: bool, where: str = "") -> tuple[list[int], list[int], bool]:
    """Cut (prompt, completion) to at most ``max_length`` tokens; returns them and whether cut.

    The completion is cut first. A prompt that leaves no room for the completion is a DataError
    unless ``truncation``; then it keeps its last ``max_length - 1`` tokens and the completion one.
    """
    if len(prompt) + len(completion) <= max_length:
        return prompt, completion, False
    if len(prompt) >= max_length:
        if not truncation:
            prefix = f"{where}: " if where else ""
            amount = "more than" if len(prompt) > max_length else "as many as"
            raise DataError(f"{prefix}prompt has {len(prompt)} tokens, {amount} max_length={max_length}, leaving no room "
                            f"for the completion; set data.truncation=true or raise max_length")
        keep = max(max_length - 1, 0)
        return (prompt[len(prompt) - keep:] if keep else []), completion[: max_length - keep], True
    return prompt, completion[: max_length - len(prompt)], True


def tokenize(records: list[Record], tokenizer: Any, format: str, max_length: int, truncation: bool = False) -> list[Sequence]:
    """Validate ``records`` as ``format`` and tokenise them into Sequences.

    ``sft``: one Sequence per record (group = record index, sign = +1).
    ``pairs``: two per record, chosen (sign +1) then rejected (sign -1), group = pair index.
    ``forget``: one per record, sign -1 on the forget split and +1 on the retain split, group = record index.
    ``scored``: one per record (sign +1, group = record index), ``meta["fields"] = {"reward": r[, "value": v]}``.
    ``unpaired``: one per record, sign +1 when desirable and −1 when not, group = record index.
    A pair's ``margin`` goes to both of its rows' ``meta["fields"]``.
    ``meta`` holds the source (``source`` and ``line`` or ``row``) and ``truncated`` when cut.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    out: list[Sequence] = []
    examples = parse(records, format)
    warn_without_template(tokenizer, examples)
    for group, example in enumerate(examples):
        prompt = encode_prompt(tokenizer, example.prompt, example.record.where)
        if isinstance(example, PairExample):
            answers = [(example.chosen, 1.0), (example.rejected, -1.0)]
        else:
            negative = (isinstance(example, ForgetExample) and example.forget
                        or isinstance(example, UnpairedExample) and not example.desirable)
            answers = [(example.completion, -1.0 if negative else 1.0)]
        for text, sign in answers:
            p, c, cut = fit(prompt, encode_completion(tokenizer, text), max_length, truncation, example.record.where)
            meta = dict(example.record.meta, truncated=True) if cut else example.record.meta
            if isinstance(example, (ScoredExample, PairExample)) and example.fields:
                meta = dict(meta, fields=dict(example.fields))
            out.append(Sequence(tuple(p), tuple(c), group=group, sign=sign, meta=meta))
    return out


def count_truncated(sequences: list[Sequence]) -> int:
    """How many sequences were cut to fit ``max_length``."""
    return sum(1 for s in sequences if s.meta.get("truncated"))


def load_dataset_sequences(path: str, format: str, tokenizer: Any, max_length: int, truncation: bool = False,
                           limit: int | None = None) -> list[Sequence]:
    """Read ``path`` (at most ``limit`` records), validate it as ``format``, and tokenise it."""
    sequences = tokenize(read_records(path, limit=limit), tokenizer, format, max_length, truncation)
    if count_truncated(sequences):
        log.warning("%s: truncated %d of %d sequences to max_length=%d", path, count_truncated(sequences),
                    len(sequences), max_length)
    return sequences


def _ids(encoded: Any) -> list[int]:
    """A flat list of ids from whatever a tokenizer call returned (list, dict, BatchEncoding, tensor)."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], (list, tuple)):
        if len(encoded) != 1:
            raise ValueError(f"expected one sequence of token ids, got {len(encoded)}")
        encoded = encoded[0]
    return [int(i) for i in encoded]
