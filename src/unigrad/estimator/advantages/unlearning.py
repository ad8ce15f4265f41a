"""Advantages of the unlearning (and discriminator-style) losses on one subset of rows.

Each advantage is the detached weight Â with  ∂L/∂ℓ = −Â/Z  (Z the normaliser's count, a
``Restrict``-ed one), so the Estimator's surrogate −(1/Z) Σ m·r·Â has the loss's exact gradient;
the objective is the loss's value. FLAT's and IHL's probability weights are in ``probability.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.checks import non_negative, number, one_of, positive
from unigrad.estimator.normalisers import (
    Restrict, Rows, SequenceSum, TokenMean, check_rows, masked_rows, reduce_within, row_selector,
)
from unigrad.estimator.protocols import Weighted
from unigrad.objectives.kl import kl_estimate

RETAIN_KL = "k1's gradient through ℓ is plain ascent on the retain data, not a pull towards the reference"
SAFE_ALIGN_LAM = "it weighs the ascent on harmful rows; a negative lam trains on them"
SAFE_ALIGN_THRESHOLD = ("a harmful row is ascended while its mean NLL is below it; a mean NLL is ≥ 0, so a threshold "
                        "≤ 0 never lets one through (None: no gate)")


@dataclass(frozen=True)
class LogSigmoidRatio:
    """Per row of the subset:  L_i = −scale · log σ(d · β · h(y_i)),  h = ℓ(y) − ℓ_ref(y) (sums),
    averaged over the subset's rows (``Restrict(SequenceSum(), rows)``). Its weight:

        ∂L_i/∂ℓ(y_i) = −scale · d·β · σ(−d·β·h)   ⇒   Â_i = scale · d·β · σ(−d·β·h_i).

    NPO (Zhang et al. 2024): d = −1, scale = 2/β on forget rows → Â = −2σ(β h).
    DDO (Zheng et al. 2025): d = +1 on data rows → Â = β σ(−β h); d = −1 on reference samples →
    Â = −β σ(β h) (−log(1 − σ(βh)) = −log σ(−βh))."""

    beta: float = 0.1
    direction: int = -1
    scale: float = 1.0
    rows: Rows = "negative"
    requires: ClassVar[frozenset[str]] = frozenset({"sign", "logp_ref"})

    def __post_init__(self):
        positive(self, "beta", self.beta, "the inverse temperature of σ(d·β·h); a negative beta swaps the two sides")
        one_of(self, "direction", self.direction, (-1, 1), "d = +1 pushes h up (data rows), −1 down (forget or reference rows)")
        number(self, "scale", self.scale, "the multiple of −log σ in the loss")
        check_rows(self.rows, self)

    def __call__(self, batch: Batch) -> Weighted:
        mask = batch.mask.to(batch.logp.dtype)
        h = reduce_within(batch.logp.detach() - batch.require("logp_ref").detach(), mask, "sum")
        d = float(self.direction)
        sel = row_selector(batch, self.rows)
        per_row = -self.scale * F.logsigmoid(d * self.beta * h)
        return Weighted(self.scale * d * self.beta * torch.sigmoid(-d * self.beta * h) * sel,
                        objective=(per_row * sel).sum() / Restrict(SequenceSum(), self.rows).count(batch),
                        metrics={"log_ratio_mean": float((h * sel).sum() / sel.sum().clamp(min=1))})


@dataclass(frozen=True)
class ReferenceKL:
    """A sampled per-token divergence to the reference on the subset's tokens, differentiated
    through ℓ (the retain term of grad-diff with ``retain="kl"``), log ρ = ℓ_ref − ℓ
    (Schulman 2020, "Approximating KL Divergence"; the estimates are ``objectives.kl_estimate``):

        k3 = ρ − 1 − log ρ :  ∂k3/∂ℓ = 1 − ρ      ⇒  Â_t = ρ_t − 1
        k2 = ½ (log ρ)²    :  ∂k2/∂ℓ = ℓ − ℓ_ref  ⇒  Â_t = ℓ_ref − ℓ

    k1 = −log ρ is refused: its gradient through ℓ is ∇ℓ itself (Â = −1), i.e. gradient *ascent*
    on the retain data, not a pull towards the reference."""

    estimator: str = "k3"
    rows: Rows = "positive"
    requires: ClassVar[frozenset[str]] = frozenset({"sign", "logp_ref"})

    def __post_init__(self):
        one_of(self, "estimator", self.estimator, ("k2", "k3"), RETAIN_KL)
        check_rows(self.rows, self)

    def __call__(self, batch: Batch) -> Weighted:
        logp, logp_ref = batch.logp.detach(), batch.require("logp_ref").detach()
        log_rho = logp_ref - logp
        weight = torch.expm1(log_rho) if self.estimator == "k3" else log_rho
        mask = masked_rows(batch, self.rows)
        k = kl_estimate(logp, logp_ref, self.estimator)
        return Weighted(weight * mask, objective=(k * mask).sum() / Restrict(TokenMean(), self.rows).count(batch))


@dataclass(frozen=True)
class SafeAlignWeight:
    """SAFE-ALIGN's token weight (reconstruction, confidence L): Â = +1 on helpful/blue tokens
    (sign = +1), Â = −λ·g_i on harmful/red tokens (sign = −1), with the per-sample gate
    g_i = 1[ NLL̄(y_i) < τ ] (detached; τ = None: no gate)."""

    lam: float = 1.0
    loss_threshold: float | None = None
    requires: ClassVar[frozenset[str]] = frozenset({"sign"})

    def __post_init__(self):
        non_negative(self, "lam", self.lam, SAFE_ALIGN_LAM)
        if self.loss_threshold is not None:
            positive(self, "loss_threshold", self.loss_threshold, SAFE_ALIGN_THRESHOLD)

    def gate(self, batch: Batch) -> Tensor:
        if self.loss_threshold is None:
            return torch.ones(batch.logp.shape[0], dtype=batch.logp.dtype, device=batch.logp.device)
        nll_mean = -reduce_within(batch.logp.detach(), batch.mask.to(batch.logp.dtype), "mean")
        return (nll_mean < self.loss_threshold).to(batch.logp.dtype)

    def __call__(self, batch: Batch) -> Weighted:
        gate, red = self.gate(batch), row_selector(batch, "negative")
        return Weighted(row_selector(batch, "positive") - self.lam * gate * red,
                        metrics={"red_gated_on": float((gate * red).sum() / red.sum().clamp(min=1))})
