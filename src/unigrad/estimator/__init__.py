"""The unified gradient estimator: grad = E[ m · (π_θ / sg π_den) · Â · ∇ log π_θ ].

Four interchangeable parts (Lv et al. 2025, "Towards a Unified View of Large Language Model
Post-Training", arXiv 2509.04419, eq. 5): a stabilization mask m, a reference-policy denominator
π_den, an advantage estimate Â, and the likelihood gradient (its unit and normalisation).
"""
from unigrad.estimator.advantages import (
    Chosen, Constant, FDivergenceReward, ImpliedReward, LengthNormalisedReward, LogOdds,
    Logistic, PairwisePreference, Squared,
)
from unigrad.estimator.core import Estimator, Output
from unigrad.estimator.group_advantages import (
    GlobalNormalised, GroupCentred, GroupNormalised, LeaveOneOut, Reinforce,
)
from unigrad.estimator.denominators import BehaviourPolicy, CurrentPolicy, One, ReferencePolicy
from unigrad.estimator.likelihoods import (
    Constant as ConstantNormaliser, Likelihood, SequenceMean, SequenceSum, TokenMean,
)
from unigrad.estimator.masks import NoMask, PPOClip
from unigrad.estimator.offline_advantages import AbsoluteLikelihood, ClampedRatio, LeftoverAdvantage
from unigrad.estimator.rows import RowsConstant, RowsSequenceSum, RowsTokenMean
from unigrad.estimator.unlearning_advantages import (
    FlatForget, FlatTemplate, InvertedHinge, LogSigmoidRatio, ReferenceKL, SafeAlignWeight, TokenProbability,
)

__all__ = [
    "Estimator", "Output", "NoMask", "PPOClip", "CurrentPolicy", "BehaviourPolicy", "ReferencePolicy",
    "One", "Constant", "Chosen", "PairwisePreference", "ImpliedReward", "FDivergenceReward",
    "LengthNormalisedReward", "LogOdds", "Logistic", "Squared", "Likelihood", "TokenMean",
    "SequenceMean", "SequenceSum", "ConstantNormaliser",
    "GroupNormalised", "GroupCentred", "LeaveOneOut", "Reinforce", "GlobalNormalised",
]
__all__ += [
    "AbsoluteLikelihood", "ClampedRatio", "LeftoverAdvantage", "RowsConstant", "RowsSequenceSum", "RowsTokenMean",
    "FlatForget", "FlatTemplate", "InvertedHinge", "LogSigmoidRatio", "ReferenceKL", "SafeAlignWeight",
    "TokenProbability",
]
