"""Offline methods beyond the DPO family: ASFT, DDO and A-LoL, each a composition of the
estimator's parts. Notation: ℓ_t = log π_θ(y_t|x, y_<t), ℓ(y) = Σ_t ℓ_t, ℓ̄ = ℓ/|y|,
h = ℓ − ℓ_ref (sums), σ logistic.
"""
from __future__ import annotations

from unigrad.estimator import (
    AbsoluteLikelihood, ClampedRatio, CurrentPolicy, Estimator, LeftoverAdvantage, Likelihood, LogSigmoidRatio,
    ReferencePolicy, Restrict, SequenceMean, SequenceSum,
)
from unigrad.estimator.advantages.offline import KL_BETA
from unigrad.estimator.advantages.preference import ASFT_LAM
from unigrad.estimator.checks import fraction, non_negative, positive
from unigrad.estimator.masks import CLAMP
from unigrad.objectives import Sum, Term


def asft(lam: float = 0.1) -> Estimator:
    """ASFT (Wang, Sun, Hua, Fang 2024, "ASFT: Aligned Supervised Fine-Tuning through Absolute
    Likelihood", arXiv 2409.10571). Confidence M: formula as restated in Gorbatovski et al.
    ("The Differences Between Direct Alignment Algorithms are a Blur"), length normalisation as
    listed there; λ default unverified (grid 0.1–1.0 there). Per pair, p(y) = exp ℓ̄(y):

        L = −log p(y_w) − λ [log σ(log odds(y_w)) + log σ(−log odds(y_l))]
          = −(1+λ) ℓ̄(y_w) − λ log(1 − p(y_l)),        odds = p/(1 − p)

    mean over pairs; no reference model. Parts: m = 1, π_den = sg π_θ, Â(y_w) = 1+λ,
    Â(y_l) = −λ odds(y_l), sequence-mean likelihood, per pair."""
    non_negative("asft", "lam", lam, ASFT_LAM)
    return Estimator(advantage=AbsoluteLikelihood(lam), likelihood=Likelihood("sequence", SequenceMean(per="group")))


def ddo(beta: float = 0.1, alpha: float = 0.5) -> Sum:
    """DDO (Zheng, Chen, Chen, He, Liu, Zhu, Zhang 2025, "Direct Discriminative Optimization: Your
    Likelihood-Based Visual Generative Model is Secretly a GAN Discriminator", ICML; autoregressive
    case). Confidence M: loss form from a third-party implementation (T3D) and the abstract; the
    paper's equation and α, β defaults not read (defaults here: T3D's α = 0.5, β = 0.1).

        L = −(1/B_d) Σ_{data rows} log σ(β h(x)) − α (1/B_r) Σ_{reference rows} log(1 − σ(β h(x)))

    implicit discriminator d_θ = σ(β h), h = log p_θ − log p_ref (sequence sums); data samples
    sign = +1, samples drawn from p_ref sign = −1. Parts: a Sum of two Estimators (m = 1,
    π_den = sg π_θ, sequence-sum likelihood, mean over each side's rows) with Â = β σ(−β h) on data
    rows and Â = −β σ(β h) on reference rows (weight α)."""
    positive("ddo", "beta", beta, "the implicit discriminator is σ(β h); a negative beta swaps data and reference samples")
    non_negative("ddo", "alpha", alpha, "the weight of the reference-sample term; a negative alpha pulls towards those samples")
    data = Estimator(advantage=LogSigmoidRatio(beta=beta, direction=1, scale=1.0, rows="positive"),
                     likelihood=Likelihood("sequence", Restrict(SequenceSum(), "positive")))
    fake = Estimator(advantage=LogSigmoidRatio(beta=beta, direction=-1, scale=1.0, rows="negative"),
                     likelihood=Likelihood("sequence", Restrict(SequenceSum(), "negative")))
    return Sum((Term(1.0, data, "data"), Term(alpha, fake, "reference_samples")))


_A_LOL_DOC = """A-LoL (Baheti, Lu, Brahman, Le Bras, Sap, Riedl 2024, "Leftover Lunch: Advantage-based
    Offline Reinforcement Learning for Language Models" / "Improving Language Models with
    Advantage-based Offline Policy Gradients", ICLR; official code abaheti95/LoL-RL). Confidence H
    (FORMULAS.md §3, official code). A sequence is one action; A = R(x, y) − V_ref(x) with V from
    ``batch.extra["value"]`` ([B]) or, absent, the prompt's mean reward over rows sharing ``group``;
    rows with A ≤ 0 are dropped (Â = 0, still counted in the batch mean; the official code never
    samples them). Mean over the batch's rows. ε = ``clip`` (code ``ppo_clip`` = 0.9)."""


def a_lol(clip: float = 0.9) -> Estimator:
    """L = mean_b[ −ℓ(y) · clip(π_θ(y)/π_ref(y), 1−ε, 1+ε) · A⁺ ]  (sg on the weight).
    Parts: mask m = clip(r)/r (a value clamp, not PPO's zeroing), π_den = π_ref (sequence-sum
    ratio r = exp h(y)), Â = A⁺, sequence-sum likelihood, mean over sequences. """
    fraction("a-lol", "clip", clip, CLAMP)
    return Estimator(mask=ClampedRatio(clip), denominator=ReferencePolicy(),
                     advantage=LeftoverAdvantage(clip, "sequence"), likelihood=Likelihood("sequence", SequenceSum()))


def a_lol_ref_free() -> Estimator:
    """A-LoL ref-free: L = mean_b[ −ℓ(y) · A⁺ ] (importance weight 1).
    Parts: m = 1, π_den = sg π_θ, Â = A⁺, sequence-sum likelihood, mean over sequences."""
    return Estimator(denominator=CurrentPolicy(), advantage=LeftoverAdvantage(0.0, "none"),
                     likelihood=Likelihood("sequence", SequenceSum()))


def a_lol_seq(clip: float = 0.9) -> Estimator:
    """A-LoL seq (per-token importance): L = mean_b[ A⁺ · Σ_t −ℓ_t · clip(π_θ(y_t)/π_ref(y_t), 1−ε, 1+ε) ].
    Parts: m_t = clip(r_t)/r_t, π_den = π_ref per token, Â = A⁺ on every token, token unit,
    Σ_t within a sequence, mean over sequences."""
    fraction("a-lol-seq", "clip", clip, CLAMP)
    return Estimator(mask=ClampedRatio(clip), denominator=ReferencePolicy(),
                     advantage=LeftoverAdvantage(clip, "token"), likelihood=Likelihood("token", SequenceSum()))


def a_lol_kl(kl_beta: float = 0.1) -> Estimator:
    """A-LoL KL: L = mean_b[ (−ℓ(y)·A + β_KL (ℓ(y) − ℓ_ref(y))) · 1[A > 0] ] (no importance weight).
    Parts: m = 1, π_den = sg π_θ, Â = (A − β_KL)·1[A > 0] (the penalty's gradient only shifts the
    advantage), sequence-sum likelihood, mean over sequences. β_KL default unverified (code flag
    ``kl_beta``)."""
    non_negative("a-lol-kl", "kl_beta", kl_beta, KL_BETA)
    return Estimator(denominator=CurrentPolicy(), advantage=LeftoverAdvantage(0.0, "none", kl_beta),
                     likelihood=Likelihood("sequence", SequenceSum()))


for _f in (a_lol, a_lol_ref_free, a_lol_seq, a_lol_kl):
    _f.__doc__ = _A_LOL_DOC + "\n\n    " + _f.__doc__
