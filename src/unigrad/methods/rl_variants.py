"""The seed papers' RL methods: OPMD, AsymRE, MDPO, COPO and f-DPG, each a composition of parts.

Notation as in ``methods.rl``: rows sharing ``group`` are the rollouts of one prompt, sampled from
π_old; R_i the reward, A_i = R_i − mean_G R; ℓ_t = log π_θ(y_t|·); r_t = π_θ/π_old; N_tok the step's
completion tokens, N its rollouts. Losses are minimised. Where a part needs the step index (MDPO's
schedule, f-DPG's baseline) or the rollouts' extracted answers (COPO), the rollout producer gives them
per row (``train_step``, ``train_steps``, ``answer_id``).
"""
from __future__ import annotations

from unigrad.estimator import BehaviourPolicy, CurrentPolicy, Estimator, GlobalNormalised, GroupNormalised, Likelihood
from unigrad.estimator import NoMask, SequenceSum, TokenMean
from unigrad.estimator.advantages.consistency import ConsistencyBlend, check_blend
from unigrad.estimator.advantages.dpg import FDivergenceTarget, check_target
from unigrad.estimator.advantages.mirror_descent import KL_ESTIMATE, KL_ESTIMATES, MirrorDescentKL
from unigrad.estimator.advantages.regularised import TAU, Regularised
from unigrad.estimator.checks import fraction, non_negative, number, one_of
from unigrad.estimator.masks import DUAL_CLIP, LOWER_CLIP, UPPER_CLIP, DualClip
from unigrad.objectives import Sum, Term

_TOKEN_MEAN = Likelihood("token", TokenMean())
MDPO_ADVANTAGES = ("group", "batch")


def opmd(tau: float = 0.1) -> Estimator:
    """OPMD as a regularised group-relative REINFORCE (Yao et al. 2025, "Group-Relative REINFORCE Is
    Secretly an Off-Policy Algorithm: Demystifying Some Myths About GRPO and Its Friends", arXiv
    2509.24203; Kimi k1.5's online policy mirror descent):

        L = (1/N_tok) Σ_{i,t} [ −A_i ℓ_t + τ (ℓ_t − ℓ^old_t)² ],   A_i = R_i − mean_G R,   τ = 0.1

    Parts: m = 1, π_den = sg π_θ, Â_t = A_i − 2τ(ℓ_t − ℓ^old_t) (``Regularised("k2")``), token mean.
    Followed: the authors' Trinity-RFT ``rec`` loss with ``regularizer: k2`` (the paper's equations
    were not read; τ absorbs the ½ of Kimi's squared surrogate, as there)."""
    non_negative("opmd", "tau", tau, TAU)
    return Estimator(mask=NoMask(), denominator=CurrentPolicy(), advantage=Regularised("k2", float(tau)),
                     likelihood=_TOKEN_MEAN)


def asymre(tau: float = 0.1) -> Estimator:
    """AsymRE, asymmetric REINFORCE, as a regularised group-relative REINFORCE (Yao et al. 2025, arXiv
    2509.24203, after Meta's AsymRE):

        L = (1/N_tok) Σ_{i,t} [ −A_i ℓ_t − τ ℓ_t ]   (the "forward-kl" regulariser −τ log π_θ on π_old's samples)

    i.e. the baseline lowered by τ: Â = A_i + τ. Parts: m = 1, π_den = sg π_θ, ``Regularised("forward-kl")``,
    token mean. Followed: Trinity-RFT ``rec`` with ``regularizer: forward-kl``, τ = 0.1."""
    non_negative("asymre", "tau", tau, TAU)
    return Estimator(mask=NoMask(), denominator=CurrentPolicy(), advantage=Regularised("forward-kl", float(tau)),
                     likelihood=_TOKEN_MEAN)


def mdpo(advantage: str = "group", kl_estimate: str = "controlled") -> Sum:
    """MDPO, on-policy (Tomar et al. 2020, "Mirror Descent Policy Optimization", arXiv 2005.09814):
    several epochs on each step's rollouts (``rollout.epochs``; the paper's code takes 5 by default,
    its README example 10) against

        L = −(1/N_tok) Σ_{i,t} r_{i,t} Â_i  +  (1/t_k) (1/N_tok) Σ_{i,t} k(r_{i,t}),
        t_k = 1 − (k−1)/K   (k = 1..K the step, K = ``train.steps``: the penalty 1/t_k grows to K)

    the second term the sampled KL(π_θ ‖ π_k) on π_k = π_old's samples, no clipping: k(r) = r log r
    (``kl_estimate="plain"``) or r log r − r + 1 (``"controlled"``, default: the same expected
    gradient, E_{π_old}[r − 1] = 0, without the plain form's noise, which 1/t_k scales up to K; see
    ``advantages.mirror_descent``). Â: the paper's is GAE standardised over the batch; without a critic,
    ``advantage="group"`` takes GRPO's group-normalised reward and ``"batch"`` the reward standardised
    over the step's rollouts. Parts: a sum of two Estimators with m = 1, π_den = π_old and the token
    mean: the surrogate (Â from the reward), and ``MirrorDescentKL`` (Â_t = −(1/t_k) log r_t, plain
    −(1/t_k)(log r_t + 1)), named ``mdpo``: its metrics ``mdpo/kl_old`` (KL(π_θ‖π_k) on the batch) and
    ``mdpo/inverse_step`` (1/t_k) show the proximity the schedule holds over the epochs."""
    one_of("mdpo", "advantage", advantage, MDPO_ADVANTAGES,
           "group: GRPO's group-normalised reward; batch: the reward standardised over the step")
    one_of("mdpo", "kl_estimate", kl_estimate, KL_ESTIMATES, KL_ESTIMATE)
    reward_advantage = GroupNormalised() if advantage == "group" else GlobalNormalised(over="sequence")
    surrogate = Estimator(mask=NoMask(), denominator=BehaviourPolicy(), advantage=reward_advantage,
                          likelihood=_TOKEN_MEAN)
    proximity = Estimator(mask=NoMask(), denominator=BehaviourPolicy(), advantage=MirrorDescentKL(kl_estimate),
                          likelihood=_TOKEN_MEAN)
    return Sum((Term(1.0, surrogate, "policy"), Term(1.0, proximity, "mdpo")))


def copo(eps_low: float = 0.2, eps_high: float = 0.2, c: float = 3.0, k: float = 1.0, b: float = 0.5,
         forced: bool = True, entropy_discount: bool = True) -> Sum:
    """COPO (Han et al. 2025, "COPO: Consistency-Aware Policy Optimization", arXiv 2508.04138): a
    global advantage from the consistency of each prompt's extracted answers, blended with GRPO's
    local one by the answers' entropy H(q) (bits),

        L = −(1/N_tok) Σ_{i,t} [ (1 − w_q) DC(r_{i,t}, A_glob(q)) + w_q DC(r_{i,t}, A_loc,i) ],
        w_q = σ(k (H(q) − b)) (× 1[A_loc,i ≠ 0] with ``forced``),
        A_glob = batch-standardised mean_q R · (1 − λ_G H(q)),  λ_G = (1 − 1/G)/log2 G,

    DC PPO's dual-clipped surrogate (ε_low, ε_high, c = 3). Parts: two Estimators, ``global`` and
    ``local``, each with ``DualClip``, π_den = π_old, ``ConsistencyBlend`` (Â = (1 − w)A_glob, resp.
    w·A_loc) and the token mean. Needs ``answer_id`` from the rollouts (``rewards.answers``). See
    ``advantages.consistency`` for what was followed."""
    fraction("copo", "eps_low", eps_low, LOWER_CLIP)
    non_negative("copo", "eps_high", eps_high, UPPER_CLIP)
    number("copo", "c", c, DUAL_CLIP, low=1, low_open=True)
    check_blend("copo", k, b, forced, entropy_discount)
    blend = dict(k=k, b=b, forced=forced, entropy_discount=entropy_discount)
    mask = DualClip(eps_low, eps_high, c)

    def half(term: str) -> Estimator:
        return Estimator(mask=mask, denominator=BehaviourPolicy(), advantage=ConsistencyBlend(term, **blend),
                         likelihood=_TOKEN_MEAN)
    return Sum((Term(1.0, half("global"), "global"), Term(1.0, half("local"), "local")))


def f_dpg(divergence: str = "js", beta: float = 1.0, target: str = "exponential", window: int = 1024) -> Estimator:
    """f-DPG (Go et al. 2023, "Aligning Language Models with Preferences through f-divergence
    Minimization", ICML, arXiv 2302.08215): minimise D_f(π_θ ‖ p) to the target p ∝ π_ref·exp(R/β)
    (``target="exponential"``) or p ∝ π_ref·R with R ≥ 0 (``"product"``, a(y)·b(y) with b the reward),

        ∇L = −(1/N) Σ_i (π_θ(y_i)/π_old(y_i)) (R_θ(y_i) − b) ∇ log π_θ(y_i),   R_θ = −f′(π_θ/p),

    p normalised by the per-prompt importance-sampling estimate of Z, b a moving average of R_θ over
    the last ``window`` rollouts (state, checkpointed). ``divergence``: "js" (disco's default),
    "kl" (forward KL(p‖π), DPG), "reverse-kl" (KL(π‖p), RLHF's), "tv". Parts: m = 1, π_den = π_old
    (the proposal; = π_θ on the first epoch), ``FDivergenceTarget``, sequence log-prob (sum), mean
    over rollouts. See ``advantages.dpg`` for what was followed."""
    check_target("f-dpg", divergence, beta, target, window)
    return Estimator(mask=NoMask(), denominator=BehaviourPolicy(),
                     advantage=FDivergenceTarget(divergence, beta, target, window),
                     likelihood=Likelihood("sequence", SequenceSum()))


__all__ = ["asymre", "copo", "f_dpg", "mdpo", "opmd"]
