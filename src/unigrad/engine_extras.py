"""Extra per-token quantities from the log-prob engine, beyond ``policy.token_logprobs``.

``token_logprobs_with_top_other(model, tb, chunk_size)`` runs the model once and returns, for
completion token t of sequence b (laid out by a ``TokenBatch``, as in ``policy.token_logprobs``),

    logp[b, t]           = log p(y_t)                     = z_{y_t}/τ − logsumexp(z/τ)
    logp_top_other[b, t] = log max_{v ≠ y_t} p(v)         = max_{v ≠ y_t} z_v/τ − logsumexp(z/τ)

z the logits (after the architecture's logit transform) at the position predicting y_t; both with
gradient (the second through the competing token v*_t = argmax_{v≠y_t} z_v, a subgradient at
ties), 0 where ``completion_mask`` is 0. The inverted hinge loss (``unigrad.methods.ihl``) reads
the second as ``batch.extra["logp_top_other"]``.

Memory: as ``token_logprobs``: the body runs once, the vocabulary projection over chunks of
``chunk_size`` completion tokens under activation checkpointing.
"""
from __future__ import annotations

import torch
from torch import Tensor

from unigrad.policy import check_engine_args, chunked, completion_states, scatter
from unigrad.tokens import TokenBatch

# Batch.extra fields this module can produce (the loop computes them when an objective requires one).
ENGINE_EXTRA_FIELDS = frozenset({"logp_top_other"})


def _chunk_target_and_top_other(head, transform, temperature: float, compute_dtype: torch.dtype,
                                h: Tensor, target: Tensor) -> Tensor:
    """[n, 2]: (log p(y_t), log max_{v≠y_t} p(v)) for one chunk."""
    logits = transform(head(h)).to(compute_dtype)
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(-1, target[:, None]).squeeze(-1)
    others = logits.scatter(-1, target[:, None], float("-inf"))
    top_other = others.max(dim=-1).values
    return torch.stack((target_logit - lse, top_other - lse), dim=-1)


def token_logprobs_with_top_other(model, tb: TokenBatch, chunk_size: int = 1024,
                                  temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(logp, logp_top_other)``, both [B, T], from one forward pass (see the module docstring).

    Differentiable w.r.t. the model's parameters; float32 for half-precision models, else the
    model's dtype. ``logp`` equals ``policy.token_logprobs(model, tb, chunk_size, temperature)``.
    """
    check_engine_args(chunk_size, temperature)
    h, target, sel, head, transform, dtype = completion_states(model, tb)
    if hasattr(head, "weight") and head.weight.shape[0] < 2:
        raise ValueError("log max_{v≠y} p(v) needs a vocabulary of at least 2 tokens")
    both = scatter(sel, chunked(_chunk_target_and_top_other, h, target, head, transform, temperature, dtype,
                                chunk_size).reshape(-1, 2))                       # [B, T, 2]
    return both[..., 0], both[..., 1]


__all__ = ["ENGINE_EXTRA_FIELDS", "token_logprobs_with_top_other"]
