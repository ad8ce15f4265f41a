"""Distillation methods: token-level divergences between the teacher's and the student's distributions.

Each factory returns an objective of ``unigrad.objectives.distill`` (its inputs, the top-k support rule
and the token-mean normalisation are described there). Notation: p_T, p_S the teacher's and the
student's next-token distributions, N the completion tokens of the step.
"""
from __future__ import annotations

from unigrad.estimator.checks import fraction, integer, number, one_of, positive
from unigrad.objectives.distill import (
    BD_KD_DELTA, JSD_BETA, PLD_LABEL, SINKHORN_EPSILON, SINKHORN_ITERATIONS, SINKHORN_TEMPERATURE, SUPPORT, SUPPORTS,
    BalancedKD, PlackettLuce, Sinkhorn, TokenDivergence,
)


def kd_forward(support: str = "bucket") -> TokenDivergence:
    """Forward-KL distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network";
    token-level "supervised KD" of GKD):  L = (1/N) Σ_{b,t} mask · KL(p_T ‖ p_S).
    Gradient w.r.t. the student's logits z: p_S − p_T, i.e. −Σ_v p_T(v) ∇ log p_S(v): a weighted
    likelihood gradient (the Estimator's token unit with every vocabulary entry an action, Â_v = p_T(v),
    π_den = sg π_θ, m = 1, token mean) — SFT on the teacher's soft labels."""
    one_of("kd-forward", "support", support, SUPPORTS, SUPPORT)
    return TokenDivergence(beta=0.0, support=support, name="kd-forward")


def kd_reverse(support: str = "bucket") -> TokenDivergence:
    """Reverse-KL distillation (MiniLLM, Gu et al. 2024; GKD with reverse KL):
    L = (1/N) Σ_{b,t} mask · KL(p_S ‖ p_T).  Gradient: Σ_v p_S(v) (log p_S(v) − log p_T(v)) ∇ log p_S(v)
    (the +1 vanishes as E_{p_S}[∇ log p_S] = 0) = E_{v∼p_S}[−Â_v ∇ log p_S(v)] with Â_v = log p_T(v) −
    log p_S(v): on student-sampled tokens, the Estimator with π_den = sg π_θ and per-token advantage
    log p_T − log p_S (the "reverse KL as RL reward" form); here it is computed exactly over the support."""
    one_of("kd-reverse", "support", support, SUPPORTS, SUPPORT)
    return TokenDivergence(beta=1.0, support=support, name="kd-reverse")


def kd_js(beta: float = 0.5, support: str = "bucket") -> TokenDivergence:
    """Generalised JSD of GKD (Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning
    from Self-Generated Mistakes", ICLR; §3 "generalized JSD"; TRL ``GKDTrainer.generalized_jsd_loss``):

        JSD(β)(p_T ‖ p_S) = β KL(p_T ‖ m) + (1 − β) KL(p_S ‖ m),   m = β p_T + (1 − β) p_S,
    L = (1/N) Σ_{b,t} mask · JSD(β). JSD(β)/β → KL(p_T ‖ p_S) (forward) as β → 0 and JSD(β)/(1 − β) →
    KL(p_S ‖ p_T) (reverse) as β → 1 (the literal JSD(β) vanishes at both ends), so, as TRL does,
    β = 0 is forward KL and β = 1 reverse KL exactly. GKD's λ (the fraction of on-policy batches, whose
    sequences the loop samples from the student) is not a loss parameter: it is ``data.on_policy_fraction``."""
    fraction("kd-js", "beta", beta, JSD_BETA)
    one_of("kd-js", "support", support, SUPPORTS, SUPPORT)
    return TokenDivergence(beta=float(beta), support=support, name="kd-js")


def bd_kd(delta: float = 2.0, support: str = "bucket") -> BalancedKD:
    """BD-KD (Amara, Sepahvand, Meyer, Gross, Clark, "BD-KD: Balancing the Divergences for Online
    Knowledge Distillation", arXiv 2212.12965): the student's distillation term, a sample-wise (here:
    token-wise) weighting of forward KL(p_T‖p_S) and reverse KL(p_S‖p_T) chosen from the entropy gap
    H(p_S) − H(p_T) (verified from the abstract and a paper summary). The weight RULE is a reconstruction
    (FORMULAS.md §7, confidence L; the paper's equation was not found):
        D = KL_F + δ·KL_R  if H(p_S) > H(p_T)   else   δ·KL_F + KL_R,     δ = ``delta`` (2.0 assumed).
    Omitted: the paper's CE term (compose with ``sft`` in a ``Sum``), its τ² factor (a ``Term`` weight)
    and its online teacher update (the teacher here is frozen)."""
    number("bd-kd", "delta", delta, BD_KD_DELTA, low=1)
    one_of("bd-kd", "support", support, SUPPORTS, SUPPORT)
    return BalancedKD(delta=float(delta), support=support)


def sinkd(epsilon: float = 0.1, iterations: int = 20, temperature: float = 2.0) -> Sinkhorn:
    """SinKD — see ``Sinkhorn`` (FORMULAS.md §8, official code read; the CE and 0.1·KD terms of the T0
    script are separate terms: compose with ``sft``/``kd-forward`` in a ``Sum``)."""
    positive("sinkd", "epsilon", epsilon, SINKHORN_EPSILON)
    integer("sinkd", "iterations", iterations, SINKHORN_ITERATIONS)
    positive("sinkd", "temperature", temperature, SINKHORN_TEMPERATURE)
    return Sinkhorn(epsilon=float(epsilon), iterations=int(iterations), temperature=float(temperature))


def pld(label: str = "token") -> PlackettLuce:
    """PLD — see ``PlackettLuce`` (FORMULAS.md §9, confidence H: the paper's text and App. C code)."""
    one_of("pld", "label", label, ("token", "teacher"), PLD_LABEL)
    return PlackettLuce(label=label)
