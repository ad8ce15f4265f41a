"""Advantage estimates Â, one module per family; each returns a ``Weighted`` (weight, objective, metrics).

    constant.py     Constant, Chosen, RowsConstant                       SFT, ORPO's NLL, GA
    preference.py   PairwisePreference of a score and a link; ASFT       DPO, IPO, SimPO, ORPO, f-DPO
    group.py        group-relative and batch-normalised rewards          GRPO, Dr. GRPO, RLOO, REINFORCE(++)
    offline.py      LeftoverAdvantage                                    A-LoL
    probability.py  TokenProbability, FlatTemplate, FlatForget           IHL's terms, FLAT
    unlearning.py   LogSigmoidRatio, ReferenceKL, SafeAlignWeight        NPO, DDO, grad-diff KL, SAFE-ALIGN
    nash.py         NashAdvantage against a GeometricMixture opponent     Nash-MD, Nash-MP
"""
from unigrad.estimator.advantages.constant import Chosen, Constant, RowsConstant
from unigrad.estimator.advantages.preference import (
    AbsoluteLikelihood, FDivergenceReward, ImpliedReward, LengthNormalisedReward, Link, LogOdds, Logistic,
    PairwisePreference, Score, Squared, pair_rows,
)
from unigrad.estimator.advantages.group import (
    GlobalNormalised, GroupCentred, GroupNormalised, LeaveOneOut, Reinforce, group_index, group_mean, group_std,
    group_sums,
)
from unigrad.estimator.advantages.offline import LeftoverAdvantage, leftover_advantage
from unigrad.estimator.advantages.probability import FLAT_DIVERGENCES, FlatForget, FlatTemplate, TokenProbability
from unigrad.estimator.advantages.unlearning import LogSigmoidRatio, ReferenceKL, SafeAlignWeight
from unigrad.estimator.advantages.nash import GeometricMixture, NashAdvantage

__all__ = [
    "AbsoluteLikelihood", "Chosen", "Constant", "FDivergenceReward", "FLAT_DIVERGENCES", "FlatForget", "FlatTemplate",
    "GeometricMixture", "GlobalNormalised", "GroupCentred", "GroupNormalised", "ImpliedReward", "LeaveOneOut", "LeftoverAdvantage",
    "LengthNormalisedReward", "Link", "LogOdds", "LogSigmoidRatio", "Logistic", "NashAdvantage", "PairwisePreference", "ReferenceKL",
    "Reinforce", "RowsConstant", "SafeAlignWeight", "Score", "Squared", "TokenProbability", "group_index",
    "group_mean", "group_std", "group_sums", "leftover_advantage", "pair_rows",
]
