"""Preferences as a game (Nash learning from human feedback): factories composing the estimator's parts.

Notation: x a prompt, y a response of the policy π_θ, y′ an opponent's response, P(y ≻ y′) ∈ [0, 1]
the preference (``extra["preference"]``), μ the reference policy (``logp_ref``), h(y) = log π_θ(y)/μ(y)
with sequence sums. The regularised game's Nash equilibrium π* solves
max_π min_π′ P(π ≻ π′) − τ KL(π‖μ) + τ KL(π′‖μ); in the tabular game
π*(y) ∝ μ(y) exp(P(y ≻ π*)/τ) (``unigrad.games.tabular``).

A method that needs an update rule other than one optimiser step per update says so with
``WithUpdateRule``: ``required_update_rule(objective)`` names it, and ``check_update_rule_for`` refuses
a run configured otherwise (``train.update_rule``).
"""
from __future__ import annotations

from dataclasses import dataclass

from unigrad.batch import Batch
from unigrad.config import ConfigError
from unigrad.estimator import CurrentPolicy, Estimator, Likelihood, NoMask, SequenceSum
from unigrad.estimator.advantages.nash import GeometricMixture, NashAdvantage, SelfPlayRegression
from unigrad.estimator.checks import fraction, one_of, part, positive
from unigrad.estimator.protocols import Objective, Output

_SEQUENCE_LOGPROB = Likelihood("sequence", SequenceSum())
UPDATE_RULES = ("optimizer_step", "extragradient")


@dataclass(frozen=True)
class WithUpdateRule:
    """``objective``, to be descended with the update rule ``update_rule`` (a name of
    ``unigrad.updates.RULES``): its loss and requirements are the objective's."""

    objective: Objective
    update_rule: str = "extragradient"

    def __post_init__(self):
        part(self, "objective", self.objective, "objective", "loss", "requires")
        one_of(self, "update_rule", self.update_rule, UPDATE_RULES, "the update rule the method's steps are built on")

    @property
    def requires(self) -> frozenset[str]:
        return self.objective.requires

    def loss(self, batch: Batch) -> Output:
        return self.objective.loss(batch)


def required_update_rule(objective) -> str | None:
    """The update rule an objective (or any term or route inside it) asks for; None if it asks for none."""
    if isinstance(objective, WithUpdateRule):
        return objective.update_rule
    inner = [term.objective for term in getattr(objective, "terms", ())]
    inner += [getattr(objective, name) for name in ("below", "above") if hasattr(objective, name)]
    return next((rule for rule in map(required_update_rule, inner) if rule is not None), None)


def check_update_rule_for(objective, update_rule: str) -> None:
    """ConfigError when the method asks for an update rule the run does not use (``train.update_rule``)."""
    needed = required_update_rule(objective)
    if needed is not None and needed != update_rule:
        raise ConfigError(f"train.update_rule={update_rule}: this method takes its steps through the {needed} "
                          f"update rule (Nash-MP's two half steps are extragradient's); set train.update_rule: {needed}")


def nash_md(tau: float = 0.008, beta: float = 0.125) -> Estimator:
    """Nash-MD-PG (Munos et al. 2024, "Nash Learning from Human Feedback", ICML, arXiv 2312.00886, §7):

        ∇ = E_{y~π_θ, y′~π_θ^β} [ (P(y ≻ y′) − ½ − τ log(π_θ(y)/μ(y))) ∇ log π_θ(y) ],
        log π_θ^β(y) = (1−β) log π_θ(y) + β log μ(y) + c     (the geometric mixture, token by token),

    the gradient of P(π_θ ≻ sg π_θ^β) − τ KL(π_θ‖μ). τ = 0.008 and β = 0.125 (best β in [0.125, 0.375])
    are the paper's. Its tabular algorithm, Nash-MD (§5), is one mirror step of size η on this Â,
    π_{t+1} ∝ π_t exp(η Â), with β = ητ; with a constant step it settles at a distance O(η) from π*.
    Parts: m = 1, π_den = sg π_θ, ``NashAdvantage(τ, GeometricMixture(β))``, sequence log-prob (sum),
    mean over responses."""
    positive("nash-md", "tau", tau, "the weight of KL(π‖μ) in the regularised game; 0 leaves it unregularised")
    fraction("nash-md", "beta", beta, "the opponent's mixture weight on the reference: 0 is self-play, 1 the reference")
    return Estimator(mask=NoMask(), denominator=CurrentPolicy(),
                     advantage=NashAdvantage(float(tau), GeometricMixture(float(beta)), "policy"),
                     likelihood=_SEQUENCE_LOGPROB)


def nash_mp(beta: float = 0.1) -> WithUpdateRule:
    """Nash-MP, Nash mirror prox (Tiapkin et al. 2025, "Accelerating Nash Learning from Human Feedback
    via Mirror Prox", arXiv 2505.19731): two proximal steps per iteration k,

        π_{k+½} = argmin_π (1/β) P(π_k ≻ π)     + KL(π‖μ) + (1/η) KL(π‖π_k)
        π_{k+1} = argmin_π (1/β) P(π_{k+½} ≻ π) + KL(π‖μ) + (1/η) KL(π‖π_k)

    converging linearly to the β-regularised equilibrium π*, KL(π*‖π_k) = O((1+2β)^{−N/2}) after N
    preference queries (two per iteration). Each step is solved in closed form by one mirror step from
    π_k: log π_{k+½} = log π_k + s Â_k, log π_{k+1} = log π_k + s Â_{k+½} (+ constants), with
    s = η/(β(1+η)) and

        Â_j(y) = P(y ≻ π_j) − ½ − β log(π_k(y)/μ(y)),

    the gradient direction of P(π ≻ π_j) − β KL(π‖μ) − (β/η) KL(π‖π_k) at π = π_k. These are
    extragradient's two evaluations (``train.update_rule: extragradient``): the half step from θ_k with
    the opponent π_k, the full step from θ_k with the opponent π_{k+½}, the half point. η, the weight
    of the proximal term, is the step: it is the optimiser's learning rate, not a loss parameter.
    Rows need ``extra["logp_anchor"]``, log π_k (the weights the update started from), besides the
    preference against the opponent sampled at the point of evaluation: on a language model the policy's
    samples at π_k for the half step and, drawn again at π_{k+½} (``Experience.again``), for the full step,
    with log π_k from a frozen copy holding the step's starting weights (``reference.Anchor``).
    Parts: m = 1, π_den = sg π_θ, ``NashAdvantage(β, self-play, kl_at="anchor")``, sequence log-prob
    (sum), mean over responses; wrapped in ``WithUpdateRule(..., "extragradient")``."""
    positive("nash-mp", "beta", beta, "the weight of KL(π‖μ) in the regularised game; 0 leaves it unregularised")
    return WithUpdateRule(Estimator(mask=NoMask(), denominator=CurrentPolicy(),
                                    advantage=NashAdvantage(float(beta), GeometricMixture(0.0), "anchor"),
                                    likelihood=_SEQUENCE_LOGPROB), "extragradient")


@dataclass(frozen=True)
class WithExperience:
    """``objective``, trained on the experience ``experience`` names (``"iterations"``: DNO's batched
    on-policy iterations of preference pairs, ``experience.iterations``): its loss and requirements are
    the objective's."""

    objective: Objective
    experience: str = "iterations"

    def __post_init__(self):
        part(self, "objective", self.objective, "objective", "loss", "requires")
        one_of(self, "experience", self.experience, ("iterations",), "the experience the method trains on")

    @property
    def requires(self) -> frozenset[str]:
        return self.objective.requires

    def loss(self, batch: Batch) -> Output:
        return self.objective.loss(batch)


def check_experience_for(objective, iteration_steps: int) -> None:
    """ConfigError when a method that trains on iterations has none (``iterations.steps``), or when
    iterations are asked of a method that does not compare pairs."""
    wants = isinstance(objective, WithExperience) and objective.experience == "iterations"
    if wants and iteration_steps < 1:
        raise ConfigError(f"iterations.steps={iteration_steps}: this method (DNO) trains on batched on-policy "
                          "iterations of preference pairs; set iterations.steps to the optimiser steps per iteration")
    compares = {"sign", "logp_ref"} <= objective.requires or {"win_rate", "logp_ref"} <= objective.requires
    if iteration_steps and not compares:
        raise ConfigError(f"iterations.steps={iteration_steps}: iterations make preference pairs (or scored samples) "
                          "against the iteration's reference; the method must compare chosen and rejected rows "
                          "(dno, dpo, ipo, …) or score samples by their win rate (sppo) against a reference")


def dno(beta: float = 0.1) -> WithExperience:
    """DNO-Prct (Rosset et al. 2024, "Direct Nash Optimization: Teaching Language Models to Self-Improve
    with General Preferences", arXiv 2404.03715, Algorithm 2): iterations t = 1 … T of

        π_{t+1} = argmax_π E log σ( η log π(y⁺)/π_t(y⁺) − η log π(y⁻)/π_t(y⁻) ),

    with (y⁺, y⁻) on-policy samples of π_t (and gold responses) paired by the preference model's margin
    rule — a DPO loss whose reference is the previous iteration's policy. The loss is ``dpo(η)``; the
    iterations (sampling, scoring, pairing, the reference π_t, carried-over pairs) are its experience
    (``experience.iterations``, ``iterations:`` in the config). η = 0.1 as the paper (0.05 also)."""
    from unigrad.methods.preference import dpo
    positive("dno", "beta", beta, "η scales the log-ratio against π_t")
    return WithExperience(dpo(beta), "iterations")


def sppo(beta: float = 1e-3) -> WithExperience:
    """SPPO (Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment", arXiv
    2405.00675, Algorithm 1): iterations t = 1 … T of

        π_{t+1} = argmin_π E_{y~π_t} ( log π(y)/π_t(y) − η (P̂(y ≻ π_t) − ½) )²,   η = 1/β,

    P̂(y ≻ π_t) the win rate of each of K samples of π_t against the prompt's other samples under the
    preference model — the multiplicative-weights step π_{t+1} ∝ π_t exp(η P(·≻π_t)) of the
    preference game, fitted by regression. The iterations (sampling, win rates, π_t's log-probs) are
    DNO's (``iterations:``), serving every sample with its win rate instead of pairs. β = 10⁻³ (η = 1000)
    as the authors' code. Parts: m = 1, π_den = sg π_θ, ``SelfPlayRegression(1/β)``, sequence log-prob
    (sum), mean over samples."""
    positive("sppo", "beta", beta, "η = 1/β scales the win rate the log-ratio against π_t is regressed onto")
    return WithExperience(Estimator(mask=NoMask(), denominator=CurrentPolicy(),
                                    advantage=SelfPlayRegression(1.0 / float(beta)), likelihood=_SEQUENCE_LOGPROB),
                          "iterations")


def mirror_prox_step(beta: float, eta: float) -> float:
    """s = η/(β(1+η)): the mirror step along Â that solves one of Nash-MP's proximal problems exactly."""
    positive("nash-mp", "beta", beta, "the weight of KL(π‖μ)")
    positive("nash-mp", "eta", eta, "the proximal step; the weight of KL(π‖π_k) is 1/η")
    return eta / (beta * (1 + eta))


__all__ = ["WithExperience", "WithUpdateRule", "check_experience_for", "check_update_rule_for", "dno", "mirror_prox_step",
           "nash_md", "nash_mp", "required_update_rule", "sppo"]
