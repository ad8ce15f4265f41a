"""Advantage estimates Â, one module per family; each returns a ``Weighted`` (weight, objective, metrics).

    constant.py     Constant, Chosen, RowsConstant                       SFT, ORPO's NLL, GA
    preference.py   PairwisePreference of a score and a link; ASFT       DPO, IPO, SimPO, ORPO, f-DPO
    group.py        group-relative and batch-normalised rewards          GRPO, Dr. GRPO, RLOO, REINFORCE(++)
    offline.py      LeftoverAdvantage                                    A-LoL
    probability.py  TokenProbability, FlatTemplate, FlatForget           IHL's terms, FLAT
    unlearning.py   LogSigmoidRatio, ReferenceKL, SafeAlignWeight        NPO, DDO, grad-diff KL, SAFE-ALIGN
    nash.py         NashAdvantage against a GeometricMixture opponent;   Nash-MD, Nash-MP,
                    SelfPlayRegression onto win rates                     SPPO
    gae.py          GAE(γ, λ) from a critic's values, whitened           PPO
    unpaired.py     KTOWeight (z0 from mismatched rows), BCOWeight (δ)   KTO, BCO
    memory.py       MemoryControlVariate: memory vs proposal rationales  TRICE
    divergence.py   SampledFDivergence on stored reference samples       DPH-RL's rehearsal terms
    regularised.py  Regularised: REINFORCE plus a regulariser's gradient OPMD, AsymRE
    mirror_descent.py MirrorDescentKL: KL(π_θ‖π_k)/t_k on π_k's samples  MDPO
    consistency.py  ConsistencyBlend of global and local advantages      COPO
    dpg.py          FDivergenceTarget: −f′(π_θ/p) − b, MovingBaseline    f-DPG
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
from unigrad.estimator.advantages.nash import GeometricMixture, NashAdvantage, SelfPlayRegression
from unigrad.estimator.advantages.gae import GAE

__all__ = [
    "AbsoluteLikelihood", "Chosen", "Constant", "FDivergenceReward", "GAE", "SelfPlayRegression", "FLAT_DIVERGENCES", "FlatForget", "FlatTemplate",
    "GeometricMixture", "GlobalNormalised", "GroupCentred", "GroupNormalised", "ImpliedReward", "LeaveOneOut", "LeftoverAdvantage",
    "LengthNormalisedReward", "Link", "LogOdds", "LogSigmoidRatio", "Logistic", "NashAdvantage", "PairwisePreference", "ReferenceKL",
    "Reinforce", "RowsConstant", "SafeAlignWeight", "Score", "Squared", "TokenProbability", "group_index",
    "group_mean", "group_std", "group_sums", "leftover_advantage", "pair_rows",
]
