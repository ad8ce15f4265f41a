"""The best other token's log-prob beside the completion token's, for the inverted hinge loss.

``token_logprobs_with_top_other(model, tb, chunk_size)`` runs the model once and returns, for
completion token t of sequence b (laid out by a ``TokenBatch``, as in ``token_logprobs``),

    logp[b, t]           = log p(y_t)                     = z_{y_t}/τ − logsumexp(z/τ)
    logp_top_other[b, t] = log max_{v ≠ y_t} p(v)         = max_{v ≠ y_t} z_v/τ − logsumexp(z/τ)

z the logits (after the architecture's logit transform) at the position predicting y_t; both with
gradient (the second through the competing token v*_t = argmax_{v≠y_t} z_v, a subgradient at
ties), 0 where ``completion_mask`` is 0. The inverted hinge loss (Cha et al. 2025, "Towards Robust
and Parameter-Efficient Knowledge Unlearning for LLMs"; ``unigrad.methods.ihl``) reads the second as
``batch.extra["logp_top_other"]``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from unigrad.logprobs.readout import check_args, chunked, completion_states, scatter, tempered
from unigrad.tokens import TokenBatch

# Batch.extra fields this module produces.
TOP_OTHER_FIELDS = frozenset({"logp_top_other"})


def target_and_top_other(logits: Tensor, target: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(log p(y_t), log max_{v≠y_t} p(v)), each [n], from one chunk's logits [n, V]."""
    logits = tempered(logits, temperature)
    lse = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(-1, target[:, None]).squeeze(-1)
    top_other = logits.scatter(-1, target[:, None], float("-inf")).max(dim=-1).values
    return target_logit - lse, top_other - lse


def token_logprobs_with_top_other(model, tb: TokenBatch, chunk_size: int = 1024,
                                  temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(logp, logp_top_other)``, both [B, T], from one forward pass (see the module docstring).

    Differentiable w.r.t. the model's parameters; float32 for half-precision models, else the
    model's dtype. ``logp`` equals ``token_logprobs(model, tb, chunk_size, temperature)``.
    """
    check_args(chunk_size, temperature)
    states = completion_states(model, tb)
    if states.vocab_size < 2:
        raise ValueError("log max_{v≠y} p(v) needs a vocabulary of at least 2 tokens")
    logp, top_other = chunked(lambda z, y: target_and_top_other(z, y, temperature), states, chunk_size=chunk_size)
    return scatter(states.sel, logp), scatter(states.sel, top_other)


__all__ = ["TOP_OTHER_FIELDS", "target_and_top_other", "token_logprobs_with_top_other"]
