"""Advantages of the unlearning (and discriminator-style) losses, and the inverted hinge objective.

Each advantage is the detached weight Â with  ∂L/∂ℓ = −Â/Z  (Z the normaliser's count), so the
Estimator's surrogate −(1/Z) Σ m·r·Â has the loss's exact gradient; ``objective`` returns the
loss's value. All act on one subset of rows (see ``unigrad.estimator.rows``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.core import Estimator, Output
from unigrad.estimator.likelihoods import Likelihood, reduce_within
from unigrad.estimator.rows import (
    Rows, RowsTokenMean, _check, masked_rows, row_selector, rows_sequences, rows_tokens,
)


def _seq_log_ratio(batch: Batch) -> Tensor:
    """h(y) = ℓ(y) − ℓ_ref(y), sequence sums, detached: [B]."""
    mask = batch.mask.to(batch.logp.dtype)
    return reduce_within(batch.logp.detach() - batch.require("logp_ref").detach(), mask, "sum")


@dataclass(frozen=True)
class LogSigmoidRatio:
    """Per row of the subset:  L_i = −scale · log σ(d · β · h(y_i)),  h = ℓ(y) − ℓ_ref(y) (sums),
    averaged over the subset's rows (``RowsSequenceSum``). Its weight:

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
        _check(self.rows)
        if self.direction not in (-1, 1):
            raise ValueError("direction must be +1 or -1")

    def __call__(self, batch: Batch) -> Tensor:
        h = _seq_log_ratio(batch)
        d = float(self.direction)
        return self.scale * d * self.beta * torch.sigmoid(-d * self.beta * h) * row_selector(batch, self.rows)

    def objective(self, batch: Batch) -> Tensor:
        h = _seq_log_ratio(batch)
        per_row = -self.scale * F.logsigmoid(float(self.direction) * self.beta * h)
        return (per_row * row_selector(batch, self.rows)).sum() / rows_sequences(batch, self.rows)

    def metrics(self, batch: Batch) -> dict[str, float]:
        h = _seq_log_ratio(batch)
        sel = row_selector(batch, self.rows)
        return {"log_ratio_mean": float((h * sel).sum() / sel.sum().clamp(min=1))}


@dataclass(frozen=True)
class ReferenceKL:
    """A sampled per-token divergence to the reference on the subset's tokens, differentiated
    through ℓ (the retain term of grad-diff with ``retain="kl"``), log ρ = ℓ_ref − ℓ
    (Schulman 2020, "Approximating KL Divergence"):

        k3 = ρ − 1 − log ρ :  ∂k3/∂ℓ = 1 − ρ      ⇒  Â_t = ρ_t − 1
        k2 = ½ (log ρ)²    :  ∂k2/∂ℓ = ℓ − ℓ_ref  ⇒  Â_t = ℓ_ref − ℓ

    k1 = −log ρ is refused: its gradient through ℓ is ∇ℓ itself (Â = −1), i.e. gradient *ascent*
    on the retain data, not a pull towards the reference."""

    estimator: str = "k3"
    rows: Rows = "positive"
    requires: ClassVar[frozenset[str]] = frozenset({"sign", "logp_ref"})

    def __post_init__(self):
        _check(self.rows)
        if self.estimator not in ("k2", "k3"):
            raise ValueError(f"retain KL estimator must be 'k2' or 'k3' (k1's gradient through ℓ is "
                             f"plain ascent on the retain data), got {self.estimator!r}")

    def _log_rho(self, batch: Batch) -> Tensor:
        return batch.require("logp_ref").detach() - batch.logp.detach()

    def __call__(self, batch: Batch) -> Tensor:
        log_rho = self._log_rho(batch)
        weight = torch.expm1(log_rho) if self.estimator == "k3" else log_rho
        return weight * masked_rows(batch, self.rows)

    def objective(self, batch: Batch) -> Tensor:
        log_rho = self._log_rho(batch)
        k = torch.expm1(log_rho) - log_rho if self.estimator == "k3" else 0.5 * log_rho ** 2
        return (k * masked_rows(batch, self.rows)).sum() / rows_tokens(batch, self.rows)


@dataclass(frozen=True)
class TokenProbability:
    """Â_t = scale · π_θ(y_t) (detached) on the subset's tokens: the weight of ±p(y_t) in a loss,
    since ∂p/∂ℓ = p. IHL's data token has scale −1, its competing token +1."""

    scale: float = -1.0
    rows: Rows = "negative"
    requires: ClassVar[frozenset[str]] = frozenset({"sign"})

    def __call__(self, batch: Batch) -> Tensor:
        return self.scale * torch.exp(batch.logp.detach()) * masked_rows(batch, self.rows)


@dataclass(frozen=True)
class InvertedHinge:
    """Inverted hinge loss on the subset's tokens (Cha et al. 2025, "Towards Robust and
    Parameter-Efficient Knowledge Unlearning for LLMs", ICLR; LoKU):

        L_IHL = (1/N) Σ_{t ∈ forget tokens} [ 1 + p_θ(y_t) − max_{v ≠ y_t} p_θ(v) ]

    with ``batch.extra[field]`` = log max_{v≠y_t} π_θ(v | x, y_<t)  ([B, T], WITH gradient: the
    log-prob engine produces it from the top-2 of the logits). Standalone objective, not a single
    Estimator: its gradient has two likelihood terms, the sampled token's and the competing
    token's, and an Estimator has one (``batch.logp``). Each term is itself a four-part Estimator
    (m = 1, π_den = sg π_θ, token unit, mean over forget tokens):
        data token:      Â_t = −p(y_t)        likelihood ∇ log π_θ(y_t)
        competing token: Â_t = +p(v*_t)       likelihood ∇ log π_θ(v*_t)   (Estimator on
                                                 ``batch.replace(logp=extra[field])``)."""

    field: str = "logp_top_other"
    rows: Rows = "negative"

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({"logp", "mask", "sign", self.field})

    def _parts(self) -> tuple[Estimator, Estimator]:
        like = Likelihood("token", RowsTokenMean(self.rows))
        return (Estimator(advantage=TokenProbability(-1.0, self.rows), likelihood=like),
                Estimator(advantage=TokenProbability(+1.0, self.rows), likelihood=like))

    def loss(self, batch: Batch) -> Output:
        other = batch.require(self.field)
        data_term, other_term = self._parts()
        data_out = data_term.loss(batch)
        other_out = other_term.loss(batch.replace(logp=other))
        mask = masked_rows(batch, self.rows)
        p, p_other = torch.exp(batch.logp.detach()), torch.exp(other.detach())
        value = ((1 + p - p_other) * mask).sum() / rows_tokens(batch, self.rows)
        metrics = {"p_data": float((p * mask).sum() / mask.sum().clamp(min=1)),
                   "p_competing": float((p_other * mask).sum() / mask.sum().clamp(min=1))}
        return Output(loss=data_out.loss + other_out.loss, objective=value.detach(), metrics=metrics)


# ---- FLAT: variational f-divergence between template and forget answers ----

def _flat_functions(divergence: str):
    """(g, g′, h, h′) with h = f*∘g, as in FLAT's official code (``get_contrastive_loss``)."""
    log2 = torch.log(torch.tensor(2.0, dtype=torch.float64)).item()
    table = {
        "kl": (lambda u: u, lambda u: torch.ones_like(u), lambda u: torch.exp(u - 1), lambda u: torch.exp(u - 1)),
        "reverse_kl": (lambda u: -torch.exp(u), lambda u: -torch.exp(u), lambda u: -1 - u, lambda u: -torch.ones_like(u)),
        "jeffrey": (lambda u: u, lambda u: torch.ones_like(u), lambda u: u + u ** 2 / 4 + u ** 3 / 16,
                    lambda u: 1 + u / 2 + 3 * u ** 2 / 16),
        "squared_hellinger": (lambda u: 1 - torch.exp(u), lambda u: -torch.exp(u), lambda u: torch.exp(-u) - 1,
                              lambda u: -torch.exp(-u)),
        "pearson": (lambda u: u, lambda u: torch.ones_like(u), lambda u: u ** 2 / 4 + u, lambda u: u / 2 + 1),
        "js": (lambda u: log2 - F.softplus(-u), lambda u: torch.sigmoid(-u), lambda u: u + F.softplus(-u) - log2,
               lambda u: torch.sigmoid(u)),
        "total_variation": (lambda u: torch.tanh(u) / 2, lambda u: (1 - torch.tanh(u) ** 2) / 2,
                            lambda u: torch.tanh(u) / 2, lambda u: (1 - torch.tanh(u) ** 2) / 2),
    }
    if divergence not in table:
        raise ValueError(f"unknown FLAT divergence {divergence!r}; choose one of {', '.join(table)}")
    return table[divergence]


FLAT_DIVERGENCES = ("kl", "reverse_kl", "jeffrey", "squared_hellinger", "pearson", "js", "total_variation")


def _mean_probability(batch: Batch, rows: str) -> Tensor:
    """P = mean of p_θ(y_t) over the subset's completion tokens (detached scalar)."""
    return (torch.exp(batch.logp.detach()) * masked_rows(batch, rows)).sum() / rows_tokens(batch, rows)


@dataclass(frozen=True)
class FlatTemplate:
    """FLAT's template-answer side: L_e = −g(P_e), P_e the mean token probability of the template
    answers (sign = +1); ∂L_e/∂ℓ_t = −g′(P_e) p_t / N_e  ⇒  Â_t = g′(P_e) · p_t."""

    divergence: str = "total_variation"
    requires: ClassVar[frozenset[str]] = frozenset({"sign"})

    def __post_init__(self):
        _flat_functions(self.divergence)

    def __call__(self, batch: Batch) -> Tensor:
        _, dg, _, _ = _flat_functions(self.divergence)
        P = _mean_probability(batch, "positive")
        return dg(P) * torch.exp(batch.logp.detach()) * masked_rows(batch, "positive")

    def objective(self, batch: Batch) -> Tensor:
        g, *_ = _flat_functions(self.divergence)
        return -g(_mean_probability(batch, "positive"))


@dataclass(frozen=True)
class FlatForget:
    """FLAT's forget-answer side: L_f = f*(g(P_f)), P_f the mean token probability of the forget
    answers (sign = −1); ∂L_f/∂ℓ_t = (f*∘g)′(P_f) p_t / N_f  ⇒  Â_t = −(f*∘g)′(P_f) · p_t."""

    divergence: str = "total_variation"
    requires: ClassVar[frozenset[str]] = frozenset({"sign"})

    def __post_init__(self):
        _flat_functions(self.divergence)

    def __call__(self, batch: Batch) -> Tensor:
        _, _, _, dh = _flat_functions(self.divergence)
        P = _mean_probability(batch, "negative")
        return -dh(P) * torch.exp(batch.logp.detach()) * masked_rows(batch, "negative")

    def objective(self, batch: Batch) -> Tensor:
        _, _, h, _ = _flat_functions(self.divergence)
        return h(_mean_probability(batch, "negative"))


@dataclass(frozen=True)
class SafeAlignWeight:
    """SAFE-ALIGN's token weight (reconstruction, confidence L): Â = +1 on helpful/blue tokens
    (sign = +1), Â = −λ·g_i on harmful/red tokens (sign = −1), with the per-sample gate
    g_i = 1[ NLL̄(y_i) < τ ] (detached; τ = None: no gate)."""

    lam: float = 1.0
    loss_threshold: float | None = None
    requires: ClassVar[frozenset[str]] = frozenset({"sign"})

    def gate(self, batch: Batch) -> Tensor:
        if self.loss_threshold is None:
            return torch.ones(batch.logp.shape[0], dtype=batch.logp.dtype, device=batch.logp.device)
        nll_mean = -reduce_within(batch.logp.detach(), batch.mask.to(batch.logp.dtype), "mean")
        return (nll_mean < self.loss_threshold).to(batch.logp.dtype)

    def __call__(self, batch: Batch) -> Tensor:
        return row_selector(batch, "positive") - self.lam * self.gate(batch) * row_selector(batch, "negative")

    def metrics(self, batch: Batch) -> dict[str, float]:
        red = row_selector(batch, "negative")
        return {"red_gated_on": float((self.gate(batch) * red).sum() / red.sum().clamp(min=1))}
