"""The critic's loss: PPO's clipped value loss against GAE returns.

With V_t = V_φ(x, y_<t) the critic's prediction (``extra["value_pred"]``, with gradient), V_old the
value when the experience was made (``extra["values"]``) and R_t = A_t + V_old,t the GAE(γ, λ) returns
(``estimator.advantages.gae``; with ``kl_coef`` β_r the returns of the KL-shaped rewards
r_t − β_r (log π_old − log π_ref), as the policy's advantages), over the step's N_tok completion tokens

    L_V = ½ (1/N_tok) Σ_t max((V_t − R_t)², (clip(V_t, V_old,t − c, V_old,t + c) − R_t)²)

(the value clipping of OpenAI's PPO2 baselines; the LLM form of verl ``core_algos.compute_value_loss``
with token-mean aggregation, c = 0.5 there, 0.2 in TRL). ``clip=None``: the plain ½ (V − R)².
Counted on the whole step (``Batch.step``), so micro-batches add up to the step's loss exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from unigrad.batch import Batch
from unigrad.estimator.advantages.gae import KL_SHAPED, advantages_and_returns
from unigrad.estimator.checks import fraction, non_negative, positive
from unigrad.estimator.protocols import Output


def explained_variance(returns, values, mask) -> float:
    """1 − Var(R − V) / Var(R) over the tokens where ``mask`` is 1 (unbiased variances; verl's
    ``compute_data_metrics``, with its 1e-5 in the denominator)."""
    keep = mask > 0
    r, v = returns[keep].double(), values[keep].double()
    if r.numel() < 2:
        return 0.0
    return float(1.0 - torch.var(r - v) / (torch.var(r) + 1e-5))


@dataclass(frozen=True)
class ValueLoss:
    """½ token-mean of the clipped squared error of the critic against the GAE returns (module docstring)."""
    gamma: float = 1.0
    lam: float = 1.0
    clip: float | None = 0.5
    kl_coef: float = 0.0      # β of a KL-shaped reward: the returns are those of the policy's advantages

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({"reward", "values", "value_pred"}) | (KL_SHAPED if self.kl_coef else frozenset())

    def __post_init__(self):
        fraction(self, "gamma", self.gamma, "the discount γ of later token rewards, in [0, 1]")
        fraction(self, "lam", self.lam, "GAE's λ, in [0, 1]")
        if self.clip is not None:
            positive(self, "clip", self.clip, "the value clip c keeps V within V_old ± c; null turns it off")
        non_negative(self, "kl_coef", self.kl_coef, "β of the KL folded into the reward")

    def loss(self, batch: Batch) -> Output:
        mask, step = batch.mask, batch.whole
        width = mask.shape[1]
        _, step_returns = advantages_and_returns(step, self.gamma, self.lam, self.kl_coef)
        returns = batch.from_whole(step_returns)[:, :width]
        value = batch.require("value_pred")[:, :width].to(returns.dtype)
        old = batch.require("values")[:, :width].to(returns.dtype)
        plain = (value - returns) ** 2
        if self.clip is None:
            per_token, clipped = plain, torch.zeros_like(plain)
        else:
            bounded = torch.maximum(torch.minimum(value, old + self.clip), old - self.clip)
            clipped_error = (bounded - returns) ** 2
            per_token, clipped = torch.maximum(plain, clipped_error), (clipped_error > plain).to(plain.dtype)
        total = batch.tokens_total
        loss = 0.5 * (per_token * mask).sum() / total
        step_values = step.require("values")[:, :step.mask.shape[1]]
        return Output(loss, loss.detach(), {
            "value_clipfrac": float((clipped * mask).sum() / total),   # a share of the step: adds over micro-batches
            "explained_variance": explained_variance(step_returns, step_values, step.mask)})


__all__ = ["ValueLoss", "explained_variance"]
