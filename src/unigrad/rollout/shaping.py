"""Rollout shaping: what DAPO does to a step's rollouts before training on them (Yu et al. 2025,
"DAPO: An Open-Source LLM Reinforcement Learning System at Scale"): dynamic sampling's filter of
uninformative prompts and the soft overlong penalty added to the reward."""
from __future__ import annotations

import torch
from torch import Tensor


def keep_informative_groups(reward: Tensor, group: Tensor) -> Tensor:
    """DAPO's dynamic sampling filter (eq. 11 constraint 0 < |{o_i correct}| < G): a [B] bool mask,
    True on the rows of prompts whose rewards are not all equal (those with all-equal rewards have
    Â = 0 and give no gradient). The sampler keeps drawing prompts until the batch is full."""
    _, inverse = torch.unique(group, return_inverse=True)
    k = int(inverse.max()) + 1 if inverse.numel() else 0
    lowest = torch.full((k,), float("inf"), dtype=torch.float64, device=reward.device)
    highest = torch.full((k,), float("-inf"), dtype=torch.float64, device=reward.device)
    values = reward.detach().to(torch.float64)
    lowest = lowest.scatter_reduce(0, inverse, values, reduce="amin")
    highest = highest.scatter_reduce(0, inverse, values, reduce="amax")
    return (highest > lowest)[inverse]


def overlong_penalty(lengths: Tensor, max_length: float, cache: float, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment (eq. 13), a reward term added to the task reward:

        R_length(y) = 0                                  |y| ≤ L_max − L_cache
                      ((L_max − L_cache) − |y|) / L_cache  L_max − L_cache < |y| ≤ L_max
                      −1                                 |y| > L_max

    times ``factor`` (verl's ``overlong_buffer.penalty_factor``; 1 in the paper). L_max =
    ``max_length``, L_cache = ``cache``; the paper uses L_max = 20480, L_cache = 4096."""
    if not 0 < cache <= max_length:
        raise ValueError(f"overlong_penalty: need 0 < cache ≤ max_length, got cache={cache}, max_length={max_length}")
    lengths = torch.as_tensor(lengths, dtype=torch.float64)
    expected = max_length - cache
    penalty = ((expected - lengths) / cache).clamp(min=-1.0, max=0.0)
    return factor * penalty
