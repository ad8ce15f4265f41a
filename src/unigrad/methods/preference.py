"""Supervised and preference methods: factories composing the estimator's parts.

Notation: ℓ(y) = Σ_t log π_θ(y_t|x, y_<t), |y| its length, ℓ̄ = ℓ/|y|, h = ℓ − ℓ_ref, σ logistic.
Pairs are averaged over; SFT is a token mean over the batch. The offline methods read pairs from data;
``online-dpo`` reads the same pair fields from the current policy's own samples, ranked by a preference
model (``OnPolicy``; the experience producer ``experience.preference_pairs``).
"""
from __future__ import annotations

from dataclasses import dataclass

from unigrad.estimator import (
    Chosen, Constant, Estimator, FDivergenceReward, ImpliedReward, LengthNormalisedReward, Likelihood,
    Logistic, LogOdds, PairwisePreference, Restrict, RowsConstant, SequenceMean, SequenceSum, Squared, TokenMean,
)
from unigrad.estimator.advantages.preference import IMPLIED_BETA, LogLikelihoodReward
from unigrad.estimator.checks import non_negative, number, one_of, part, positive
from unigrad.estimator.protocols import Objective, Output
from unigrad.objectives import DIVERGENCES, Sum, Term
from unigrad.batch import Batch
from unigrad.objectives.divergences import ALPHA
from unigrad.objectives import divergence as _divergence

_PER_PAIR_SUM = Likelihood("sequence", SequenceSum(per="group"))
_PER_PAIR_MEAN = Likelihood("sequence", SequenceMean(per="group"))


def sft() -> Estimator:
    """Supervised fine-tuning: L = −(1/N) Σ_{b,t} log π_θ(y_t | x, y_<t), N completion tokens.
    Parts: m = 1, π_den = sg π_θ, Â = 1, token unit, token mean."""
    return Estimator(advantage=Constant(1.0), likelihood=Likelihood("token", TokenMean()))


def dpo(beta: float = 0.1) -> Estimator:
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
    Reward Model", eq. 7):  L = −log σ(β h(y_w) − β h(y_l)).
    Parts: m = 1, π_den = sg π_θ, Â = ±β σ(−Δ) (Bradley–Terry), sequence-sum likelihood, per pair."""
    positive("dpo", "beta", beta, IMPLIED_BETA)
    return Estimator(advantage=PairwisePreference(ImpliedReward(beta), Logistic()), likelihood=_PER_PAIR_SUM)


@dataclass(frozen=True)
class OnPolicy:
    """``objective`` on the current policy's own samples (``data.format: prompts``), never on a dataset's
    completions: a run refuses offline data for it (``on_policy``). Its loss and requirements are the
    objective's; which samples it gets follows from what the objective reads
    (``experience.preference_pairs.emits_for``: pairs ranked by the preference model when it reads ``sign``)."""

    objective: Objective

    def __post_init__(self):
        part(self, "objective", self.objective, "objective", "loss", "requires")

    @property
    def requires(self) -> frozenset[str]:
        return self.objective.requires

    def loss(self, batch: Batch) -> Output:
        return self.objective.loss(batch)


def on_policy(objective) -> bool:
    """Whether ``objective`` (or a term or route inside it) trains only on the policy's own samples."""
    if isinstance(objective, OnPolicy):
        return True
    inner = [term.objective for term in getattr(objective, "terms", ())]
    inner += [getattr(objective, name) for name in ("below", "above", "objective") if hasattr(objective, name)]
    return any(on_policy(o) for o in inner)


def online_dpo(beta: float = 0.1) -> OnPolicy:
    """Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback", Alg. 1;
    TRL's OnlineDPOTrainer): per prompt x two samples y¹, y² ~ π_θ(·|x) of the current policy, ranked by
    the preference model, (y_w, y_l) = (y¹, y²) if P(y¹ ≻ y² | x) > ½ else (y², y¹), then the DPO loss

        L = −log σ(β h(y_w) − β h(y_l)),   h = log π_θ(y|x) − log π_ref(y|x)  (sequence sums),

    with π_ref the initial policy. A tie (P = ½) is dropped (``preference.ties: drop``; a step whose pairs
    all tie has no gradient) or kept in the sampled order (``keep``; TRL keeps its judge's choice).
    Parts: DPO's — m = 1, π_den = sg π_θ, Â = ±β σ(−Δ), sequence-sum likelihood, per pair — on the
    pairs of ``experience.PreferencePairs``; needs ``data.format: prompts`` and a ``preference:`` model."""
    positive("online-dpo", "beta", beta, IMPLIED_BETA)
    return OnPolicy(dpo(beta))


def ipo(tau: float = 0.1) -> Estimator:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", eq. 17):  L = (h(y_w) − h(y_l) − 1/(2τ))², sequence sums as in the paper.
    Parts: Â = ∓2(Δ − 1/(2τ)), sequence-sum likelihood, per pair."""
    positive("ipo", "tau", tau, "the target margin is 1/(2τ); τ ≤ 0 asks the rejected response to win, or divides by 0")
    return Estimator(advantage=PairwisePreference(ImpliedReward(1.0), Squared(1 / (2 * tau))), likelihood=_PER_PAIR_SUM)


def simpo(beta: float = 2.0, gamma: float = 0.5) -> Estimator:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", eq. 6):  L = −log σ(β ℓ̄(y_w) − β ℓ̄(y_l) − γ); no reference model.
    Parts: Â = ±β σ(−Δ), length-normalised (sequence-mean) likelihood, per pair."""
    positive("simpo", "beta", beta, "it scales the length-normalised reward; a negative beta reverses the preference")
    non_negative("simpo", "gamma", gamma, "the target margin the chosen reward must win by; the paper asks γ > 0, "
                 "γ = 0 is its ablation without a margin")
    return Estimator(advantage=PairwisePreference(LengthNormalisedReward(beta), Logistic(margin=gamma)),
                     likelihood=_PER_PAIR_MEAN)


def orpo(lam: float = 0.1) -> Sum:
    """ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model",
    eqs. 2–7):  L = −ℓ̄(y_w) − λ log σ(log odds(y_w) − log odds(y_l)),  odds = P/(1−P), P = exp ℓ̄.
    A weighted sum of SFT on the chosen response and an odds-ratio preference term."""
    non_negative("orpo", "lam", lam, "it weighs the odds-ratio term; a negative lam rewards the rejected response")
    nll_chosen = Estimator(advantage=Chosen(), likelihood=_PER_PAIR_MEAN)
    odds_ratio = Estimator(advantage=PairwisePreference(LogOdds(), Logistic()), likelihood=_PER_PAIR_MEAN)
    return Sum((Term(1.0, nll_chosen, "sft"), Term(lam, odds_ratio, "odds_ratio")))


def cpo(beta: float = 0.1, alpha: float = 1.0) -> Sum:
    """CPO (Xu et al. 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance
    in Machine Translation", arXiv 2401.08417; TRL's ``CPOTrainer``, sigmoid loss):

        L = −log σ(β ℓ(y_w) − β ℓ(y_l)) + α · NLL(y_w),

    sequence-sum log-probs, no reference model; the NLL is a token mean over the chosen responses'
    tokens (TRL's cross-entropy on the chosen rows). A sum of a Bradley–Terry term on β ℓ per pair and
    SFT restricted to the chosen rows."""
    positive("cpo", "beta", beta, IMPLIED_BETA)
    non_negative("cpo", "alpha", alpha, "it weighs the NLL of the chosen response; a negative alpha pushes it down")
    preference = Estimator(advantage=PairwisePreference(LogLikelihoodReward(beta), Logistic()), likelihood=_PER_PAIR_SUM)
    nll_chosen = Estimator(advantage=RowsConstant(1.0, "positive"), likelihood=Likelihood("token", Restrict(TokenMean(), "positive")))
    return Sum((Term(1.0, preference, "preference"), Term(alpha, nll_chosen, "sft")))


def f_dpo(beta: float = 0.1, divergence: str = "reverse_kl", alpha: float = 0.5) -> Estimator:
    """f-DPO (Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct Preference Optimization with
    Diverse Divergence Constraints", eq. 9):  L = −log σ(β f′(u_w) − β f′(u_l)),  u = π_θ(y|x)/π_ref(y|x),
    f ∈ {reverse_kl, forward_kl, js, alpha}. Parts: Â = ±β σ(−Δ) u f″(u), sequence-sum likelihood."""
    positive("f-dpo", "beta", beta, IMPLIED_BETA)
    one_of("f-dpo", "divergence", divergence, DIVERGENCES, "the f-divergences of the paper's Table 1")
    number("f-dpo", "alpha", alpha, ALPHA, low=0, high=1, low_open=True, high_open=True)
    score = FDivergenceReward(beta, _divergence(divergence, alpha))
    return Estimator(advantage=PairwisePreference(score, Logistic()), likelihood=_PER_PAIR_SUM)
