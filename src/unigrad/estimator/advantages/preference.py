"""Preference advantages: pairwise losses ψ(s(y_w) − s(y_l)) of implied rewards s, as weights.

A pairwise loss ψ(s(y_w) − s(y_l)) has gradient −ψ′(Δ)·(s′(y_w) ∇ℓ(y_w) − s′(y_l) ∇ℓ(y_l)), i.e.
the likelihood gradient weighted by

    Â(y) = −sign(y) · ψ′(Δ) · s′(y),      Δ = s(y_w) − s(y_l),

(DPO's "weight on the gradient", Rafailov et al. 2023, §4). A score returns (s, s′) per row, a link
ψ and ψ′ of the margin; ``PairwisePreference`` composes them. Pairs: rows sharing ``group``, the
chosen one with sign +1, the rejected one with sign −1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.checks import non_negative, number, part, positive
from unigrad.estimator.normalisers import reduce_within
from unigrad.estimator.protocols import Weighted
from unigrad.objectives.divergences import FDivergence, ReverseKL

IMPLIED_BETA = "it scales the implied reward; a negative beta reverses the preference, zero removes it"
ASFT_LAM = "it weighs the alignment terms; a negative lam rewards the rejected response"


class Score(Protocol):
    """An implied reward: (s(y), s′(y) = ds/dℓ) per row, both [B], detached."""

    @property
    def requires(self) -> frozenset[str]: ...

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor]: ...


class Link(Protocol):
    """The pairwise loss ψ(Δ) of the reward margin and its derivative ψ′(Δ)."""

    def __call__(self, delta: Tensor) -> Tensor: ...

    def derivative(self, delta: Tensor) -> Tensor: ...


# ---- implied rewards s(y) of the preference losses, with their slope s′ = ds/dℓ ----

def _stat(batch: Batch, within: str) -> Tensor:
    return reduce_within(batch.logp.detach(), batch.mask.to(batch.logp.dtype), within)


def _log_ratio(batch: Batch, within: str) -> Tensor:
    """h(y) = ℓ(y) − ℓ_ref(y), reduced ``within`` each sequence, detached: [B]."""
    return _stat(batch, within) - reduce_within(batch.require("logp_ref").detach(), batch.mask.to(batch.logp.dtype), within)


@dataclass(frozen=True)
class ImpliedReward:
    """s(y) = β (ℓ(y) − ℓ_ref(y)) = β h(y), with sequence sums (DPO, Rafailov et al. 2023, eq. 5)."""

    beta: float = 0.1
    within: ClassVar[str] = "sum"
    requires: ClassVar[frozenset[str]] = frozenset({"logp_ref"})

    def __post_init__(self):
        positive(self, "beta", self.beta, IMPLIED_BETA)

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor]:
        h = _log_ratio(batch, self.within)
        return self.beta * h, torch.full_like(h, self.beta)


@dataclass(frozen=True)
class FDivergenceReward:
    """s(y) = β f′(u), u = π_θ(y|x)/π_ref(y|x) = exp h(y)  (f-DPO, Wang et al. 2023, Theorem 1);
    s′ = β u f″(u). Reverse KL gives DPO up to a constant."""

    beta: float = 0.1
    divergence: FDivergence = ReverseKL()
    within: ClassVar[str] = "sum"
    requires: ClassVar[frozenset[str]] = frozenset({"logp_ref"})

    def __post_init__(self):
        positive(self, "beta", self.beta, IMPLIED_BETA)
        part(self, "divergence", self.divergence, "f-divergence", "fprime", "u_fsecond")

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor]:
        h = _log_ratio(batch, self.within)
        return self.beta * self.divergence.fprime(h), self.beta * self.divergence.u_fsecond(h)


@dataclass(frozen=True)
class LengthNormalisedReward:
    """s(y) = β ℓ̄(y) = β ℓ(y)/|y|, no reference model (SimPO, Meng et al. 2024, eq. 4)."""

    beta: float = 2.0
    within: ClassVar[str] = "mean"
    requires: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        positive(self, "beta", self.beta, "it scales the length-normalised reward; a negative beta reverses the preference")

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor]:
        s = self.beta * _stat(batch, self.within)
        return s, torch.full_like(s, self.beta)


@dataclass(frozen=True)
class LogLikelihoodReward:
    """s(y) = β ℓ(y), the sequence log-prob itself, no reference model (CPO, Xu et al. 2024, arXiv 2401.08417)."""

    beta: float = 0.1
    within: ClassVar[str] = "sum"
    requires: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        positive(self, "beta", self.beta, IMPLIED_BETA)

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

    def __post_init__(self):
        number(self, "margin", self.margin, "the target reward margin subtracted from the difference")

    def __call__(self, delta: Tensor) -> Tensor:
        return F.softplus(-(delta - self.margin))

    def derivative(self, delta: Tensor) -> Tensor:
        return -torch.sigmoid(-(delta - self.margin))


@dataclass(frozen=True)
class Squared:
    """ψ(Δ) = (Δ − target)²  (IPO, Azar et al. 2023, eq. 17, target = 1/(2τ))."""

    target: float = 0.0

    def __post_init__(self):
        number(self, "target", self.target, "the reward difference the squared loss pulls towards")

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
    """Â(y) = −sign(y) ψ′(Δ) s′(y) for the pairwise loss ψ(s(y_w) − s(y_l)), averaged over pairs;
    objective (1/N_pairs) Σ ψ(Δ)."""

    score: Score = ImpliedReward()
    link: Link = Logistic()

    def __post_init__(self):
        part(self, "score", self.score, "score", "__call__", "requires")
        part(self, "link", self.link, "link", "__call__", "derivative")

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({"group", "sign"}) | self.score.requires

    def __call__(self, batch: Batch) -> Weighted:
        s, slope = self.score(batch)
        chosen, rejected = pair_rows(batch.require("group"), batch.require("sign"))
        delta = s[chosen] - s[rejected]
        push = -self.link.derivative(delta)                     # −ψ′(Δ) per pair
        advantage = torch.zeros_like(s)
        advantage[chosen] = push * slope[chosen]
        advantage[rejected] = -push * slope[rejected]
        seq_logp = _stat(batch, "sum")
        metrics = {"reward_margin": float(delta.mean()), "reward_accuracy": float((delta > 0).double().mean()),
                   "logp_chosen": float(seq_logp[chosen].mean()), "logp_rejected": float(seq_logp[rejected].mean())}
        return Weighted(advantage, objective=self.link(delta).sum() / batch.groups_total, metrics=metrics)


@dataclass(frozen=True)
class AbsoluteLikelihood:
    """ASFT (Wang et al. 2024, arXiv 2409.10571), per pair with p(y) = exp ℓ̄(y):

        L = −log p(y_w) − λ [ log σ(log odds y_w) + log σ(−log odds y_l) ]
          = −(1+λ) ℓ̄(y_w) − λ log(1 − p(y_l))

    ⇒ Â(y_w) = 1 + λ,  Â(y_l) = −λ p(y_l)/(1 − p(y_l)) = −λ odds(y_l); sequence-mean likelihood,
    averaged over pairs. Pointwise: no Bradley–Terry difference, no reference model."""

    lam: float = 0.1
    requires: ClassVar[frozenset[str]] = frozenset({"group", "sign"})

    def __post_init__(self):
        non_negative(self, "lam", self.lam, ASFT_LAM)

    def __call__(self, batch: Batch) -> Weighted:
        pair_rows(batch.require("group"), batch.require("sign"))       # checks the pairs
        mean_logp = _stat(batch, "mean")
        chosen = (batch.require("sign") > 0).to(batch.logp.dtype)
        log1m_p = torch.log(-torch.expm1(mean_logp))                      # log(1 − p), exact
        odds = torch.exp(mean_logp - log1m_p)
        per_row = chosen * (-(1 + self.lam) * mean_logp) + (1 - chosen) * (-self.lam * log1m_p)
        return Weighted(chosen * (1 + self.lam) - (1 - chosen) * self.lam * odds,
                        objective=per_row.sum() / batch.groups_total)
