"""Generalised advantage estimation from a critic's values, per completion token.

Over the completion tokens t = 1..T of a rollout, with V_t = V_old(x, y_<t) the critic's value
when the experience was made (``extra["values"]``) and r_t the token reward,

    δ_t = r_t + γ V_{t+1} − V_t,    A_t = δ_t + γ λ A_{t+1},    R_t = A_t + V_t,    V_{T+1} = A_{T+1} = 0

(Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation",
ICLR, arXiv 1506.02438, eqs. 11–16). r_t is the reward function's per-token reward when it returns
one (``extra["token_rewards"]``, process rewards) or else the scalar reward at the last completion
token (the LLM convention of verl, TRL and OpenRLHF). The advantages are then whitened over the
step's valid tokens, Â = (A − mean A) / sqrt(var A + 1e-8) with the unbiased variance, and the
returns R_t (not whitened) are the value loss's targets. Followed: verl
``core_algos.compute_gae_advantage_return`` and ``masked_whiten`` (TRL's ``PPOTrainer`` is the same
with λ = 0.95).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.checks import flag, fraction, non_negative
from unigrad.estimator.protocols import Weighted

WHITEN_EPS = 1e-8


def token_rewards(batch: Batch) -> Tensor:
    """r [B, T]: ``extra["token_rewards"]`` when the reward function gave one per token, else the scalar
    reward at each row's last completion token (0 elsewhere)."""
    mask = batch.mask
    given = batch.extra.get("token_rewards")
    if given is not None:
        return given.to(mask.dtype)[:, :mask.shape[1]] * mask
    reward = batch.require("reward").to(mask.dtype)
    last = (mask.sum(1).long() - 1).clamp(min=0)
    out = torch.zeros_like(mask)
    out[torch.arange(mask.shape[0], device=mask.device), last] = reward * (mask.sum(1) > 0).to(mask.dtype)
    return out


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """(A, R) [B, T] from rewards and values [B, T] over right-padded completions (``mask``): the
    backward recursion of the module docstring, 0 where ``mask`` is 0."""
    values = values * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        current = delta + gamma * lam * next_advantage
        # padding after a completion leaves the running values as they were (it is not a step)
        next_advantage = m * current + (1 - m) * next_advantage
        next_value = m * values[:, t] + (1 - m) * next_value
        advantages[:, t] = current * m
    return advantages, (advantages + values) * mask


def whiten(values: Tensor, mask: Tensor, eps: float = WHITEN_EPS) -> Tensor:
    """(x − mean x) / sqrt(var x + eps) over the tokens where ``mask`` is 1 (unbiased variance, verl's
    ``masked_whiten``); 0 elsewhere."""
    n = mask.sum()
    mean = (values * mask).sum() / n
    var = (((values - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def kl_shaped(rewards: Tensor, batch: Batch, kl_coef: float) -> Tensor:
    """r_t − β (log π_old(y_t) − log π_ref(y_t)) at every completion token: the KL to the reference folded
    into the reward (k1 per token; Ziegler et al. 2019, arXiv 1909.08593, eq. 2; TRL's and OpenRLHF's PPO)."""
    if not kl_coef:
        return rewards
    width = batch.mask.shape[1]
    kl = (batch.require("logp_old")[:, :width] - batch.require("logp_ref")[:, :width]).to(rewards.dtype)
    return rewards - kl_coef * kl * batch.mask


def advantages_and_returns(batch: Batch, gamma: float, lam: float, kl_coef: float = 0.0) -> tuple[Tensor, Tensor]:
    """(A, R) of every row of ``batch`` from its token rewards (KL-shaped with ``kl_coef`` β > 0) and
    ``extra["values"]``."""
    return gae(kl_shaped(token_rewards(batch), batch, kl_coef),
               batch.require("values").to(batch.mask.dtype)[:, :batch.mask.shape[1]], batch.mask, gamma, lam)


KL_SHAPED = frozenset({"logp_old", "logp_ref"})   # what a KL-shaped reward reads besides the reward


@dataclass(frozen=True)
class GAE:
    """Â_t = whiten(A_t) with A the GAE(γ, λ) advantages of the module docstring, per token ([B, T]),
    computed on the whole step (whitening uses its statistics, so micro-batches are exact).

    Defaults γ = λ = 1 are verl's (A_t = Σ_{s≥t} r_s − V_t, Monte-Carlo returns); TRL uses λ = 0.95. With
    ``kl_coef`` β > 0 the rewards are KL-shaped (``kl_shaped``), which reads π_ref of the whole step's
    rollouts (made with them)."""
    gamma: float = 1.0
    lam: float = 1.0
    whiten: bool = True
    kl_coef: float = 0.0

    def __post_init__(self):
        fraction(self, "gamma", self.gamma, "the discount γ of later token rewards, in [0, 1]")
        fraction(self, "lam", self.lam, "GAE's λ trades bias (0: one-step TD) against variance (1: Monte Carlo), in [0, 1]")
        flag(self, "whiten", self.whiten, "normalise the advantages over the step's tokens")
        non_negative(self, "kl_coef", self.kl_coef, "β of the KL folded into the reward; a negative β rewards drift")

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({"reward", "values"}) | (KL_SHAPED if self.kl_coef else frozenset())

    def __call__(self, batch: Batch) -> Weighted:
        step = batch.whole
        advantages, _ = advantages_and_returns(step, self.gamma, self.lam, self.kl_coef)
        weight = whiten(advantages, step.mask) if self.whiten else advantages
        mask = batch.mask
        width, n = mask.shape[1], mask.sum().clamp(min=1)
        raw, values = batch.from_whole(advantages)[:, :width], batch.require("values")[:, :width]
        metrics = {"gae_advantage_mean": float((raw * mask).sum() / n), "values_old_mean": float((values * mask).sum() / n)}
        if self.kl_coef:
            kl = (batch.require("logp_old") - batch.require("logp_ref"))[:, :width]
            metrics["reward_kl"] = float((kl * mask).sum() / n)
        return Weighted(batch.from_whole(weight)[:, :width], None, metrics)


__all__ = ["GAE", "KL_SHAPED", "advantages_and_returns", "gae", "kl_shaped", "token_rewards", "whiten"]
