"""Unpaired preference advantages: a loss per row from its implied reward, desirable or not.

Rows are examples (``sign`` +1 desirable, −1 undesirable) with implied reward h(y) = ℓ(y) − ℓ_ref(y)
(sequence sums). A per-row loss L(h) gives the likelihood weight Â = −dL/dℓ (the Estimator's surrogate
−(1/N) Σ Â ℓ has the gradient of (1/N) Σ L). KTO also reads rows of a prompt with another example's
completion (``extra["mismatched"]`` = 1, sign 0, ``experience.mismatched``) for its reference point; they
get Â = 0 and are not counted among the N examples (``ExampleRows``).
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.advantages.preference import IMPLIED_BETA, _log_ratio
from unigrad.estimator.checks import non_negative, part, positive
from unigrad.estimator.normalisers import SequenceSum
from unigrad.estimator.protocols import Normaliser, Weighted

log = logging.getLogger("unigrad")
_SEQUENCES = SequenceSum(per="sequence")

MISMATCHED = "mismatched"
KTO_LAMBDA = "it weighs the {} examples' losses; a negative weight pushes them the wrong way"


def _examples(batch: Batch) -> Tensor:
    """[B] bool: the rows that are examples (not KTO's mismatched rows)."""
    mismatched = batch.extra.get(MISMATCHED)
    return torch.ones_like(batch.logp[:, 0], dtype=torch.bool) if mismatched is None else mismatched == 0


def _mean(values: Tensor, rows: Tensor) -> float:
    return float(values[rows].mean()) if bool(rows.any()) else 0.0


def _reward_metrics(h: Tensor, desirable: Tensor, undesirable: Tensor) -> dict[str, float]:
    """Mean implied reward h = ℓ − ℓ_ref of the desirable and the undesirable rows, and their difference
    (0 for a side the batch lacks)."""
    d, u = _mean(h, desirable), _mean(h, undesirable)
    return {"reward_desirable": d, "reward_undesirable": u, "reward_margin": d - u}


@dataclass(frozen=True)
class ExampleRows:
    """``normaliser`` counted on the step's example rows only: Z = max(Z_n(examples), 1), leaving out
    the mismatched rows that only supply KTO's reference point."""

    normaliser: Normaliser

    def __post_init__(self):
        part(self, "normaliser", self.normaliser, "normaliser", "count", "within", "requires")

    @property
    def within(self) -> str:
        return self.normaliser.within

    @property
    def requires(self) -> frozenset[str]:
        return self.normaliser.requires

    def count(self, batch: Batch) -> float:
        whole = batch.whole
        return max(float(self.normaliser.count(whole.subset(_examples(whole)))), 1.0)


@dataclass(frozen=True)
class KTOWeight:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
    arXiv 2402.01306; TRL's ``KTOTrainer.kto_loss``):

        z0 = max(0, mean over the batch's mismatched rows (x_i, y_{i−1}) of h),  detached
        L(y) = λ_D (1 − σ(β (h − z0)))  desirable,   λ_U (1 − σ(β (z0 − h)))  undesirable,

    averaged over the examples. With u = β (h − z0): Â = λ_D β σ(u) σ(−u) on desirable rows,
    −λ_U β σ(u) σ(−u) on undesirable ones, 0 on mismatched rows. z0 is the mean over the mismatched
    rows of the batch the loss sees, as TRL takes it per forward pass (on one process and one
    micro-batch per step: over the step; TRL also averages it over processes, which this does not).
    Metrics: ``kl`` (z0) and ``reward_desirable`` / ``reward_undesirable`` / ``reward_margin``, the mean h
    of each side and their difference (the held-out margin of ``evaluate_objective``)."""

    beta: float = 0.1
    lambda_d: float = 1.0
    lambda_u: float = 1.0
    requires: ClassVar[frozenset[str]] = frozenset({"sign", "logp_ref", MISMATCHED})

    def __post_init__(self):
        positive(self, "beta", self.beta, IMPLIED_BETA)
        non_negative(self, "lambda_d", self.lambda_d, KTO_LAMBDA.format("desirable"))
        non_negative(self, "lambda_u", self.lambda_u, KTO_LAMBDA.format("undesirable"))

    def balance(self, n_desirable: int, n_undesirable: int) -> None:
        """Warn when λ_D n_D / (λ_U n_U) ∉ [1, 4/3], the range the paper recommends (TRL warns too)."""
        ratio = self.lambda_d * n_desirable / max(self.lambda_u * n_undesirable, 1e-12)
        if not 1.0 <= ratio <= 4 / 3:
            log.warning("kto: λ_D·n_D / (λ_U·n_U) = %.3g·%d / (%.3g·%d) = %.3g is outside [1, 4/3], the range KTO's "
                        "authors recommend; set method.lambda_d / method.lambda_u to bring it inside",
                        self.lambda_d, n_desirable, self.lambda_u, n_undesirable, ratio)

    def __call__(self, batch: Batch) -> Weighted:
        h = _log_ratio(batch, "sum")
        mismatched = ~_examples(batch)
        if not bool(mismatched.any()):
            raise ValueError("kto: the batch has no mismatched rows (extra['mismatched'] = 1) to estimate z0 from; "
                             "KTO trains on data.format: unpaired, whose run adds them")
        z0 = h[mismatched].mean().clamp(min=0)
        sign = batch.require("sign")
        desirable, undesirable = (sign > 0) & ~mismatched, (sign < 0) & ~mismatched
        u = self.beta * (h - z0)
        slope = self.beta * torch.sigmoid(u) * torch.sigmoid(-u)
        weight = torch.where(desirable, self.lambda_d * slope, torch.where(undesirable, -self.lambda_u * slope, 0.0))
        per_row = torch.where(desirable, self.lambda_d * torch.sigmoid(-u),
                              torch.where(undesirable, self.lambda_u * torch.sigmoid(u), 0.0))
        n = ExampleRows(_SEQUENCES).count(batch)
        return Weighted(weight, objective=per_row.sum() / n,
                        metrics={"kl": float(z0), **_reward_metrics(h, desirable, undesirable)})


class RunningMean:
    """BCO's δ: the mean of every reward seen in training so far, this step's included.

    A step's rewards count once, whichever evaluation of the step gives them first (another epoch or
    extragradient's second evaluation of the same step adds nothing): they are pending, keyed by the
    step (``Batch.step``) and their rows, and join the running sums when the next step starts. With one
    micro-batch per step δ is the paper's; with several, micro-batch j sees the step's rows of micro-batches
    ≤ j (as TRL updates per batch), and each process keeps its own sums (TRL gathers the batch across
    processes). A loss evaluated without gradient (held-out evaluation; zeroth-order estimators'
    forward passes) reads δ without adding to it. Checkpointed (``unigrad.state``): the sums with the
    pending step joined, so a resumed run continues with the same δ as an uninterrupted one."""

    state_name = "bco_delta"

    def __init__(self):
        self.total, self.count = 0.0, 0
        self._step = None                   # weak reference to the pending step's mask
        self._pending: dict[int, float] = {}

    def __repr__(self) -> str:
        return f"RunningMean(count={self.count + len(self._pending)})"

    def _joined(self) -> tuple[float, int]:
        return self.total + sum(self._pending.values()), self.count + len(self._pending)

    def delta(self, batch: Batch, rewards: Tensor) -> float:
        """δ after adding this batch's ``rewards`` [B] (when training)."""
        if torch.is_grad_enabled():
            # the step is known by its batch's mask tensor: the loop hands each micro-batch a moved copy of
            # the step's Batch (``Batch.to_device``), which keeps the tensors already on the device
            step = batch.whole.mask
            if self._step is None or self._step() is not step:       # a new step: the last one joins the sums
                self.total, self.count = self._joined()
                self._pending, self._step = {}, weakref.ref(step)
            rows = batch.rows.tolist() if batch.step is not None else range(rewards.numel())
            for row, reward in zip(rows, rewards.tolist()):
                self._pending.setdefault(int(row), float(reward))
        total, count = self._joined()
        return total / count if count else 0.0

    def checkpoint_state(self) -> dict:
        total, count = self._joined()
        return {"total": total, "count": count}

    def restore_state(self, state: dict) -> None:
        self.total, self.count = float(state["total"]), int(state["count"])
        self._pending, self._step = {}, None


@dataclass(frozen=True)
class BCOWeight:
    """BCO (Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
    arXiv 2404.04656; TRL's ``BCOTrainer.bco_loss`` without its optional density-ratio weights):

        r = β h,   δ = running mean of every r seen (this batch included, no gradient)
        L(y) = −log σ(r − δ)  desirable,   −log σ(−(r − δ))  undesirable,   mean over rows

    ⇒ Â = β σ(−(r − δ)) desirable, −β σ(r − δ) undesirable. δ is a mean over rewards (TRL updates it
    with each batch's mean reward, the same value for equal batches). Metrics: ``delta`` and the mean
    implied rewards h of both sides with their margin."""

    beta: float = 0.1
    running: RunningMean = field(default_factory=RunningMean, compare=False)
    requires: ClassVar[frozenset[str]] = frozenset({"sign", "logp_ref"})

    def __post_init__(self):
        positive(self, "beta", self.beta, IMPLIED_BETA)
        part(self, "running", self.running, "running mean", "delta", "checkpoint_state", "restore_state")

    def __call__(self, batch: Batch) -> Weighted:
        h = _log_ratio(batch, "sum")
        r = self.beta * h
        delta = self.running.delta(batch, r)
        desirable = batch.require("sign") > 0
        margin = torch.where(desirable, r - delta, -(r - delta))           # the logit of the right class
        weight = torch.where(desirable, 1.0, -1.0).to(r) * self.beta * torch.sigmoid(-margin)
        per_row = torch.nn.functional.softplus(-margin)
        return Weighted(weight, objective=per_row.sum() / batch.sequences_total,
                        metrics={"delta": delta, **_reward_metrics(h, desirable, ~desirable)})

__all__ = ["BCOWeight", "ExampleRows", "KTOWeight", "MISMATCHED", "RunningMean"]
