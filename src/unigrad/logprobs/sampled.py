"""Log-probs of labels drawn from the model itself, for the Gauss–Newton–Bartlett curvature estimate
(Liu et al. 2024, "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
Pre-training", §2.3): at each completion position t, with z_t the logits that predict it,

    ŷ_t ~ softmax(z_t)   (drawn without gradient, from a seeded generator)
    logp[b, t] = log softmax(z_t)[ŷ_t]                    (0 where completion_mask is 0)

The labels are drawn in a pass of the LM head without gradient before the differentiable read-out, so
a read-out recomputed in backward (the chunk checkpoint) sees the same labels.
"""
from __future__ import annotations

import torch
from torch import Tensor

from unigrad.logprobs.readout import check_args, chunked, completion_states, scatter
from unigrad.logprobs.token import target_logprob
from unigrad.tokens import TokenBatch


def sample_labels(states, chunk_size: int, seed: int) -> Tensor:
    """ŷ [N]: one label per completion position, drawn from the model's own distribution."""
    generator = torch.Generator(device=states.hidden.device)
    generator.manual_seed(seed)
    labels = []
    with torch.no_grad():
        for i in range(0, states.hidden.shape[0], chunk_size):
            probs = torch.softmax(states.logits(states.hidden[i:i + chunk_size].detach()).float(), dim=-1)
            labels.append(torch.multinomial(probs, 1, generator=generator).squeeze(-1))
    return torch.cat(labels) if labels else states.target.new_zeros(0)


def sampled_label_logprobs(model, tb: TokenBatch, chunk_size: int = 1024, seed: int = 0) -> Tensor:
    """[B, T] log p_θ(ŷ_t) at each completion position, ŷ_t drawn from p_θ(· | prefix) (with grad)."""
    check_args(chunk_size, 1.0)
    states = completion_states(model, tb)
    labels = sample_labels(states, chunk_size, seed)
    (logp,) = chunked(lambda z, _target, y: target_logprob(z, y, 1.0), states, labels, chunk_size=chunk_size)
    return scatter(states.sel, logp)


__all__ = ["sample_labels", "sampled_label_logprobs"]
