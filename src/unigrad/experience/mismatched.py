"""KTO's mismatched rows: each example's prompt with another example's completion.

KTO's reference point z0 estimates KL(π_θ ‖ π_ref) from completions that do not answer their prompt
(Ethayarajh et al. 2024, arXiv 2402.01306). As TRL's ``KTOTrainer`` (``_get_kl_dataset``) does,
example i gets the completion of example i − 1 (here cyclically over the split, in file order), fixed
when the data are loaded; HALOs pairs x_i with y_{i+1} instead. Each mismatched row joins its example's
unit, so it shares the example's micro-batch, gets its reference log-probs like any row (precomputed
or per batch) and is marked ``extra["mismatched"] = 1`` with sign 0; the objective gives it no weight.
"""
from __future__ import annotations

import dataclasses

from unigrad.data.errors import DataError
from unigrad.data.tokenization import fit
from unigrad.estimator.advantages.unpaired import MISMATCHED
from unigrad.experience.dataset import Split
from unigrad.tokens import Sequence


def _marked(sequence: Sequence, value: float, **changes) -> Sequence:
    meta = dict(sequence.meta, fields={**sequence.meta.get("fields", {}), MISMATCHED: value})
    return dataclasses.replace(sequence, meta=meta, **changes)


def with_mismatched(split: Split, max_length: int) -> Split:
    """``split`` with, after each example (one row per unit), the row (x_i, y_{i−1}) in the same unit;
    the borrowed completion is cut to fit ``max_length`` with the prompt."""
    if any(len(unit) != 1 for unit in split.units):
        raise DataError(f"{split.name}: mismatched rows pair one example's prompt with another's completion, "
                        "so every unit must be one row (data.format: unpaired)")
    n = len(split.units)
    if n < 2:
        raise DataError(f"{split.name}: KTO's reference point needs the completion of another example; "
                        f"the split has {n} example(s), give at least 2")
    rows = [split.sequences[unit[0]] for unit in split.units]
    sequences = []
    for i, example in enumerate(rows):
        prompt, completion, _ = fit(list(example.prompt_ids), list(rows[i - 1].completion_ids), max_length, True)
        sequences.append(_marked(example, 0.0))
        sequences.append(_marked(example, 1.0, prompt_ids=tuple(prompt), completion_ids=tuple(completion), sign=0.0))
    return Split.of(split.name, sequences)


def examples(split: Split) -> list[Sequence]:
    """The split's example rows (not its mismatched ones)."""
    return [s for s in split.sequences if not s.meta.get("fields", {}).get(MISMATCHED)]


__all__ = ["examples", "with_mismatched"]
