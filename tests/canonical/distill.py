"""Canonical distillation losses, float64, written from the papers' formulas. Never imports unigrad.

Two entry points per loss:
- ``*_from_logits``: from full-vocabulary logits [B, T, V] of student and teacher, the per-token
  distributions p = softmax(z), restricted to the teacher's top-k support S by *coarse-graining*
  (bucket: the k probabilities of S, then the summed probability of every other token) or by
  *renormalising* over S, written directly with probabilities (no log-sum-exp tricks, no masking tricks).
- ``*_from_categories``: from per-token category log-probs (what a top-k engine hands over):
  student/teacher log-probs at S [B, T, k] and the log-mass outside S [B, T] (or None).

Every loss is the token mean over unmasked tokens: (1/N) Σ_{b,t} mask · D_{b,t}.

Sources: forward/reverse KL (Hinton et al. 2015; MiniLLM); generalised JSD(β) of GKD (Agarwal et al. 2024,
m = β p_T + (1 − β) p_S, β = 0 forward KL and β = 1 reverse KL as in TRL's ``generalized_jsd_loss``);
BD-KD (Amara et al.; weight rule reconstructed: δ on reverse KL when H(p_S) > H(p_T), else on forward KL);
SinKD (Cui et al. 2024, "Sinkhorn Distance Minimization for Knowledge Distillation": batch-wise L1 cost
between softened distributions, Gibbs kernel exp(−D/ε), Sinkhorn-Knopp row/column normalisations of the
plan, transported cost / N; T = 2, ε = 0.1, 20 iterations as in the official code); PLD (Bassam et al. 2025: π* = label first then descending teacher,
α_k = p_T(π*_k), L = Σ_k α_k (−s_k + log Σ_{ℓ≥k} e^{s_ℓ})).
"""
from __future__ import annotations

import torch


# ------------------------------------------------------------------------ per-token distributions

def coarse_grain(p: torch.Tensor, idx: torch.Tensor | None, mode: str) -> torch.Tensor:
    """p [..., V] probabilities → [..., C]: S's probabilities (+ the rest, "bucket") or S renormalised."""
    if idx is None:
        return p
    on_s = torch.gather(p, -1, idx)
    if mode == "bucket":
        rest = p.scatter(-1, idx, 0.0).sum(-1, keepdim=True)   # Σ of the probabilities NOT in S
        return torch.cat([on_s, rest], -1)
    return on_s / on_s.sum(-1, keepdim=True)


def divergence(p_t: torch.Tensor, p_s: torch.Tensor, kind: str, beta: float = 0.5, delta: float = 2.0) -> torch.Tensor:
    """Per-token divergence from probability vectors (categories where p_T = 0 and p_S = 0 are skipped)."""
    def kl(p, q):
        keep = p > 0
        return torch.where(keep, p * (torch.log(torch.where(keep, p, 1.0)) - torch.log(torch.where(keep, q, 1.0))),
                           torch.zeros_like(p)).sum(-1)

    if kind == "forward":
        return kl(p_t, p_s)
    if kind == "reverse":
        return kl(p_s, p_t)
    if kind == "js":
        if beta == 0.0:
            return kl(p_t, p_s)
        if beta == 1.0:
            return kl(p_s, p_t)
        m = beta * p_t + (1 - beta) * p_s
        return beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)
    if kind == "bd":
        def entropy(p):
            return -(torch.where(p > 0, p * torch.log(torch.where(p > 0, p, 1.0)), torch.zeros_like(p))).sum(-1)
        student_flatter = (entropy(p_s) > entropy(p_t)).to(p_s.dtype)
        w_f = student_flatter * 1.0 + (1 - student_flatter) * delta
        w_r = student_flatter * delta + (1 - student_flatter) * 1.0
        return w_f * kl(p_t, p_s) + w_r * kl(p_s, p_t)
    raise ValueError(kind)


def kd_from_logits(student_logits, teacher_logits, mask, k, kind, mode="bucket", beta=0.5, delta=2.0):
    """Token-mean divergence between softmax(teacher) and softmax(student) on the teacher's top-k."""
    p_s = torch.softmax(student_logits, -1)
    p_t = torch.softmax(teacher_logits, -1)
    idx = None if k is None else torch.topk(teacher_logits, k, -1).indices
    d = divergence(coarse_grain(p_t, idx, mode), coarse_grain(p_s, idx, mode), kind, beta, delta)
    return (d * mask).sum() / mask.sum()


def kd_from_categories(s_topk, t_topk, s_rest, t_rest, mask, kind, mode="bucket", beta=0.5, delta=2.0):
    """The same from category log-probs (S's log-probs and the log-mass outside S, or None)."""
    p_s, p_t = s_topk.exp(), t_topk.exp()
    if mode == "bucket":
        if s_rest is not None:
            p_s = torch.cat([p_s, s_rest.exp()[..., None]], -1)
            p_t = torch.cat([p_t, t_rest.exp()[..., None]], -1)
    else:
        p_s = p_s / p_s.sum(-1, keepdim=True)
        p_t = p_t / p_t.sum(-1, keepdim=True)
    d = divergence(p_t, p_s, kind, beta, delta)
    d = torch.where(mask > 0, d, torch.zeros_like(d))
    return (d * mask).sum() / mask.sum()


# ------------------------------------------------------------------------------------------ SinKD

def sinkd_loss(student_logp, teacher_logp, mask, epsilon=0.1, iterations=20, temperature=2.0):
    """SinKD's batch-wise Sinkhorn distance (Cui et al. 2024, the paper's "batch-wise reformulation"; its
    samples are here the N unmasked tokens of the batch, in row-major order). In probability space, with
    temperature-softened distributions s_i(v) = exp(z_S,i(v)/τ) / Σ_u exp(z_S,i(u)/τ) (and t_j likewise):

        D_ij  = Σ_v |s_i(v) − t_j(v)|               the N × N cost matrix (L1 distance)
        K⁰_ij = exp(−D_ij / ε)                       the Gibbs kernel: the initial transport plan
        K^l: each row i divided by its sum, then each column j by its sum   (Sinkhorn-Knopp, l = 1..L)
        W     = Σ_ij K^L_ij D_ij                     the transported cost (the plan is not detached)

    and L = W / N. Written with loops over rows and columns of the plan, one entry at a time."""
    rows = []
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t] > 0:
                rows.append((b, t))
    n = len(rows)

    def softened(logp):
        weights = torch.exp(logp / temperature)
        return weights / weights.sum()

    s = [softened(student_logp[b, t]) for b, t in rows]
    t_ = [softened(teacher_logp[b, t]) for b, t in rows]
    cost = [[torch.abs(s[i] - t_[j]).sum() for j in range(n)] for i in range(n)]
    plan = [[torch.exp(-cost[i][j] / epsilon) for j in range(n)] for i in range(n)]
    for _ in range(iterations):
        for i in range(n):
            row_sum = sum(plan[i][j] for j in range(n))
            plan[i] = [plan[i][j] / row_sum for j in range(n)]
        for j in range(n):
            col_sum = sum(plan[i][j] for i in range(n))
            for i in range(n):
                plan[i][j] = plan[i][j] / col_sum
    transported = sum(plan[i][j] * cost[i][j] for i in range(n) for j in range(n))
    return transported / n


# -------------------------------------------------------------------------------------------- PLD

def pld_from_logits(student_logits, teacher_logits, target, mask, k=None, label="token"):
    """Per token: π* = (y, then the rest by descending teacher logit) [label="token"] or all by descending
    teacher logit [label="teacher"]; α_k = softmax(t)_{π*_k}; L = Σ_k α_k (−s_{π*_k} + log Σ_{ℓ≥k} e^{s_{π*_ℓ}}).
    With top-k, only the stages whose token is in S (or is y) are kept (S ∪ {y} come first in π*)."""
    B, T, V = student_logits.shape
    total = student_logits.new_zeros(())
    for b in range(B):
        for t in range(T):
            if mask[b, t] == 0:
                continue
            s, z = student_logits[b, t], teacher_logits[b, t]
            alpha = torch.softmax(z, -1)
            ranking = [int(v) for v in torch.argsort(z, descending=True)]
            if label == "token":
                y = int(target[b, t])
                ranking = [y] + [v for v in ranking if v != y]
            if k is None:
                stages = V
            else:
                listed = {int(v) for v in torch.topk(z, k).indices}
                if label == "token":
                    listed.add(int(target[b, t]))
                stages = len(listed)
            loss = s.new_zeros(())
            for i in range(stages):
                rest = torch.tensor(ranking[i:])
                loss = loss + alpha[ranking[i]] * (-s[ranking[i]] + torch.log(torch.exp(s[rest]).sum()))
            total = total + mask[b, t] * loss
    return total / mask.sum()
