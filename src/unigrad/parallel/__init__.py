"""Data parallelism over processes, exact by construction: the ``Layout`` protocol, its three
implementations, and ``choose_layout``, which picks one from the config and the launch environment.

Every process knows the whole optimiser step (the data order is a pure function of seed and step),
so each builds the same step ``Batch`` that normalisers count on, trains only its share of the
micro-batches, and the gradients are summed over processes. Because every loss is already divided
by the whole step's counts, the sum is the single-process gradient of the full batch: P processes ×
batch b give the same update as one process × batch P·b.

Three ways to hold the model, all behind ``Layout``, so the loop never asks which:
- ``Replicated``: every process holds the whole model; one flat all-reduce sums the gradients;
- ``FSDP2`` (``train.fsdp: true``, or ``accelerate launch --use_fsdp``): parameters, gradients and
  optimiser state split over processes, each decoder layer gathered only while it runs;
- ``ZeRO`` (``train.deepspeed: S``, or ``accelerate launch --use_deepspeed``): DeepSpeed's ZeRO
  stage 1–3, its engine driven so that the update stays the one-process update.
The model is called through ``ModelCall``, a module whose forward is any function of the model.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Protocol, runtime_checkable

import torch

from unigrad.config import ConfigError, RunConfig, TrainConfig
from unigrad.parallel.fsdp import FSDP2
from unigrad.parallel.model_call import ModelCall
from unigrad.parallel.processes import Processes, processes
from unigrad.parallel.replicated import Replicated
from unigrad.parallel.zero import ELEMENTWISE_OPTIMIZERS, ZeRO, deepspeed_config, quiet_accelerator_notice

log = logging.getLogger("unigrad")

quiet_accelerator_notice()     # DeepSpeed is imported by transformers' save_pretrained whenever installed


@runtime_checkable
class Layout(Protocol):
    """How the processes hold the models and turn each process's backward into the one-process update.

    ``engine`` is what ``train_engine`` returned (a ``ModelCall``, or DeepSpeed's engine around one):
    the loop calls ``engine(fn, *args)`` for ``fn(model, *args)``. Methods marked *collective* must be
    called by every process."""
    procs: Processes

    def prepare(self, model) -> ModelCall:
        """A model held as this layout holds models (sharded under FSDP), for a frozen role."""

    def train_engine(self, model, make_optimizer: Callable[[list], torch.optim.Optimizer]) -> tuple:
        """``(engine, optimizer)`` for the trainable policy; ``make_optimizer``: trainable params -> optimiser."""

    def backward(self, engine, loss: torch.Tensor) -> None:
        """Accumulate this micro-batch's gradient (the loss is already divided by the whole step's counts)."""

    backward_scale: float  # what ``backward`` multiplies the loss by (a parameter outside the engine sees it in .grad)
    skips_updates: bool   # whether ``update(..., skip=True)`` leaves weights and optimiser state unchanged

    def update(self, engine, optimizer, params: list, max_grad_norm: float | None, skip: bool = False) -> float:
        """Sum the gradients over processes, clip, update (collective); the gradient norm before clipping.
        With ``skip``, or a non-finite norm, the update is not applied (where ``skips_updates``)."""

    def agree(self, flag: bool) -> bool:
        """Whether to take a path that must be the same on every process: ``flag`` on any (collective
        where layers are sharded)."""

    def sampling_model(self, model):
        """The model generation runs on, taken before the policy is sharded."""

    def sync_sampling_model(self, model, sampling) -> None:
        """Bring ``sampling`` to the policy's weights after an update (collective)."""

    def full_weights(self, model) -> dict | None:
        """Full tensors by name on the main process for a checkpoint, or None when ``model`` holds them
        whole (collective)."""

    def full_optimizer_state(self, model, optimizer) -> dict:
        """The optimiser state with full tensors in one process's ``state_dict()`` layout (collective)."""

    def load_full_state(self, model, optimizer, weights: dict, optimizer_state: dict | None) -> None:
        """Load full tensors read from a checkpoint (every process passes them all)."""


def choose_layout(config: RunConfig, procs: Processes, dtype: torch.dtype) -> Layout:
    """How the processes hold the model: FSDP (``train.fsdp``, or ``accelerate launch --use_fsdp``),
    DeepSpeed ZeRO (``train.deepspeed: S``, or ``accelerate launch --use_deepspeed``), or replicated;
    what the sharded layouts do not cover yet is refused with the reason."""
    launched = {name: os.environ.get(f"ACCELERATE_USE_{name.upper()}", "").lower() == "true"
                for name in ("fsdp", "deepspeed")}
    fsdp = config.train.fsdp or launched["fsdp"]
    stage = config.train.deepspeed or (int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or 2)
                                       if launched["deepspeed"] else 0)
    if not (fsdp or stage):
        return Replicated(procs)
    name = "train.fsdp" if fsdp else "train.deepspeed"
    if fsdp and stage:
        raise ConfigError("train.fsdp and train.deepspeed (or accelerate launch --use_fsdp / --use_deepspeed): "
                          "choose one way to shard the model")
    if not fsdp and stage not in (1, 2, 3):
        raise ConfigError(f"train.deepspeed: {stage} is not a ZeRO stage (1, 2 or 3; 0 turns DeepSpeed off)")
    why = []
    if procs.world == 1:
        why.append("one process (launch several: unigrad train --nproc P, torchrun or accelerate launch)")
    if config.data.format == "prompts" and config.rollout.sampler == "vllm":
        why.append("rollout.sampler: vllm (weight sync from a sharded model is not implemented; use hf)")
    if config.data.format == "prompts" and config.rollout.dynamic_sampling:
        why.append("rollout.dynamic_sampling (a step may leave a process without micro-batches, and every "
                   "process must run the same layer calls)")
    if config.teacher.name:
        why.append("a teacher (teacher.name): distillation on sharded models is not implemented")
    if config.model.lora:
        why.append("LoRA (model.lora): adapters on sharded models are not implemented")
    if why:
        raise ConfigError(f"{name}: {'FSDP' if fsdp else 'DeepSpeed'} cannot run with " + "; ".join(why))
    if fsdp:
        log.info("FSDP2: parameters, gradients and optimiser state sharded over %d processes", procs.world)
        return _fsdp(procs)
    zero = _zero(procs, stage, config.train, dtype)
    log.info("DeepSpeed ZeRO stage %d over %d processes", zero.stage, procs.world)
    return zero


def _fsdp(procs: Processes) -> FSDP2:
    # accelerate's setting: true/false (FSDP2) or an FSDP1 strategy name (SHARD_GRAD_OP keeps layers gathered)
    setting = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
    reshard = setting not in ("false", "0", "no", "shard_grad_op", "no_shard", "2", "3")
    return FSDP2(procs, reshard_after_forward=reshard)


def _zero(procs: Processes, stage: int, train_config: TrainConfig, dtype: torch.dtype) -> ZeRO:
    """The ZeRO layout for this run, from ``train.deepspeed`` or accelerate's launch settings."""
    if train_config.optimizer.lower() not in ELEMENTWISE_OPTIMIZERS:
        raise ConfigError(f"train.optimizer: {train_config.optimizer!r} under DeepSpeed — ZeRO runs the optimiser "
                          "on flat shards of all parameters, the same update only for an element-wise optimiser: "
                          f"use one of {', '.join(ELEMENTWISE_OPTIMIZERS)}")
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if precision not in ("no", "bf16" if dtype == torch.bfloat16 else "no"):
        raise ConfigError(f"accelerate launch --mixed_precision {precision}: unigrad sets the precision with "
                          "model.dtype (bfloat16 turns on DeepSpeed's bf16 with fp32 master weights)")
    for variable, ours, name in (("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", train_config.grad_accum, "grad_accum"),
                                 ("ACCELERATE_GRADIENT_CLIPPING", train_config.max_grad_norm or 0.0, "max_grad_norm")):
        launched = os.environ.get(variable, "")
        if launched not in ("", "auto", "none") and float(launched) != float(ours):
            raise ConfigError(f"accelerate launch sets {variable}={launched}, but the unigrad config says "
                              f"train.{name}: {ours}; set it in the config only")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError("DeepSpeed is not installed: pip install --no-build-isolation 'deepspeed>=0.19' "
                          "(without --no-build-isolation pip builds it against a freshly downloaded torch)") from None
    user_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or None
    ds_config = deepspeed_config(stage, train_config.max_grad_norm, dtype, train_config.grad_accum, user_file,
                                 os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"),
                                 os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"))
    if train_config.deepspeed and int(ds_config["zero_optimization"]["stage"]) != train_config.deepspeed:
        raise ConfigError(f"train.deepspeed: {train_config.deepspeed}, but the DeepSpeed config {user_file} says "
                          f"zero_optimization.stage {ds_config['zero_optimization']['stage']}; give the stage once")
    return ZeRO(procs, ds_config)


__all__ = ["FSDP2", "Layout", "ModelCall", "Processes", "Replicated", "ZeRO", "choose_layout", "processes"]
