"""Data parallelism over processes, exact by construction.

Every process knows the whole optimiser step (the data order is a pure function of seed and step),
so each builds the same step ``Batch`` that normalisers count on, trains only its share of the
micro-batches, and the gradients are summed over processes. Because every loss is already divided
by the whole step's counts, the sum is the single-process gradient of the full batch: P processes ×
batch b give the same update as one process × batch P·b.

Launch with ``torchrun --nproc_per_node P -m unigrad train CONFIG`` or
``accelerate launch --num_processes P -m unigrad train CONFIG`` (or ``unigrad train --nproc P``):
both set RANK / WORLD_SIZE, and the process group uses gloo on CPU, NCCL on GPUs.

Three ways to hold the model (``layout``), all behind the same interface, so the loop never asks which:
- ``Replicated``: every process holds the whole model; one flat all-reduce sums the gradients;
- ``Sharded`` (``train.fsdp: true``, or ``accelerate launch --use_fsdp``): PyTorch FSDP2
  (``fully_shard``) — parameters, gradients and optimiser state split over processes, each decoder
  layer gathered only while it runs; gradients are reduce-scattered as sums in backward;
- ``zero.ZeRO`` (``train.deepspeed: S``, or ``accelerate launch --use_deepspeed``): DeepSpeed's ZeRO
  stage 1–3, its engine driven so that the update stays the one-process update.
The model is called through ``Engine``, a module whose forward is any log-prob function of the model,
so that FSDP's root hooks gather the embedding, final norm and (tied) LM head around the whole
computation, which calls the body and the head separately.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from unigrad import optim


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


class Engine(torch.nn.Module):
    """``engine(fn, *args)`` = ``fn(model, *args)``, run as this module's forward (see the module doc)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


@dataclass(frozen=True)
class Replicated:
    """Every process holds the whole model; gradients are summed in one all-reduce after backward."""
    procs: Processes

    def prepare(self, model) -> Engine:
        return Engine(model)

    def train_engine(self, model, make_optimizer):
        """The policy's engine and its optimiser (``make_optimizer``: trainable params -> optimiser)."""
        return _engine_and_optimizer(self.prepare(model), make_optimizer)

    def backward(self, engine, loss: torch.Tensor) -> None:
        loss.backward()

    def update(self, engine, optimizer, params: list, max_grad_norm: float | None) -> float:
        """Sum the gradients over processes, clip, update; the gradient norm before clipping."""
        self.procs.sum_gradients(params)
        return optim.apply_update(optimizer, params, max_grad_norm)

    def agree(self, flag: bool) -> bool:
        """Whether to take a path that must be the same on every process (only sharded layouts care)."""
        return flag

    def full_weights(self, model) -> None:
        """None: the model itself holds them whole."""
        return None

    def full_optimizer_state(self, model, optimizer) -> dict:
        return optimizer.state_dict()

    def sampling_model(self, model):
        """The model generation runs on: the policy itself."""
        return model

    def sync_sampling_model(self, model, sampling) -> None:
        """Nothing to do: generation runs on the policy's own weights."""

    def load_full_state(self, model, optimizer, weights: dict, optimizer_state: dict | None) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                if name in params and params[name].requires_grad:
                    params[name].copy_(value)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)


@dataclass(frozen=True)
class Sharded:
    """FSDP2: each of the model's repeated blocks (its ``_no_split_modules``, e.g. the decoder layers)
    is one shard group, the rest (embedding, final norm, LM head) the root group around ``Engine``.
    Each process backprops its share of the step with the loss already divided by the whole step's
    counts, so the reduce-scatter sums (divide factor 1, sum-only collectives: gloo has no pre-scaled
    sum); the optimiser updates each process's shard. Checkpoints hold full tensors, in the same
    layout as one process's, so a run resumes on any number of processes.

    Every process must run the same sequence of layer calls (each is a collective), so a path that
    depends on the data (the shared-prompt forward) is taken when any process would take it (``agree``)."""
    procs: Processes
    reshard_after_forward: bool = True

    def prepare(self, model) -> Engine:
        from torch.distributed.fsdp import fully_shard
        blocks = set(getattr(model, "_no_split_modules", None) or [])
        if not blocks:
            raise ValueError(f"FSDP: {type(model).__name__} names no repeated blocks (_no_split_modules) to shard")
        engine = Engine(model)
        units = [module for module in model.modules() if type(module).__name__ in blocks]
        for module in units:
            fully_shard(module, reshard_after_forward=self.reshard_after_forward)
        fully_shard(engine, reshard_after_forward=False)
        for unit in [*units, engine]:
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)
        return engine

    def train_engine(self, model, make_optimizer):
        """Shard first: the optimiser is built on (and updates) this process's shards."""
        return _engine_and_optimizer(self.prepare(model), make_optimizer)

    def backward(self, engine, loss: torch.Tensor) -> None:
        loss.backward()

    def update(self, engine, optimizer, params: list, max_grad_norm: float | None) -> float:
        """Clip and update the shards (backward already reduce-scattered the gradient sums)."""
        return optim.apply_update(optimizer, params, max_grad_norm)

    def sampling_model(self, model):
        """A whole, frozen copy of the policy for generation, taken before sharding: decoding makes a
        different number of layer calls on each process, which sharded layers cannot (each call is a
        collective). Its weights follow the policy through ``sync_sampling_model``."""
        return copy.deepcopy(model).requires_grad_(False)

    def sync_sampling_model(self, model, sampling) -> None:
        """Every process gathers the policy's full weights into its sampling copy (after an update)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        sampling.load_state_dict(weights)

    def agree(self, flag: bool) -> bool:
        return self.procs.sum(float(flag)) > 0

    @staticmethod
    def _options():
        from torch.distributed.checkpoint.state_dict import StateDictOptions
        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def full_weights(self, model) -> dict:
        """Full tensors on the main process (``{}`` elsewhere); every process must call it. A tied
        parameter's second name (e.g. ``lm_head.weight`` = the embedding) is left out, as a
        one-process save leaves it out: gathered, the two would be separate copies."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        weights = get_model_state_dict(model, options=self._options())
        aliases = set(dict(model.named_parameters(remove_duplicate=False))) - set(dict(model.named_parameters()))
        return {name: value for name, value in weights.items() if name not in aliases}

    def full_optimizer_state(self, model, optimizer) -> dict:
        """The optimiser state with full tensors, keyed by parameter index like ``optimizer.state_dict()``."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        state = get_optimizer_state_dict(model, optimizer, options=self._options())
        if not state:
            return {}
        index = {name: i for i, name in enumerate(_trainable_names(model))}
        return {"state": {index[name]: value for name, value in state["state"].items()},
                "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                                 for group in state["param_groups"]]}

    def load_full_state(self, model, optimizer, weights: dict, optimizer_state: dict | None) -> None:
        """Every process passes the full tensors (it read them from the checkpoint)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, set_model_state_dict, set_optimizer_state_dict,
        )
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, weights, options=options)
        if optimizer_state is not None:
            names = _trainable_names(model)
            by_name = {"state": {names[int(i)]: value for i, value in optimizer_state["state"].items()},
                       "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]}
                                        for group in optimizer_state["param_groups"]]}
            set_optimizer_state_dict(model, optimizer, by_name, options=options)


def _engine_and_optimizer(engine: Engine, make_optimizer):
    return engine, make_optimizer([p for p in engine.model.parameters() if p.requires_grad])


def _trainable_names(model) -> list[str]:
    """Names of the trainable parameters in ``model.parameters()`` order (the optimiser's indices)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def layout(fsdp: bool, procs: Processes):
    """How the processes hold the model: ``Sharded`` with FSDP, else ``Replicated`` (DeepSpeed's
    ``ZeRO`` is made by ``zero.zero_layout``)."""
    if not fsdp:
        return Replicated(procs)
    # accelerate's setting: true/false (FSDP2) or an FSDP1 strategy name (SHARD_GRAD_OP keeps layers gathered)
    setting = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
    reshard = setting not in ("false", "0", "no", "shard_grad_op", "no_shard", "2", "3")
    return Sharded(procs, reshard_after_forward=reshard)


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
