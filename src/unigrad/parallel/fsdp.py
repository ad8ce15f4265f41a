"""``FSDP2``: PyTorch's ``fully_shard`` — parameters, gradients and optimiser state split over processes.

Chosen by ``train.fsdp: true`` or ``accelerate launch --use_fsdp``. Each decoder layer is gathered
only while it runs, and gradients are reduce-scattered as sums in backward.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch

from unigrad import optim
from unigrad.parallel.model_call import ModelCall, with_optimizer
from unigrad.parallel.processes import Processes


@dataclass(frozen=True)
class FSDP2:
    """FSDP2: each of the model's repeated blocks (its ``_no_split_modules``, e.g. the decoder layers)
    is one shard group, the rest (embedding, final norm, LM head) the root group around ``ModelCall``.
    Each process backprops its share of the step with the loss already divided by the whole step's
    counts, so the reduce-scatter sums (divide factor 1, sum-only collectives: gloo has no pre-scaled
    sum); the optimiser updates each process's shard. Checkpoints hold full tensors, in the same
    layout as one process's, so a run resumes on any number of processes.

    Every process must run the same sequence of layer calls (each is a collective), so a path that
    depends on the data (the shared-prompt forward) is taken when any process would take it (``agree``)."""
    procs: Processes
    reshard_after_forward: bool = True
    skips_updates: ClassVar[bool] = True
    backward_scale: ClassVar[float] = 1.0

    def prepare(self, model) -> ModelCall:
        from torch.distributed.fsdp import fully_shard
        blocks = set(getattr(model, "_no_split_modules", None) or [])
        if not blocks:
            raise ValueError(f"FSDP: {type(model).__name__} names no repeated blocks (_no_split_modules) to shard")
        call = ModelCall(model)
        units = [module for module in model.modules() if type(module).__name__ in blocks]
        for module in units:
            fully_shard(module, reshard_after_forward=self.reshard_after_forward)
        fully_shard(call, reshard_after_forward=False)
        for unit in [*units, call]:
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)
        return call

    def train_engine(self, model, make_optimizer):
        """Shard first: the optimiser is built on (and updates) this process's shards."""
        return with_optimizer(self.prepare(model), make_optimizer)

    def backward(self, engine, loss: torch.Tensor) -> None:
        loss.backward()

    def update(self, engine, optimizer, params: list, max_grad_norm: float | None, skip: bool = False) -> float:
        """Clip and update the shards (backward already reduce-scattered the gradient sums)."""
        return optim.apply_update(optimizer, params, max_grad_norm, skip)

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


def _trainable_names(model) -> list[str]:
    """Names of the trainable parameters in ``model.parameters()`` order (the optimiser's indices)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]
