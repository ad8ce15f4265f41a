"""DPH-RL (Li et al. 2025, "The Choice of Divergence: A Neglected Key to Mitigating Diversity Collapse
in Reinforcement Learning with Verifiable Reward", arXiv 2509.07430; ICLR 2026).

Before training, the initial policy π_ref samples k completions of every training query; queries
with k/k correct form D_pef (their samples a ∼ π_ref are kept with log π_ref of every token), the
rest D_exp. Each step then trains

    L = L_exp + η · L_pef
    L_exp = DAPO on fresh rollouts of D_exp prompts: −(1/N_tok) Σ min(r Â, clip(r, 1−ε_low, 1+ε_high) Â),
            Â group-normalised, ε_high = 0.28 (clip-higher), no KL term
    L_pef = (1/N_pef) Σ_t f̄(u_t) over the stored samples' tokens, u_t = π_θ(a_t)/π_ref(a_t):
            forward-kl  f̄(u) = u − log u − 1                    (KL(π_ref ‖ π_θ), the k3 form)
            js          f̄(u) = u log u − (u+1) log((u+1)/2)      (the JS generator, ``js_low_var``)
            alpha       f̄(u) = (u^{1−α} − (1−α)u − α)/(α(α−1)),  α = 0.2

each a token mean over its own rows. The mass-covering term keeps probability on the solutions
π_ref already had (pass@k), where a reverse KL to π_ref (or none) lets the policy collapse onto a few.
No reference model is held: log π_ref was stored at pre-sampling.

Parts: ``Route`` on ``extra["is_rehearsal"]`` — the stored rows train ``η × Estimator(no mask,
π_den = sg π_θ, SampledFDivergence(f), token unit, token mean)``, the rollouts ``dapo(ε_low, ε_high)``.
The rehearsal set comes from ``experience.rehearsal.Rehearsal`` (config ``rehearsal:``). η: the
authors' README gives 0.01–0.05 for forward KL and 0.05–0.2 for JS. Deviations: the stored D_pef
samples are the k pre-samples themselves (the authors sample each D_pef query once more); the
α-divergence is applied to the rehearsal set as the other two (the authors' README runs it on the
rollouts, without the stored data).
"""
from __future__ import annotations

from unigrad.estimator import CurrentPolicy, Estimator, Likelihood, NoMask, TokenMean
from unigrad.estimator.advantages.divergence import SampledFDivergence
from unigrad.estimator.checks import non_negative, number, one_of
from unigrad.methods.rl import _asymmetric_clip, dapo
from unigrad.objectives import Sum, Term
from unigrad.objectives.divergences import ALPHA, divergence as f_divergence
from unigrad.objectives.route import Route

DIVERGENCES = {"forward-kl": "forward_kl", "js": "js", "alpha": "alpha"}
REHEARSAL_FLAG = "is_rehearsal"


def rehearsal_term(divergence: str = "js", alpha: float = 0.2) -> Estimator:
    """(1/N) Σ_t f̄(u_t) on the stored samples' tokens, as one Estimator."""
    one_of("dph-rl", "divergence", divergence, DIVERGENCES, "DPH-RL's mass-covering divergences")
    return Estimator(mask=NoMask(), denominator=CurrentPolicy(),
                     advantage=SampledFDivergence(f_divergence(DIVERGENCES[divergence], alpha)),
                     likelihood=Likelihood("token", TokenMean()))


def dph_rl(divergence: str = "js", eta: float = 0.05, eps_low: float = 0.2, eps_high: float = 0.28,
           alpha: float = 0.2) -> Route:
    """DPH-RL (module docstring): DAPO on the rollouts of D_exp, η · D_f(π_θ ‖ π_ref) on the stored
    samples of D_pef; ``divergence`` one of forward-kl, js, alpha (α = ``alpha``)."""
    one_of("dph-rl", "divergence", divergence, DIVERGENCES, "DPH-RL's mass-covering divergences")
    non_negative("dph-rl", "eta", eta, "the weight η of the rehearsal term; a negative η pushes away from π_ref")
    number("dph-rl", "alpha", alpha, ALPHA, low=0, high=1, low_open=True, high_open=True)
    _asymmetric_clip("dph-rl", eps_low, eps_high)
    rehearsal = Sum((Term(float(eta), rehearsal_term(divergence, alpha), divergence),))
    return Route(field=REHEARSAL_FLAG, marked=rehearsal, other=dapo(eps_low, eps_high), names=("pef", "exp"))


__all__ = ["DIVERGENCES", "REHEARSAL_FLAG", "dph_rl", "rehearsal_term"]
