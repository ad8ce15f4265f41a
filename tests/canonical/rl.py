"""Canonical online-RL losses, transcribed from the papers (float64, plain loops over prompts).

Notation (implemented independently of the library under test — no imports from it):
    rows sharing ``group`` are the rollouts of one prompt, in any order and position;
    R_i = reward[i];  r_{i,t} = exp(logp − logp_old)[i, t];  |y_i| = Σ_t mask[i, t];
    clip(r) = clamp(r, 1 − eps_low, 1 + eps_high);  surrogate_{i,t} = min(r Â_i, clip(r) Â_i).
Every function returns the loss to minimise (the negated objective of the paper).

Implementation constants the papers leave open, fixed here as in the reference implementations:
    GRPO/DAPO/GSPO advantage: unbiased std (torch.std), + std_eps = 1e-6 in the denominator (verl);
    REINFORCE++: token-weighted batch mean and biased variance, 1/sqrt(max(var, 1e-8)) (OpenRLHF).
"""
from __future__ import annotations

import torch
from torch import Tensor


# --------------------------------------------------------------------------- advantages
def prompts(group: Tensor) -> list[list[int]]:
    """Row indices of each prompt, one list per distinct group id."""
    return [(group == g).nonzero().flatten().tolist() for g in torch.unique(group).tolist()]


def grpo_advantage(reward: Tensor, group: Tensor, std_eps: float = 1e-6) -> Tensor:
    """Â_i = (R_i − mean_G R)/(std_G R + eps), std unbiased (DeepSeekMath §4.1.2)."""
    adv = torch.zeros_like(reward)
    for rows in prompts(group):
        r = reward[rows]
        adv[rows] = (r - r.mean()) / (r.std(unbiased=True) + std_eps)
    return adv


def centred_advantage(reward: Tensor, group: Tensor) -> Tensor:
    """Â_i = R_i − mean_G R (Dr. GRPO)."""
    adv = torch.zeros_like(reward)
    for rows in prompts(group):
        adv[rows] = reward[rows] - reward[rows].mean()
    return adv


def loo_advantage(reward: Tensor, group: Tensor) -> Tensor:
    """Â_i = R_i − (1/(n−1)) Σ_{j≠i} R_j (RLOO, Ahmadian et al. 2024), written with an explicit loop."""
    adv = torch.zeros_like(reward)
    for rows in prompts(group):
        for i in rows:
            others = [reward[j] for j in rows if j != i]
            adv[i] = reward[i] - sum(others) / len(others)
    return adv


def global_advantage(reward: Tensor, group: Tensor, mask: Tensor, group_baseline: bool, var_floor: float = 1e-8) -> Tensor:
    """REINFORCE++: A = R (or R − mean_G R), then (A − mean)/std over every completion token of the batch."""
    a = centred_advantage(reward, group) if group_baseline else reward.clone()
    per_token = []
    for i in range(a.shape[0]):
        per_token += [a[i]] * int(mask[i].sum())
    per_token = torch.stack(per_token)
    mean = per_token.mean()
    var = ((per_token - mean) ** 2).mean()
    return (a - mean) / torch.sqrt(torch.clamp(var, min=var_floor))


# --------------------------------------------------------------------------- clipped surrogates
def token_surrogate(logp, logp_old, adv, eps_low, eps_high) -> Tensor:
    """min(r Â, clip(r) Â) per token, [B, T]."""
    ratio = torch.exp(logp - logp_old)
    a = adv[:, None]
    return torch.minimum(ratio * a, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a)


def k3(logp, logp_ref) -> Tensor:
    """D_KL per token, DeepSeekMath eq. 4: π_ref/π_θ − log(π_ref/π_θ) − 1."""
    return torch.exp(logp_ref - logp) - (logp_ref - logp) - 1


def grpo_loss(logp, mask, logp_old, reward, group, eps=0.2, beta=0.0, logp_ref=None, std_eps=1e-6) -> Tensor:
    """GRPO, DeepSeekMath eq. 3: −(1/G) Σ_i (1/|o_i|) Σ_t [min(rÂ, clip(r)Â) − β D_KL]."""
    adv = grpo_advantage(reward, group, std_eps)
    per_token = token_surrogate(logp, logp_old, adv, eps, eps)
    if beta:
        per_token = per_token - beta * k3(logp, logp_ref)
    total = logp.new_zeros(())
    for i in range(logp.shape[0]):
        total = total + (per_token[i] * mask[i]).sum() / mask[i].sum()
    return -total / logp.shape[0]


def dr_grpo_loss(logp, mask, logp_old, reward, group, eps=0.2, max_tokens=3000.0) -> Tensor:
    """Dr. GRPO (Liu et al. 2025): −(1/G) Σ_i (1/L_max) Σ_t min(rÂ, clip(r)Â), Â = R − mean_G R."""
    adv = centred_advantage(reward, group)
    per_token = token_surrogate(logp, logp_old, adv, eps, eps)
    total = logp.new_zeros(())
    for i in range(logp.shape[0]):
        total = total + (per_token[i] * mask[i]).sum() / max_tokens
    return -total / logp.shape[0]


def dapo_loss(logp, mask, logp_old, reward, group, eps_low=0.2, eps_high=0.28, std_eps=1e-6) -> Tensor:
    """DAPO eq. 8: −(1/Σ_i |o_i|) Σ_i Σ_t min(r Â, clip(r, 1−ε_low, 1+ε_high) Â)."""
    adv = grpo_advantage(reward, group, std_eps)
    per_token = token_surrogate(logp, logp_old, adv, eps_low, eps_high)
    return -(per_token * mask).sum() / mask.sum()


def gspo_loss(logp, mask, logp_old, reward, group, eps_low=3e-4, eps_high=4e-4, std_eps=1e-6) -> Tensor:
    """GSPO eq. 5: −(1/G) Σ_i min(s_i Â_i, clip(s_i) Â_i), s_i = (π_θ(y_i)/π_old(y_i))^{1/|y_i|}."""
    adv = grpo_advantage(reward, group, std_eps)
    total = logp.new_zeros(())
    for i in range(logp.shape[0]):
        n = mask[i].sum()
        s = torch.exp(((logp[i] - logp_old[i]) * mask[i]).sum() / n)
        total = total + torch.minimum(s * adv[i], torch.clamp(s, 1 - eps_low, 1 + eps_high) * adv[i])
    return -total / logp.shape[0]


def rloo_loss(logp, mask, reward, group) -> Tensor:
    """RLOO (Ahmadian et al. 2024 §3.2): −(1/k) Σ_i Â_i log π(y_i|x), sequence log-prob."""
    adv = loo_advantage(reward, group)
    return -(adv * (logp * mask).sum(1)).sum() / logp.shape[0]


def reinforce_loss(logp, mask, reward, baseline=0.0, batch_mean=False) -> Tensor:
    """REINFORCE: −(1/N) Σ_i (R_i − b) log π(y_i|x)."""
    b = reward.mean() if batch_mean else baseline
    return -((reward - b) * (logp * mask).sum(1)).sum() / logp.shape[0]


def reinforce_pp_loss(logp, mask, logp_old, reward, group, eps=0.2, group_baseline=False) -> Tensor:
    """REINFORCE++: PPO clip with globally normalised advantages, token mean over the batch."""
    adv = global_advantage(reward, group, mask, group_baseline)
    per_token = token_surrogate(logp, logp_old, adv, eps, eps)
    return -(per_token * mask).sum() / mask.sum()


def hpt_loss(logp, mask, logp_old, reward, group, is_demo, gamma=0.0, eps=0.2, sft_weight=1.0,
             success_rate=None) -> Tensor:
    """HPT (Lv et al. 2025): per prompt, P = fraction of its rollouts with R > ½ (or the given
    success_rate); P ≤ γ → SFT on its demonstration rows, else GRPO on its rollouts. SFT: token-mean
    NLL over all SFT-routed demonstration tokens; RL: GRPO over all RL-routed rollouts."""
    sft_rows, rl_rows = [], []
    for rows in prompts(group):
        demos = [i for i in rows if bool(is_demo[i])]
        rollouts = [i for i in rows if not bool(is_demo[i])]
        if success_rate is not None:
            p = float(success_rate[rows[0]])
        else:
            p = sum(float(reward[i] > 0.5) for i in rollouts) / max(len(rollouts), 1)
        if p <= gamma:
            sft_rows += demos
        else:
            rl_rows += rollouts
    loss = logp.new_zeros(())
    if sft_rows:
        s = torch.tensor(sft_rows)
        loss = loss - sft_weight * (logp[s] * mask[s]).sum() / mask[s].sum()
    if rl_rows:
        r = torch.tensor(rl_rows)
        loss = loss + grpo_loss(logp[r], mask[r], logp_old[r], reward[r], group[r], eps=eps)
    return loss
