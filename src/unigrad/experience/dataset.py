"""Offline experience: a tokenised dataset drawn in seeded steps."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unigrad.experience.base import Experience
from unigrad.tokens import Sequence


@dataclass(frozen=True)
class Split:
    """A tokenised dataset cut into units: the sequences that must share a batch (a pair)."""
    name: str
    sequences: list[Sequence]
    units: list[list[int]]

    @classmethod
    def of(cls, name: str, sequences: list[Sequence]) -> "Split":
        units, last = [], object()
        for index, sequence in enumerate(sequences):
            if sequence.group != last:
                units.append([])
                last = sequence.group
            units[-1].append(index)
        return cls(name, sequences, units)

    def experience(self, units: list[int]) -> Experience:
        rows = [i for u in units for i in self.units[u]]
        sequences = [self.sequences[i] for i in rows]
        grouped, start = [], 0
        for u in units:
            grouped.append(list(range(start, start + len(self.units[u]))))
            start += len(self.units[u])
        return Experience(sequences, grouped, _meta_fields(sequences), [(self.name, i) for i in rows])


def _meta_fields(sequences: list[Sequence]) -> dict[str, Tensor]:
    """Per-row numbers a data format put in ``Sequence.meta["fields"]`` (e.g. ``scored``'s reward)."""
    names = set().union(*(s.meta.get("fields", {}).keys() for s in sequences))
    return {name: torch.tensor([float(s.meta.get("fields", {}).get(name, float("nan"))) for s in sequences])
            for name in sorted(names)}


def step_units(n_units: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The units of optimiser step ``step``: a fresh seeded permutation per epoch, so the data
    order is a pure function of (seed, step) and a resumed run sees the same batches."""
    per_epoch = n_units // batch_size
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n_units, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[position * batch_size:(position + 1) * batch_size].tolist()


@dataclass(frozen=True)
class DatasetSource:
    """Step ``s`` trains the units ``step_units(len(split.units), batch_size, s, seed)`` of ``split``;
    ``provides``: what its format's rows fill (``data.formats.provides``)."""
    split: Split
    batch_size: int
    provides: frozenset[str]
    seed: int = 0
    epochs: int = 1

    def __call__(self, step: int) -> Experience:
        return self.split.experience(step_units(len(self.split.units), self.batch_size, step, self.seed))

    def after_update(self) -> None:
        pass
