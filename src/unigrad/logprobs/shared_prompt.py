"""The shared-prompt forward: each distinct prompt through the body once, its KV cache serving all its completions.

For sequences that share prompts (a GRPO group, a DPO pair), a prompt of length P with n completions
costs P body tokens instead of n·P. ``shared_prompt_logprobs`` returns the same [B, T] values as
``token_logprobs(model, collate(sequences))``; gradients flow into the prompt through the shared cache
and equal the one-by-one forward's up to rounding order (a prompt's gradients are summed before its
backward, not after).
"""
from __future__ import annotations

from typing import Sequence as _Seq

import torch
from torch import Tensor

from unigrad.logprobs.readout import Completions, body_and_head, check_args, compute_dtype, logit_transform
from unigrad.logprobs.token import completion_logprobs
from unigrad.rollout.kv_cache import cached_forward, left_padded, select_cache_rows
from unigrad.tokens import Sequence


def shares_prompts(sequences: _Seq[Sequence]) -> bool:
    """Whether some sequences have the same prompt (then ``shared_prompt_logprobs`` saves work)."""
    return len({tuple(s.prompt_ids) for s in sequences}) < len(sequences)


def shared_prompt_states(model, sequences: _Seq[Sequence], pad_id: int) -> Completions:
    """``completion_states`` of ``collate(sequences)``, each distinct prompt forwarded once.

    Layout: distinct prompts left-padded (positions count real tokens only); completions right-padded
    and positioned after their prompt. The state predicting completion token 0 is the prompt's last
    state; token t ≥ 1 is predicted by the completion forward's state t − 1. The selection ``sel``
    is [B, C] with C the longest completion, as ``collate`` lays out ``completion_mask``."""
    body, head, config = body_and_head(model)
    dev = next(model.parameters()).device
    first_of: dict[tuple, int] = {}
    owner = [first_of.setdefault(tuple(s.prompt_ids), len(first_of)) for s in sequences]
    prompts = list(first_of)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("a sequence has an empty prompt; shared-prompt forward needs at least one prompt token")
    ids, att, pos = left_padded(prompts, pad_id, dev)
    out, cache = cached_forward(body, input_ids=ids, attention_mask=att, position_ids=pos)
    index = torch.tensor(owner, device=dev)
    try:
        cache = select_cache_rows(cache, index)
    except TypeError as error:
        raise ValueError(f"{error}; this model's cache cannot be shared between sequences: set "
                         "train.share_prompts: false") from None
    last = out.last_hidden_state[:, -1][index]                                # per sequence

    B, C = len(sequences), max(1, max(len(s.completion_ids) for s in sequences))
    cids = torch.full((B, C), int(pad_id), dtype=torch.long)
    cmask = torch.zeros((B, C), dtype=torch.long)
    for b, s in enumerate(sequences):
        cids[b, :len(s.completion_ids)] = torch.tensor(s.completion_ids, dtype=torch.long)
        cmask[b, :len(s.completion_ids)] = 1
    cids, cmask = cids.to(dev), cmask.to(dev)
    cpos = pos[index, -1:] + 1 + torch.arange(C, device=dev)
    out, _ = cached_forward(body, cache, input_ids=cids, attention_mask=torch.cat([att[index], cmask], dim=1),
                            position_ids=cpos)
    states = torch.cat([last[:, None], out.last_hidden_state[:, :-1]], dim=1)        # [B, C, H]
    sel = cmask > 0
    return Completions(states[sel], cids[sel], sel, head, logit_transform(config), compute_dtype(model))


def shared_prompt_logprobs(model, sequences: _Seq[Sequence], pad_id: int, chunk_size: int = 1024,
                           temperature: float = 1.0) -> Tensor:
    """``token_logprobs`` of ``collate(sequences)`` computed with each distinct prompt forwarded once
    (``shared_prompt_states``): the same [B, T] values, T = the longest completion."""
    check_args(chunk_size, temperature)
    return completion_logprobs(shared_prompt_states(model, sequences, pad_id), chunk_size, temperature)


__all__ = ["shared_prompt_logprobs", "shared_prompt_states", "shares_prompts"]
