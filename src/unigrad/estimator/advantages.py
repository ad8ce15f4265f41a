"""Advantage estimates Â: a detached weight per sequence ([B]) or per token ([B, T]).

Preference losses are advantages too: a pairwise loss ψ(s(y_w) − s(y_l)) of implied rewards s
has gradient −ψ′(Δ)·(s′(y_w) ∇ℓ(y_w) − s′(y_l) ∇ℓ(y_l)), i.e. the likelihood gradient weighted by

    Â(y) = −sign(y) · ψ′(Δ) · s′(y),      Δ = s(y_w) − s(y_l),

(DPO's "weight on the gradient", Rafailov et al. 2023, §4). An advantage may also say what the
canonical objective's value is (``objective``) and add metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from unigrad.batch import Batch
from unigrad.divergences import ReverseKL
from unigrad.estimator.likelihoods import reduce_within


@dataclass(frozen=True)
class Constant:
    """Â = value for every sequence (SFT: Â = 1)."""

    value: float = 1.0
    requires: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, batch: Batch) -> Tensor:
        return torch.full((batch.logp.shape[0],), float(self.value), dtype=batch.logp.dtype, device=batch.logp.device)


@dataclass(frozen=True)
class Chosen:
    """Â = 1 on the chosen row of each pair (sign = +1), 0 on the rejected one: SFT on y_w (ORPO)."""

    requires: ClassVar[frozenset[str]] = frozenset({"sign"})

    def __call__(self, batch: Batch) -> Tensor:
        return (batch.require("sign") > 0).to(batch.logp.dtype)


# ---- implied rewards s(y) of the preference losses, with their slope s′ = ds/dℓ ----

def _stat(batch: Batch, within: str) -> Tensor:
    return reduce_within(batch.logp.detach(), batch.mask.to(batch.logp.dtype), within)


@dataclass(frozen=True)
class ImpliedReward:
    """s(y) = β (ℓ(y) − ℓ_ref(y)) = β h(y), with sequence sums (DPO, Rafailov et al. 2023, eq. 5)."""

    beta: float = 0.1
    within: ClassVar[str] = "sum"
    requires: ClassVar[frozenset[str]] = frozenset({"logp_ref"})

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor]:
        h = _stat(batch, self.within) - reduce_within(batch.require("logp_ref").detach(), batch.mask.to(batch.logp.dtype), self.within)
        return self.beta * h, torch.full_like(h, self.beta)


@dataclass(frozen=True)
class FDivergenceReward:
    """s(y) = β f′(u), u = π_θ(y|x)/π_ref(y|x) = exp h(y)  (f-DPO, Wang et al. 2023, Theorem 1);
    s′ = β u f″(u). Reverse KL gives DPO up to a constant."""

    beta: float = 0.1
    divergence: object = ReverseKL()
    within: ClassVar[str] = "sum"
    requires: ClassVar[frozenset[str]] = frozenset({"logp_ref"})

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor]:
        h = _stat(batch, self.within) - reduce_within(batch.require("logp_ref").detach(), batch.mask.to(batch.logp.dtype), self.within)
        return self.beta * self.divergence.fprime(h), self.beta * self.divergence.u_fsecond(h)


@dataclass(frozen=True)
class LengthNormalisedReward:
    """s(y) = β ℓ̄(y) = β ℓ(y)/|y|, no reference model (SimPO, Meng et al. 2024, eq. 4)."""

    beta: float = 2.0
    within: ClassVar[str] = "mean"
    requires: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor]:
        s = self.beta * _stat(batch, self.within)
        return s, torch.full_like(s, self.beta)


@dataclass(frozen=True)
class LogOdds:
    """s(y) = log odds(y) = log P/(1 − P), P = exp ℓ̄(y)  (ORPO, Hong et al. 2024, eq. 4);
    s′ = 1/(1 − P)."""

    within: ClassVar[str] = "mean"
    requires: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor]:
        mean_logp = _stat(batch, self.within)
        log1m_p = torch.log(-torch.expm1(mean_logp))  # log(1 − P), exact for P near 0 and 1
        return mean_logp - log1m_p, torch.exp(-log1m_p)


# ---- links ψ: the pairwise loss as a function of the reward margin Δ ----

@dataclass(frozen=True)
class Logistic:
    """ψ(Δ) = −log σ(Δ − margin)  (Bradley–Terry; SimPO's target margin γ)."""

    margin: float = 0.0

    def __call__(self, delta: Tensor) -> Tensor:
        return F.softplus(-(delta - self.margin))

    def derivative(self, delta: Tensor) -> Tensor:
        return -torch.sigmoid(-(delta - self.margin))


@dataclass(frozen=True)
class Squared:
    """ψ(Δ) = (Δ − target)²  (IPO, Azar et al. 2023, eq. 17, target = 1/(2τ))."""

    target: float = 0.0

    def __call__(self, delta: Tensor) -> Tensor:
        return (delta - self.target) ** 2

    def derivative(self, delta: Tensor) -> Tensor:
        return 2 * (delta - self.target)


def pair_rows(group: Tensor, sign: Tensor) -> tuple[Tensor, Tensor]:
    """Row indices (chosen, rejected) of each pair: rows sharing ``group``, sign +1 and −1."""
    _, pair = torch.unique(group, return_inverse=True)
    n_pairs = int(pair.max()) + 1 if pair.numel() else 0
    rows = torch.arange(group.numel(), device=group.device)
    is_chosen = sign > 0
    n_chosen = torch.bincount(pair[is_chosen], minlength=n_pairs)
    n_rejected = torch.bincount(pair[~is_chosen], minlength=n_pairs)
    if not (torch.all(n_chosen == 1) and torch.all(n_rejected == 1)):
        raise ValueError("pairwise objective: every `group` must hold exactly one chosen (sign > 0) "
                         "and one rejected (sign < 0) row in the same batch")
    chosen = torch.empty(n_pairs, dtype=torch.long, device=group.device).scatter_(0, pair[is_chosen], rows[is_chosen])
    rejected = torch.empty(n_pairs, dtype=torch.long, device=group.device).scatter_(0, pair[~is_chosen], rows[~is_chosen])
    return chosen, rejected


@dataclass(frozen=True)
class PairwisePreference:
    """Â(y) = −sign(y) ψ′(Δ) s′(y) for the pairwise loss ψ(s(y_w) − s(y_l)), averaged over pairs."""

    score: object = ImpliedReward()
    link: object = Logistic()

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({"group", "sign"}) | self.score.requires

    def _margin(self, batch: Batch):
        s, slope = self.score(batch)
        chosen, rejected = pair_rows(batch.require("group"), batch.require("sign"))
        return s, slope, chosen, rejected, s[chosen] - s[rejected]

    def __call__(self, batch: Batch) -> Tensor:
        s, slope, chosen, rejected, delta = self._margin(batch)
        push = -self.link.derivative(delta)                     # −ψ′(Δ) per pair
        advantage = torch.zeros_like(s)
        advantage[chosen] = push * slope[chosen]
        advantage[rejected] = -push * slope[rejected]
        return advantage

    def objective(self, batch: Batch) -> Tensor:
        *_, delta = self._margin(batch)
        return self.link(delta).sum() / batch.groups_total

    def metrics(self, batch: Batch) -> dict[str, float]:
        s, _, chosen, rejected, delta = self._margin(batch)
        seq_logp = _stat(batch, "sum")
        return {"reward_margin": float(delta.mean()), "reward_accuracy": float((delta > 0).double().mean()),
                "logp_chosen": float(seq_logp[chosen].mean()), "logp_rejected": float(seq_logp[rejected].mean())}
