"""The processes of a run: rank, world size, and the collectives the layouts and the loop use.

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
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"   # NCCL reduces only GPU tensors
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor[0])

    def sum_gradients(self, params: list[torch.Tensor], bucket_elements: int = 2 ** 24) -> None:
        """Σ over processes of every parameter's gradient, in place, in all-reduces of about
        ``bucket_elements`` values (a parameter at least that big is reduced on its own gradient), so
        the sum needs one bucket of extra memory, not a second copy of all gradients."""
        if self.world == 1:
            return
        bucket, size = [], 0
        for p in params:
            if p.grad is None:          # every process must reduce the same tensors
                p.grad = torch.zeros_like(p)
            bucket.append(p.grad)
            size += p.grad.numel()
            if size >= bucket_elements:
                _all_reduce_in_place(bucket)
                bucket, size = [], 0
        if bucket:
            _all_reduce_in_place(bucket)

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


def _all_reduce_in_place(tensors: list[torch.Tensor]) -> None:
    if len(tensors) == 1 and tensors[0].is_contiguous():
        dist.all_reduce(tensors[0])
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def processes() -> Processes:
    """This process's rank among WORLD_SIZE processes (set by torchrun / accelerate launch),
    initialising the process group on first use."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes()
    if torch.cuda.is_available():  # one GPU per process on each machine (FSDP's device mesh uses the current one)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Processes(rank=dist.get_rank(), world=dist.get_world_size())
