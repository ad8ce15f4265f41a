"""Canonical SFT and pairwise-preference losses, transcribed from the papers (float64).

Notation (shared with unigrad's contract, but implemented independently here):
    ℓ(y)   = Σ_t logp[b,t]·mask[b,t]        sequence sum of completion-token log-probs
    |y|    = Σ_t mask[b,t]
    ℓ̄(y)   = ℓ(y) / |y|                      length-normalised log-prob
    h(y)   = ℓ(y) − ℓ_ref(y)                 log π_θ(y|x)/π_ref(y|x)
A pair is the two rows sharing ``group``; ``sign`` = +1 marks the chosen row y_w, −1 the
rejected row y_l. Rows may be in any order. Every pairwise loss is the MEAN over pairs.

This module must stay independent of the library under test (no imports from it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


# --------------------------------------------------------------------------- sequence quantities
def seq_logp(logp: Tensor, mask: Tensor) -> Tensor:
    """ℓ(y) = Σ_t logp·mask, one value per row."""
    return (logp * mask).sum(dim=1)


def seq_len(mask: Tensor) -> Tensor:
    """|y| = Σ_t mask, one value per row."""
    return mask.sum(dim=1)


def seq_logp_mean(logp: Tensor, mask: Tensor) -> Tensor:
    """ℓ̄(y) = ℓ(y)/|y|."""
    return seq_logp(logp, mask) / seq_len(mask)


def pair_indices(group: Tensor, sign: Tensor) -> tuple[Tensor, Tensor]:
    """(chosen_rows, rejected_rows): for every distinct group id, the row with sign +1 and the
    row with sign −1. A plain loop, for clarity."""
    chosen, rejected = [], []
    for g in torch.unique(group).tolist():
        rows = (group == g).nonzero().flatten().tolist()
        assert len(rows) == 2, f"group {g} has {len(rows)} rows, a pair needs exactly 2"
        w = [r for r in rows if sign[r] > 0]
        l = [r for r in rows if sign[r] < 0]
        assert len(w) == 1 and len(l) == 1, f"group {g} needs one chosen (+1) and one rejected (−1) row"
        chosen.append(w[0])
        rejected.append(l[0])
    return torch.tensor(chosen), torch.tensor(rejected)


# --------------------------------------------------------------------------- SFT
def sft_loss(logp: Tensor, mask: Tensor) -> Tensor:
    """−(1/N) Σ_{b,t} mask·logp with N the number of completion tokens (token mean)."""
    return -(logp * mask).sum() / mask.sum()


# --------------------------------------------------------------------------- DPO (Rafailov et al. 2023, eq. 7)
def dpo_loss(logp, mask, logp_ref, group, sign, beta: float) -> Tensor:
    """−log σ( β·log π/π_ref(y_w) − β·log π/π_ref(y_l) ), mean over pairs."""
    h = seq_logp(logp, mask) - seq_logp(logp_ref, mask)
    w, l = pair_indices(group, sign)
    return -F.logsigmoid(beta * h[w] - beta * h[l]).mean()


# --------------------------------------------------------------------------- IPO (Azar et al. 2023, eq. 17)
def ipo_loss(logp, mask, logp_ref, group, sign, tau: float) -> Tensor:
    """( h(y_w) − h(y_l) − 1/(2τ) )², with h from sequence sums, mean over pairs."""
    h = seq_logp(logp, mask) - seq_logp(logp_ref, mask)
    w, l = pair_indices(group, sign)
    return ((h[w] - h[l] - 1.0 / (2.0 * tau)) ** 2).mean()


# --------------------------------------------------------------------------- SimPO (Meng et al. 2024, eq. 6)
def simpo_loss(logp, mask, group, sign, beta: float, gamma: float) -> Tensor:
    """−log σ( β/|y_w|·log π(y_w) − β/|y_l|·log π(y_l) − γ ), no reference, mean over pairs."""
    lbar = seq_logp_mean(logp, mask)
    w, l = pair_indices(group, sign)
    return -F.logsigmoid(beta * lbar[w] - beta * lbar[l] - gamma).mean()


# --------------------------------------------------------------------------- ORPO (Hong et al. 2024, eqs. 2–7)
def orpo_loss(logp, mask, group, sign, lam: float) -> Tensor:
    """L_ORPO = L_SFT + λ·L_OR (eq. 6) with
         P(y)      = exp( (1/|y|) Σ_t log P_θ(y_t|x,y_<t) )   length-normalised likelihood
         odds(y)   = P(y) / (1 − P(y))
         L_SFT     = −(1/|y_w|) Σ_t log P_θ(y_w,t | x, y_w,<t) = −ℓ̄(y_w)   (NLL of the chosen answer)
         L_OR      = −log σ( log odds(y_w)/odds(y_l) )        (eq. 7)
       mean over pairs. Written literally through P and odds (needs P(y) < 1, i.e. ℓ̄ < 0)."""
    lbar = seq_logp_mean(logp, mask)
    P = torch.exp(lbar)
    log_odds = torch.log(P / (1.0 - P))
    w, l = pair_indices(group, sign)
    l_sft = -lbar[w]
    l_or = -F.logsigmoid(log_odds[w] - log_odds[l])
    return (l_sft + lam * l_or).mean()


# --------------------------------------------------------------------------- f-DPO (Wang et al. 2023)
# Table 1 of "Beyond Reverse KL" (f-divergences and their derivatives f′(u)); u = π_θ(y|x)/π_ref(y|x).
def f_prime(u: Tensor, divergence: str, alpha: float | None = None) -> Tensor:
    if divergence == "reverse_kl":      # f(u) = u log u
        return torch.log(u) + 1.0
    if divergence == "forward_kl":      # f(u) = −log u
        return -1.0 / u
    if divergence == "js":              # f(u) = u log u − (u+1) log((u+1)/2)
        return torch.log(2.0 * u / (1.0 + u))
    if divergence == "alpha":           # f(u) = (u^{1−α} − (1−α)u − α) / (α(α−1)),  α ∈ (0,1)
        assert alpha is not None and 0.0 < alpha < 1.0, "the paper's α-divergence needs α in (0, 1)"
        return (1.0 - u ** (-alpha)) / alpha
    raise ValueError(f"unknown divergence {divergence!r}")


def f_dpo_loss(logp, mask, logp_ref, group, sign, beta: float, divergence: str,
               alpha: float | None = None) -> Tensor:
    """−log σ( β f′(u_w) − β f′(u_l) ), u = π_θ(y|x)/π_ref(y|x) = exp(h(y)), mean over pairs."""
    u = torch.exp(seq_logp(logp, mask) - seq_logp(logp_ref, mask))
    fp = f_prime(u, divergence, alpha)
    w, l = pair_indices(group, sign)
    return -F.logsigmoid(beta * fp[w] - beta * fp[l]).mean()


# --------------------------------------------------------------------------- dispatch by unigrad's names
def canonical(name: str, logp, mask, logp_ref=None, group=None, sign=None, **params) -> Tensor:
    """The canonical loss for unigrad method ``name`` with the same keyword parameters."""
    if name == "sft":
        return sft_loss(logp, mask)
    if name == "dpo":
        return dpo_loss(logp, mask, logp_ref, group, sign, **params)
    if name == "ipo":
        return ipo_loss(logp, mask, logp_ref, group, sign, **params)
    if name == "simpo":
        return simpo_loss(logp, mask, group, sign, **params)
    if name == "orpo":
        return orpo_loss(logp, mask, group, sign, **params)
    if name == "f-dpo":
        return f_dpo_loss(logp, mask, logp_ref, group, sign, **params)
    raise ValueError(f"no canonical loss for {name!r}")


__all__ = ["seq_logp", "seq_len", "seq_logp_mean", "pair_indices", "sft_loss", "dpo_loss", "ipo_loss",
           "simpo_loss", "orpo_loss", "f_prime", "f_dpo_loss", "canonical"]


# --------------------------------------------------------------------------- reward model (Bradley–Terry)
def reward_model_loss(score: Tensor, group: Tensor, sign: Tensor, margin: float = 0.0,
                      center_rewards_coefficient: float = 0.0, pair_margin: Tensor | None = None) -> Tensor:
    """Ouyang et al. 2022 ("Training language models to follow instructions with human feedback", §3.5,
    eq. 1, one comparison per prompt): the Bradley–Terry model says the labeller prefers y_w with
    probability P = 1 / (1 + exp(−(r(x, y_w) − r(x, y_l)))), and the loss is −log P averaged over the
    comparisons. Llama 2 (Touvron et al. 2023, §3.2.2) subtracts a margin m(r) inside: P = σ(r_w − r_l − m);
    here m = ``margin`` + the pair's ``pair_margin`` (read on its chosen row) when given. TRL's
    RewardTrainer adds η·(r_w + r_l)² per pair (``center_rewards_coefficient``). Written with the
    probability and a Python loop over the pairs; ``score`` is one scalar per row."""
    total, count = score.new_zeros(()), 0
    for g in torch.unique(group).tolist():
        rows = (group == g).nonzero().flatten().tolist()
        assert len(rows) == 2, f"group {g} has {len(rows)} rows, a comparison needs exactly 2"
        (w,) = [r for r in rows if sign[r] > 0]
        (l,) = [r for r in rows if sign[r] < 0]
        m = margin + (float(pair_margin[w]) if pair_margin is not None else 0.0)
        p_w = 1.0 / (1.0 + torch.exp(-(score[w] - score[l] - m)))
        total = total - torch.log(p_w) + center_rewards_coefficient * (score[w] + score[l]) ** 2
        count += 1
    return total / count


__all__ += ["reward_model_loss"]
