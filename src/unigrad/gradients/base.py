"""What every gradient estimator takes and returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

from torch import Tensor


@dataclass
class StepSums:
    """What a step's micro-batches add up to on this process."""
    surrogate: float = 0.0          # Σ surrogate losses (its gradient is the method's)
    objective: float = 0.0          # Σ canonical objective values
    tokens: int = 0                 # sequence tokens forwarded
    metrics: dict = field(default_factory=dict)   # mean over micro-batches
    direction: object = None        # a zeroth-order estimate's seeded direction (``seeded.SeededDirection``)


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch of a step: ``micro_batch(**overrides)`` -> (Output, tokens), ``loss(experience,
    rows, **overrides)``; ``experience`` and ``rows`` say which rows of the step it holds (a black-box
    oracle reads the step's prompts from them)."""
    loss: Callable
    experience: object
    rows: list

    def __call__(self, **overrides):
        return self.loss(self.experience, self.rows, **overrides)


@runtime_checkable
class GradientEstimator(Protocol):
    def __call__(self, micro_batches: list[Callable[[], tuple[object, int]]],
                 backward: Callable[[Tensor], None], key: int = 0) -> StepSums:
        """``micro_batches[i]()`` -> (Output, tokens) of micro-batch i (a ``MicroBatch`` in the loop);
        ``backward(loss)`` the layout's backward; ``key`` distinguishes the calls of a run (step and
        call), for estimators that draw random perturbations: the same key, the same draw, so a
        resumed run repeats them."""
