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
from torch.utils.checkpoint import checkpoint

from unigrad.policy import _attention_mask, _body_and_head, _logit_transform
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
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    body, head, config = _body_and_head(model)
    param = next(model.parameters())
    tb = tb.to(param.device)
    compute_dtype = torch.promote_types(param.dtype, torch.float32)
    vocab = head.weight.shape[0] if hasattr(head, "weight") else None
    if vocab is not None and vocab < 2:
        raise ValueError("log max_{v≠y} p(v) needs a vocabulary of at least 2 tokens")

    attn = _attention_mask(config, tb, param.dtype if param.is_floating_point() else torch.float32)
    out = body(input_ids=tb.input_ids, position_ids=tb.position_ids, attention_mask=attn, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]   # [R, L, H]

    sel = tb.completion_mask > 0                                     # [B, T]
    rows, cols = tb.completion_row[sel], tb.completion_col[sel]      # [N]
    h = hidden[rows, cols - 1]                                       # [N, H]
    target = tb.input_ids[rows, cols]                                # [N]
    transform = _logit_transform(config)

    use_ckpt = torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in head.parameters()))
    pieces = []
    for i in range(0, h.shape[0], chunk_size):
        args = (head, transform, float(temperature), compute_dtype, h[i:i + chunk_size], target[i:i + chunk_size])
        pieces.append(checkpoint(_chunk_target_and_top_other, *args, use_reentrant=False) if use_ckpt
                      else _chunk_target_and_top_other(*args))
    both = torch.cat(pieces) if pieces else hidden.new_zeros((0, 2), dtype=compute_dtype)   # [N, 2]

    index = sel.nonzero(as_tuple=True)
    zeros = torch.zeros(sel.shape, dtype=compute_dtype, device=hidden.device)
    return zeros.index_put(index, both[:, 0]), zeros.index_put(index, both[:, 1])


__all__ = ["ENGINE_EXTRA_FIELDS", "token_logprobs_with_top_other"]
