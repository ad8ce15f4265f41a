"""``Replicated``: every process holds the whole model; one bucketed all-reduce sums the gradients."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from unigrad import optim
from unigrad.parallel.model_call import ModelCall, with_optimizer
from unigrad.parallel.processes import Processes


@dataclass(frozen=True)
class Replicated:
    """Every process holds the whole model; gradients are summed in one all-reduce after backward."""
    procs: Processes
    skips_updates: ClassVar[bool] = True
    backward_scale: ClassVar[float] = 1.0

    def prepare(self, model) -> ModelCall:
        return ModelCall(model)

    def train_engine(self, model, make_optimizer):
        """The policy's call and its optimiser (``make_optimizer``: trainable params -> optimiser)."""
        return with_optimizer(self.prepare(model), make_optimizer)

    def backward(self, engine, loss: torch.Tensor) -> None:
        loss.backward()

    def update(self, engine, optimizer, params: list, max_grad_norm: float | None, skip: bool = False) -> float:
        """Sum the gradients over processes, clip, update; the gradient norm before clipping."""
        self.procs.sum_gradients(params)
        return optim.apply_update(optimizer, params, max_grad_norm, skip)

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
