"""Latent-variable methods: rationales z as latent variables of the answer y, trained by MCMC-EM."""
from __future__ import annotations

from unigrad.estimator import CurrentPolicy, Estimator, Likelihood, NoMask, SequenceSum
from unigrad.estimator.advantages.memory import MemoryControlVariate
from unigrad.estimator.checks import flag


def trice(control_variate: bool = True) -> Estimator:
    """TRICE (Phan, Hoffman et al. 2023, "Training Chain-of-Thought via Latent-Variable Inference",
    NeurIPS, arXiv 2312.02179): maximise the marginal log-likelihood of the correct answers,
    (1/N) Σ_n log Σ_z π_θ(z | x_n) 1[z yields y_n], by MCMC-EM over one rationale z_n per example:

        propose z̃_m ~ π_θ(z | x_m); accept (z_m ← z̃_m) iff z̃_m yields the correct answer
        ĝ = (1/M) Σ_m [ ∇ log π_θ(z_m | x_m) − β_m ∇ log π_θ(z̃_m | x_m) ],
        β_m = (1/(M − 1)) Σ_{m' ≠ m} 1[z̃_{m'} accepted]

    The second term is the paper's control variate (zero mean under π_θ, β_m independent of z̃_m); with
    it the variance falls to 0 as the acceptance rate rises to 1. ``control_variate=False`` drops it
    ("TRICE no CV"). The memory and the proposals come from ``experience.memory.MemorySource`` (the run
    builds it when the objective reads the memory flags; the memory is checkpointed).

    Parts: m = 1, π_den = sg π_θ, Â = ``MemoryControlVariate`` (1 on z_m, −β_m on z̃_m, 1 − β_m when
    z_m = z̃_m), token unit with each sequence's sum and Z = M examples (``SequenceSum("group")``).
    Followed FORMULAS.md §19 (reconstructed from the abstract, confidence L: the leave-one-out β and the
    memory update; the paper's gradient subsampling is not implemented); see ``experience.memory`` for
    the memory's initialisation. Proposals are drawn as ``rollout`` says: the estimator is the paper's
    with temperature 1 and no top-k / top-p."""
    flag("trice", "control_variate", control_variate,
         "subtract β_m ∇ log π(z̃_m), the leave-one-out acceptance rate times the proposal's score")
    return Estimator(mask=NoMask(), denominator=CurrentPolicy(), advantage=MemoryControlVariate(control_variate),
                     likelihood=Likelihood("token", SequenceSum("group")))


__all__ = ["trice"]
