"""Data parallelism over processes, exact by construction.

Every process knows the whole optimiser step (the data order is a pure function of seed and step),
so each builds the same step ``Batch`` that normalisers count on, trains only its share of the
micro-batches, and the gradients are summed over processes. Because every loss is already divided
by the whole step's counts, the sum is the single-process gradient of the full batch: P processes ×
batch b give the same update as one process × batch P·b.

Launch with ``torchrun --nproc_per_node P -m unigrad train CONFIG`` or
``accelerate launch --num_processes P -m unigrad train CONFIG`` (or ``unigrad train --nproc P``):
both set RANK / WORLD_SIZE, and the process group uses gloo on CPU, NCCL on GPUs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, value: float) -> float:
        """The sum of a number over processes."""
        if self.world == 1:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor[0])

    def sum_gradients(self, params: list[torch.Tensor]) -> None:
        """Σ over processes of every parameter's gradient, in one flat all-reduce."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def broadcast_parameters(self, model) -> None:
        """Start every process from rank 0's weights."""
        if self.world == 1:
            return
        with torch.no_grad():
            for tensor in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(tensor.data, src=0)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, value) -> list:
        """Every process's ``value``, in rank order, on every process."""
        if self.world == 1:
            return [value]
        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out


def concat_rollouts(parts: list):
    """One ``Rollouts`` from several, prompt-major order kept; the ``[B, T]`` tensors are right-padded
    with 0 to the longest completion and prompt indices (``group``) shifted by the prompts before."""
    from unigrad.rollout.base import Rollouts
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
        num_generations=parts[0].num_generations, sampling=parts[0].sampling)


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
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None):
        shares = [[int(i) for i in share] for share in torch.arange(len(prompts)).tensor_split(self.procs.world)]
        mine = [prompts[i] for i in shares[self.procs.rank]]
        local = None
        if mine:
            local = self.inner.sample(mine, num_generations, max_new_tokens, temperature=temperature, top_p=top_p,
                                      top_k=top_k, seed=None if seed is None else seed + self.procs.rank)
        return concat_rollouts([part for part in self.procs.gather(local) if part is not None])


def processes() -> Processes:
    """This process's rank among WORLD_SIZE processes (set by torchrun / accelerate launch),
    initialising the process group on first use."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Processes(rank=dist.get_rank(), world=dist.get_world_size())
