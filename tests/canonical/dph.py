"""DPH-RL (Li et al. 2025, "The Choice of Divergence: A Neglected Key to Mitigating Diversity Collapse
in RLVR", arXiv 2509.07430), written from the definitions, in probabilities, never importing unigrad.

The f-divergence of P from Q over a finite set of tokens:   D_f(P ‖ Q) = Σ_v Q(v) f(P(v)/Q(v)).

    forward KL  KL(Q ‖ P) = Σ_v Q log(Q/P)                    (f(u) = −log u)
    JS          f(u) = u log u − (u+1) log((u+1)/2)           (the paper's generator; Σ_v Q f(P/Q) is
                                                               2·JSD(P, Q) with JSD = ½KL(P‖M) + ½KL(Q‖M))
    α           f(u) = (u^{1−α} − (1−α)u − α) / (α(α−1))

The per-token sampled loss the paper trains on stored samples a_t ~ π_ref (verl's ``kl_penalty(...,
"low_var_kl")`` with the roles swapped, and ``js_low_var``), written with the probabilities
p = π_θ(a_t), q = π_ref(a_t):

    forward KL  u − log u − 1,  u = p/q     (k3 of KL(π_ref ‖ π_θ))
    JS          u log u − (u+1) log((u+1)/2)
    α           (u^{1−α} − (1−α)u − α) / (α(α−1))

and DPH-RL's whole loss: DAPO on the rollout rows plus η times the token mean of that term on the
stored rows (each a token mean over its own rows).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .rl import dapo_loss


# --------------------------------------------------------------------------- the definitions
def forward_kl(P: Tensor, Q: Tensor) -> Tensor:
    """KL(Q ‖ P) = Σ_v Q(v) log(Q(v)/P(v)), over the last dimension."""
    return (Q * (torch.log(Q) - torch.log(P))).sum(-1)


def js_definition(P: Tensor, Q: Tensor) -> Tensor:
    """2·JSD(P, Q) = KL(P ‖ M) + KL(Q ‖ M), M = (P + Q)/2: Σ_v Q f(P/Q) for the paper's JS generator."""
    M = (P + Q) / 2
    return (P * torch.log(P / M)).sum(-1) + (Q * torch.log(Q / M)).sum(-1)


def alpha_definition(P: Tensor, Q: Tensor, alpha: float) -> Tensor:
    """Σ_v Q f(P/Q) with f(u) = (u^{1−α} − (1−α)u − α)/(α(α−1)), summed term by term."""
    total = torch.zeros(P.shape[:-1], dtype=P.dtype)
    for v in range(P.shape[-1]):
        u = P[..., v] / Q[..., v]
        total = total + Q[..., v] * (u ** (1 - alpha) - (1 - alpha) * u - alpha) / (alpha * (alpha - 1))
    return total


DEFINITIONS = {"forward-kl": lambda P, Q, alpha: forward_kl(P, Q), "js": lambda P, Q, alpha: js_definition(P, Q),
               "alpha": alpha_definition}


# --------------------------------------------------------------------------- the sampled terms
def sampled_term(p: Tensor, q: Tensor, divergence: str, alpha: float = 0.2) -> Tensor:
    """The per-token loss on a stored sample with π_θ(a) = p, π_ref(a) = q (the paper's code's forms)."""
    u = p / q
    if divergence == "forward-kl":
        return u - torch.log(u) - 1
    if divergence == "js":
        return u * torch.log(u) - (u + 1) * torch.log((u + 1) / 2)
    if divergence == "alpha":
        return (u ** (1 - alpha) - (1 - alpha) * u - alpha) / (alpha * (alpha - 1))
    raise ValueError(divergence)


def rehearsal_loss(logp: Tensor, mask: Tensor, logp_ref: Tensor, divergence: str, alpha: float = 0.2) -> Tensor:
    """(1/N) Σ_{b,t} term(π_θ, π_ref) over the stored rows' tokens, with a loop over tokens."""
    total, count = logp.new_zeros(()), 0.0
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if mask[b, t] > 0:
                total = total + sampled_term(torch.exp(logp[b, t]), torch.exp(logp_ref[b, t]), divergence, alpha)
                count += 1
    return total / count


def dph_loss(logp, mask, logp_old, reward, group, is_rehearsal, logp_ref, divergence="js", eta=0.05,
             eps_low=0.2, eps_high=0.28, alpha=0.2) -> Tensor:
    """L = L_DAPO(rollout rows) + η · rehearsal_loss(stored rows)."""
    exp, pef = ~is_rehearsal, is_rehearsal
    loss = dapo_loss(logp[exp], mask[exp], logp_old[exp], reward[exp], group[exp], eps_low, eps_high)
    if pef.any():
        loss = loss + eta * rehearsal_loss(logp[pef], mask[pef], logp_ref[pef], divergence, alpha)
    return loss
