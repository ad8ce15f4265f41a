"""Values V(x, y_<t) per completion token: a separate critic's (``token_values``), or a value head on the
policy's own trunk, with the log-probs from the same body forward (``token_logprobs_and_values``).

For completion token t, with h_t the body's hidden state at the position that predicts y_t (the one
``readout.completion_states`` keeps) and the value head w, b (a linear map to one output, held next to
the policy, ``critic.SharedHead``),

    logp[b, t] = log softmax(lm_head(h_t))[y_t],      V[b, t] = wᵀ h_t + b      (0 where not a completion token)

so V_t is the value of (x, y_<t), as the separate critic's ``token_values``. The head runs in
float32 whatever the body's dtype. Gradients of V flow into the trunk as well as the head: the shared
trunk of the original PPO for language models (Ziegler et al. 2019, "Fine-Tuning Language Models from
Human Preferences", arXiv 1909.08593; TRL's value-head model).
"""
from __future__ import annotations

import torch
from torch import Tensor

from unigrad.logprobs.readout import Completions, attention_mask, check_args, completion_states, compute_dtype, scatter
from unigrad.logprobs.token import completion_logprobs
from unigrad.tokens import TokenBatch


def head_values(states: Completions, head: torch.nn.Module) -> Tensor:
    """V [B, T] = head(h_t) at the selected completion tokens (0 elsewhere), float32."""
    weight = next(head.parameters())
    return scatter(states.sel, head(states.hidden.to(weight.dtype)).squeeze(-1))


def token_logprobs_and_values(model, tb: TokenBatch, head: torch.nn.Module, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """(logp [B, T], V [B, T]) of each completion token, from one forward of ``model``'s body; both
    differentiable (V also w.r.t. the head)."""
    check_args(chunk_size, 1.0)
    states = completion_states(model, tb)
    return completion_logprobs(states, chunk_size, 1.0), head_values(states, head)


def token_values(model, tb: TokenBatch) -> Tensor:
    """V [B, T] at each completion token t: the value head on the body's hidden state at the position
    that predicts token t (the one ``logprobs.readout.completion_states`` reads logits from), so V_t is
    the value of (x, y_<t); 0 where completion_mask is 0. Bypasses the head's dropout."""
    body = getattr(model, model.base_model_prefix)
    param = next(model.parameters())
    tb = tb.to(param.device)
    out = body(input_ids=tb.input_ids, position_ids=tb.position_ids,
               attention_mask=attention_mask(model.config, tb, param.dtype), use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    sel = tb.completion_mask > 0
    rows, cols = tb.completion_row[sel], tb.completion_col[sel]
    head = getattr(model, "score", None) or model.classifier
    return scatter(sel, head(hidden[rows, cols - 1]).squeeze(-1).to(compute_dtype(model)))


def trunk_values(model, tb: TokenBatch, head: torch.nn.Module) -> Tensor:
    """V [B, T] alone (no LM-head read-out): V_old when the rollouts are made, called without gradients."""
    return head_values(completion_states(model, tb), head)


__all__ = ["head_values", "token_logprobs_and_values", "token_values", "trunk_values"]
