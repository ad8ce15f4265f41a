"""The experience of one optimiser step: sequences, their units and their per-row data."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.tokens import Sequence

BATCH_ROW_FIELDS = ("reward", "logp_old", "logp_ref")   # per-row data with a Batch field of its own; others go to extra


@dataclass
class Experience:
    sequences: list[Sequence]
    units: list[list[int]]                               # row indices of each unit, in step order
    fields: dict[str, Tensor] = field(default_factory=dict)  # per-row [N] or [N, T] step data
    reference_keys: list[tuple[str, int]] | None = None  # rows' keys into precomputed reference log-probs
    metrics: dict[str, float] = field(default_factory=dict)
    # the step's experience drawn again at the weights the policy has when it is called (an update rule's
    # later evaluation of the same step: extragradient's half point); None: the step's data are fixed
    again: Callable[[], "Experience"] | None = None

    def rows_of(self, units: list[int]) -> list[int]:
        return [row for unit in units for row in self.units[unit]]

    def step_batch(self, device) -> Batch:
        """The whole step as data (no log-probs): what normalisers count and step-level advantages
        read; micro-batches point to it (``Batch.step``), so accumulation is exact."""
        lengths = torch.tensor([len(s.completion_ids) for s in self.sequences])
        mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).float()
        batch = Batch(logp=torch.zeros_like(mask), mask=mask, group=torch.tensor([s.group for s in self.sequences]),
                      sign=torch.tensor([s.sign for s in self.sequences], dtype=torch.float32),
                      **self.row_fields(list(range(len(self.sequences))), mask.shape[1]))
        return batch.to_device(device)

    def row_fields(self, rows: list[int], width: int) -> dict:
        """Batch keyword arguments with this experience's per-row data at ``rows`` ([N, T] data cut
        to ``width`` tokens); fields without a Batch field of their own go to ``extra``."""
        index = torch.tensor(rows, dtype=torch.long)
        out, extra = {}, {}
        for name, values in self.fields.items():
            picked = values[index] if values.dim() == 1 else values[index, :width]
            (out if name in BATCH_ROW_FIELDS else extra)[name] = picked
        out["extra"] = extra
        return out
