"""Log-prob producers: what turns the policy (and a teacher) plus tokens into the ``Batch`` fields an objective reads.

Each producer declares the fields it ``provides`` (always ``logp``, [B, T] with gradient) and returns
them from one call; the loop picks one with ``choose_producer(objective.requires, candidates)``:

| producer         | provides                                  | computes                                   |
| ---------------- | ----------------------------------------- | ------------------------------------------ |
| ``TokenLogprobs``  | logp                                      | ``token_logprobs`` (or the shared-prompt forward) |
| ``BestOtherToken`` | logp, logp_top_other                      | ``token_logprobs_with_top_other`` (IHL)    |
| ``TeacherSupport`` | logp, ``DISTILL_FIELDS``                  | ``distill_fields`` (logp = student_logp_target) |
| ``LogprobsAndValues`` | logp, value_pred                      | ``token_logprobs_and_values`` (a value head on the trunk) |

``engine(fn, *args, **kw)`` calls ``fn(model, *args, **kw)`` on the policy (``parallel.ModelCall``), so
producers run the same under every parallel layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol, Sequence as _Seq

from torch import Tensor

from unigrad.logprobs.best_other import TOP_OTHER_FIELDS, token_logprobs_with_top_other
from unigrad.logprobs.shared_prompt import shared_prompt_logprobs, shares_prompts
from unigrad.logprobs.support import DISTILL_FIELDS, distill_fields
from unigrad.logprobs.sampled import sampled_label_logprobs
from unigrad.logprobs.token import token_logprobs
from unigrad.logprobs.values import token_logprobs_and_values
from unigrad.tokens import Sequence, TokenBatch


class LogProbProducer(Protocol):
    """``producer(engine, sequences, tb)`` → ``{"logp": [B, T] with grad, **other fields}``."""
    provides: frozenset[str]           # Batch fields it fills, always including "logp"

    def __call__(self, engine, sequences: _Seq[Sequence], tb: TokenBatch) -> dict[str, Tensor]: ...


def _as_is(flag: bool) -> bool:
    return flag


@dataclass(frozen=True)
class TokenLogprobs:
    """``logp`` = ``token_logprobs``; with ``share_prompts``, each distinct prompt is forwarded once
    (``shared_prompt_logprobs``, the same values) when some sequences share a prompt and ``agree``
    (every process taking the same path, under a sharded layout) says so."""
    chunk_size: int
    pad_id: int
    share_prompts: bool = False
    agree: Callable[[bool], bool] = _as_is
    provides: ClassVar[frozenset[str]] = frozenset({"logp"})

    def __call__(self, engine, sequences: _Seq[Sequence], tb: TokenBatch) -> dict[str, Tensor]:
        if self.share_prompts and self.agree(shares_prompts(sequences)):
            return {"logp": engine(shared_prompt_logprobs, sequences, self.pad_id, self.chunk_size)}
        return {"logp": engine(token_logprobs, tb, self.chunk_size)}


@dataclass(frozen=True)
class BestOtherToken:
    """``logp`` and ``logp_top_other`` = log max_{v≠y_t} p(v), both with gradient, from one pass."""
    chunk_size: int
    provides: ClassVar[frozenset[str]] = frozenset({"logp"}) | TOP_OTHER_FIELDS

    def __call__(self, engine, sequences: _Seq[Sequence], tb: TokenBatch) -> dict[str, Tensor]:
        logp, top_other = engine(token_logprobs_with_top_other, tb, self.chunk_size)
        return {"logp": logp, "logp_top_other": top_other}


@dataclass(frozen=True)
class TeacherSupport:
    """The distillation fields (``distill_fields``: one teacher pass without grad, one student pass with
    grad) at the teacher's top-``k`` support (None: the full vocabulary); ``logp`` is the student pass's
    ``student_logp_target``, so the student runs once."""
    teacher: object
    k: int | None
    chunk_size: int
    temperature: float
    provides: ClassVar[frozenset[str]] = frozenset({"logp"}) | DISTILL_FIELDS

    def __call__(self, engine, sequences: _Seq[Sequence], tb: TokenBatch) -> dict[str, Tensor]:
        fields = engine(distill_fields, self.teacher, tb, k=self.k, chunk_size=self.chunk_size,
                        temperature=self.temperature)
        return {"logp": fields["student_logp_target"], **fields}


@dataclass(frozen=True, eq=False)
class LogprobsAndValues:
    """``logp`` and ``value_pred`` (a value head on the policy's trunk, ``logprobs.values``) from one
    forward, both with gradient: PPO with ``critic.shared``. Each sequence is forwarded whole (no
    shared-prompt forward: ``train.share_prompts`` does not apply)."""
    head: object        # the value head (torch.nn.Module), trained next to the policy (critic.SharedHead)
    chunk_size: int
    provides: ClassVar[frozenset[str]] = frozenset({"logp", "value_pred"})

    def __call__(self, engine, sequences: _Seq[Sequence], tb: TokenBatch) -> dict[str, Tensor]:
        logp, values = engine(token_logprobs_and_values, tb, self.head, self.chunk_size)
        return {"logp": logp, "value_pred": values}


@dataclass(frozen=True)
class SampledLabels:
    """``logp`` = log p_θ(ŷ_t) of labels ŷ_t drawn from the model at each completion position
    (``sampled_label_logprobs``, from ``seed``): the Gauss–Newton–Bartlett curvature estimate's
    read-out, not an objective's (it is not in the table)."""
    chunk_size: int
    seed: int = 0
    provides: ClassVar[frozenset[str]] = frozenset({"logp"})

    def __call__(self, engine, sequences: _Seq[Sequence], tb: TokenBatch) -> dict[str, Tensor]:
        return {"logp": engine(sampled_label_logprobs, tb, self.chunk_size, self.seed)}


# Every field some producer can fill.
PRODUCED_FIELDS: frozenset[str] = TokenLogprobs.provides | BestOtherToken.provides | TeacherSupport.provides


def choose_producer(requires: frozenset[str], candidates: _Seq[LogProbProducer]) -> LogProbProducer:
    """The table: the first of ``candidates`` whose ``provides`` covers the fields of ``requires`` that some
    candidate provides (fields no candidate provides, such as ``reward``, come from elsewhere). Give the
    candidates cheapest first (``TokenLogprobs``, ``BestOtherToken``, ``TeacherSupport``)."""
    candidates = list(candidates)
    if not candidates:
        raise ValueError("choose_producer needs at least one log-prob producer")
    needed = frozenset(requires) & frozenset().union(*(c.provides for c in candidates))
    for candidate in candidates:
        if needed <= candidate.provides:
            return candidate
    offered = "; ".join(f"{type(c).__name__}: {', '.join(sorted(c.provides))}" for c in candidates)
    raise ValueError(f"no single log-prob producer fills {', '.join(sorted(needed))} (the objective requires "
                     f"them together); the producers offer {offered}")


__all__ = ["BestOtherToken", "LogProbProducer", "LogprobsAndValues", "PRODUCED_FIELDS", "SampledLabels", "TeacherSupport", "TokenLogprobs",
           "choose_producer"]
