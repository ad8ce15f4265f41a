"""Optimisers: building one from the config, the learning-rate schedule, and the update of a step.

Two ways to update:
- the usual one: backward fills every ``.grad``, then clip by the global norm, ``step()``, zero;
- ``StepInBackward`` (``train.optimizer_in_backward: true``): each parameter is updated by its own
  optimiser the moment backward has finished its gradient, and the gradient is freed right away, so
  a step never holds all gradients at once — one fp32 copy of the trainable weights less at the peak
  (PyTorch's "optimizer step in backward" recipe). It is the same update as the usual one when the
  step is one backward pass in one process without global-norm clipping (the clip needs every
  gradient before the first update); ``check_in_backward`` refuses the other cases.
"""
from __future__ import annotations

import math

import torch

from unigrad.config import ConfigError


def learning_rate(step: int, cfg) -> float:
    """Warm-up from 0, then cosine or linear decay to ``min_lr_ratio · lr`` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    shape = {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress, "constant": 1.0}[cfg.schedule]
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


def _optimizer_factory(cfg):
    """params -> optimiser, as ``train.optimizer`` names it."""
    name = cfg.optimizer.lower()
    builtin = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD,
               "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}
    kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if name in ("adamw", "adam"):
        kwargs["betas"] = tuple(cfg.betas)

        def adam(params):
            try:  # the fused kernel: on this CPU one SmolLM2 AdamW step takes 85 ms fused against 361 ms
                return builtin[name](params, fused=True, **kwargs)
            except (RuntimeError, TypeError, ValueError):
                return builtin[name](params, **kwargs)
        return adam
    if name in builtin:
        return lambda params: builtin[name](params, **kwargs)
    try:
        from pytorch_optimizer import load_optimizer
        optimizer_class = load_optimizer(name)
    except Exception:
        raise ConfigError(f"train.optimizer: unknown optimizer {cfg.optimizer!r}; use one of "
                          f"{', '.join(builtin)} or a pytorch-optimizer name (e.g. lion, adamp, sophiah)") from None
    return lambda params: optimizer_class(params, **kwargs)


def make_optimizer(params: list, cfg):
    """The optimiser of ``train``: one for all parameters, or ``StepInBackward`` when
    ``optimizer_in_backward`` is set."""
    factory = _optimizer_factory(cfg)
    if getattr(cfg, "optimizer_in_backward", False):
        return StepInBackward(params, factory)
    return factory(params)


def check_in_backward(cfg, processes: int) -> None:
    """The cases in which updating inside backward is not the usual update, refused with the reason."""
    if not cfg.optimizer_in_backward:
        return
    why = []
    if cfg.max_grad_norm:
        why.append(f"train.max_grad_norm={cfg.max_grad_norm} (clipping by the global norm needs every gradient "
                   "before the first update; set it to null)")
    if cfg.grad_accum != 1:
        why.append(f"train.grad_accum={cfg.grad_accum} (the step must be one backward pass)")
    if processes != 1:
        why.append(f"{processes} processes (gradients must be summed over processes before the update)")
    if why:
        raise ConfigError("train.optimizer_in_backward: updates each parameter as soon as its gradient is ready, "
                          "which is not the same update with " + "; ".join(why))


class StepInBackward:
    """One optimiser per trainable parameter, stepped from the parameter's post-accumulate-grad hook,
    after which its gradient is freed. Looks like one optimiser to the loop and the checkpoint:
    ``param_groups`` (to set the learning rate), ``state_dict`` / ``load_state_dict`` in the layout of
    a single optimiser over the same parameters (checkpoints are interchangeable with the usual path).
    The gradient norm of the last step is accumulated in the hooks (``grad_norm``)."""

    def __init__(self, params: list, factory):
        self.params = list(params)
        self.optimizers = [factory([p]) for p in self.params]
        self._squared_norm = torch.zeros((), dtype=torch.float64)
        self._handles = [p.register_post_accumulate_grad_hook(self._update_with(opt))
                         for p, opt in zip(self.params, self.optimizers)]

    def _update_with(self, optimizer):
        def update(param: torch.Tensor) -> None:
            # a norm reduction, not grad.pow(2): no temporary the size of the gradient
            self._squared_norm += torch.linalg.vector_norm(param.grad.detach()).double().cpu() ** 2
            optimizer.step()
            param.grad = None
        return update

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def grad_norm(self) -> float:
        """The gradient norm of the updates since the last call (0 when nothing was updated)."""
        norm = float(self._squared_norm.sqrt())
        self._squared_norm.zero_()
        return norm

    def state_dict(self) -> dict:
        state, group = {}, None
        for index, optimizer in enumerate(self.optimizers):
            own = optimizer.state_dict()
            if 0 in own["state"]:
                state[index] = own["state"][0]
            group = {**own["param_groups"][0], "params": list(range(len(self.optimizers)))}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        if len(state_dict["param_groups"]) != 1:
            raise ValueError("optimizer_in_backward can resume only from a checkpoint with one parameter group")
        group = {key: value for key, value in state_dict["param_groups"][0].items() if key != "params"}
        for index, optimizer in enumerate(self.optimizers):
            own = state_dict["state"].get(index, state_dict["state"].get(str(index)))
            optimizer.load_state_dict({"state": {0: own} if own is not None else {},
                                       "param_groups": [{**group, "params": [0]}]})


def apply_update(optimizer, params: list, max_grad_norm: float | None, skip: bool = False) -> float:
    """Finish the step's update after backward; returns the gradient norm (before clipping). With
    ``skip`` (a non-finite loss), or when the norm is not finite, the gradients are dropped and the
    weights and optimiser state stay as they are."""
    if isinstance(optimizer, StepInBackward):
        return optimizer.grad_norm()           # already updated inside backward
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm else float("inf"))
    if hasattr(norm, "full_tensor"):          # parameters sharded over processes (FSDP): a DTensor
        norm = norm.full_tensor()
    if not skip and bool(torch.isfinite(norm)):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)
