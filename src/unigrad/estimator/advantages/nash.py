"""Preferences as a game: the advantage of a response against an opponent's, regularised to a reference.

Nash learning from human feedback (Munos et al. 2024, "Nash Learning from Human Feedback", ICML,
arXiv 2312.00886) seeks the Nash equilibrium π* of the τ-regularised preference game

    max_π min_π′  P(π ≻ π′) − τ KL(π ‖ μ) + τ KL(π′ ‖ μ),

μ the reference policy. Its policy gradient at π against an opponent π′ is (sequence sums)

    ∇ [P(π ≻ sg π′) − τ KL(π ‖ μ)] = E_{y~π, y′~π′} [ (P(y ≻ y′) − ½ − τ log(π(y)/μ(y))) ∇ log π(y) ]

(the ½ is a baseline, E_π ∇ log π = 0). The opponent is a ``GeometricMixture`` of the policy and the
reference: β = 0 is the policy itself (self-play), Nash-MD's mixture has 0 < β < 1.

Rows read ``extra["preference"]`` [B]: P(y_b ≻ y′_b) for the row's opponent sample y′_b — a
preference model's probability, or a rule's 1 / 0 / ½ — or, for exact expectations (the tabular
game), P(y_b ≻ π′) = Σ_{y′} π′(y′) P(y_b ≻ y′). It is a pairwise quantity tied to an opponent sample,
not a scalar reward, so it has its own field: ``reward`` stays what the reward producers fill and the
group advantages read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.checks import fraction, non_negative, one_of, part
from unigrad.estimator.normalisers import reduce_within
from unigrad.estimator.protocols import Weighted

PREFERENCE = "preference"
ANCHOR = "logp_anchor"
TAU = "the weight of KL(π‖μ) in the regularised game; a negative one rewards drifting from the reference"


@dataclass(frozen=True)
class GeometricMixture:
    """The opponent π′(y) ∝ π(y)^{1−β} μ(y)^β (Munos et al. 2024, §5 and §7: Nash-MD's regularised
    policy); β = 0 is the policy itself (self-play), β = 1 the reference. Token by token in a sampler;
    ``log_probs`` normalises over a finite set of responses (the tabular game)."""

    beta: float = 0.0

    def __post_init__(self):
        fraction(self, "beta", self.beta, "the mixture's weight on the reference: 0 is self-play, 1 the reference")

    def log_probs(self, logp: Tensor, logp_ref: Tensor) -> Tensor:
        """log π′ over the last dimension, from log π and log μ over the same responses (or tokens)."""
        return torch.log_softmax((1 - self.beta) * logp + self.beta * logp_ref, dim=-1)


def preference(batch: Batch) -> Tensor:
    """P(y_b ≻ y′_b) per row ([B], detached, in [0, 1])."""
    value = batch.require(PREFERENCE).detach()
    if value.dim() != 1 or value.shape[0] != batch.logp.shape[0]:
        raise ValueError(f"`{PREFERENCE}` must have one value per row ([B] = [{batch.logp.shape[0]}]), "
                         f"got shape {tuple(value.shape)}")
    if torch.any((value < 0) | (value > 1)):
        raise ValueError(f"`{PREFERENCE}` holds probabilities P(y ≻ y′), all in [0, 1]")
    return value.to(batch.logp.dtype)


def _sequence(batch: Batch, name: str) -> Tensor:
    mask = batch.mask.to(batch.logp.dtype)
    return reduce_within(batch.require(name).detach().to(mask.dtype), mask, "sum")


@dataclass(frozen=True)
class NashAdvantage:
    """Â(y) = P(y ≻ y′) − ½ − τ (log π_•(y) − log μ(y)),  y′ ~ ``opponent``, sequence sums.

    ``kl_at="policy"``: π_• = π_θ, the current policy — Nash-MD-PG (Munos et al. 2024, §7), the
    gradient of P(π ≻ sg π′) − τ KL(π‖μ). ``kl_at="anchor"``: π_• = π_k, the iterate the update
    started from (``extra["logp_anchor"]``, [B, T]) — the composite mirror-prox step of Nash-MP
    (Tiapkin et al. 2025, arXiv 2505.19731), whose proximal problems
    argmax_π ⟨π, P(·≻π′)⟩ − τ KL(π‖μ) − (τ/η) KL(π‖π_k) are solved by one mirror step from π_k along
    this Â (see ``unigrad.methods.nash.nash_mp``). The two coincide at π_θ = π_k.

    Objective: −(1/N) Σ_b [P_b − ½ − τ h_b], h = log π_θ/μ: minus the regularised game's payoff
    against the opponent, estimated on the rows."""

    tau: float = 0.008
    opponent: GeometricMixture = GeometricMixture(0.0)
    kl_at: Literal["policy", "anchor"] = "policy"

    def __post_init__(self):
        non_negative(self, "tau", self.tau, TAU)
        part(self, "opponent", self.opponent, "opponent", "beta", "log_probs")
        one_of(self, "kl_at", self.kl_at, ("policy", "anchor"),
               "the policy whose log-ratio to μ the KL term uses: the current one, or the update's anchor π_k")

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({PREFERENCE, "logp_ref"} | ({ANCHOR} if self.kl_at == "anchor" else set()))

    def __call__(self, batch: Batch) -> Weighted:
        p = preference(batch)
        logp_ref = _sequence(batch, "logp_ref")
        h = _sequence(batch, "logp") - logp_ref                      # log π_θ(y)/μ(y)
        h_kl = h if self.kl_at == "policy" else _sequence(batch, ANCHOR) - logp_ref
        advantage = p - 0.5 - self.tau * h_kl
        objective = -(p - 0.5 - self.tau * h).sum() / batch.sequences_total
        return Weighted(advantage, objective=objective,
                        metrics={"preference_mean": float(p.mean()), "log_ratio_ref_mean": float(h.mean())})


WIN_RATE = "win_rate"


@dataclass(frozen=True)
class SelfPlayRegression:
    """SPPO's regression of the log-ratio onto the win rate (Wu et al. 2024, "Self-Play Preference
    Optimization for Language Model Alignment", arXiv 2405.00675, eq. 3.6 / Algorithm 1):

        L = (1/N) Σ_b ( h_b − η (P̂_b − ½) )²,   h_b = log π_θ(y_b)/π_t(y_b)  (sequence sums),

    P̂_b ≈ P(y_b ≻ π_t) the sample's win rate against the iteration's other samples (``extra["win_rate"]``)
    and π_t the iteration's policy (``logp_ref``). ∇L = (1/N) Σ 2(h − η(P̂ − ½)) ∇ log π_θ(y), so
    Â = −2(h − η(P̂ − ½)) with the sequence log-prob. The regression fits the multiplicative-weights
    step π_{t+1} ∝ π_t exp(η P(·≻π_t)) of the preference game, its log-normaliser approximated by η/2."""

    eta: float = 1000.0

    def __post_init__(self):
        non_negative(self, "eta", self.eta, "η scales the win rate the log-ratio is regressed onto")

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({WIN_RATE, "logp_ref"})

    def __call__(self, batch: Batch) -> Weighted:
        p = batch.require(WIN_RATE).detach().to(batch.logp.dtype)
        h = _sequence(batch, "logp") - _sequence(batch, "logp_ref")
        residual = h - self.eta * (p - 0.5)
        return Weighted(-2 * residual, objective=(residual ** 2).sum() / batch.sequences_total,
                        metrics={"win_rate_mean": float(p.mean()), "log_ratio_ref_mean": float(h.mean())})


__all__ = ["ANCHOR", "GeometricMixture", "NashAdvantage", "PREFERENCE", "SelfPlayRegression", "WIN_RATE", "preference"]
