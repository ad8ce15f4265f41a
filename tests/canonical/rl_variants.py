"""Canonical losses of the seed papers' RL methods: OPMD, AsymRE, MDPO, COPO, f-DPG (float64, loops).

Never imports unigrad. Rows sharing ``group`` are the rollouts of one prompt; logp, logp_old,
logp_ref are [B, T] token log-probs with a 0/1 ``mask``; every function returns the loss to minimise,
differentiable in ``logp`` (autograd through the paper's own form).

- OPMD / AsymRE (Yao et al. 2025, arXiv 2509.24203; Trinity-RFT's ``rec`` loss): token mean over the
  batch of −A_i ℓ_t + τ(ℓ_t − ℓ_old,t)² (OPMD) or −A_i ℓ_t − τ ℓ_t (AsymRE), A_i = R_i − mean of its prompt.
- MDPO (Tomar et al. 2020, arXiv 2005.09814, on-policy): −mean_t[r_t Â] + (1/t_k) mean_t[r_t log r_t]
  (or r_t log r_t − (r_t − 1), the same expectation under π_old),
  r_t = π_θ/π_old written as a probability ratio, t_k = 1 − (k−1)/K; Â group-normalised or
  standardised over the batch.
- COPO (Han et al. 2025, arXiv 2508.04138; official verl code): answer entropy in bits counted with
  ``collections.Counter``, R_glob = mean r · (1 − λ H), λ = (1 − 1/G)/log2 G, A_glob standardised over the
  batch's prompts, A_loc GRPO's; per token (1 − w) DC(A_glob) + w DC(A_loc), w = σ(k(H − b)) (× 1[A_loc ≠ 0]),
  DC the dual-clipped PPO surrogate (Ye et al. 2020) written with its three branches.
- f-DPG (Go et al. 2023, arXiv 2302.08215; disco's ``FDivergenceLoss``): f from its definition, f′ by
  autograd of f, Z = mean_j P_j/q_j per prompt with P = π_ref·e^{R/β} or π_ref·R, loss = mean_i
  (sg π_θ/q)(−(R_θ − b)) log π_θ(y_i), R_θ = −f′(π_θ/p); D_f(π‖p) ≈ mean_i (p/q) f(π/p).
"""
from __future__ import annotations

import math
from collections import Counter

import torch
from torch import Tensor

from .rl import centred_advantage as centred, grpo_advantage, prompts


def _token_mean(per_token, mask: Tensor) -> Tensor:
    total, count = 0.0, 0
    for i in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[i, t] > 0:
                total = total + per_token(i, t)
                count += 1
    return total / count


# --------------------------------------------------------------------------- OPMD, AsymRE
def opmd_loss(logp, mask, logp_old, reward, group, tau=0.1) -> Tensor:
    a = centred(reward, group)
    return _token_mean(lambda i, t: -a[i] * logp[i, t] + tau * (logp[i, t] - logp_old[i, t]) ** 2, mask)


def asymre_loss(logp, mask, reward, group, tau=0.1) -> Tensor:
    a = centred(reward, group)
    return _token_mean(lambda i, t: -a[i] * logp[i, t] - tau * logp[i, t], mask)


# --------------------------------------------------------------------------- MDPO
def mdpo_loss(logp, mask, logp_old, reward, group, step: int, steps: int, advantage="group",
              kl_estimate="controlled") -> Tensor:
    """k = step + 1; surrogate E[r Â] − (1/t_k) KL(π_θ‖π_old), KL on π_old's samples = E_old[r log r]
    (plain) or E_old[r log r − (r − 1)] (controlled: E_old[r] = 1)."""
    k = step + 1
    t_k = 1 - (k - 1) / steps
    if advantage == "group":
        adv = grpo_advantage(reward, group)
    else:
        adv = (reward - reward.mean()) / reward.std(unbiased=False)
    pi, pi_old = torch.exp(logp), torch.exp(logp_old)

    def term(i, t):
        r = pi[i, t] / pi_old[i, t]
        kl = r * torch.log(r) if kl_estimate == "plain" else r * torch.log(r) - (r - 1)
        return -r * adv[i] + (1 / t_k) * kl
    return _token_mean(term, mask)


def mdpo_kl(logp, mask, logp_old) -> float:
    """Mean over tokens of r log r − r + 1 (the nonnegative sampled KL(π_θ‖π_old))."""
    r = torch.exp(logp - logp_old)
    return float(_token_mean(lambda i, t: r[i, t] * torch.log(r[i, t]) - r[i, t] + 1, mask))


# --------------------------------------------------------------------------- COPO
def entropy_bits(answers: list) -> float:
    counts = Counter(answers)
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def dual_clip(r, a, eps_low, eps_high, c):
    """PPO's surrogate min(r a, clip(r) a), and for a < 0 bounded below by c·a (Ye et al. 2020)."""
    surrogate = torch.minimum(r * a, torch.clamp(r, 1 - eps_low, 1 + eps_high) * a)
    return torch.maximum(surrogate, c * a) if a < 0 else surrogate


def copo_advantages(reward, group, answer, k=1.0, b=0.5, forced=True, entropy_discount=True, eps=1e-6):
    """(A_glob, A_loc, w) per row."""
    groups = prompts(group)
    glob, ent = {}, {}
    for rows in groups:
        G = len(rows)
        H = entropy_bits([int(answer[i]) for i in rows])
        mean_r = sum(float(reward[i]) for i in rows) / G
        lam = (1 - 1 / G) / math.log2(G)
        glob[rows[0]] = mean_r * (1 - lam * H) if entropy_discount else mean_r
        ent[rows[0]] = H
    values = torch.tensor(list(glob.values()), dtype=torch.float64)
    mu, sd = values.mean(), values.std(unbiased=True)
    a_loc = grpo_advantage(reward, group, eps)
    a_glob, w = torch.zeros_like(reward), torch.zeros_like(reward)
    for rows in groups:
        for i in rows:
            a_glob[i] = (glob[rows[0]] - mu) / (sd + eps) if len(groups) > 1 else 0.0
            w[i] = 1 / (1 + math.exp(-k * (ent[rows[0]] - b)))
            if forced and a_loc[i] == 0:
                w[i] = 0.0
    return a_glob, a_loc, w


def copo_loss(logp, mask, logp_old, reward, group, answer, eps_low=0.2, eps_high=0.2, c=3.0, k=1.0, b=0.5,
              forced=True, entropy_discount=True) -> Tensor:
    a_glob, a_loc, w = copo_advantages(reward, group, answer, k, b, forced, entropy_discount)
    r = torch.exp(logp - logp_old)

    def term(i, t):
        return -((1 - w[i]) * dual_clip(r[i, t], a_glob[i], eps_low, eps_high, c)
                 + w[i] * dual_clip(r[i, t], a_loc[i], eps_low, eps_high, c))
    return _token_mean(term, mask)


# --------------------------------------------------------------------------- f-DPG
def f_of(divergence: str, t: Tensor) -> Tensor:
    """f of D_f(π‖p) = E_p[f(π/p)], from the definitions."""
    if divergence == "kl":
        return -torch.log(t)
    if divergence == "reverse-kl":
        return t * torch.log(t)
    if divergence == "js":
        return t * torch.log(t) - (t + 1) * torch.log((t + 1) / 2)
    if divergence == "tv":
        return (t - 1).abs() / 2
    raise ValueError(divergence)


def f_prime(divergence: str, t: float) -> float:
    x = torch.tensor(float(t), dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(f_of(divergence, x), x)
    return float(g)


def _sequence_probs(logp, mask):
    return [torch.exp(sum(logp[i, t] for t in range(logp.shape[1]) if mask[i, t] > 0)) for i in range(logp.shape[0])]


def f_dpg_targets(logp, mask, logp_old, logp_ref, reward, group, beta=1.0, target="exponential"):
    """(t_i = π_θ(y_i)/p(y_i), w_i = p(y_i)/q(y_i)) per row, with probabilities (π_θ detached)."""
    pi = _sequence_probs(logp.detach(), mask)
    q = _sequence_probs(logp_old, mask)
    ref = _sequence_probs(logp_ref, mask)
    big_p = [ref[i] * (math.exp(float(reward[i]) / beta) if target == "exponential" else float(reward[i]))
             for i in range(len(pi))]
    t, w = [None] * len(pi), [None] * len(pi)
    for rows in prompts(group):
        z = sum(big_p[j] / q[j] for j in rows) / len(rows)
        for i in rows:
            p = big_p[i] / z
            t[i], w[i] = float(pi[i] / p), float(p / q[i])
    return t, w


def f_dpg_pseudo_rewards(logp, mask, logp_old, logp_ref, reward, group, divergence="js", beta=1.0,
                         target="exponential") -> list[float]:
    t, _ = f_dpg_targets(logp, mask, logp_old, logp_ref, reward, group, beta, target)
    return [-f_prime(divergence, ti) for ti in t]


def f_dpg_loss(logp, mask, logp_old, logp_ref, reward, group, divergence="js", beta=1.0, target="exponential",
               baseline=0.0) -> Tensor:
    """disco's FDivergenceLoss: mean_i (sg π_θ(y_i)/q(y_i)) · (−(R_θ − b)) · log π_θ(y_i)."""
    pseudo = f_dpg_pseudo_rewards(logp, mask, logp_old, logp_ref, reward, group, divergence, beta, target)
    total = 0.0
    for i in range(logp.shape[0]):
        log_pi = sum(logp[i, t] for t in range(logp.shape[1]) if mask[i, t] > 0)
        log_q = sum(logp_old[i, t] for t in range(logp.shape[1]) if mask[i, t] > 0)
        ratio = torch.exp(log_pi.detach() - log_q)
        total = total + ratio * (-(pseudo[i] - baseline)) * log_pi
    return total / logp.shape[0]


def f_dpg_divergence(logp, mask, logp_old, logp_ref, reward, group, divergence="js", beta=1.0,
                     target="exponential") -> float:
    """The importance-sampling estimate of D_f(π_θ‖p): mean_i (p/q)(y_i) f(π_θ/p)(y_i)."""
    t, w = f_dpg_targets(logp, mask, logp_old, logp_ref, reward, group, beta, target)
    return sum(wi * float(f_of(divergence, torch.tensor(ti, dtype=torch.float64))) for ti, wi in zip(t, w)) / len(t)
