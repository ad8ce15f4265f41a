"""Per-token log-probs of the completion tokens: ``token_logprobs`` (with grad) and ``reference_logprobs`` (detached).

For completion token t of sequence b sitting at ``(row, col) = (completion_row[b, t], completion_col[b, t])``
of a ``TokenBatch``, with z the logits at the position that predicts it and temperature τ,

    logp[b, t] = log softmax(z / τ)[input_ids[row, col]]          (0 where completion_mask is 0)

The body runs once; the vocabulary projection runs chunked (``logprobs.readout``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from unigrad.logprobs.readout import Completions, check_args, chunked, completion_states, scatter, tempered
from unigrad.tokens import TokenBatch


def target_logprob(logits: Tensor, target: Tensor, temperature: float) -> tuple[Tensor]:
    """(log p(y) [n],) from one chunk's logits [n, V]."""
    logits = tempered(logits, temperature)
    return (logits.gather(-1, target[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1),)


def completion_logprobs(states: Completions, chunk_size: int, temperature: float) -> Tensor:
    """[B, T] log p(y_t) of the completion tokens whose states are ``states`` (0 where not selected)."""
    (logp,) = chunked(lambda z, y: target_logprob(z, y, temperature), states, chunk_size=chunk_size)
    return scatter(states.sel, logp)


def token_logprobs(model, tb: TokenBatch, chunk_size: int = 1024, temperature: float = 1.0,
                   _explicit_mask: bool | None = None) -> Tensor:
    """``logp[b, t]`` [B, T] of each completion token under ``model`` (0 where completion_mask is 0).

    Differentiable w.r.t. the model's parameters; also works under ``torch.inference_mode()``.
    The output is float32 for half-precision models, else the model's dtype.
    """
    check_args(chunk_size, temperature)
    return completion_logprobs(completion_states(model, tb, _explicit_mask), chunk_size, temperature)


def reference_logprobs(model, tb: TokenBatch, chunk_size: int = 1024, temperature: float = 1.0) -> Tensor:
    """``token_logprobs`` under ``torch.inference_mode()``: a detached tensor (e.g. for a reference model).

    The returned tensor is an ordinary tensor (not an inference tensor), safe to use in a loss.
    """
    with torch.inference_mode():
        lp = token_logprobs(model, tb, chunk_size=chunk_size, temperature=temperature)
    return lp.clone()


__all__ = ["completion_logprobs", "reference_logprobs", "target_logprob", "token_logprobs"]
