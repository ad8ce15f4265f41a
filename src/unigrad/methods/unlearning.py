"""Unlearning methods: factories composing the estimator's parts.

Rows: ``sign = −1`` marks forget rows, ``sign = +1`` retain rows (FLAT: template answers; SAFE-ALIGN:
helpful/blue responses). Notation: ℓ_t = log π_θ(y_t|x, y_<t), ℓ(y) = Σ_t ℓ_t, h = ℓ − ℓ_ref,
p_t = exp ℓ_t, σ logistic; N_f / N_r the forget / retain completion tokens, B_f the forget rows.
Each side is averaged over its own rows (``Restrict`` in ``unigrad.estimator.normalisers``).
"""
from __future__ import annotations

from unigrad.estimator import (
    Estimator, FlatForget, FlatTemplate, Likelihood, LogSigmoidRatio, ReferenceKL, Restrict, RowsConstant,
    SafeAlignWeight, SequenceSum, TokenMean,
)
from unigrad.estimator.advantages import FLAT_DIVERGENCES
from unigrad.estimator.advantages.unlearning import RETAIN_KL, SAFE_ALIGN_LAM, SAFE_ALIGN_THRESHOLD
from unigrad.estimator.checks import non_negative, one_of, positive, text
from unigrad.estimator.normalisers import FORGET, RETAIN
from unigrad.objectives import InvertedHinge, Sum, Term

_FORGET_TOKENS = Likelihood("token", Restrict(TokenMean(), FORGET))
_RETAIN_TOKENS = Likelihood("token", Restrict(TokenMean(), RETAIN))
RETAIN_WEIGHT = "the weight c of the retain term; a negative c ascends on the data to keep"


def _ascent() -> Estimator:
    return Estimator(advantage=RowsConstant(-1.0, FORGET), likelihood=_FORGET_TOKENS)


def _retain_nll() -> Estimator:
    return Estimator(advantage=RowsConstant(1.0, RETAIN), likelihood=_RETAIN_TOKENS)


def ga() -> Estimator:
    """Gradient ascent on the forget set (the baseline of e.g. Maini et al. 2024, "TOFU", and
    Jang et al. 2023, "Knowledge Unlearning"):  L = +(1/N_f) Σ_{forget tokens} ℓ_t.
    Parts: m = 1, π_den = sg π_θ, Â = −1 on forget rows (0 on retain rows), token unit, mean over
    forget tokens."""
    return _ascent()


def grad_diff(retain_weight: float = 1.0, retain: str = "nll", kl_estimator: str = "k3") -> Sum:
    """Gradient difference (Liu et al. 2022, "Continual Learning and Private Unlearning"; the TOFU
    baseline ``grad_diff``):  L = (1/N_f) Σ_forget ℓ_t + c · L_retain, c = ``retain_weight``, with

        retain = "nll":  L_retain = −(1/N_r) Σ_retain ℓ_t                          (Â = +1 on retain)
        retain = "kl":   L_retain = (1/N_r) Σ_retain k(ℓ_t, ℓ_ref,t), the *sampled* per-token
                         estimate k3 = ρ − 1 − log ρ (or k2 = ½ log²ρ), ρ = π_ref/π_θ
                         (Schulman 2020), Â_t = ρ_t − 1 (k3) / ℓ_ref − ℓ (k2).
    The official TOFU "KL" baseline uses the full-vocabulary KL(π_ref ‖ π_θ) per position instead;
    that needs logits, which a per-token batch does not carry. k1 is refused (its gradient through
    ℓ is ascent on the retain data). A Sum of two Estimators (token unit, π_den = sg π_θ, m = 1)."""
    non_negative("grad-diff", "retain_weight", retain_weight, RETAIN_WEIGHT)
    one_of("grad-diff", "retain", retain, ("nll", "kl"),
           "the retain term: NLL on the retain rows, or a sampled KL to the reference")
    one_of("grad-diff", "kl_estimator", kl_estimator, ("k2", "k3"), RETAIN_KL)
    if retain == "nll":
        retain_term = _retain_nll()
    else:
        retain_term = Estimator(advantage=ReferenceKL(kl_estimator, RETAIN), likelihood=_RETAIN_TOKENS)
    return Sum((Term(1.0, _ascent(), "forget_ascent"), Term(retain_weight, retain_term, f"retain_{retain}")))


def npo(beta: float = 0.1, retain_weight: float = 0.0):
    """NPO (Zhang, Lin, Bai, Mei 2024, "Negative Preference Optimization: From Catastrophic Collapse
    to Effective Unlearning", COLM; official code licong-lin/negative-preference-optimization):

        L_NPO = −(2/β) (1/B_f) Σ_{forget rows} log σ(−β h(y)),   h = ℓ(y) − ℓ_ref(y) (sums)

    Â, derived: d/dh log σ(−βh) = −β σ(βh), so ∂L_NPO/∂ℓ(y_i) = (1/B_f) · 2σ(β h_i); the Estimator's
    surrogate −(1/B_f) Σ Â_i ℓ(y_i) has this gradient with  Â_i = −2σ(β h_i)  (the paper's
    W_θ = 2π_θ^β/(π_θ^β + π_ref^β), with a minus: GA weighted adaptively; β → 0 gives GA on
    sequence sums with Â = −1). Parts: m = 1, π_den = sg π_θ, sequence-sum likelihood, mean over
    forget rows; ``objective`` = L_NPO.
    retain_weight = c > 0: NPO+RT, L = L_NPO + c · (−(1/N_r) Σ_retain ℓ_t)  (code: ``npo_grad_diff``)."""
    positive("npo", "beta", beta, "the inverse temperature of σ(−β h); the loss is scaled by 2/β, and a negative beta "
             "would raise the forget data's likelihood instead")
    non_negative("npo", "retain_weight", retain_weight, RETAIN_WEIGHT)
    forget = Estimator(advantage=LogSigmoidRatio(beta=beta, direction=-1, scale=2.0 / beta, rows=FORGET),
                       likelihood=Likelihood("sequence", Restrict(SequenceSum(), FORGET)))
    if not retain_weight:
        return forget
    return Sum((Term(1.0, forget, "npo"), Term(retain_weight, _retain_nll(), "retain_nll")))


def ihl(retain_weight: float = 1.0, field: str = "logp_top_other"):
    """Inverted hinge loss (Cha, Cho, Hwang, Lee 2025, "Towards Robust and Parameter-Efficient
    Knowledge Unlearning for LLMs", ICLR; LoKU; official code csm9493/efficient-llm-unlearning):

        L = (1/N_f) Σ_{forget tokens} [1 + p_θ(y_t) − max_{v≠y_t} p_θ(v)]  +  c · (−(1/N_r) Σ_retain ℓ_t)

    c = ``retain_weight`` (the paper's recipe: 1). Needs ``batch.extra[field]`` = log max_{v≠y_t}
    π_θ(v|·) [B, T] WITH gradient (top-2 of the logits, from the log-prob producer ``BestOtherToken``).
    The IHL term is the standalone ``InvertedHinge`` objective: two four-part Estimators, one on the
    data token (Â = −p(y_t)) and one on the competing token (Â = +p(v*), likelihood ∇log π_θ(v*)),
    since one Estimator has one likelihood. FILA (the Fisher-weighted LoRA initialisation of the same
    paper) is an initialisation, not a loss, and lives outside the objective."""
    non_negative("ihl", "retain_weight", retain_weight, RETAIN_WEIGHT)
    text("ihl", "field", field, "the Batch.extra field with log max_{v≠y_t} π_θ(v)")
    hinge = InvertedHinge(field=field, rows=FORGET)
    if not retain_weight:
        return hinge
    return Sum((Term(1.0, hinge, "ihl"), Term(retain_weight, _retain_nll(), "retain_nll")))


def flat(divergence: str = "total_variation") -> Sum:
    """FLAT (Wang, Wei, Liu, Pang, Liu, Shah, Bao, Liu, Wei 2025, "LLM Unlearning via Loss Adjustment
    with Only Forget Data", ICLR; official code UCSC-REAL/FLAT ``get_contrastive_loss``). Confidence M:
    read from the official code, the paper's own definition of P not seen.

        L = −g(P_e) + f*(g(P_f)),    P = mean over answer tokens of p_θ(y_t)

    P_e over the template answers (sign = +1, e.g. "I don't know"), P_f over the forget answers
    (sign = −1), same questions; no retain data, no reference model. (g, f*∘g) per divergence:
    kl (u, e^{u−1}), reverse_kl (−e^u, −1−u), jeffrey (u, u + u²/4 + u³/16), squared_hellinger
    (1−e^u, e^{−u}−1), pearson (u, u²/4 + u), js (log2 − softplus(−u), u + softplus(−u) − log2),
    total_variation (tanh(u)/2, tanh(u)/2; the code's default). Neyman is left out: the code applies
    its conjugate to u, not to g(u), unlike every other divergence there.
    Deviation: the code averages p over all [B, L−1] positions of the batch (prompt and padding
    included, as 0); here P is the mean over answer tokens, independent of padding.
    Parts: a Sum of two Estimators (m = 1, π_den = sg π_θ, token unit, mean over each side's tokens)
    with Â_t = g′(P_e)·p_t on template tokens and Â_t = −(f*∘g)′(P_f)·p_t on forget tokens."""
    one_of("flat", "divergence", divergence, FLAT_DIVERGENCES, "the f-divergences of FLAT's code, Neyman left out")
    return Sum((Term(1.0, Estimator(advantage=FlatTemplate(divergence), likelihood=_RETAIN_TOKENS), "template"),
                Term(1.0, Estimator(advantage=FlatForget(divergence), likelihood=_FORGET_TOKENS), "forget")))


def safe_align(lam: float = 1.0, loss_threshold: float | None = None) -> Estimator:
    """SAFE-ALIGN, strategy B "Blue-Red" (Bhardwaj & Poria 2023, "Red-Teaming Large Language Models
    using Chain of Utterances for Safety-Alignment", arXiv 2308.09662). Confidence L: the abstract
    says "minimizing the negative log-likelihood over helpful responses and penalizing over harmful
    responses by gradient ascent over sample loss"; the exact per-sample limit and λ were not found
    (the released code has no negative-loss branch). Implemented as

        L = (1/N) [ Σ_{blue tokens} (−ℓ_t)  +  λ Σ_{red rows i} g_i Σ_t ℓ_t ],   g_i = 1[NLL̄(y_i) < τ]

    N all completion tokens of the batch (one HF-style token mean over the mixed batch); blue rows
    sign = +1, red rows sign = −1; τ = ``loss_threshold`` (None: no gate, plain ascent). Strategy A
    ("Blue") is plain ``sft`` on blue + ShareGPT data. Parts: m = 1, π_den = sg π_θ, token unit,
    token mean, Â = +1 (blue) / −λ g_i (red)."""
    non_negative("safe-align", "lam", lam, SAFE_ALIGN_LAM)
    if loss_threshold is not None:
        positive("safe-align", "loss_threshold", loss_threshold, SAFE_ALIGN_THRESHOLD)
    return Estimator(advantage=SafeAlignWeight(lam, loss_threshold), likelihood=Likelihood("token", TokenMean()))
