"""Online RL methods (rollouts scored by a reward): factories composing the estimator's parts.

Notation: a prompt q has rollouts y_1..y_n (rows sharing ``group``) sampled from π_old, each with a
scalar reward R_i; ℓ_{i,t} = log π_θ(y_{i,t}|q, y_{i,<t}); r_{i,t} = π_θ/π_old at token t;
clip(r) = clip(r, 1 − ε_low, 1 + ε_high); |y_i| the completion length; N the number of rollouts in
the batch (the step), N_tok the number of their completion tokens. Losses are to be minimised.

Rollout-level pieces that are not part of the gradient (DAPO's dynamic sampling and overlong reward
shaping) live in ``unigrad.rollout.shaping``; the rollout producer applies them before the batch
reaches the objective.
"""
from __future__ import annotations

from unigrad.estimator import (
    BehaviourPolicy, CurrentPolicy, Estimator, FixedCount, GlobalNormalised, GroupCentred, GroupNormalised,
    LeaveOneOut, Likelihood, NoMask, PPOClip, Reinforce, SequenceMean, SequenceSum, TokenMean,
)
from unigrad.estimator.checks import flag, fraction, non_negative, number, positive
from unigrad.estimator.masks import CISPO, DUAL_CLIP, LOWER_CLIP, SAPO, TEMPERATURE, UPPER_CLIP, DualClip
from unigrad.methods.preference import sft
from unigrad.objectives import Gate, KLPenalty, Sum, Term
from unigrad.objectives.gate import GAMMA

_PER_SEQUENCE_TOKEN_MEAN = Likelihood("token", SequenceMean())
_SEQUENCE_LOGPROB = Likelihood("sequence", SequenceSum())


def _clip_width(owner: str, eps) -> None:
    number(owner, "eps", eps, "the ratio is kept in [1 − ε, 1 + ε]: ε = 0 cuts every term whose ratio has moved, "
           "ε > 1 puts the lower bound below 0", low=0, high=1, low_open=True)


def _asymmetric_clip(owner: str, eps_low, eps_high) -> None:
    fraction(owner, "eps_low", eps_low, LOWER_CLIP)
    non_negative(owner, "eps_high", eps_high, UPPER_CLIP)


def _ppo_mask(owner: str, eps_low: float, eps_high: float, dual_clip):
    """PPO's clip, or with ``dual_clip`` = c its dual clip (Ye et al. 2020): Â < 0 terms bounded by c·Â."""
    if dual_clip is None:
        return PPOClip(eps_low, eps_high)
    number(owner, "dual_clip", dual_clip, DUAL_CLIP + "; null turns the dual clip off", low=1, low_open=True)
    return DualClip(eps_low, eps_high, float(dual_clip))


def _with_kl(policy: Estimator, beta: float):
    if beta == 0:
        return policy
    return Sum((Term(1.0, policy, "policy"), Term(beta, KLPenalty("k3", SequenceMean()), "kl")))


def grpo(eps: float = 0.2, beta: float = 0.0, dual_clip: float | None = None):
    """GRPO (Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open
    Language Models", eq. 3, outcome supervision §4.1.2):

        L = −(1/N) Σ_i (1/|y_i|) Σ_t [ min(r_{i,t} Â_i, clip(r_{i,t}, 1−ε, 1+ε) Â_i) − β D_KL,t ]
        Â_i = (R_i − mean_G R) / (std_G R + 1e-6)   (unbiased std, see ``GroupNormalised``)
        D_KL,t = π_ref/π_θ − log(π_ref/π_θ) − 1      (k3, eq. 4), differentiated through π_θ

    Parts: m = PPO clip (ε, ε), π_den = π_old, Â group-normalised, token unit with per-sequence token
    mean then mean over sequences; β > 0 adds ``KLPenalty("k3", SequenceMean())`` with weight β (the
    paper uses β = 0.04; default 0 as in DAPO / Dr. GRPO / most R1-Zero recipes). ``dual_clip`` = c
    (verl: 3) bounds a negative-advantage token's term below by c·Â (``DualClip``); None: off."""
    _clip_width("grpo", eps)
    non_negative("grpo", "beta", beta, "the KL penalty's coefficient; a negative beta rewards drifting from the reference")
    policy = Estimator(mask=_ppo_mask("grpo", eps, eps, dual_clip), denominator=BehaviourPolicy(),
                       advantage=GroupNormalised(), likelihood=_PER_SEQUENCE_TOKEN_MEAN)
    return _with_kl(policy, beta)


def dr_grpo(eps: float = 0.2, max_tokens: float = 3000.0) -> Estimator:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective", §3.2):
    GRPO without its two biases, the std division and the 1/|y_i| length normalisation:

        L = −(1/(c·N)) Σ_i Σ_t min(r_{i,t} Â_i, clip(r_{i,t}, 1−ε, 1+ε) Â_i),   Â_i = R_i − mean_G R

    with a constant c = ``max_tokens``. The authors' code (oat, ``critic_type=drgrpo``) divides each
    sequence's token sum by ``generate_max_length`` and averages over sequences; their example
    scripts (sail-sg/understand-r1-zero) set it to 3000, hence the default. Set it to the sampler's
    maximum completion length. Parts: PPO clip, π_old, group-centred Â, token unit, FixedCount(c)."""
    _clip_width("dr-grpo", eps)
    positive("dr-grpo", "max_tokens", max_tokens,
             "the constant c each sequence's token sum is divided by: the sampler's maximum completion length")
    return Estimator(mask=PPOClip(eps, eps), denominator=BehaviourPolicy(), advantage=GroupCentred(),
                     likelihood=Likelihood("token", FixedCount(float(max_tokens))))


def dapo(eps_low: float = 0.2, eps_high: float = 0.28, dual_clip: float | None = None) -> Estimator:
    """DAPO (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", eq. 8
    with clip-higher eq. 10 and the token-level loss eq. 12):

        L = −(1/Σ_i |y_i|) Σ_i Σ_t min(r_{i,t} Â_i, clip(r_{i,t}, 1−ε_low, 1+ε_high) Â_i),
        Â_i = (R_i − mean_G R) / std_G R,   ε_low = 0.2, ε_high = 0.28 (paper's values), no KL.

    Parts: PPO clip (ε_low, ε_high), π_old, group-normalised Â, token unit, token mean over the
    batch. DAPO's other two techniques act on the data, not the gradient: dynamic sampling
    (``rollout.shaping.keep_informative_groups``: keep only prompts with 0 < #correct < G, and sample more until
    the batch is full) and soft overlong punishment (``rollout.shaping.overlong_penalty``, added to the
    reward); the rollout producer applies them. ``dual_clip`` = c adds PPO's dual clip (as ``grpo``)."""
    _asymmetric_clip("dapo", eps_low, eps_high)
    return Estimator(mask=_ppo_mask("dapo", eps_low, eps_high, dual_clip), denominator=BehaviourPolicy(),
                     advantage=GroupNormalised(), likelihood=Likelihood("token", TokenMean()))


def cispo(eps_low: float = 1.0, eps_high: float = 4.0) -> Estimator:
    """CISPO (MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning
    Attention", arXiv 2506.13585): REINFORCE with a clipped, detached importance weight,

        L = −(1/Σ_i |y_i|) Σ_i Σ_t sg(clip(r_{i,t}, 1−ε_low, 1+ε_high)) Â_i ℓ_{i,t},
        Â_i = (R_i − mean_G R) / std_G R,

    so every token keeps a gradient (PPO's clip drops the tokens outside the range, which in
    reflective reasoning are often the rare "fork" tokens). Defaults: ε_low = 1 (no lower bound: the
    paper sets ε_low large and tunes ε_high only), ε_high = 4 (the weight capped at 5, TRL's
    recommendation for ``loss_type="cispo"``). Parts: m = clip(r)/r (``CISPO``), π_den = π_old,
    group-normalised Â (as the paper's GRPO-style advantage), token unit, token mean over the batch."""
    fraction("cispo", "eps_low", eps_low, LOWER_CLIP + "; 1 means no lower bound (the paper's choice)")
    non_negative("cispo", "eps_high", eps_high, UPPER_CLIP)
    return Estimator(mask=CISPO(eps_low, eps_high), denominator=BehaviourPolicy(), advantage=GroupNormalised(),
                     likelihood=Likelihood("token", TokenMean()))


def sapo(tau_pos: float = 1.0, tau_neg: float = 1.05) -> Estimator:
    """SAPO ("Soft Adaptive Policy Optimization", arXiv 2511.20347): PPO's hard clip replaced by a
    temperature-controlled soft gate,

        L = −(1/N) Σ_i (1/|y_i|) Σ_t f(r_{i,t}) Â_i,   f(r) = σ(τ (r − 1)) · 4/τ,
        τ = τ_pos if Â_i > 0 else τ_neg,   Â_i = (R_i − mean_G R) / std_G R,

    whose gradient f′(r)·r·Â·∇ℓ, f′(r) = 4σ(1 − σ), equals the policy gradient on policy and decays
    smoothly off it (faster for negative advantages, τ_neg > τ_pos). Parts: m = f′(r) (``SAPO``),
    π_den = π_old, group-normalised Â, token unit, per-sequence token mean then mean over sequences."""
    positive("sapo", "tau_pos", tau_pos, TEMPERATURE)
    positive("sapo", "tau_neg", tau_neg, TEMPERATURE)
    return Estimator(mask=SAPO(tau_pos, tau_neg), denominator=BehaviourPolicy(), advantage=GroupNormalised(),
                     likelihood=_PER_SEQUENCE_TOKEN_MEAN)


def gspo(eps_low: float = 3e-4, eps_high: float = 4e-4) -> Estimator:
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", eqs. 5–7):

        L = −(1/N) Σ_i min(s_i Â_i, clip(s_i, 1−ε_low, 1+ε_high) Â_i),
        s_i = (π_θ(y_i|q)/π_old(y_i|q))^{1/|y_i|} = exp((1/|y_i|) Σ_t (ℓ_{i,t} − ℓ^old_{i,t})),
        Â_i = (R_i − mean_G R) / std_G R.

    Defaults ε_low = 3e-4, ε_high = 4e-4 are the paper's clipping ranges (§5.1). Parts: PPO clip on
    the sequence ratio, π_old, group-normalised Â, sequence unit with the length-normalised
    (sequence-mean) log-ratio, mean over sequences."""
    _asymmetric_clip("gspo", eps_low, eps_high)
    return Estimator(mask=PPOClip(eps_low, eps_high), denominator=BehaviourPolicy(), advantage=GroupNormalised(),
                     likelihood=Likelihood("sequence", SequenceMean()))


def rloo() -> Estimator:
    """RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
    Learning from Human Feedback in LLMs", §3.2): on-policy REINFORCE, the whole completion one action,

        L = −(1/N) Σ_i Â_i log π_θ(y_i|q),   Â_i = R_i − (1/(n−1)) Σ_{j≠i} R_j.

    Parts: m = 1, π_den = sg π_θ (r ≡ 1), leave-one-out Â, sequence log-prob (sum), mean over
    rollouts. (Implementations that reuse a batch for several PPO-style epochs add a clip and π_old;
    compose ``PPOClip`` · ``BehaviourPolicy`` · ``LeaveOneOut`` for that.)"""
    return Estimator(mask=NoMask(), denominator=CurrentPolicy(), advantage=LeaveOneOut(), likelihood=_SEQUENCE_LOGPROB)


def reinforce(baseline: float = 0.0, batch_mean: bool = False) -> Estimator:
    """REINFORCE (Williams 1992, "Simple Statistical Gradient-Following Algorithms for Connectionist
    Reinforcement Learning"), the completion one action:

        L = −(1/N) Σ_i (R_i − b) log π_θ(y_i|q),   b = ``baseline`` or, with batch_mean, mean_batch R.

    Parts: m = 1, π_den = sg π_θ, Â = R − b, sequence log-prob (sum), mean over rollouts."""
    number("reinforce", "baseline", baseline, "the constant b subtracted from every reward")
    flag("reinforce", "batch_mean", batch_mean, "use the batch's mean reward as the baseline instead")
    return Estimator(mask=NoMask(), denominator=CurrentPolicy(), advantage=Reinforce(baseline, batch_mean),
                     likelihood=_SEQUENCE_LOGPROB)


def reinforce_pp(eps: float = 0.2, group_baseline: bool = False) -> Estimator:
    """REINFORCE++ (Hu et al. 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large
    Language Models", arXiv 2501.03262): PPO's clipped surrogate without a critic, advantages
    normalised over the global batch:

        L = −(1/N_tok) Σ_i Σ_t min(r_{i,t} Â_i, clip(r_{i,t}, 1−ε, 1+ε) Â_i),
        Â = (A − mean_batch A) / std_batch A,   A_i = R_i  (or R_i − mean_G R with group_baseline,
        the paper's "REINFORCE++ w/ baseline").

    Token mean over the batch as OpenRLHF's ``PolicyLoss`` (``token_level_loss=True``). Omitted: the
    token-level KL penalty the paper folds into the reward (r_t = 1[t = EOS] R − β KL_t) — with it,
    Â varies along the completion; leave it out or add a ``KLPenalty`` term instead."""
    _clip_width("reinforce++", eps)
    flag("reinforce++", "group_baseline", group_baseline, "subtract the prompt's mean reward before normalising")
    return Estimator(mask=PPOClip(eps, eps), denominator=BehaviourPolicy(),
                     advantage=GlobalNormalised(group_baseline=group_baseline), likelihood=Likelihood("token", TokenMean()))


def hpt(gamma: float = 0.0, eps: float = 0.2, sft_weight: float = 1.0) -> Gate:
    """HPT, Hybrid Post-Training (Lv et al. 2025, "Towards a Unified View of Large Language Model
    Post-Training", arXiv 2509.04419): per prompt q with n rollouts and success rate P(q),

        L = Σ_q 1[P(q) ≤ γ] · w L_SFT(τ*_q)  +  1[P(q) > γ] · L_GRPO(y_{q,1..n})

    L_SFT = −(1/N_demo) Σ ℓ over the demonstration tokens of the SFT-routed prompts (token mean);
    L_GRPO = ``grpo(eps)`` on the rollouts of the RL-routed prompts (per-sequence token mean, mean over
    those rollouts). γ = 0 (SFT only when no rollout is correct) is the paper's setting for
    Qwen2.5-Math; it uses γ = 2/8 for Llama-3.1-8B. w = 1 (0.3 in its Qwen2.5-Math-1.5B run).

    Rows: demonstrations marked ``extra["is_demo"]``; rows of a prompt share ``group``. Deviations
    from the released training script (kept to the paper's GRPO form here): the script centres
    rewards without the std (``grpo_use_std=False``), drops the clip, sums over tokens and divides by
    the maximum response length (Dr. GRPO's normaliser) jointly for SFT and RL rows, and adds an
    entropy bonus (0.001). Compose ``Gate(below=..., above=dr_grpo(...))`` for that form."""
    fraction("hpt", "gamma", gamma, GAMMA)
    _clip_width("hpt", eps)
    non_negative("hpt", "sft_weight", sft_weight, "the weight w of the SFT term; a negative w ascends on the demonstrations")
    below = sft() if sft_weight == 1.0 else Sum((Term(float(sft_weight), sft(), "sft"),))
    return Gate(threshold_field="success_rate", gamma=float(gamma), below=below, above=grpo(eps=eps))
