"""Generation split over processes: ``ShardedSampler`` and ``concat_rollouts``, which joins the shares."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from unigrad.parallel.processes import Processes
from unigrad.rollout.base import Rollouts


def concat_rollouts(parts: list[Rollouts]) -> Rollouts:
    """One ``Rollouts`` from several, prompt-major order kept; the ``[B, T]`` tensors are right-padded
    with 0 to the longest completion and prompt indices (``group``) shifted by the prompts before."""
    width = max(part.mask.shape[1] for part in parts)

    def stack(name: str) -> torch.Tensor:
        return torch.cat([torch.nn.functional.pad(getattr(part, name), (0, width - getattr(part, name).shape[1]))
                          for part in parts])
    offsets = torch.tensor([0] + [part.num_prompts for part in parts]).cumsum(0)
    return Rollouts(
        prompt_ids=[p for part in parts for p in part.prompt_ids],
        completion_ids=[c for part in parts for c in part.completion_ids],
        logp_policy=stack("logp_policy"), logp_temperature=stack("logp_temperature"),
        logp_sample=stack("logp_sample"), mask=stack("mask"),
        group=torch.cat([part.group + offset for part, offset in zip(parts, offsets)]),
        finished=torch.cat([part.finished for part in parts]),
        num_generations=parts[0].num_generations, sampling=parts[0].sampling,
        entropy=stack("entropy") if all(part.entropy is not None for part in parts) else None)


@dataclass(frozen=True)
class ShardedSampler:
    """Generation split over processes: each samples a contiguous share of the prompts, and the
    shares are gathered so that every process holds the step's whole rollouts — the step ``Batch``
    needs them all (group statistics, the step's token counts), then each trains its share as for
    offline data. Process r seeds its share with ``seed + r``."""
    inner: object
    procs: Processes

    def update_weights(self, model) -> None:
        self.inner.update_weights(model)

    def sample(self, prompts: list[list[int]], num_generations: int, max_new_tokens: int,
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None) -> Rollouts:
        shares = [[int(i) for i in share] for share in torch.arange(len(prompts)).tensor_split(self.procs.world)]
        mine = [prompts[i] for i in shares[self.procs.rank]]
        local = None
        if mine:
            local = self.inner.sample(mine, num_generations, max_new_tokens, temperature=temperature, top_p=top_p,
                                      top_k=top_k, seed=None if seed is None else seed + self.procs.rank)
        return concat_rollouts([part for part in self.procs.gather(local) if part is not None])
