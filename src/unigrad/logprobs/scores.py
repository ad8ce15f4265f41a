"""Sequence scores: the forward of a sequence-classification (reward) model, and its producer.

A reward model is a causal LM body with a one-output linear head; its score r(x, y) is the head's
output at the last non-pad token of the right-padded text x ⊕ y (transformers'
``*ForSequenceClassification`` pooling, which needs ``config.pad_token_id``). Training, held-out
metrics, ``RewardModel`` and ``unigrad eval`` all score through ``sequence_scores`` on the same
token ids (the chat-templated prompt ending where the answer starts, the completion, EOS), so a
trained folder scores rollouts exactly as it was trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence as _Seq

import torch
from torch import Tensor

from unigrad.tokens import Sequence, TokenBatch

SCORE_FIELD = "score"


def padded(rows: _Seq[_Seq[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)`` [N, L] of token-id rows, right-padded with ``pad_id``."""
    width = max((len(r) for r in rows), default=1)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        ids[k, :len(row)] = torch.tensor(list(row), dtype=torch.long)
        attention[k, :len(row)] = 1
    return ids, attention


def sequence_scores(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """r [N] (float32): the one-output head at each row's last non-pad token (the model's own pooling)."""
    device = next(model.parameters()).device
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
    if logits.dim() != 2 or logits.shape[1] != 1:
        raise ValueError(f"a reward model has one output per sequence; this one returns logits of shape "
                         f"{tuple(logits.shape)} (a causal LM, or num_labels != 1)")
    return logits[:, 0].float()


@dataclass(frozen=True)
class SequenceScores:
    """``extra["score"]`` [B], r(x, y) of each sequence with gradient, from one forward of the score
    model (``sequence_scores`` on the sequences right-padded, packed or not); ``logp`` is a zero
    [B, T] placeholder (the Batch's layout: a score model has no token log-probs), so ``provides``
    does not claim it and no objective that reads log-probs can be given this producer."""
    pad_id: int
    provides: ClassVar[frozenset[str]] = frozenset({SCORE_FIELD})

    def __call__(self, engine, sequences: _Seq[Sequence], tb: TokenBatch) -> dict[str, Tensor]:
        ids, attention = padded([s.prompt_ids + s.completion_ids for s in sequences], self.pad_id)
        scores = engine(sequence_scores, ids, attention)
        return {"logp": torch.zeros(tb.completion_mask.shape, dtype=scores.dtype, device=scores.device),
                SCORE_FIELD: scores}


__all__ = ["SCORE_FIELD", "SequenceScores", "padded", "sequence_scores"]
