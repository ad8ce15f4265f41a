"""Token-level data between the data layer and the log-prob producers.

A ``Sequence`` is one tokenised (prompt, completion) with its role in the objective (group, sign).
A ``TokenBatch`` lays sequences out for one forward pass, padded or packed, and says where each
completion token sits so the engine can return ``logp[b, t]`` in the ``Batch`` layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class Sequence:
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    group: int = 0          # pair id / prompt id (see Batch.group)
    sign: float = 1.0       # +1 chosen, -1 rejected (see Batch.sign)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # e.g. source file and line

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


@dataclass(frozen=True)
class TokenBatch:
    """Sequences laid out in R rows of length L (R = B when padded, R < B when packed).

    input_ids, position_ids: [R, L]; position ids restart at 0 at each packed sequence's start.
    seq_id: [R, L] long, index b of the sequence each position belongs to, -1 on padding.
    completion_row, completion_col: [B, T] long, where completion token t of sequence b sits in
      input_ids (its log-prob is read from the logits at column col - 1); 0 where not a token.
    completion_mask: [B, T] float, 1 on real completion tokens.
    group, sign: [B] per-sequence fields copied from the Sequences.
    """
    input_ids: Tensor
    position_ids: Tensor
    seq_id: Tensor
    completion_row: Tensor
    completion_col: Tensor
    completion_mask: Tensor
    group: Tensor
    sign: Tensor
    packed: bool = False

    @property
    def num_sequences(self) -> int:
        return self.completion_mask.shape[0]

    def to(self, device) -> "TokenBatch":
        return TokenBatch(**{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()})
