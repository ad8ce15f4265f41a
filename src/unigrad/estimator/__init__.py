"""The unified gradient estimator: grad = E[ m · (π_θ / sg π_den) · Â · ∇ log π_θ ].

Four interchangeable parts (Lv et al. 2025, "Towards a Unified View of Large Language Model
Post-Training", arXiv 2509.04419, eq. 5), one module per kind, each satisfying a protocol of
``protocols.py``: a stabilization mask m (``masks.py``), a reference-policy denominator π_den
(``denominators.py``), an advantage estimate Â (``advantages/``, one module per family), and the
likelihood gradient (``likelihoods.py``: its unit, with a normaliser of ``normalisers.py``).
``core.py`` composes them into the ``Estimator``.
"""
from unigrad.estimator.protocols import Advantage, Denominator, Mask, Normaliser, Objective, Output, Weighted
from unigrad.estimator.checks import ParameterError
from unigrad.estimator.masks import CISPO, SAPO, ClampedRatio, DualClip, NoMask, PPOClip
from unigrad.estimator.denominators import BehaviourPolicy, CurrentPolicy, One, ReferencePolicy
from unigrad.estimator.normalisers import FixedCount, Restrict, SequenceMean, SequenceSum, TokenMean
from unigrad.estimator.likelihoods import Likelihood
from unigrad.estimator.advantages import (
    GAE, AbsoluteLikelihood, Chosen, Constant, FDivergenceReward, FlatForget, FlatTemplate, GlobalNormalised,
    GroupCentred, GroupNormalised, ImpliedReward, LeaveOneOut, LeftoverAdvantage, LengthNormalisedReward, LogOdds,
    LogSigmoidRatio, Logistic, PairwisePreference, ReferenceKL, Reinforce, RowsConstant, SafeAlignWeight, Squared,
    TokenProbability,
)
from unigrad.estimator.core import Estimator

__all__ = [
    "Advantage", "Denominator", "Mask", "Normaliser", "Objective", "Output", "ParameterError", "Weighted", "Estimator",
    "NoMask", "PPOClip", "ClampedRatio", "DualClip", "CISPO", "SAPO",
    "CurrentPolicy", "BehaviourPolicy", "ReferencePolicy", "One",
    "Likelihood", "TokenMean", "SequenceMean", "SequenceSum", "FixedCount", "Restrict",
    "Constant", "Chosen", "RowsConstant", "PairwisePreference", "ImpliedReward", "FDivergenceReward",
    "LengthNormalisedReward", "LogOdds", "Logistic", "Squared", "AbsoluteLikelihood",
    "GroupNormalised", "GroupCentred", "LeaveOneOut", "Reinforce", "GlobalNormalised", "LeftoverAdvantage", "GAE",
    "TokenProbability", "FlatTemplate", "FlatForget", "LogSigmoidRatio", "ReferenceKL", "SafeAlignWeight",
]
