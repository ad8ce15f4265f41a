"""Canonical Nash-MD and Nash-MP, in float64, never importing unigrad.

Sampled form (Munos et al. 2024, "Nash Learning from Human Feedback", §7, Nash-MD-PG): rows are
responses y_b ~ π_θ with an opponent sample y′_b and the preference p_b = P(y_b ≻ y′_b); ℓ(y) the
sequence sum of token log-probs. The paper's gradient estimate is

    ĝ = (1/B) Σ_b (p_b − ½ − τ log(π_θ(y_b)/μ(y_b))) ∇ log π_θ(y_b),

written below as the loss whose gradient is −ĝ, one row at a time.

Nash-MP (Tiapkin et al. 2025, arXiv 2505.19731): each half step is the proximal problem

    max_π  P(π ≻ π_j) − β KL(π‖μ) − (β/η) KL(π‖π_k),     π_j = π_k (half step) or π_{k+½} (full step)

(FORMULAS §17b's argmin (1/β) P(π_j ≻ π) + KL(π‖μ) + (1/η) KL(π‖π_k), times −β); its sampled
gradient at the centre π = π_k weighs ∇ log π(y_b) by p_b − ½ − β h_μ(y_b) − (β/η) h_k(y_b).

Exact (tabular) form: π_θ = softmax(θ) over n responses, P[y, y′] the preference matrix; the
objectives above written as explicit sums over responses and differentiated by autograd, and the
proximal problems solved in closed form from their stationarity condition.
"""
from __future__ import annotations

import torch


def _sequence(values: torch.Tensor, mask: torch.Tensor, row: int) -> torch.Tensor:
    return sum(values[row, t] for t in range(values.shape[1]) if mask[row, t] > 0)


def nash_md_pg_loss(logp, mask, logp_ref, preference, tau: float) -> torch.Tensor:
    """−ĝ's loss: −(1/B) Σ_b sg[p_b − ½ − τ (ℓ(y_b) − ℓ_ref(y_b))] ℓ(y_b)."""
    B = logp.shape[0]
    total = 0.0
    for b in range(B):
        ell = _sequence(logp, mask, b)
        weight = preference[b] - 0.5 - tau * (ell.detach() - _sequence(logp_ref, mask, b))
        total = total - weight * ell
    return total / B


def nash_mp_step_loss(logp, mask, logp_ref, logp_anchor, preference, beta: float, eta: float) -> torch.Tensor:
    """The proximal problem's sampled loss: −(1/B) Σ_b sg[p_b − ½ − β h_μ − (β/η) h_k] ℓ(y_b), h_μ = ℓ − ℓ_ref,
    h_k = ℓ − ℓ_anchor (both detached)."""
    B = logp.shape[0]
    total = 0.0
    for b in range(B):
        ell = _sequence(logp, mask, b)
        h_ref = ell.detach() - _sequence(logp_ref, mask, b)
        h_anchor = ell.detach() - _sequence(logp_anchor, mask, b)
        total = total - (preference[b] - 0.5 - beta * h_ref - (beta / eta) * h_anchor) * ell
    return total / B


# ---- the tabular game, exact

def prob_beats(P: torch.Tensor, pi_opponent: torch.Tensor) -> torch.Tensor:
    """P(y ≻ π′) = Σ_{y′} π′(y′) P[y, y′], response by response."""
    n = P.shape[0]
    return torch.stack([sum(pi_opponent[j] * P[i, j] for j in range(n)) for i in range(n)])


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return sum(p[i] * (torch.log(p[i]) - torch.log(q[i])) for i in range(p.shape[0]))


def game_payoff(theta, P, mu, pi_opponent, tau: float) -> torch.Tensor:
    """Σ_y π_θ(y) [P(y ≻ π′) − ½] − τ KL(π_θ‖μ), π′ held fixed."""
    pi = torch.softmax(theta, 0)
    wins = prob_beats(P, pi_opponent)
    return sum(pi[i] * (wins[i] - 0.5) for i in range(pi.shape[0])) - tau * kl(pi, mu)


def nash_md_payoff(theta, P, mu, tau: float, mixture: float) -> torch.Tensor:
    """Nash-MD-PG's objective: the payoff against the geometric mixture π′ ∝ sg π_θ^{1−β} μ^β."""
    pi = torch.softmax(theta, 0).detach()
    opponent = pi ** (1 - mixture) * mu ** mixture
    return game_payoff(theta, P, mu, opponent / opponent.sum(), tau)


def proximal_payoff(theta, P, mu, pi_opponent, pi_center, beta: float, eta: float) -> torch.Tensor:
    """Nash-MP's proximal problem P(π_θ ≻ π_j) − β KL(π_θ‖μ) − (β/η) KL(π_θ‖π_k)."""
    pi = torch.softmax(theta, 0)
    return game_payoff(theta, P, mu, pi_opponent, beta) + 0.5 - (beta / eta) * kl(pi, pi_center)


def proximal_solution(P, mu, pi_opponent, pi_center, beta: float, eta: float) -> torch.Tensor:
    """argmax of ``proximal_payoff`` over the simplex: its stationarity condition
    P(y≻π_j) − β(log π/μ + 1) − (β/η)(log π/π_k + 1) = λ gives
    π(y) ∝ exp((η P(y≻π_j)/β + η log μ(y) + log π_k(y)) / (1 + η))."""
    logits = (eta * prob_beats(P, pi_opponent) / beta + eta * torch.log(mu) + torch.log(pi_center)) / (1 + eta)
    w = torch.exp(logits - logits.max())
    return w / w.sum()


def nash_mp_iteration(P, mu, pi_k, beta: float, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(π_{k+½}, π_{k+1}): the two proximal steps, both centred at π_k."""
    half = proximal_solution(P, mu, pi_k, pi_k, beta, eta)
    return half, proximal_solution(P, mu, half, pi_k, beta, eta)


def payoff_estimate_loss(logp, mask, logp_ref, preference, tau: float) -> torch.Tensor:
    """The canonical objective value: −(1/B) Σ_b [p_b − ½ − τ (ℓ(y_b) − ℓ_ref(y_b))], minus the regularised
    game's payoff against the opponent, estimated on the rows."""
    B = logp.shape[0]
    return -sum(preference[b] - 0.5 - tau * (_sequence(logp, mask, b) - _sequence(logp_ref, mask, b))
                for b in range(B)) / B


def sppo_loss(token_probs, mask, ref_token_probs, win_rate, eta: float) -> torch.Tensor:
    """SPPO (Wu et al. 2024, Algorithm 1), sample by sample with probabilities: π(y) = Π_t p_t over the
    completion's tokens, and (1/N) Σ_y ( log(π_θ(y)/π_t(y)) − η (P̂(y ≻ π_t) − ½) )²."""
    total = 0.0
    for row in range(token_probs.shape[0]):
        pi, pi_t = 1.0, 1.0
        for t in range(token_probs.shape[1]):
            if mask[row, t] > 0:
                pi = pi * token_probs[row, t]
                pi_t = pi_t * ref_token_probs[row, t]
        total = total + (torch.log(pi / pi_t) - eta * (win_rate[row] - 0.5)) ** 2
    return total / token_probs.shape[0]
