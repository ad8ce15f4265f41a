"""The ``Sampler`` protocol and the ``Rollouts`` it returns.

A sampler turns P tokenised prompts into P × n completions (n = ``num_generations``). Rows are laid
out prompt-major: row ``r = i * n + j`` is sample ``j`` of prompt ``i``, and ``group[r] = i``.

For every completion token ``y_t`` (sampled from the context ``x, y_<t``) a sampler returns, from
the logits ``z`` of the very forward pass that produced the token (no extra pass):

- ``logp_policy[r, t] = log softmax(z)[y_t]``: the policy's log-prob at temperature 1. This is
  exactly what ``policy.token_logprobs(model, collate(rollouts.sequences()))`` returns for the same
  weights, so it can serve as the behaviour (old-policy) log-prob of PPO/GRPO importance ratios.
- ``logp_temperature[r, t] = log softmax(z / T)[y_t]``: the policy at temperature T without top-k /
  top-p truncation (what ``token_logprobs(..., temperature=T)`` returns). Equal to ``logp_policy``
  when T = 1; for greedy decoding (T = 0) it is 0 (a point mass).
- ``logp_sample[r, t] = log q(y_t)``: the distribution the token was actually drawn from:
  ``q = softmax(z / T)`` restricted to the top-k tokens and then to the top-p nucleus and
  renormalised. 0 for greedy decoding (the argmax has probability 1).
- ``entropy[r, t] = −Σ_v p(v) log p(v)`` with ``p = softmax(z)``: the entropy of the policy at
  temperature 1 (untempered, whatever the sampling temperature; verl's ``entropy`` metric is of the
  temperature-scaled logits instead) over the whole vocabulary, at the context of token t. Optional:
  None where a sampler cannot give it (vLLM returns only the sampled tokens' log-probs).

Which to use as ``logp_old``: if the trainer's log-probs are computed at temperature 1 (the usual
case), use ``logp_policy``; if it computes ``token_logprobs(..., temperature=T)`` use
``logp_temperature``. ``logp_sample`` is the exact proposal density, for corrections that need it
(e.g. the truncated-IS weight ``π_θ / q`` when top-p/top-k make q differ from the policy).

All ``[B, T]`` tensors are right-padded with 0 to the longest completion and follow the layout of
``collate(rollouts.sequences())`` (``mask`` = its ``completion_mask``). A completion that stopped on
an end-of-sequence token ends with that token and has ``finished = True``; one cut at
``max_new_tokens`` has ``finished = False``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from unigrad.tokens import Sequence


@dataclass
class Rollouts:
    """P prompts × n samples; row ``r = i * n + j`` is sample ``j`` of prompt ``i``.

    prompt_ids, completion_ids: per row, tuples of token ids (no padding); a finished completion
      ends with its end-of-sequence token.
    logp_policy, logp_temperature, logp_sample, mask: [B, T] float32 (see the module docstring).
    group: [B] long, the prompt index i of each row. finished: [B] bool, stopped on EOS.
    """
    prompt_ids: list[tuple[int, ...]]
    completion_ids: list[tuple[int, ...]]
    logp_policy: Tensor
    logp_temperature: Tensor
    logp_sample: Tensor
    mask: Tensor
    group: Tensor
    finished: Tensor
    num_generations: int
    sampling: dict[str, Any] = field(default_factory=dict)   # temperature, top_p, top_k, seed, max_new_tokens
    entropy: Tensor | None = None                            # [B, T] float32 policy entropy per token, or None
    token_rewards: tuple = ()   # per row: the reward function's per-token rewards or None (``score_rollouts``)

    def __len__(self) -> int:
        return len(self.completion_ids)

    @property
    def num_prompts(self) -> int:
        return len(self) // max(self.num_generations, 1)

    @property
    def lengths(self) -> Tensor:
        """[B] long: number of completion tokens per row."""
        return torch.tensor([len(c) for c in self.completion_ids], dtype=torch.long)

    def sequences(self, group_offset: int = 0) -> list[Sequence]:
        """One ``Sequence`` per row, ``group = group_offset + prompt index``, sign +1.

        ``meta`` holds ``sample`` (j), ``finished`` and, when cut at max_new_tokens, ``truncated``.
        """
        n = self.num_generations
        out = []
        for r, (p, c) in enumerate(zip(self.prompt_ids, self.completion_ids)):
            fin = bool(self.finished[r])
            meta = {"sample": r % n, "finished": fin}
            if not fin:
                meta["truncated"] = True
            out.append(Sequence(tuple(p), tuple(c), group=group_offset + int(self.group[r]), sign=1.0, meta=meta))
        return out

    def entropy_metrics(self) -> dict[str, float]:
        """``{"entropy": token mean of the per-token policy entropy}`` over every row, or {} without it."""
        if self.entropy is None:
            return {}
        return token_entropy([self.entropy[r, :len(c)] for r, c in enumerate(self.completion_ids)])

    def texts(self, tokenizer, skip_special_tokens: bool = True) -> list[str]:
        """The completions decoded (special tokens such as EOS dropped by default)."""
        return [tokenizer.decode(list(c), skip_special_tokens=skip_special_tokens) for c in self.completion_ids]


@runtime_checkable
class Sampler(Protocol):
    """Generates completions for tokenised prompts; see the module docstring for what it returns."""

    def sample(self, prompts: list[list[int]], num_generations: int, max_new_tokens: int,
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
               seed: int | None = None) -> Rollouts:
        """``temperature`` 0 is greedy; ``top_k`` 0 and ``top_p`` 1 disable truncation."""
        ...

    def update_weights(self, model) -> None:
        """Make the sampler use ``model``'s current weights (a no-op for samplers sharing the model)."""
        ...


def token_entropy(rows: list[Tensor | None]) -> dict[str, float]:
    """``{"entropy": mean over every token of rows}`` (each row a sequence's per-token entropies,
    ``Rollouts.entropy`` cut to its length); {} when any row has none (a sampler that gives no entropy)."""
    if not rows or any(row is None for row in rows):
        return {}
    tokens = torch.cat([row.reshape(-1).float() for row in rows])
    return {"entropy": float(tokens.mean())} if tokens.numel() else {}


def check_sampling_args(prompts, num_generations: int, max_new_tokens: int, temperature: float,
                        top_p: float, top_k: int) -> list[list[int]]:
    """Validate the arguments of ``Sampler.sample``; returns the prompts as lists of ints."""
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    out = []
    for i, p in enumerate(prompts):
        ids = [int(t) for t in p]
        if not ids:
            raise ValueError(f"prompt {i} is empty (it needs at least one token, e.g. BOS)")
        out.append(ids)
    if not out:
        raise ValueError("sample needs at least one prompt")
    return out


__all__ = ["Rollouts", "Sampler", "check_sampling_args", "token_entropy"]
