"""Objectives built from objectives, and the standalone ones that are not a single Estimator.

    combinators.py     Term, Sum: L = Σ_i w_i L_i
    kl.py              kl_estimate (k1, k2, k3) and KLPenalty, the KL-to-reference regulariser
    gate.py            Gate: per prompt, one of two objectives (HPT's switch between SFT and RL)
    divergences.py     f-divergences (f′, u f″) for f-DPO's implied reward
    distill.py         token-level teacher–student divergences (GKD's JSD, BD-KD, SinKD, PLD)
    inverted_hinge.py  InvertedHinge, IHL's two-likelihood objective

Every objective has ``requires`` and ``loss(batch) -> Output`` (``unigrad.estimator.protocols.Objective``).
"""
from unigrad.objectives.combinators import Sum, Term
from unigrad.objectives.kl import KL_ESTIMATORS, KLPenalty, kl_estimate, reference_kl
from unigrad.objectives.gate import Gate
from unigrad.objectives.divergences import (
    DIVERGENCES, Alpha, FDivergence, ForwardKL, JensenShannon, ReverseKL, divergence,
)
from unigrad.objectives.distill import BalancedKD, PlackettLuce, Sinkhorn, TokenDivergence, generalised_jsd
from unigrad.objectives.inverted_hinge import InvertedHinge

__all__ = [
    "Alpha", "BalancedKD", "DIVERGENCES", "FDivergence", "ForwardKL", "Gate", "InvertedHinge", "JensenShannon",
    "KLPenalty", "KL_ESTIMATORS", "PlackettLuce", "ReverseKL", "Sinkhorn", "Sum", "Term", "TokenDivergence",
    "divergence", "generalised_jsd", "kl_estimate", "reference_kl",
]
