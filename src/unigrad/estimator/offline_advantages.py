"""Advantages (and one mask) of the offline methods: ASFT's absolute likelihood and A-LoL's
advantage with its clamped importance weight.

As everywhere in the estimator, Â is the detached weight with ∂L/∂ℓ = −Â/Z; ``objective`` gives
the paper's (or official code's) loss value.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.advantages import pair_rows
from unigrad.estimator.likelihoods import reduce_within


@dataclass(frozen=True)
class ClampedRatio:
    """A value clamp of the importance weight as a mask: m = clip(r, 1−ε, 1+ε) / r, so that
    m · r = clip(r, 1−ε, 1+ε). Unlike PPO's clip (which zeroes the gradient outside the trust
    region), the update keeps the clamped weight (A-LoL, Baheti et al. 2024, official code: the
    weight is computed under no_grad and ``clamp``-ed, never masked)."""

    eps: float = 0.9
    requires: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, ratio: Tensor, advantage: Tensor) -> Tensor:
        return ratio.clamp(1 - self.eps, 1 + self.eps) / ratio

    def value_ratio(self, ratio: Tensor) -> Tensor:
        return ratio.clamp(1 - self.eps, 1 + self.eps)


@dataclass(frozen=True)
class AbsoluteLikelihood:
    """ASFT (Wang et al. 2024, arXiv 2409.10571), per pair with p(y) = exp ℓ̄(y):

        L = −log p(y_w) − λ [ log σ(log odds y_w) + log σ(−log odds y_l) ]
          = −(1+λ) ℓ̄(y_w) − λ log(1 − p(y_l))

    ⇒ Â(y_w) = 1 + λ,  Â(y_l) = −λ p(y_l)/(1 − p(y_l)) = −λ odds(y_l); sequence-mean likelihood,
    averaged over pairs. Pointwise: no Bradley–Terry difference, no reference model."""

    lam: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"group", "sign"})

    def _parts(self, batch: Batch):
        pair_rows(batch.require("group"), batch.require("sign"))       # checks the pairs
        mean_logp = reduce_within(batch.logp.detach(), batch.mask.to(batch.logp.dtype), "mean")
        chosen = (batch.require("sign") > 0).to(batch.logp.dtype)
        log1m_p = torch.log(-torch.expm1(mean_logp))                      # log(1 − p), exact
        return mean_logp, log1m_p, chosen

    def __call__(self, batch: Batch) -> Tensor:
        mean_logp, log1m_p, chosen = self._parts(batch)
        odds = torch.exp(mean_logp - log1m_p)
        return chosen * (1 + self.lam) - (1 - chosen) * self.lam * odds

    def objective(self, batch: Batch) -> Tensor:
        mean_logp, log1m_p, chosen = self._parts(batch)
        per_row = chosen * (-(1 + self.lam) * mean_logp) + (1 - chosen) * (-self.lam * log1m_p)
        return per_row.sum() / batch.groups_total


def leftover_advantage(batch: Batch) -> Tensor:
    """A = R − V(x): V from ``batch.extra["value"]`` ([B], the value of π_ref on the prompt), or,
    when absent, the mean reward of the rows sharing the prompt's ``group`` in the whole step (a
    leave-none-out baseline; with one response per prompt this makes A = 0, so give ``value`` then)."""
    return batch.from_whole(_leftover_advantage(batch.whole))


def _leftover_advantage(batch: Batch) -> Tensor:
    reward = batch.require("reward").detach().to(batch.logp.dtype)
    value = batch.extra.get("value")
    if value is None:
        if batch.group is None:
            raise ValueError("A-LoL needs batch.extra['value'] (V_ref of each prompt) or `group` to "
                             "use the prompt's mean reward as the baseline")
        _, index = torch.unique(batch.group, return_inverse=True)
        n = int(index.max()) + 1
        total = torch.zeros(n, dtype=reward.dtype, device=reward.device).index_add_(0, index, reward)
        count = torch.zeros(n, dtype=reward.dtype, device=reward.device).index_add_(0, index, torch.ones_like(reward))
        value = (total / count)[index]
    return reward - value.detach().to(reward.dtype)


@dataclass(frozen=True)
class LeftoverAdvantage:
    """A-LoL's weight (Baheti et al. 2024, "Leftover Lunch: Advantage-based Offline Reinforcement
    Learning for Language Models", ICLR; official code abaheti95/LoL-RL). Rows with A ≤ 0 are
    dropped (Â = 0); A⁺ = A · 1[A > 0]:

        importance "sequence" (A-LoL):     Â = A⁺,  with mask clip(r(y))/r(y), π_den = π_ref (sum)
        importance "token"    (A-LoL seq): Â = A⁺ per token, mask clip(r_t)/r_t,  π_den = π_ref
        importance "none"     (ref-free):  Â = A⁺,  π_den = sg π_θ
        kl_beta > 0           (A-LoL KL):  Â = (A − β_KL) · 1[A > 0]   (∂/∂ℓ of β_KL(ℓ − ℓ_ref))

    ``objective`` is the code's loss, mean over the batch's rows:
        A-LoL:   −ℓ(y)·clip(r(y))·A⁺          seq: A⁺·Σ_t(−ℓ_t)·clip(r_t)
        ref-free: −ℓ(y)·A⁺                     KL:  [−ℓ(y)·A + β_KL(ℓ(y) − ℓ_ref(y))]·1[A>0]."""

    clip: float = 0.9
    importance: str = "sequence"
    kl_beta: float = 0.0

    def __post_init__(self):
        if self.importance not in ("sequence", "token", "none"):
            raise ValueError("importance must be 'sequence', 'token' or 'none'")

    @property
    def requires(self) -> frozenset[str]:
        needs_ref = self.importance != "none" or self.kl_beta != 0
        return frozenset({"reward"}) | (frozenset({"logp_ref"}) if needs_ref else frozenset())

    def __call__(self, batch: Batch) -> Tensor:
        advantage = leftover_advantage(batch)
        kept = (advantage > 0).to(advantage.dtype)
        return (advantage - self.kl_beta) * kept

    def objective(self, batch: Batch) -> Tensor:
        advantage = leftover_advantage(batch)
        kept = (advantage > 0).to(advantage.dtype)
        mask = batch.mask.to(batch.logp.dtype)
        logp = batch.logp.detach()
        lo, hi = 1 - self.clip, 1 + self.clip
        if self.importance == "token":
            weight = torch.exp(logp - batch.require("logp_ref").detach()).clamp(lo, hi)
            per_row = advantage * kept * reduce_within(-logp * weight, mask, "sum")
        else:
            seq = reduce_within(logp, mask, "sum")
            per_row = -seq * advantage * kept
            if self.importance == "sequence":
                h = seq - reduce_within(batch.require("logp_ref").detach(), mask, "sum")
                per_row = per_row * torch.exp(h).clamp(lo, hi)
            if self.kl_beta:
                per_row = per_row + self.kl_beta * (seq - reduce_within(batch.require("logp_ref").detach(), mask, "sum")) * kept
        return per_row.sum() / batch.sequences_total

    def metrics(self, batch: Batch) -> dict[str, float]:
        advantage = leftover_advantage(batch)
        return {"advantage_raw_mean": float(advantage.mean()), "kept": float((advantage > 0).double().mean())}
