"""PPO with a value model (the LLM form of verl, TRL and OpenRLHF): a factory composing the estimator's
parts, the wrapper by which a method asks the run for a critic (``WithCritic``), and the one loss of a
value head on the policy's trunk (``WithValueHead``, which the run uses with ``critic.shared``).

Notation: a rollout y = y_1..y_T of prompt x sampled from π_old, token rewards r_t (the scalar reward at
the last token unless the reward function gives one per token), V_old,t the critic's value of
(x, y_<t) when the experience was made, r_t(θ) = π_θ(y_t|·)/π_old(y_t|·), N_tok the step's completion
tokens. ``WithCritic`` carries the policy's objective and the critic's ``ValueLoss``: ``value_loss_of``
finds it, and ``run.assemble`` builds a critic (``unigrad.critic``) only for an objective that has one.
"""
from __future__ import annotations

from dataclasses import dataclass

from unigrad.batch import Batch
from unigrad.estimator import BehaviourPolicy, Estimator, Likelihood, TokenMean
from unigrad.estimator.advantages.gae import GAE
from unigrad.estimator.checks import ParameterError, fraction, non_negative, part, positive
from unigrad.estimator.protocols import Objective, Output
from unigrad.objectives import KLPenalty, Sum, Term
from unigrad.methods.rl import _clip_width, _ppo_mask
from unigrad.objectives.value import ValueLoss


@dataclass(frozen=True)
class WithCritic:
    """``objective`` (the policy's loss), trained next to a critic whose loss is ``value_loss``: the
    run builds the critic, adds V_old to the experience and trains it after each policy update."""

    objective: Objective
    value_loss: ValueLoss

    def __post_init__(self):
        part(self, "objective", self.objective, "objective", "loss", "requires")
        part(self, "value_loss", self.value_loss, "value loss", "loss", "requires")

    @property
    def requires(self) -> frozenset[str]:
        return self.objective.requires

    def loss(self, batch: Batch) -> Output:
        return self.objective.loss(batch)


@dataclass(frozen=True)
class WithValueHead:
    """PPO with the value head on the policy's own trunk (``critic.shared``): one loss for both,

        L = L_π + c · L_V        (c = ``coef``; TRL's ``vf_coef``, 0.1)

    whose gradient trains the trunk on both and the head (``critic.SharedHead``) on L_V; ``value_pred``
    comes from the same forward as the log-probs (``logprobs.LogprobsAndValues``). Metrics: the value
    loss and clip fraction as token means of each micro-batch (``value_loss``, ``value_clipfrac``) and
    ``explained_variance`` of V_old on the step, named as with a separate critic."""

    objective: WithCritic
    coef: float = 0.1

    def __post_init__(self):
        if not isinstance(self.objective, WithCritic):
            raise ParameterError(self, "objective", self.objective, "a policy objective with its value loss (WithCritic)")
        positive(self, "coef", self.coef, "the value loss's weight c in L_π + c·L_V; 0 would leave the head untrained")

    @property
    def value_loss(self) -> ValueLoss:
        return self.objective.value_loss

    @property
    def requires(self) -> frozenset[str]:
        return self.objective.requires | self.value_loss.requires

    def loss(self, batch: Batch) -> Output:
        policy, value = self.objective.loss(batch), self.value_loss.loss(batch)
        share = batch.tokens_total / max(float(batch.mask.sum()), 1.0)   # the step's tokens over this micro-batch's
        return Output(policy.loss + self.coef * value.loss, policy.objective + self.coef * value.objective,
                      {**policy.metrics, "value_loss": float(value.objective) * share,
                       "value_clipfrac": value.metrics["value_clipfrac"] * share,
                       "explained_variance": value.metrics["explained_variance"]})


def value_loss_of(objective) -> ValueLoss | None:
    """The critic's loss an objective (or any term or route inside it) carries; None: it needs no critic."""
    if isinstance(objective, WithCritic):
        return objective.value_loss
    inner = [term.objective for term in getattr(objective, "terms", ())]
    inner += [getattr(objective, name) for name in ("below", "above", "objective") if hasattr(objective, name)]
    return next((loss for loss in map(value_loss_of, inner) if loss is not None), None)


def ppo(eps: float = 0.2, dual_clip: float | None = None, gamma: float = 1.0, lam: float = 1.0,
        value_clip: float | None = 0.5, beta: float = 0.0, kl_coef: float = 0.0) -> WithCritic:
    """PPO with a learned value model (Schulman et al. 2017, "Proximal Policy Optimization Algorithms",
    arXiv 1707.06347, eq. 7; GAE: Schulman et al. 2016, arXiv 1506.02438; the LLM conventions of
    Ouyang et al. 2022 as verl and TRL implement them):

        L_π = −(1/N_tok) Σ_{i,t} min(r_{i,t} Â_{i,t}, clip(r_{i,t}, 1−ε, 1+ε) Â_{i,t})   [+ β k3(π_θ‖π_ref)]
        Â = whiten(A),  A_t = δ_t + γλ A_{t+1},  δ_t = r_t + γ V_old,t+1 − V_old,t
        [r_t ← r_t − β_r (log π_old(y_t) − log π_ref(y_t))]
        L_V = ½ (1/N_tok) Σ max((V − R)², (clip(V, V_old ± c_v) − R)²),   R_t = A_t + V_old,t

    Parts: m = PPO clip (with ``dual_clip`` = c, the dual clip), π_den = π_old, ``GAE(γ, λ)`` per token,
    token unit, token mean over the step; the critic (``critic:`` in the config) descends L_V with its own
    optimiser after each policy update (``unigrad.critic``). Defaults are verl's: γ = λ = 1, c_v = 0.5, no
    KL (TRL: λ = 0.95, c_v = 0.2, its KL in the reward). β > 0 adds a k3 KL-to-reference loss term
    (token mean), verl's ``use_kl_loss`` form; ``kl_coef`` β_r > 0 folds the KL into every token's reward
    instead (Ziegler et al. 2019; TRL's and OpenRLHF's ``kl_coef``), with π_ref of the rollouts computed
    when they are made, and the critic learns the shaped returns."""
    _clip_width("ppo", eps)
    fraction("ppo", "gamma", gamma, "the discount γ of later token rewards, in [0, 1]")
    fraction("ppo", "lam", lam, "GAE's λ trades bias (0: one-step TD) against variance (1: Monte Carlo)")
    if value_clip is not None:
        positive("ppo", "value_clip", value_clip, "the value clip c_v keeps V within V_old ± c_v; null turns it off")
    non_negative("ppo", "beta", beta, "the KL penalty's coefficient; a negative beta rewards drifting from the reference")
    non_negative("ppo", "kl_coef", kl_coef, "β_r of the KL folded into the reward; a negative one rewards drifting")
    policy = Estimator(mask=_ppo_mask("ppo", eps, eps, dual_clip),
                       denominator=BehaviourPolicy(), advantage=GAE(gamma, lam, kl_coef=float(kl_coef)),
                       likelihood=Likelihood("token", TokenMean()))
    if beta:
        policy = Sum((Term(1.0, policy, "policy"), Term(float(beta), KLPenalty("k3", TokenMean()), "kl")))
    return WithCritic(policy, ValueLoss(gamma, lam, value_clip, float(kl_coef)))


__all__ = ["WithCritic", "WithValueHead", "ppo", "value_loss_of"]
