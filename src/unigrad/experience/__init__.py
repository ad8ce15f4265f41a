"""Experience producers: where each optimiser step's sequences come from.

A producer turns a step number into an ``Experience``: the step's sequences, grouped into units that
must share a micro-batch (a preference pair; a prompt's rollouts and its demonstration), with per-row
step data (rewards, behaviour log-probs, demonstration flags). The loop calls every producer alike:

    experience = producer(step)            # the step's sequences and their data
    ... ``producer.epochs`` updates on it ...
    producer.after_update()                # e.g. hand the new weights to the sampler

``provides`` names the Batch fields its experiences fill (besides logp and mask, which the log-prob
producers fill), so what a run can train is derived from its producers, not from a table of formats.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from unigrad.experience.base import Experience
from unigrad.experience.dataset import DatasetSource, Split, step_units
from unigrad.experience.on_policy import OnPolicySamples
from unigrad.experience.preference_pairs import PreferencePairs
from unigrad.experience.rollouts import RolloutSource, demonstration_rows


@runtime_checkable
class ExperienceProducer(Protocol):
    provides: frozenset[str]      # Batch fields its experiences fill, besides logp and mask
    epochs: int                   # optimiser updates on each step's experience

    def __call__(self, step: int) -> Experience: ...

    def after_update(self) -> None: ...


__all__ = ["Experience", "ExperienceProducer", "DatasetSource", "Split", "step_units", "OnPolicySamples",
           "PreferencePairs", "RolloutSource", "demonstration_rows"]
