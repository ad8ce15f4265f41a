"""Unpaired preference methods: one completion per prompt, marked desirable or undesirable
(``data.format: unpaired``; sign +1 / −1). Notation: h(y) = ℓ(y) − ℓ_ref(y) with sequence sums, σ logistic.

Each is an Estimator whose advantage is the per-row loss's weight Â = −dL/dℓ (``estimator.advantages.unpaired``),
at the sequence unit (π_den = sg π_θ), averaged over the examples.
"""
from __future__ import annotations

import dataclasses

from unigrad.estimator import Estimator, Likelihood, SequenceSum
from unigrad.estimator.advantages.preference import IMPLIED_BETA
from unigrad.estimator.advantages.unpaired import MISMATCHED, KTO_LAMBDA, BCOWeight, ExampleRows, KTOWeight
from unigrad.estimator.checks import non_negative, positive
from unigrad.experience.mismatched import with_mismatched

_PER_EXAMPLE = Likelihood("sequence", SequenceSum(per="sequence"))


def kto(beta: float = 0.1, lambda_d: float = 1.0, lambda_u: float = 1.0) -> Estimator:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
    arXiv 2402.01306; TRL's ``KTOTrainer``):

        z0 = max(0, mean of h over mismatched rows (x_i, y_{i−1})), detached
        L = mean over examples of  λ_D (1 − σ(β (h − z0)))  (desirable),  λ_U (1 − σ(β (z0 − h)))  (undesirable).

    Parts: m = 1, π_den = sg π_θ, Â = ±λ β σ(u) σ(−u) with u = β (h − z0) (``KTOWeight``), sequence-sum
    likelihood, counted on the examples (``ExampleRows``). The mismatched rows are TRL's (prompt i with
    completion i − 1), added to unpaired data when this method reads them (``experience.mismatched``)."""
    positive("kto", "beta", beta, IMPLIED_BETA)
    non_negative("kto", "lambda_d", lambda_d, KTO_LAMBDA.format("desirable"))
    non_negative("kto", "lambda_u", lambda_u, KTO_LAMBDA.format("undesirable"))
    return Estimator(advantage=KTOWeight(beta, lambda_d, lambda_u),
                     likelihood=Likelihood("sequence", ExampleRows(SequenceSum(per="sequence"))))


def bco(beta: float = 0.1) -> Estimator:
    """BCO (Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
    arXiv 2404.04656; TRL's ``BCOTrainer`` without its density-ratio weights): with r = β h and
    δ the running mean of every reward seen so far, this step's included (no gradient),

        L = mean over rows of  −log σ(r − δ)  (desirable),  −log σ(−(r − δ))  (undesirable).

    Parts: m = 1, π_den = sg π_θ, Â = β σ(δ − r) desirable, −β σ(r − δ) undesirable (``BCOWeight``),
    sequence-sum likelihood, per row. δ's running sums are checkpointed (``RunningMean``)."""
    positive("bco", "beta", beta, IMPLIED_BETA)
    return Estimator(advantage=BCOWeight(beta), likelihood=_PER_EXAMPLE)


def _parts(value):
    """Every part reachable from ``value`` through dataclass fields and tuples (Sum's terms)."""
    todo, seen = [value], []
    while todo:
        item = todo.pop()
        seen.append(item)
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            todo.extend(getattr(item, f.name) for f in dataclasses.fields(item))
        elif isinstance(item, (tuple, list)):
            todo.extend(item)
    return seen


def prepare_splits(objective, splits: list, max_length: int) -> list:
    """The splits an objective trains and evaluates on: with KTO's mismatched rows added when it reads
    them (``extra["mismatched"]``), after warning once when its λ_D n_D / (λ_U n_U) on the training
    split is outside the paper's range."""
    if MISMATCHED not in objective.requires:
        return splits
    first = next((s for s in splits if s is not None), None)
    if first is not None:
        n_desirable = sum(1 for s in first.sequences if s.sign > 0)
        for part in _parts(objective):
            if hasattr(part, "balance"):
                part.balance(n_desirable, len(first.sequences) - n_desirable)
    return [with_mismatched(s, max_length) if s is not None else None for s in splits]


__all__ = ["bco", "kto", "prepare_splits"]
