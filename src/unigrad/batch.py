"""The one data structure every objective reads.

Row b of a batch is one completion y_b (with its prompt x_b); column t is its t-th token.
Only ``logp`` carries gradient; every other field is data (detached).

Conventions (public API, see DESIGN.md):
- ``logp[b, t] = log π_θ(y_{b,t} | x_b, y_{b,<t})`` and is 0 where ``mask`` is 0.
- Pairs (DPO family): a pair's chosen and rejected rows share ``group``; ``sign`` is +1 for the
  chosen row and -1 for the rejected one. Both rows of a pair are always in the same batch.
- Rollouts (GRPO family): rows sampled for the same prompt share ``group``.
- ``step`` is the whole optimiser step this batch is a micro-batch of (every field but a
  meaningful ``logp``), and ``rows`` [B] the indices of this batch's rows in it. Normalisers count
  tokens, sequences and groups on the whole step, and reward-based advantages (group or batch
  statistics) are computed on it, so k accumulated micro-batches give exactly the update of one
  batch of k. Left ``None``, the batch is its own step.
"""
from __future__ import annotations

import dataclasses
import functools
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
    extra: dict[str, Any] = field(default_factory=dict)  # other data (teacher log-probs, ...)
    step: "Batch | None" = None       # the whole optimiser step (see module docstring)
    rows: Tensor | None = None        # [B] long: this batch's rows in ``step``

    def replace(self, **changes: Any) -> "Batch":
        return dataclasses.replace(self, **changes)

    @property
    def whole(self) -> "Batch":
        """The optimiser step this batch belongs to (itself when it is a whole step)."""
        return self.step if self.step is not None else self

    def from_whole(self, values: Tensor) -> Tensor:
        """This batch's rows of a per-row tensor computed on ``whole``."""
        return values if self.step is None else values[self.rows]

    @property
    def tokens_total(self) -> float:
        return float(self.whole.mask.sum())

    @property
    def sequences_total(self) -> float:
        return float(self.whole.mask.shape[0])

    @property
    def groups_total(self) -> float:
        group = self.whole.group
        if group is None:
            raise ValueError("this objective normalises per group but the batch has no `group` field")
        return float(torch.unique(group).numel())

    def to_device(self, device) -> "Batch":
        """This batch with every tensor on ``device``: the row fields, every ``extra`` tensor, the
        ``step`` batch and ``rows``."""
        moved = {name: getattr(self, name).to(device) for name in _ROW_FIELDS if getattr(self, name) is not None}
        moved["extra"] = {key: value.to(device) if isinstance(value, Tensor) else value
                          for key, value in self.extra.items()}
        if self.step is not None:
            moved["step"] = self.step.to_device(device)
        if self.rows is not None:
            moved["rows"] = self.rows.to(device)
        return dataclasses.replace(self, **moved)

    def micro_batch(self, rows: Tensor) -> "Batch":
        """Rows ``rows`` of this step as one of its micro-batches (what the training loop builds)."""
        return dataclasses.replace(_slice(self, rows), step=self, rows=rows)

    def subset(self, keep_whole: Tensor) -> "Batch":
        """The rows kept by ``keep_whole`` ([B] bool over ``whole``), as a batch whose whole step is
        the kept rows of the step: a sub-objective on it counts and normalises over its own rows."""
        if self.step is None:
            return _slice(self, keep_whole)
        keep = keep_whole[self.rows]
        position = torch.cumsum(keep_whole.long(), 0) - 1
        return dataclasses.replace(_slice(self, keep), step=_slice(self.step, keep_whole),
                                   rows=position[self.rows[keep]])

    def require(self, name: str) -> Tensor:
        """The field ``name``, or a clear error saying the objective needs it."""
        value = getattr(self, name, None) if name in _FIELDS else self.extra.get(name)
        if value is None:
            raise ValueError(f"this objective needs batch field `{name}`, which is missing")
        return value


_FIELDS = {f.name for f in dataclasses.fields(Batch)}
_ROW_FIELDS = ("logp", "mask", "logp_old", "logp_ref", "reward", "group", "sign")


def _slice(batch: Batch, rows: Tensor) -> Batch:
    """Every per-row field (and every ``extra`` tensor whose first dimension is B) at ``rows``."""
    size = batch.logp.shape[0]
    if rows.dtype == torch.bool and rows.shape != (size,):
        raise ValueError(f"a boolean row mask must have shape [{size}], got {tuple(rows.shape)}")
    changes = {name: getattr(batch, name)[rows] for name in _ROW_FIELDS if getattr(batch, name) is not None}
    changes["extra"] = {key: value[rows] if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == size
                        else value for key, value in batch.extra.items()}
    return dataclasses.replace(batch, step=None, rows=None, **changes)


def whole_step(advantage_call):
    """Decorate an advantage's ``__call__`` that depends only on step data (rewards, groups), not on
    log-probs: it is computed on the whole step and this batch's rows are returned."""
    @functools.wraps(advantage_call)
    def call(self, batch: Batch) -> Tensor:
        return batch.from_whole(advantage_call(self, batch.whole))
    return call
