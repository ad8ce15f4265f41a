"""The one data structure every objective reads.

Row b of a batch is one completion y_b (with its prompt x_b); column t is its t-th token.
Only ``logp`` carries gradient; every other field is data (detached).

Conventions (public API, see DESIGN.md):
- ``logp[b, t] = log π_θ(y_{b,t} | x_b, y_{b,<t})`` and is 0 where ``mask`` is 0.
- Pairs (DPO family): a pair's chosen and rejected rows share ``group``; ``sign`` is +1 for the
  chosen row and -1 for the rejected one. Both rows of a pair are always in the same batch.
- Rollouts (GRPO family): rows sampled for the same prompt share ``group``.
- ``n_tokens``, ``n_sequences``, ``n_groups`` are the global counts a normaliser divides by. The
  training loop sets them to the totals over all micro-batches of an optimiser step (and over all
  processes), so that k accumulated micro-batches give the same update as one batch of k. Left
  ``None``, they are counted on this batch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Batch:
    logp: Tensor                      # [B, T] log π_θ of each completion token (has grad)
    mask: Tensor                      # [B, T] 1 on completion tokens that count
    logp_old: Tensor | None = None    # [B, T] behaviour-policy log-probs
    logp_ref: Tensor | None = None    # [B, T] reference-model log-probs
    reward: Tensor | None = None      # [B] scalar reward per sequence
    group: Tensor | None = None       # [B] long: prompt id or pair id
    sign: Tensor | None = None        # [B] +1 chosen / -1 rejected (or forget)
    n_tokens: float | None = None     # global normalisation counts (see module docstring)
    n_sequences: float | None = None
    n_groups: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other data (teacher log-probs, ...)

    def replace(self, **changes: Any) -> "Batch":
        return dataclasses.replace(self, **changes)

    @property
    def tokens_total(self) -> float:
        return float(self.n_tokens) if self.n_tokens is not None else float(self.mask.sum())

    @property
    def sequences_total(self) -> float:
        return float(self.n_sequences) if self.n_sequences is not None else float(self.mask.shape[0])

    @property
    def groups_total(self) -> float:
        if self.n_groups is not None:
            return float(self.n_groups)
        if self.group is None:
            raise ValueError("this objective normalises per group but the batch has no `group` field")
        return float(torch.unique(self.group).numel())

    def require(self, name: str) -> Tensor:
        """The field ``name``, or a clear error saying the objective needs it."""
        value = getattr(self, name, None) if name in _FIELDS else self.extra.get(name)
        if value is None:
            raise ValueError(f"this objective needs batch field `{name}`, which is missing")
        return value


_FIELDS = {f.name for f in dataclasses.fields(Batch)}
