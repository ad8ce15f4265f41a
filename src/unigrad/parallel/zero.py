"""``ZeRO``: DeepSpeed's ZeRO stages 1–3 as a layout, driven so that the update stays the one-process update.

Chosen by ``train.deepspeed: S`` or ``accelerate launch --use_deepspeed --zero_stage S`` with several
processes; DeepSpeed is imported only then.

DeepSpeed's engine owns the gradient reduction, the clip and the optimiser update; the loop's exactness
(P processes × batch b = one process × batch P·b) is kept by how the engine is driven:
- every process's loss is already divided by the whole step's counts and DeepSpeed *averages* the
  gradients over the P processes, so ``backward`` hands it P · loss, without DeepSpeed's division by the
  accumulation steps (``scale_wrt_gas=False``);
- ``managed_gradient_accumulation: false``: ``backward`` only accumulates, ``engine.step()`` is the step's
  boundary — reduce (stage 1) or finish the reduce-scatter (stages 2, 3), clip to ``train.max_grad_norm``,
  update — once per optimiser step, however many micro-batches the process trained.

Stage 1 shards the optimiser state, 2 also the gradients, 3 also the parameters (gathered per layer in
forward and backward). The optimiser is unigrad's own (``train.optimizer``), handed to DeepSpeed, which
runs it on flat shards: only element-wise optimisers are the same update there. Checkpoints hold full
tensors in the one-process layout, so a run resumes on any number of processes, with or without ZeRO.
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from unigrad.config import ConfigError
from unigrad.parallel.model_call import ModelCall
from unigrad.parallel.processes import Processes

ELEMENTWISE_OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop", "adagrad")
# what unigrad's config decides, so a DeepSpeed config file may not set it to something else
_OWNED = {"optimizer": "train.optimizer", "scheduler": "train.schedule",
          "fp16": "model.dtype", "bf16": "model.dtype"}


def deepspeed_config(stage: int, max_grad_norm: float | None, dtype: torch.dtype, grad_accum: int,
                     user_file: str | None = None, offload_optimizer: str | None = None,
                     offload_param: str | None = None) -> dict:
    """The DeepSpeed config for a run: the user's file (``accelerate launch --deepspeed_config_file``),
    checked against the unigrad config, with the settings that keep the update exact on top."""
    base = {}
    if user_file:
        try:
            base = json.loads(Path(user_file).read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"DeepSpeed config {user_file}: {error}") from None
        for key, owner in _OWNED.items():
            turned_off = key in ("fp16", "bf16") and base.get(key, {}).get("enabled", False) in (False, "auto")
            if key in base and not turned_off:
                raise ConfigError(f"DeepSpeed config {user_file}: field {key!r} is set by unigrad's {owner}; "
                                  "remove it from the file")
        for key, ours in (("gradient_accumulation_steps", grad_accum), ("gradient_clipping", max_grad_norm or 0.0)):
            if base.get(key, "auto") != "auto" and float(base[key]) != float(ours):
                raise ConfigError(f"DeepSpeed config {user_file}: field {key!r} is {base[key]}, but the unigrad "
                                  f"config says {ours} (train.{'grad_accum' if 'accum' in key else 'max_grad_norm'})"
                                  "; set it to \"auto\" or remove it")
        # what is left of the sections unigrad owns is turned off or "auto": model.dtype decides below
        base = {key: value for key, value in base.items() if value != "auto" and key not in _OWNED}
    zero = {key: value for key, value in base.get("zero_optimization", {}).items() if value != "auto"}
    if user_file is None or "stage" not in zero:
        zero["stage"] = stage
    if offload_optimizer and offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": offload_optimizer}
    if offload_param and offload_param != "none":
        zero["offload_param"] = {"device": offload_param}
    if int(zero["stage"]) not in (1, 2, 3):
        raise ConfigError(f"DeepSpeed: ZeRO stage {zero['stage']} is not one of 1, 2, 3")
    if int(zero["stage"]) != 2:       # DeepSpeed overlaps communication with backward only at stage 2 here
        zero["overlap_comm"] = False
    config = {**{key: value for key, value in base.items() if key != "train_batch_size"},
              "zero_optimization": zero,
              "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
              "managed_gradient_accumulation": False,
              "gradient_clipping": float(max_grad_norm or 0.0),
              "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
              "steps_per_print": 2 ** 62}
    if dtype == torch.bfloat16:
        config["bf16"] = {"enabled": True}
    elif dtype == torch.float16:
        raise ConfigError("DeepSpeed: model.dtype float16 needs DeepSpeed's loss scaling, which unigrad does not "
                          "drive; use bfloat16 or float32")
    return config


@dataclass(frozen=True)
class ZeRO:
    """DeepSpeed ZeRO (see the module doc). ``config``: the DeepSpeed config (``deepspeed_config``)."""
    procs: Processes
    config: dict = field(default_factory=dict)
    skips_updates: ClassVar[bool] = False

    @property
    def stage(self) -> int:
        return int(self.config["zero_optimization"]["stage"])

    def prepare(self, model) -> ModelCall:
        """A frozen model (the reference) is held whole on every process."""
        return ModelCall(model)

    def train_engine(self, model, make_optimizer):
        import deepspeed
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)    # its INFO lines would bury the run's log
        params = [p for p in model.parameters() if p.requires_grad]
        engine, optimizer, _, _ = deepspeed.initialize(model=ModelCall(model), optimizer=make_optimizer(params),
                                                       config=sized_for(self.config, model))
        return engine, optimizer

    @property
    def backward_scale(self) -> float:
        """DeepSpeed averages over the processes, so ``backward`` hands it P · loss."""
        return float(self.procs.world)

    def backward(self, engine, loss: torch.Tensor) -> None:
        engine.backward(loss * self.backward_scale, scale_wrt_gas=False)

    def update(self, engine, optimizer, params: list, max_grad_norm: float | None, skip: bool = False) -> float:
        """Reduce, clip and update (DeepSpeed); the gradient norm before clipping. DeepSpeed's engine
        cannot skip an update (``skips_updates`` is False): the run stops at a non-finite step instead."""
        engine.step()
        norm = engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def agree(self, flag: bool) -> bool:
        """Every process must run the same layer calls: stage 3 gathers each layer's parameters as it
        runs, and stages 1–2 reduce gradients in the order backward produces them."""
        return self.procs.sum(float(flag)) > 0

    def sampling_model(self, model):
        """Stages 1–2 keep the whole policy on every process: generation runs on it. Stage 3 shards it,
        and decoding makes a different number of layer calls on each process, so generation runs on a
        whole frozen copy taken before sharding, kept in step by ``sync_sampling_model``."""
        return copy.deepcopy(model).requires_grad_(False) if self.stage == 3 else model

    def sync_sampling_model(self, model, sampling) -> None:
        if sampling is model:
            return
        import deepspeed
        with torch.no_grad():
            for (name, param), target in zip(model.named_parameters(), sampling.parameters()):
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    target.copy_(param)

    def full_weights(self, model) -> dict | None:
        """Stages 1–2: None, the model holds them whole. Stage 3: full tensors on the main process (``{}``
        elsewhere), gathered one parameter at a time; every process must call it."""
        if self.stage != 3:
            return None
        import deepspeed
        weights = {}
        for name, param in model.named_parameters():
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                if self.procs.main:
                    weights[name] = param.detach().cpu().clone()
        return weights

    def full_optimizer_state(self, model, optimizer) -> dict:
        """The optimiser state with full tensors, keyed by parameter index like ``optimizer.state_dict()``
        of one process (on the main process; every process must call it)."""
        from deepspeed.utils import safe_get_full_optimizer_state
        inner = optimizer.optimizer
        if not inner.state:
            return {}
        first = next(iter(inner.state.values()))
        sharded = [key for key, value in first.items() if torch.is_tensor(value) and value.dim() > 0]
        shared = {key: value for key, value in first.items() if key not in sharded}   # e.g. Adam's step count
        params = [p for p in model.parameters() if p.requires_grad]
        state = {}
        for index, param in enumerate(params):
            full = {key: safe_get_full_optimizer_state(param, key) for key in sharded}
            if self.procs.main:
                state[index] = {**{key: value.detach().clone().cpu() if torch.is_tensor(value) else value
                                   for key, value in shared.items()},
                                **{key: value.detach().cpu() for key, value in full.items()}}
        group = {key: value for key, value in optimizer.param_groups[0].items() if key != "params"}
        return {"state": state, "param_groups": [{**group, "params": list(range(len(params)))}]}

    def load_full_state(self, model, optimizer, weights: dict, optimizer_state: dict | None) -> None:
        """Every process passes the full tensors (it read them from the checkpoint)."""
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
        params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        with torch.no_grad():
            for name, param in params:
                if name not in weights:
                    continue
                # the model's copy (what forward reads) and DeepSpeed's fp32 shard (what the optimiser updates)
                with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                    if self.stage != 3 or self.procs.main:
                        param.copy_(weights[name].to(param.dtype))
                if self.stage == 3:
                    self._set_stage3_piece(param, weights[name])
                else:
                    safe_set_full_fp32_param(param, weights[name].to(torch.float32))
        if not optimizer_state or not optimizer_state.get("state"):
            return
        saved = next(iter(optimizer_state["state"].values()))
        sharded = [key for key, value in saved.items() if torch.is_tensor(value) and value.dim() > 0]
        # DeepSpeed's optimiser creates its state at the first step, on its flat fp32 shards: make it now
        flats = optimizer.fp32_partitioned_groups_flat if self.stage == 3 else optimizer.single_partition_of_fp32_groups
        on_device = optimizer.param_groups[0].get("fused") or optimizer.param_groups[0].get("capturable")
        for flat in flats:
            optimizer.optimizer.state[flat] = {
                **{key: value.clone().to(flat.device) if torch.is_tensor(value) and on_device else value
                   for key, value in saved.items() if key not in sharded},
                **{key: torch.zeros_like(flat) for key in sharded}}
        if self.stage != 3:        # stages 1-2 link each parameter to its piece of the state at the first step
            optimizer._lazy_init_hp_params_optimizer_state()
        for index, (name, param) in enumerate(params):
            own = optimizer_state["state"].get(index, optimizer_state["state"].get(str(index)))
            for key in sharded:
                if self.stage == 3:
                    self._set_stage3_piece(param, own[key], key)
                else:
                    safe_set_full_optimizer_state(param, own[key].to(torch.float32), key)

    def _set_stage3_piece(self, param, full: torch.Tensor, key: str | None = None) -> None:
        """This process's piece of a stage-3 parameter's fp32 copy (``key`` None) or optimiser state: the
        rank-th n elements of the flat full tensor, zero-padded as DeepSpeed pads its partitions.
        DeepSpeed's own ``safe_set_full_*`` cut the full tensor without the padding, which fails for a
        parameter with fewer elements than processes (a value head's bias)."""
        from deepspeed.utils import (
            safe_get_local_fp32_param, safe_get_local_optimizer_state, safe_set_local_fp32_param,
            safe_set_local_optimizer_state,
        )
        local = safe_get_local_fp32_param(param) if key is None else safe_get_local_optimizer_state(param, key)
        n, rank = local.numel(), self.procs.rank
        flat = full.flatten().to(torch.float32)
        flat = torch.nn.functional.pad(flat, (0, max(0, n * (rank + 1) - flat.numel())))
        piece = flat[n * rank:n * (rank + 1)].view_as(local).to(local.device)
        if key is None:
            safe_set_local_fp32_param(param, piece)
        else:
            safe_set_local_optimizer_state(param, piece, key)


def sized_for(config: dict, model) -> dict:
    """``config`` with the communication buckets sized for ``model`` where it leaves them open (absent or
    "auto"), as accelerate sizes them: DeepSpeed's own default buffers 5e8 elements per bucket (2 GB in
    fp32), more than a small model's whole gradient."""
    config = copy.deepcopy(config)
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if hidden:
        zero = config["zero_optimization"]
        zero.setdefault("reduce_bucket_size", hidden * hidden)
        zero.setdefault("allgather_bucket_size", hidden * hidden)
        if int(zero["stage"]) == 3:
            zero.setdefault("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden))
            zero.setdefault("stage3_param_persistence_threshold", 10 * hidden)
    return config


_ACCELERATOR_NOTICES = ("Setting accelerator to", "Setting ds_accelerator to")


def quiet_accelerator_notice() -> None:
    """Drop the line DeepSpeed logs when it is first imported, saying which accelerator it detected
    ("Setting accelerator to CPU. If you have GPU …"). transformers' ``save_pretrained`` imports
    DeepSpeed whenever it is installed (accelerate's unwrap looks for its engine), used or not, and
    unigrad has already chosen the device; the line is nothing a user can act on."""
    logging.getLogger("DeepSpeed").addFilter(_not_accelerator_notice)


def _not_accelerator_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_ACCELERATOR_NOTICES)
