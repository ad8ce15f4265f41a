"""Distillation objectives: token-level divergences between the teacher's and the student's next-token distributions.

Inputs (``Batch.extra``, filled by ``unigrad.logprobs.distill_fields``; S = the teacher's top-k per token,
or the full vocabulary when k = None):
    student_logp_topk [B, T, k]  log p_S(v), v ∈ S, normalised over the full vocabulary (with grad)
    teacher_logp_topk [B, T, k]  log p_T(v), v ∈ S (detached)
    student_logp_rest, teacher_logp_rest [B, T]  log Σ_{v∉S} p(v)  (−inf when S is the full vocabulary)
PLD also reads student_logp_target / teacher_logp_target [B, T] (log p(y_t) of the completion token),
student_logp_tail [B, T] (log Σ_{v∉S∪{y_t}} p_S(v)) and target_in_topk [B, T, k] (bool).

Every objective here is a token mean over the optimiser step: L = (1/N) Σ_{b,t} mask · D_{b,t}, with
N = ``batch.tokens_total`` (so accumulated micro-batches give the step's loss exactly — except SinKD, whose
transport couples the tokens of one micro-batch). ``objective`` = L (the losses are their own canonical
values; no surrogate is needed since the student's log-probs carry the gradient directly).

Restriction to the top-k support (``support=``), exact when k = None (full vocabulary):
- ``"bucket"`` (default): the k entries plus ONE bucket holding the rest of the mass, for both models:
  p̂ = (p(v_1), …, p(v_k), 1 − Σ_S p). The divergence of these coarse-grained distributions is a lower
  bound of the full one (data-processing inequality) and equals it when k = V (the bucket is empty and
  dropped). The bucket masses come from an exact masked log-sum-exp, never from 1 − Σ.
- ``"renormalise"``: both distributions restricted to S and renormalised, p̃(v) = p(v)/Σ_S p.

These objectives need full (or top-k) distributions, so they are standalone objectives like
``KLPenalty`` rather than Estimator compositions (FORMULAS.md, closing section); where the gradient is a
weighted likelihood gradient the docstring says which.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.estimator.checks import fraction, integer, number, one_of, positive, text
from unigrad.estimator.protocols import Output

SUPPORTS = ("bucket", "renormalise")
_NEG = -1e30   # a finite stand-in for log 0 where −inf would make autograd produce nan
BD_KD_DELTA = ("the weight of the favoured divergence (reverse KL where the student is flatter, forward KL "
               "elsewhere); below 1 it would favour the other one, 1 is their plain sum")
SUPPORT = "the teacher's top-k plus one bucket for the rest of the mass, or the top-k renormalised"
JSD_BETA = "the mixture m = β p_T + (1 − β) p_S: 0 is forward KL, 1 reverse KL"
SINKHORN_EPSILON = "the entropic regularisation of K = exp(−W/ε)"
SINKHORN_ITERATIONS = "the number of Sinkhorn row and column normalisations"
SINKHORN_TEMPERATURE = "the softmax temperature T of both distributions"
PLD_LABEL = "the ranking starts with the data token y_t, or follows the teacher alone"


def _check_support(objective) -> None:
    one_of(objective, "support", objective.support, SUPPORTS, SUPPORT)


def _token_distributions(batch: Batch, support: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(log p_S, log p_T, valid, w) over the categories of each unmasked token ([N, C]; w [N] the mask).
    ``valid`` is False on categories the teacher gives no mass (the empty bucket when S is the vocabulary)."""
    sel = batch.mask > 0
    student = batch.require("student_logp_topk")[sel]
    teacher = batch.require("teacher_logp_topk")[sel].detach().to(student.dtype)
    weight = batch.mask[sel].to(student.dtype)
    if support == "renormalise":
        student = student - torch.logsumexp(student, dim=-1, keepdim=True)
        teacher = teacher - torch.logsumexp(teacher, dim=-1, keepdim=True)
    else:
        s_rest, t_rest = batch.extra.get("student_logp_rest"), batch.extra.get("teacher_logp_rest")
        if s_rest is None or t_rest is None:
            covered = torch.logsumexp(teacher, dim=-1)
            if teacher.numel() and covered.abs().max() > 1e-4:
                raise ValueError("support='bucket' on a top-k support needs extra fields `student_logp_rest` and "
                                 "`teacher_logp_rest` (unigrad.logprobs.distill_fields provides them)")
        else:
            s_rest, t_rest = s_rest[sel], t_rest[sel].detach().to(student.dtype)
            if torch.isfinite(t_rest).any():
                student = torch.cat([student, s_rest[:, None]], dim=-1)
                teacher = torch.cat([teacher, t_rest[:, None]], dim=-1)
    valid = torch.isfinite(teacher)
    student = torch.where(valid, student, torch.zeros_like(student))
    teacher = torch.where(valid, teacher, torch.zeros_like(teacher))
    return student, teacher, valid, weight


def _kl(log_p: Tensor, log_q: Tensor, valid: Tensor) -> Tensor:
    """KL(p ‖ q) = Σ_v p(v) (log p(v) − log q(v)) per row, over valid categories."""
    return torch.where(valid, log_p.exp() * (log_p - log_q), torch.zeros_like(log_p)).sum(-1)


def _entropy(log_p: Tensor, valid: Tensor) -> Tensor:
    return -torch.where(valid, log_p.exp() * log_p, torch.zeros_like(log_p)).sum(-1)


def _token_mean(per_token: Tensor, weight: Tensor, batch: Batch) -> Tensor:
    return (per_token * weight).sum() / max(batch.tokens_total, 1.0)


_KD_REQUIRES = frozenset({"logp", "mask", "student_logp_topk", "teacher_logp_topk"})
_BUCKET_REQUIRES = frozenset({"student_logp_rest", "teacher_logp_rest"})


def _support_requires(objective) -> frozenset[str]:
    """The fields a divergence over ``objective.support`` reads: the top-k log-probs, and the
    rest-of-vocabulary bucket when the support is ``"bucket"``."""
    return _KD_REQUIRES | (_BUCKET_REQUIRES if objective.support == "bucket" else frozenset())


def generalised_jsd(log_s: Tensor, log_t: Tensor, valid: Tensor, beta: float) -> Tensor:
    """GKD's JSD(β) per row: β KL(p_T ‖ m) + (1 − β) KL(p_S ‖ m), m = β p_T + (1 − β) p_S;
    β = 0 → KL(p_T ‖ p_S) (forward), β = 1 → KL(p_S ‖ p_T) (reverse), as TRL's ``generalized_jsd_loss``."""
    if beta == 0.0:
        return _kl(log_t, log_s, valid)
    if beta == 1.0:
        return _kl(log_s, log_t, valid)
    log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log1p(-beta))
    return beta * _kl(log_t, log_m, valid) + (1.0 - beta) * _kl(log_s, log_m, valid)


@dataclass(frozen=True)
class TokenDivergence:
    """L = (1/N) Σ_{b,t} mask · D(p_T,bt, p_S,bt) with D = JSD(β) (GKD), on the ``support`` categories.

    β = 0 is forward KL(p_T ‖ p_S), β = 1 reverse KL(p_S ‖ p_T). GKD's on-policy fraction λ is not
    part of the loss: it is the config key ``data.on_policy_fraction``."""

    beta: float = 0.5
    support: str = "bucket"
    name: str = "kd-js"

    def __post_init__(self):
        fraction(self, "beta", self.beta, JSD_BETA)
        _check_support(self)
        text(self, "name", self.name, "it names the method in metrics")

    requires = property(_support_requires)

    def loss(self, batch: Batch) -> Output:
        log_s, log_t, valid, weight = _token_distributions(batch, self.support)
        loss = _token_mean(generalised_jsd(log_s, log_t, valid, float(self.beta)), weight, batch)
        return Output(loss=loss, objective=loss.detach(), metrics={"divergence": float(loss.detach())})


@dataclass(frozen=True)
class BalancedKD:
    """BD-KD's student distillation term (reconstruction, confidence L — see ``bd_kd``):

        D = w_F · KL(p_T ‖ p_S) + w_R · KL(p_S ‖ p_T),
        (w_F, w_R) = (1, δ) if H(p_S) > H(p_T)  (student less confident: favour mode-seeking reverse KL)
                     (δ, 1) otherwise            (student over-confident: favour mass-covering forward KL)
    per token, entropies on the ``support`` categories, weights detached (piecewise constant)."""

    delta: float = 2.0
    support: str = "bucket"

    def __post_init__(self):
        number(self, "delta", self.delta, BD_KD_DELTA, low=1)
        _check_support(self)

    requires = property(_support_requires)

    def loss(self, batch: Batch) -> Output:
        log_s, log_t, valid, weight = _token_distributions(batch, self.support)
        gap = (_entropy(log_s, valid) - _entropy(log_t, valid)).detach()
        student_flatter = gap > 0
        one = torch.ones_like(gap)
        w_forward = torch.where(student_flatter, one, self.delta * one)
        w_reverse = torch.where(student_flatter, self.delta * one, one)
        per_token = w_forward * _kl(log_t, log_s, valid) + w_reverse * _kl(log_s, log_t, valid)
        loss = _token_mean(per_token, weight, batch)
        frac = float(student_flatter.to(log_s.dtype).mean()) if gap.numel() else 0.0
        return Output(loss=loss, objective=loss.detach(),
                      metrics={"divergence": float(loss.detach()), "reverse_favoured": frac})


@dataclass(frozen=True)
class Sinkhorn:
    """SinKD (Cui et al. 2024, "Sinkhorn Distance Minimization for Knowledge Distillation", LREC-COLING;
    official code 2018cx/SinKD, ``loss.py``/``GPT-Neo/lossd.py`` class ``Sinkhorn``): the N unmasked tokens
    of the (micro-)batch are the samples ("batch-wise"),

        p_S,i = softmax(log p_S,i / T),  p_T,j = softmax(log p_T,j / T)     (T = 2; exact: softmax is
                                                                           shift-invariant, so = softmax(z/T))
        W_ij = ‖p_S,i − p_T,j‖_1,   K = exp(−W/ε),  ε = 0.1
        P = K, then ``iterations`` × {rows ← rows / row sums; columns ← columns / column sums}
        L = (1/N_step) Σ_ij P_ij W_ij        back-propagated through P (not detached), as the code does.
    The code runs 20 iterations (``sinkhorn_loss(..., n_iters=20)`` overrides the helper's default 10)
    and multiplies Σ P W by c = 0.0008 (GPT-Neo, T0); here Σ P W (mass N after the last column step) is
    divided by the step's token count instead, so use a ``Term`` weight ≈ c · N for the code's scale.
    Needs the full vocabulary (k = None): the L1 cost compares tokens with different top-k supports.
    Cost O(N² V) per micro-batch: keep micro-batches small."""

    epsilon: float = 0.1
    iterations: int = 20
    temperature: float = 2.0

    def __post_init__(self):
        positive(self, "epsilon", self.epsilon, SINKHORN_EPSILON)
        integer(self, "iterations", self.iterations, SINKHORN_ITERATIONS)
        positive(self, "temperature", self.temperature, SINKHORN_TEMPERATURE)

    @property
    def requires(self) -> frozenset[str]:
        return _KD_REQUIRES

    def loss(self, batch: Batch) -> Output:
        if batch.extra.get("topk_indices") is not None or (
                batch.extra.get("teacher_logp_rest") is not None
                and torch.isfinite(batch.extra["teacher_logp_rest"][batch.mask > 0]).any()):
            raise ValueError("sinkd needs full-vocabulary distributions (distill_fields with k=None)")
        sel = batch.mask > 0
        log_s = batch.require("student_logp_topk")[sel]
        log_t = batch.require("teacher_logp_topk")[sel].detach().to(log_s.dtype)
        p_s = torch.softmax(log_s / self.temperature, dim=-1)
        p_t = torch.softmax(log_t / self.temperature, dim=-1)
        cost = torch.cdist(p_s[None], p_t[None], p=1)[0]                   # [N, N]
        plan = torch.exp(-cost / self.epsilon)
        for _ in range(int(self.iterations)):
            plan = plan / plan.sum(dim=1, keepdim=True)
            plan = plan / plan.sum(dim=0, keepdim=True)
        loss = (plan * cost).sum() / max(batch.tokens_total, 1.0)
        return Output(loss=loss, objective=loss.detach(), metrics={"sinkhorn": float(loss.detach())})


@dataclass(frozen=True)
class PlackettLuce:
    """PLD (Bassam, Zhu, Bian 2025, "PLD: A Choice-Theoretic List-Wise Knowledge Distillation",
    arXiv 2506.12542, §4.1–4.2, App. C), per token with s = student log-probs (PLD is shift-invariant, so
    log-probs serve as logits) and teacher probabilities p_T:

        π* = (y_t, then every other token by descending teacher probability)    (label = "token")
        π* = (every token by descending teacher probability)                   (label = "teacher")
        L_t = Σ_k α_k [ −s_{π*_k} + log Σ_{ℓ ≥ k} exp(s_{π*_ℓ}) ],   α_k = p_T(π*_k)    (τ_T = 1)
    The first stage (y_t first) is p_T(y_t) · CE(y_t): PLD has no separate CE term.
    Top-k: the stages of the tokens in S (and y_t) are computed exactly, their denominators including the
    student's mass outside the list (``student_logp_tail`` / ``student_logp_rest``); the later stages
    (tokens outside S, total weight = the teacher's mass outside S) are dropped. Exact for k = None."""

    label: str = "token"

    def __post_init__(self):
        one_of(self, "label", self.label, ("token", "teacher"), PLD_LABEL)

    @property
    def requires(self) -> frozenset[str]:
        if self.label == "token":
            return _KD_REQUIRES | {"student_logp_tail", "student_logp_target", "teacher_logp_target", "target_in_topk"}
        return _KD_REQUIRES | {"student_logp_rest"}

    def loss(self, batch: Batch) -> Output:
        sel = batch.mask > 0
        s = batch.require("student_logp_topk")[sel]
        t = batch.require("teacher_logp_topk")[sel].detach().to(s.dtype)
        weight = batch.mask[sel].to(s.dtype)
        order = torch.argsort(t, dim=-1, descending=True, stable=True)
        s, t = s.gather(-1, order), t.gather(-1, order)
        neg = torch.full_like(s, _NEG)
        if self.label == "token":
            is_y = batch.require("target_in_topk")[sel].gather(-1, order).bool()
            s_y = batch.require("student_logp_target")[sel]
            t_y = batch.require("teacher_logp_target")[sel].detach().to(s.dtype)
            outside = batch.require("student_logp_tail")[sel]
        else:
            is_y = torch.zeros_like(s, dtype=torch.bool)
            outside = batch.require("student_logp_rest")[sel]
        outside = torch.where(torch.isfinite(outside), outside, torch.full_like(outside, _NEG))
        listed = torch.where(is_y, neg, s)                                   # y_t is ranked first, not here
        alpha = torch.where(is_y, torch.zeros_like(t), t.exp())
        later = torch.flip(torch.logcumsumexp(torch.flip(listed, [-1]), dim=-1), [-1])
        denominators = torch.logaddexp(later, outside[:, None])             # log Σ_{ℓ ≥ k} exp(s_ℓ)
        per_token = (alpha * (denominators - torch.where(is_y, torch.zeros_like(s), s))).sum(-1)
        if self.label == "token":
            everything = torch.logaddexp(s_y, denominators[:, 0]) if s.shape[-1] else s_y
            per_token = per_token + t_y.exp() * (everything - s_y)
        loss = _token_mean(per_token, weight, batch)
        return Output(loss=loss, objective=loss.detach(), metrics={"pld": float(loss.detach())})


__all__ = ["BalancedKD", "PlackettLuce", "SUPPORTS", "Sinkhorn", "TokenDivergence", "generalised_jsd"]
