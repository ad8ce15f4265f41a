"""The ``prompts`` data format: prompts to sample from (RL), with optional answers and demonstrations.

A record is ``{"prompt": str | [messages], "answer": str (optional), "demonstration": str (optional)}``:

- ``prompt``: a non-empty string (one user message) or a list of ``{"role", "content"}`` messages
  not ending with an assistant message (the model answers next);
- ``answer``: the reference answer for verifiable rewards (a string; a JSON number is accepted and
  kept as written, e.g. ``42`` → ``"42"``);
- ``demonstration``: a worked solution, for mixing SFT into RL (HPT and the like);
- any other fields are kept in ``extra`` and passed to reward functions as ``**meta``.

``load_prompts`` validates every record (DataError naming the file, line and field) and tokenises the
prompt with the data package's ``encode_prompt`` (chat template with a generation prompt).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from unigrad.data.errors import DataError, type_name
from unigrad.data.formats import Messages, _fail, _messages, _missing, _object, _text
from unigrad.data.sources import Record, read_records
from unigrad.data.tokenization import encode_completion, encode_prompt, fit, warn_without_template
from unigrad.tokens import Sequence

FIELDS = ("prompt", "answer", "demonstration")


@dataclass(frozen=True)
class PromptExample:
    prompt: Messages
    answer: str | None
    demonstration: str | None
    record: Record
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    prompt_ids: tuple[int, ...] | None = None     # set by ``load_prompts`` / ``encode_prompts``

    @property
    def prompt_text(self) -> str:
        """The prompt as one string (a lone user message is its content), for reward functions."""
        if len(self.prompt) == 1 and self.prompt[0][0] == "user":
            return self.prompt[0][1]
        return "\n\n".join(f"{role}: {content}" for role, content in self.prompt)


def parse_prompt(record: Record) -> PromptExample:
    """Validate one record as the ``prompts`` format; raises DataError naming file, line and field."""
    obj = _object(record)
    if "prompt" not in obj or obj["prompt"] is None:
        _missing(record, '"prompt" (prompts records need "prompt"; "answer" and "demonstration" are optional)')
    value = obj["prompt"]
    if isinstance(value, str):
        if not value.strip():
            _fail(record, 'field "prompt" is empty')
        prompt: Messages = (("user", _text(record, value, "prompt")),)
    elif isinstance(value, list):
        prompt = _messages(record, value, "prompt")
        if prompt[-1][0] == "assistant":
            _fail(record, f'field "prompt[{len(prompt) - 1}]" is an assistant message; a prompt must end with '
                          'the user (or system) message the model answers')
    else:
        _fail(record, f'field "prompt" must be a string or a list of messages, got {type_name(value)}')
    answer = _optional_text(record, obj, "answer", numbers_ok=True)
    demonstration = _optional_text(record, obj, "demonstration")
    extra = {k: v for k, v in obj.items() if k not in FIELDS}
    return PromptExample(prompt, answer, demonstration, record, extra)


def _optional_text(record: Record, obj: dict, name: str, numbers_ok: bool = False) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if numbers_ok and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        kinds = "a string or a number" if numbers_ok else "a string"
        _fail(record, f'field "{name}" must be {kinds}, got {type_name(value)}')
    if not value.strip():
        _fail(record, f'field "{name}" is empty (leave it out if there is none)')
    return _text(record, value, name)


def parse_prompts(records: list[Record], require_answer: bool = False,
                  require_demonstration: bool = False) -> list[PromptExample]:
    """Validate every record; ``require_*`` makes the optional fields mandatory (DataError if absent)."""
    out = []
    for r in records:
        ex = parse_prompt(r)
        if require_answer and ex.answer is None:
            _fail(r, 'missing field "answer" (this reward needs a reference answer for every prompt)')
        if require_demonstration and ex.demonstration is None:
            _fail(r, 'missing field "demonstration" (this method mixes in SFT on worked solutions)')
        out.append(ex)
    return out


def encode_prompts(examples: list[PromptExample], tokenizer: Any, max_prompt_length: int | None = None,
                   truncation: bool = False) -> list[PromptExample]:
    """Examples with ``prompt_ids`` set (``encode_prompt``). A prompt longer than ``max_prompt_length``
    is a DataError unless ``truncation``, which keeps its last ``max_prompt_length`` tokens."""
    out = []
    warn_without_template(tokenizer, examples, "conversation prompts")
    for ex in examples:
        ids = encode_prompt(tokenizer, ex.prompt, ex.record.where)
        if max_prompt_length is not None and len(ids) > max_prompt_length:
            if not truncation:
                raise DataError(f"{ex.record.where}: prompt has {len(ids)} tokens, more than max_prompt_length="
                                f"{max_prompt_length}; set data.truncation=true or raise max_prompt_length")
            ids = ids[len(ids) - max_prompt_length:]
        out.append(PromptExample(ex.prompt, ex.answer, ex.demonstration, ex.record, ex.extra, tuple(ids)))
    return out


def load_prompts(path: str | os.PathLike, tokenizer: Any = None, max_prompt_length: int | None = None,
                 truncation: bool = False, limit: int | None = None, require_answer: bool = False,
                 require_demonstration: bool = False) -> list[PromptExample]:
    """Read ``path`` (see ``read_records``), validate it as ``prompts``, and tokenise the prompts when
    a tokenizer is given."""
    examples = parse_prompts(read_records(path, limit=limit), require_answer, require_demonstration)
    return encode_prompts(examples, tokenizer, max_prompt_length, truncation) if tokenizer is not None else examples


def demonstration_sequences(examples: list[PromptExample], tokenizer: Any, max_length: int,
                            truncation: bool = False) -> list[Sequence]:
    """SFT ``Sequence``s (prompt → demonstration + EOS) of the examples that have a demonstration;
    ``group`` is the example's index in ``examples`` (so it lines up with the rollouts' groups)."""
    out = []
    for i, ex in enumerate(examples):
        if ex.demonstration is None:
            continue
        prompt = list(ex.prompt_ids) if ex.prompt_ids is not None else encode_prompt(tokenizer, ex.prompt, ex.record.where)
        p, c, cut = fit(prompt, encode_completion(tokenizer, ex.demonstration), max_length, truncation, ex.record.where)
        meta = dict(ex.record.meta, truncated=True) if cut else ex.record.meta
        out.append(Sequence(tuple(p), tuple(c), group=i, sign=1.0, meta=meta))
    return out


def load_prompt_splits(config, tokenizer, resolve) -> tuple[list, list | None]:
    """Train and eval ``PromptExample``s (with prompt ids) from files or a built-in task."""
    data = config.data
    if data.task:
        from unigrad.tasks.arithmetic import make_splits
        train, test = make_splits(data.task.train_size, data.task.eval_size, seed=data.task.seed,
                                  difficulty=data.task.difficulty)

        def examples(records, name):
            return encode_prompts(parse_prompts([Record(value=r, source=f"task:{data.task.name}:{name}", row=i)
                                                 for i, r in enumerate(records)]), tokenizer)
        return examples(train, "train"), examples(test, "eval")
    train = load_prompts(resolve(data.train), tokenizer, limit=data.limit, truncation=data.truncation)
    evaluation = load_prompts(resolve(data.eval), tokenizer, truncation=data.truncation) if data.eval else None
    return train, evaluation


__all__ = ["FIELDS", "PromptExample", "demonstration_sequences", "encode_prompts", "load_prompt_splits",
           "load_prompts", "parse_prompt", "parse_prompts"]
