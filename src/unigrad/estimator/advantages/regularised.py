"""Group-relative REINFORCE with an additive regulariser: the weight of each token is the group
advantage plus the regulariser's gradient through ℓ (the "REP" family of Yao et al. 2025,
"Group-Relative REINFORCE Is Secretly an Off-Policy Algorithm: Demystifying Some Myths About GRPO
and Its Friends", arXiv 2509.24203).

Rows of one prompt share ``group``; A_i = R_i − mean_G R (no std division); ℓ_t = log π_θ(y_t|·),
ℓ^old_t the behaviour policy's. With π_den = sg π_θ and the token mean over the step's N_tok tokens,

    OPMD   (regulariser "k2"):          L = (1/N_tok) Σ_{i,t} [ −A_i ℓ_t + τ (ℓ_t − ℓ^old_t)² ]
                                        Â_t = A_i − 2τ (ℓ_t − ℓ^old_t)
    AsymRE (regulariser "forward-kl"):  L = (1/N_tok) Σ_{i,t} [ −A_i ℓ_t − τ ℓ_t ]
                                        Â_t = A_i + τ

Followed: the authors' implementation (Trinity-RFT ``RECPolicyLossFn`` with ``weight: none``,
``clip_mode: none``, ``regularizer: k2`` / ``forward-kl``, ``regularizer_coef`` = τ = 0.1, and
``std_normalize: false``, from ``examples/rec_gsm8k``), read here; the paper's own equations were
not. τ there absorbs the ½ of Kimi k1.5's squared surrogate, as here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from unigrad.batch import Batch
from unigrad.estimator.advantages.group import GroupCentred
from unigrad.estimator.checks import non_negative, one_of
from unigrad.estimator.protocols import Weighted

REGULARISERS = ("k2", "forward-kl")
TAU = "the regulariser's coefficient; a negative tau rewards drifting from the behaviour policy (k2) or lowering ℓ"


@dataclass(frozen=True)
class Regularised:
    """Â_t = A_i − 2τ(ℓ_t − ℓ^old_t) ("k2", OPMD) or A_i + τ ("forward-kl", AsymRE), A_i group-centred
    on the whole step; the objective is the token-mean loss above (the normaliser must be
    ``TokenMean``, as the methods compose it)."""

    regulariser: Literal["k2", "forward-kl"] = "k2"
    tau: float = 0.1

    def __post_init__(self):
        one_of(self, "regulariser", self.regulariser, REGULARISERS,
               "k2: τ(ℓ − ℓ_old)² (OPMD); forward-kl: −τ ℓ on the behaviour policy's samples (AsymRE)")
        non_negative(self, "tau", self.tau, TAU)

    @property
    def requires(self) -> frozenset[str]:
        base = GroupCentred.requires
        return base | {"logp_old"} if self.regulariser == "k2" else base

    def __call__(self, batch: Batch) -> Weighted:
        centred = GroupCentred()(batch)
        mask = batch.mask.to(batch.logp.dtype)
        logp = batch.logp.detach() * mask
        advantage = centred.weight[:, None].expand_as(logp)
        if self.regulariser == "k2":
            drift = logp - batch.require("logp_old").detach() * mask
            weight = advantage - 2 * self.tau * drift
            per_token = -advantage * logp + self.tau * drift ** 2
            metrics = {"drift_sq": float((drift ** 2 * mask).sum() / mask.sum().clamp(min=1))}
        else:
            weight = advantage + self.tau
            per_token = -(advantage + self.tau) * logp
            metrics = {}
        objective = (per_token * mask).sum() / batch.tokens_total
        return Weighted(weight * mask, objective=objective, metrics={**centred.metrics, **metrics})


__all__ = ["REGULARISERS", "Regularised"]
