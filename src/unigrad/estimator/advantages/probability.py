"""Advantages that weigh each token by its own probability p_θ(y_t): IHL's ±p terms and FLAT's.

Since ∂p/∂ℓ = p, a loss term ±c·p(y_t) has weight Â_t = ∓c·p_t (detached) on the likelihood
gradient; FLAT's losses are functions of the mean token probability P, so Â_t = ±(its slope at P)·p_t.
Each acts on one subset of rows (``unigrad.estimator.normalisers.Restrict``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.checks import number, one_of
from unigrad.estimator.normalisers import Restrict, Rows, TokenMean, check_rows, masked_rows
from unigrad.estimator.protocols import Weighted


@dataclass(frozen=True)
class TokenProbability:
    """Â_t = scale · π_θ(y_t) (detached) on the subset's tokens: the weight of ±p(y_t) in a loss,
    since ∂p/∂ℓ = p. IHL's data token has scale −1, its competing token +1."""

    scale: float = -1.0
    rows: Rows = "negative"
    requires: ClassVar[frozenset[str]] = frozenset({"sign"})

    def __post_init__(self):
        number(self, "scale", self.scale, "the multiple of p(y_t) in the loss")
        check_rows(self.rows, self)

    def __call__(self, batch: Batch) -> Weighted:
        return Weighted(self.scale * torch.exp(batch.logp.detach()) * masked_rows(batch, self.rows))


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


def _probabilities(batch: Batch, rows: Rows) -> tuple[Tensor, Tensor, Tensor]:
    """(p_t [B, T], the subset's token mask [B, T], P = the mean of p_t over the subset's tokens), detached."""
    p, mask = torch.exp(batch.logp.detach()), masked_rows(batch, rows)
    return p, mask, (p * mask).sum() / Restrict(TokenMean(), rows).count(batch)


@dataclass(frozen=True)
class FlatTemplate:
    """FLAT's template-answer side: L_e = −g(P_e), P_e the mean token probability of the template
    answers (sign = +1); ∂L_e/∂ℓ_t = −g′(P_e) p_t / N_e  ⇒  Â_t = g′(P_e) · p_t."""

    divergence: str = "total_variation"
    requires: ClassVar[frozenset[str]] = frozenset({"sign"})

    def __post_init__(self):
        one_of(self, "divergence", self.divergence, FLAT_DIVERGENCES, "the f-divergences of FLAT's code, Neyman left out")

    def __call__(self, batch: Batch) -> Weighted:
        g, dg, _, _ = _flat_functions(self.divergence)
        p, mask, P = _probabilities(batch, "positive")
        return Weighted(dg(P) * p * mask, objective=-g(P))


@dataclass(frozen=True)
class FlatForget:
    """FLAT's forget-answer side: L_f = f*(g(P_f)), P_f the mean token probability of the forget
    answers (sign = −1); ∂L_f/∂ℓ_t = (f*∘g)′(P_f) p_t / N_f  ⇒  Â_t = −(f*∘g)′(P_f) · p_t."""

    divergence: str = "total_variation"
    requires: ClassVar[frozenset[str]] = frozenset({"sign"})

    def __post_init__(self):
        one_of(self, "divergence", self.divergence, FLAT_DIVERGENCES, "the f-divergences of FLAT's code, Neyman left out")

    def __call__(self, batch: Batch) -> Weighted:
        _, _, h, dh = _flat_functions(self.divergence)
        p, mask, P = _probabilities(batch, "negative")
        return Weighted(-dh(P) * p * mask, objective=h(P))
