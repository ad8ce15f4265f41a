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


def processes() -> Processes:
    """This process's rank among WORLD_SIZE processes (set by torchrun / accelerate launch),
    initialising the process group on first use."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Processes(rank=dist.get_rank(), world=dist.get_world_size())
