"""Advantages of online RL: a detached weight per rollout computed from its scalar reward.

Every part reads ``batch.reward`` [B] (one scalar per completion) and, where it compares a rollout
with the other rollouts of its prompt, ``batch.group`` [B] (the prompt id; rows of one prompt may sit
anywhere in the batch, ids need not be contiguous). Notation: R_i the reward of rollout i, G(i) the
rows sharing its prompt, n = |G(i)|, mean_G and std_G the mean and standard deviation over G(i).

    GroupNormalised    Â_i = (R_i − mean_G R) / (std_G R + eps)          GRPO (DeepSeekMath), DAPO, GSPO
    GroupCentred       Â_i = R_i − mean_G R                              Dr. GRPO
    LeaveOneOut        Â_i = R_i − (1/(n−1)) Σ_{j∈G(i), j≠i} R_j         RLOO (Ahmadian et al. 2024)
    Reinforce          Â_i = R_i − b,  b = a constant or the batch mean   REINFORCE
    GlobalNormalised   Â = (A − mean_batch A) / std_batch A,  A = R (or R − mean_G R)   REINFORCE++

Group and batch statistics need every rollout of a prompt, and ``GlobalNormalised`` the whole
optimiser step: each weight is computed on ``batch.whole`` and this batch's rows of it are returned
(they are detached data, not part of the gradient computation), so accumulated micro-batches give
the step's update exactly. Metrics are this batch's. ``group_sums``/``group_mean``/``group_std`` are
the one implementation of per-group statistics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Literal

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.checks import flag, non_negative, number, one_of, positive
from unigrad.estimator.protocols import Weighted


def group_index(group: Tensor) -> tuple[Tensor, Tensor]:
    """(inverse, counts): the dense index 0..K−1 of each row's group and the size of each group."""
    _, inverse = torch.unique(group, return_inverse=True)
    counts = torch.bincount(inverse)
    return inverse, counts


def _totals(values: Tensor, inverse: Tensor, counts: Tensor) -> Tensor:
    return torch.zeros(counts.numel(), dtype=values.dtype, device=values.device).index_add_(0, inverse, values)


def group_sums(values: Tensor, group: Tensor) -> Tensor:
    """Σ_{j∈G(i)} values_j of each row's group, broadcast back to the rows: [B]."""
    inverse, counts = group_index(group)
    return _totals(values, inverse, counts)[inverse]


def group_mean(values: Tensor, group: Tensor) -> Tensor:
    """mean_G(i) of ``values`` [B], broadcast back to the rows: [B]."""
    inverse, counts = group_index(group)
    return (_totals(values, inverse, counts) / counts.to(values.dtype))[inverse]


def group_std(values: Tensor, group: Tensor, unbiased: bool = True) -> Tensor:
    """std_G(i) of ``values`` [B] per row: unbiased (divides by n − 1, like ``torch.std``) or biased
    (divides by n). A group of one row has std 0 (its centred reward is 0 anyway)."""
    inverse, counts = group_index(group)
    squares = _totals((values - group_mean(values, group)) ** 2, inverse, counts)
    dof = (counts - 1 if unbiased else counts).clamp(min=1).to(values.dtype)
    return torch.sqrt(squares / dof)[inverse]


def _reward(batch: Batch) -> Tensor:
    reward = batch.require("reward").detach()
    if reward.dim() != 1 or reward.shape[0] != batch.logp.shape[0]:
        raise ValueError(f"`reward` must have one value per row ([B] = [{batch.logp.shape[0]}]), got shape {tuple(reward.shape)}")
    return reward.to(batch.logp.dtype)


def _on_step(weight: Callable[[Batch], Tensor], batch: Batch, **metrics: float) -> Weighted:
    """Â computed on the whole step, this batch's rows of it, with this batch's reward metrics."""
    reward = _reward(batch)
    return Weighted(batch.from_whole(weight(batch.whole)),
                    metrics={"reward_mean": float(reward.mean()), "reward_std": float(reward.std(unbiased=False)),
                             **metrics})


@dataclass(frozen=True)
class GroupNormalised:
    """Â_i = (R_i − mean_G R) / (std_G R + eps)  (Shao et al. 2024, "DeepSeekMath: Pushing the Limits
    of Mathematical Reasoning in Open Language Models", §4.1.2, outcome supervision).

    The paper does not say which std. ``unbiased=True`` (default) divides by n − 1, as ``torch.std``
    does in the implementations people run (TRL's GRPOTrainer, verl's ``compute_grpo_outcome_advantage``,
    OpenRLHF's ``group_norm``); ``unbiased=False`` divides by n. eps = 1e-6 is verl's (TRL uses 1e-4,
    OpenRLHF 1e-9). A group whose rewards are all equal gets Â = 0."""

    eps: float = 1e-6
    unbiased: bool = True
    requires: ClassVar[frozenset[str]] = frozenset({"reward", "group"})

    def __post_init__(self):
        non_negative(self, "eps", self.eps, "it is added to the group's std; a negative eps can cancel it and divide by 0")
        flag(self, "unbiased", self.unbiased, "divide the variance by n − 1 (true) or n (false)")

    def weight(self, step: Batch) -> Tensor:
        reward, group = _reward(step), step.require("group")
        return (reward - group_mean(reward, group)) / (group_std(reward, group, self.unbiased) + self.eps)

    def __call__(self, batch: Batch) -> Weighted:
        reward, group = _reward(batch), batch.require("group")
        flat = group[group_std(reward, group) == 0]
        return _on_step(self.weight, batch,
                        groups_zero_std=torch.unique(flat).numel() / torch.unique(group).numel())


@dataclass(frozen=True)
class GroupCentred:
    """Â_i = R_i − mean_G R, no division by the std  (Liu et al. 2025, "Understanding R1-Zero-Like
    Training: A Critical Perspective", Dr. GRPO; also OPMD/AsymRE's group-relative REINFORCE)."""

    requires: ClassVar[frozenset[str]] = frozenset({"reward", "group"})

    def weight(self, step: Batch) -> Tensor:
        reward = _reward(step)
        return reward - group_mean(reward, step.require("group"))

    def __call__(self, batch: Batch) -> Weighted:
        return _on_step(self.weight, batch)


@dataclass(frozen=True)
class LeaveOneOut:
    """Â_i = R_i − (1/(n−1)) Σ_{j≠i} R_j = n/(n−1) · (R_i − mean_G R)  (RLOO; Ahmadian et al. 2024,
    "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in
    LLMs", §3.2; Kool et al. 2019). Needs at least two rollouts per prompt."""

    requires: ClassVar[frozenset[str]] = frozenset({"reward", "group"})

    def weight(self, step: Batch) -> Tensor:
        reward, group = _reward(step), step.require("group")
        inverse, counts = group_index(group)
        n = counts[inverse].to(reward.dtype)
        if torch.any(n < 2):
            raise ValueError("leave-one-out baseline: every prompt (`group`) needs at least 2 rollouts in the batch")
        return reward - (group_sums(reward, group) - reward) / (n - 1)

    def __call__(self, batch: Batch) -> Weighted:
        return _on_step(self.weight, batch)


@dataclass(frozen=True)
class Reinforce:
    """Â_i = R_i − b  (Williams 1992, "Simple Statistical Gradient-Following Algorithms for
    Connectionist Reinforcement Learning"): b = ``baseline`` (a constant, default 0: plain REINFORCE),
    or, with ``batch_mean=True``, b = the mean reward of the batch."""

    baseline: float = 0.0
    batch_mean: bool = False
    requires: ClassVar[frozenset[str]] = frozenset({"reward"})

    def __post_init__(self):
        number(self, "baseline", self.baseline, "the constant b subtracted from every reward")
        flag(self, "batch_mean", self.batch_mean, "use the batch's mean reward as the baseline")

    def weight(self, step: Batch) -> Tensor:
        reward = _reward(step)
        return reward - (reward.mean() if self.batch_mean else self.baseline)

    def __call__(self, batch: Batch) -> Weighted:
        return _on_step(self.weight, batch)


@dataclass(frozen=True)
class GlobalNormalised:
    """REINFORCE++'s global advantage normalisation (Hu et al. 2025, "REINFORCE++: A Simple and
    Efficient Approach for Aligning Large Language Models", arXiv 2501.03262):

        A_i = R_i                      (REINFORCE++, any number of rollouts per prompt)
        A_i = R_i − mean_G R           (``group_baseline=True``: "REINFORCE++ w/ baseline", k > 1)
        Â   = (A − mean_batch A) / sqrt(max(var_batch A, eps))

    The group mean is subtracted first only in the baseline variant; plain REINFORCE++ normalises
    the raw rewards. Statistics as in OpenRLHF (the authors' implementation,
    ``compute_advantages_and_returns``): the advantage is a per-token quantity (every token of a
    completion carries its sequence's A when no KL is folded into the reward), so with
    ``over="token"`` (default) mean and variance are over all completion tokens of the batch, i.e.
    weighted by length, and the variance is the biased one (÷ N); eps = 1e-8 bounds the variance
    from below (OpenRLHF's ``var.clamp(min=1e-8).rsqrt()``). ``over="sequence"`` weighs every
    completion once. The token-level KL that REINFORCE++ folds into the reward is not included."""

    group_baseline: bool = False
    over: Literal["token", "sequence"] = "token"
    eps: float = 1e-8

    def __post_init__(self):
        flag(self, "group_baseline", self.group_baseline, "subtract the prompt's mean reward first")
        one_of(self, "over", self.over, ("token", "sequence"), "weigh each completion by its tokens or once")
        positive(self, "eps", self.eps, "it bounds the variance from below; 0 divides a batch of equal rewards by 0")

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({"reward", "group"}) if self.group_baseline else frozenset({"reward"})

    def weight(self, step: Batch) -> Tensor:
        advantage = _reward(step)
        if self.group_baseline:
            advantage = advantage - group_mean(advantage, step.require("group"))
        if self.over == "token":
            weight = step.mask.to(advantage.dtype).sum(-1)
        else:
            weight = torch.ones_like(advantage)
        total = weight.sum()
        mean = (weight * advantage).sum() / total
        var = (weight * (advantage - mean) ** 2).sum() / total
        return (advantage - mean) / torch.sqrt(var.clamp(min=self.eps))

    def __call__(self, batch: Batch) -> Weighted:
        return _on_step(self.weight, batch)
