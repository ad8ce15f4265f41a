"""The inverted hinge loss (IHL): a standalone objective of two likelihood terms.

Cha et al. 2025, "Towards Robust and Parameter-Efficient Knowledge Unlearning for LLMs", ICLR (LoKU).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from unigrad.batch import Batch
from unigrad.estimator.advantages.probability import TokenProbability
from unigrad.estimator.core import Estimator
from unigrad.estimator.likelihoods import Likelihood
from unigrad.estimator.checks import text
from unigrad.estimator.normalisers import Restrict, Rows, TokenMean, check_rows, masked_rows
from unigrad.estimator.protocols import Output


@dataclass(frozen=True)
class InvertedHinge:
    """Inverted hinge loss on the subset's tokens:

        L_IHL = (1/N) Σ_{t ∈ forget tokens} [ 1 + p_θ(y_t) − max_{v ≠ y_t} p_θ(v) ]

    with ``batch.extra[field]`` = log max_{v≠y_t} π_θ(v | x, y_<t)  ([B, T], WITH gradient: the
    log-prob producer ``BestOtherToken`` produces it from the top-2 of the logits). Not a single Estimator: its gradient
    has two likelihood terms, the sampled token's and the competing token's, and an Estimator has
    one (``batch.logp``). Each term is itself a four-part Estimator (m = 1, π_den = sg π_θ, token
    unit, mean over forget tokens):
        data token:      Â_t = −p(y_t)        likelihood ∇ log π_θ(y_t)
        competing token: Â_t = +p(v*_t)       likelihood ∇ log π_θ(v*_t)   (Estimator on
                                                 ``batch.replace(logp=extra[field])``)."""

    field: str = "logp_top_other"
    rows: Rows = "negative"

    def __post_init__(self):
        text(self, "field", self.field, "the Batch.extra field with log max_{v≠y_t} π_θ(v)")
        check_rows(self.rows, self)

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({"logp", "mask", "sign", self.field})

    def _parts(self) -> tuple[Estimator, Estimator]:
        like = Likelihood("token", Restrict(TokenMean(), self.rows))
        return (Estimator(advantage=TokenProbability(-1.0, self.rows), likelihood=like),
                Estimator(advantage=TokenProbability(+1.0, self.rows), likelihood=like))

    def loss(self, batch: Batch) -> Output:
        other = batch.require(self.field)
        data_term, other_term = self._parts()
        data_out = data_term.loss(batch)
        other_out = other_term.loss(batch.replace(logp=other))
        mask = masked_rows(batch, self.rows)
        p, p_other = torch.exp(batch.logp.detach()), torch.exp(other.detach())
        value = ((1 + p - p_other) * mask).sum() / Restrict(TokenMean(), self.rows).count(batch)
        metrics = {"p_data": float((p * mask).sum() / mask.sum().clamp(min=1)),
                   "p_competing": float((p_other * mask).sum() / mask.sum().clamp(min=1))}
        return Output(loss=data_out.loss + other_out.loss, objective=value.detach(), metrics=metrics)
