"""COPO's two advantages and their entropy-weighted blend (Han et al. 2025, "COPO: Consistency-Aware
Policy Optimization", arXiv 2508.04138).

Per prompt q with G rollouts (rows sharing ``group``), rewards r_i, extracted answers a_i
(``extra["answer_id"]``, one id per distinct answer, filled by the rollout producer):

    H(q)      = −Σ_a p_a log2 p_a,   p_a the fraction of q's rollouts whose answer is a
    R_glob(q) = mean_i r_i · (1 − λ_G H(q)),   λ_G = (1 − 1/G) / log2 G      (``entropy_discount``)
    A_glob(q) = (R_glob(q) − mean_Q R_glob) / (std_Q R_glob + eps)           over the step's prompts
    A_loc,i   = (r_i − mean_q r) / (std_q r + eps)                           (GRPO's)
    w(q)      = σ(k (H(q) − b))        the weight of the local term; ``forced``: w ← w · 1[A_loc,i ≠ 0]
    loss/token = (1 − w) · PPO(A_glob) + w · PPO(A_loc)

Since w ≥ 0 and a PPO mask depends on the advantage only through its sign, PPO(w·A) = w·PPO(A): the
blend is two Estimators, one with Â = (1 − w)·A_glob ("global") and one with Â = w·A_loc ("local"),
each with its own clip mask. Followed: the authors' code (hijih/copo-code, ``verl/trainer/ppo/
core_algos.py``: ``compute_score_global``, ``compute_grpo_outcome_advantage_with_global``,
``compute_policy_loss_with_global``): log2 entropy of the raw extracted answers, unbiased stds
(torch.std) over the group and over the batch's prompts, eps = 1e-6, k = 1 and b = 0.5 as the
function's defaults, and the ``soft with forced`` blend. The paper's own γ = 20, ρ = 1.5 for
σ(γ(H − ρ)) come from a secondary summary, unverified. With a single prompt in the step the
batch std is undefined (NaN in the code): A_glob = 0 here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.advantages.group import _reward, _totals, group_index, group_mean, group_std
from unigrad.estimator.checks import flag, non_negative, number, one_of
from unigrad.estimator.protocols import Weighted

TERMS = ("global", "local")


def check_blend(owner, k, b, forced, entropy_discount) -> None:
    """The domains of the blend's parameters (shared by the part and the ``copo`` factory)."""
    number(owner, "k", k, "the slope of w = σ(k(H − b)); k < 0 turns the blend around", low=0)
    number(owner, "b", b, "the answer entropy (bits) at which the two terms weigh equally")
    flag(owner, "forced", forced, "prompts whose rollouts all got the same reward use only the global term")
    flag(owner, "entropy_discount", entropy_discount, "scale the global reward by 1 − λ_G H(q)")


def answer_entropy(answer: Tensor, group: Tensor) -> Tensor:
    """H(q) in bits of each row's prompt: the entropy of the empirical distribution of the answer ids
    among the rows sharing its ``group``, broadcast back to the rows: [B]."""
    inverse, counts = group_index(group)
    pairs, pair_of_row, pair_counts = torch.unique(torch.stack([inverse, answer.long()], 1), dim=0,
                                                   return_inverse=True, return_counts=True)
    p = pair_counts.to(torch.float64) / counts[pairs[:, 0]].to(torch.float64)
    per_group = torch.zeros(counts.numel(), dtype=torch.float64, device=answer.device)
    per_group.index_add_(0, pairs[:, 0], -p * torch.log2(p))
    return per_group[inverse]


def _per_prompt_normalised(values: Tensor, group: Tensor, eps: float) -> Tensor:
    """(v(q) − mean_Q v) / (std_Q v + eps) over the distinct prompts Q (v constant within a prompt)."""
    inverse, counts = group_index(group)
    per_prompt = _totals(values, inverse, counts) / counts.to(values.dtype)
    if per_prompt.numel() < 2:
        return torch.zeros_like(values)
    return ((per_prompt - per_prompt.mean()) / (per_prompt.std(unbiased=True) + eps))[inverse]


@dataclass(frozen=True)
class ConsistencyBlend:
    """One half of COPO's blend: Â = (1 − w)·A_glob (``term="global"``) or w·A_loc (``"local"``),
    computed on the whole step (see the module docstring)."""

    term: Literal["global", "local"] = "local"
    k: float = 1.0
    b: float = 0.5
    forced: bool = True
    entropy_discount: bool = True
    eps: float = 1e-6
    requires: ClassVar[frozenset[str]] = frozenset({"reward", "group", "answer_id"})

    def __post_init__(self):
        one_of(self, "term", self.term, TERMS, "which half of the blend this advantage is")
        check_blend(self, self.k, self.b, self.forced, self.entropy_discount)
        non_negative(self, "eps", self.eps, "it is added to the stds; a negative eps can cancel one and divide by 0")

    def parts(self, step: Batch) -> dict[str, Tensor]:
        """A_glob, A_loc, w, H and R_glob of every row of ``step``."""
        reward, group = _reward(step), step.require("group")
        answer = step.require("answer_id").to(reward.device)
        _, counts = group_index(group)
        if torch.any(counts < 2):
            raise ValueError("COPO: every prompt (`group`) needs at least 2 rollouts (λ_G = (1 − 1/G)/log2 G)")
        n = counts[group_index(group)[0]].to(reward.dtype)
        entropy = answer_entropy(answer, group).to(reward.dtype)
        global_reward = group_mean(reward, group)
        if self.entropy_discount:
            global_reward = global_reward * (1 - (1 - 1 / n) / torch.log2(n) * entropy)
        local = (reward - group_mean(reward, group)) / (group_std(reward, group) + self.eps)
        weight = torch.sigmoid(self.k * (entropy - self.b))
        if self.forced:
            weight = weight * (local != 0).to(weight.dtype)
        return {"global": _per_prompt_normalised(global_reward, group, self.eps), "local": local,
                "weight": weight, "entropy": entropy, "global_reward": global_reward}

    def __call__(self, batch: Batch) -> Weighted:
        parts = self.parts(batch.whole)
        w = parts["weight"]
        advantage = (1 - w) * parts["global"] if self.term == "global" else w * parts["local"]
        mine = {key: batch.from_whole(value) for key, value in parts.items()}
        return Weighted(batch.from_whole(advantage),
                        metrics={"answer_entropy": float(mine["entropy"].mean()),
                                 "local_weight": float(mine["weight"].mean()),
                                 "global_reward": float(mine["global_reward"].mean())})


__all__ = ["ConsistencyBlend", "TERMS", "answer_entropy", "check_blend"]
