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
               "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad, "m-fac": MFAC}
    kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, **dict(getattr(cfg, "optimizer_args", None) or {})}
    if name in ("adamw", "adam"):
        kwargs["betas"] = tuple(cfg.betas)

        def adam(params):
            try:  # the fused kernel: on this CPU one SmolLM2 AdamW step takes 85 ms fused against 361 ms
                return builtin[name](params, fused=True, **kwargs)
            except (RuntimeError, TypeError, ValueError):
                return builtin[name](params, **kwargs)
        return adam
    if name in builtin:
        return lambda params: _build(builtin[name], params, kwargs, cfg.optimizer)
    if name in SOPHIA:      # its betas in optimizer_args (the paper's (0.965, 0.99)), not train.betas
        return lambda params: _build(Sophia, params, {"curvature": SOPHIA[name], **kwargs}, cfg.optimizer)
    try:
        from pytorch_optimizer import load_optimizer
        optimizer_class = load_optimizer(name)
    except Exception:
        raise ConfigError(f"train.optimizer: unknown optimizer {cfg.optimizer!r}; use one of "
                          f"{', '.join([*builtin, *SOPHIA])} or a pytorch-optimizer name (e.g. lion, adamp, sophiah)") from None
    return lambda params: _build(optimizer_class, params, kwargs, cfg.optimizer)


def _build(optimizer_class, params, kwargs: dict, name: str):
    try:
        return optimizer_class(params, **kwargs)
    except TypeError as error:   # an argument it does not take, from train.optimizer_args
        raise ConfigError(f"train.optimizer_args: {name} does not take these arguments ({error})") from None
    except ValueError as error:  # a value it refuses
        raise ConfigError(f"train.optimizer_args: {error}") from None


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


class MFAC(torch.optim.Optimizer):
    """M-FAC, sliding-window version (Frantar, Kurtic & Alistarh 2021, "M-FAC: Efficient Matrix-Free
    Approximations of Second-Order Information", §3–4): precondition each step's gradient with the
    inverse of the damped empirical Fisher of the last m gradients,

        F̂ = λ I + (1/m) Σ_{i=1..m} g_i g_iᵀ,     u = F̂⁻¹ (g + wd·θ),     θ ← θ − lr · u

    (the current gradient included, m the number held while the window fills; with ``momentum`` μ,
    u ← μ u_prev + (1 − μ) u). By Woodbury, with G the m × d window and K = G Gᵀ kept up to date,

        F̂⁻¹ x = (x − Gᵀ (m λ I + K)⁻¹ G x) / λ,

    which costs O(m d + m³) per step and no d × d matrix. Memory: the window, m · d numbers (for
    SmolLM2-135M in fp32, 0.54 GB per gradient kept), plus an m × m Gram matrix. Parameters are
    treated as one flat vector across all of them (the paper's global, not per-layer, variant)."""

    def __init__(self, params, lr: float = 1e-3, m: int = 32, damping: float = 1e-5, weight_decay: float = 0.0,
                 momentum: float = 0.0):
        if m < 1:
            raise ValueError(f"m-fac: m (gradients in the window) must be >= 1, got {m}")
        if not damping > 0:
            raise ValueError(f"m-fac: damping λ must be > 0, got {damping}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum})
        self.m, self.damping = int(m), float(damping)

    def _flat(self, tensors) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    @property
    def _window(self) -> dict:
        """The window's state, kept under the first parameter (checkpoints key state by parameter)."""
        return self.state[self.param_groups[0]["params"][0]]

    def inverse_fisher_product(self, x: torch.Tensor) -> torch.Tensor:
        """F̂⁻¹ x for the gradients in the window."""
        state = self._window
        n, window, gram = state["count"], state["gradients"], state["gram"]
        rows = window[:n]
        coefficients = torch.linalg.solve(n * self.damping * torch.eye(n, dtype=gram.dtype, device=gram.device)
                                          + gram[:n, :n], rows @ x)
        return (x - rows.T @ coefficients) / self.damping

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return loss
        group = self.param_groups[0]
        g = self._flat([p.grad for p in params])
        if group["weight_decay"]:
            g = g + group["weight_decay"] * self._flat(params)
        state = self._window
        if not state:
            state.update(count=0, next=0, gradients=torch.zeros(self.m, g.numel(), dtype=g.dtype, device=g.device),
                         gram=torch.zeros(self.m, self.m, dtype=g.dtype, device=g.device))
        slot = state["next"]
        state["gradients"][slot] = g
        products = state["gradients"] @ g
        state["gram"][slot, :] = products
        state["gram"][:, slot] = products
        state["count"], state["next"] = min(state["count"] + 1, self.m), (slot + 1) % self.m  # filling: rows 0..count−1
        update = self.inverse_fisher_product(g)
        if group["momentum"]:
            previous = state.get("momentum_buffer")
            update = update if previous is None else group["momentum"] * previous + (1 - group["momentum"]) * update
            state["momentum_buffer"] = update
        offset = 0
        for p in params:
            n = p.numel()
            p.add_(update[offset:offset + n].view_as(p).to(p.dtype), alpha=-group["lr"])
            offset += n
        return loss


class Sophia(torch.optim.Optimizer):
    """Sophia (Liu, Li, Hall, Liang & Ma 2024, "Sophia: A Scalable Stochastic Second-order Optimizer for
    Language Model Pre-training", ICLR, arXiv 2305.14342, Algorithm 3): a moving average of gradients
    divided, coordinate by coordinate, by a moving average of a diagonal curvature estimate, then clipped,

        m ← β1 m + (1 − β1) g
        every k steps: h ← β2 h + (1 − β2) ĥ        (``refresh``, called by ``updates.CurvatureRefresh``)
        θ ← θ − η λ θ
        θ ← θ − η · clip(m / max(ρ h, ε), 1)        (clip(x, 1) = max(min(x, 1), −1) per coordinate)

    ĥ is Gauss–Newton–Bartlett for Sophia-G and Hutchinson for Sophia-H (``gradients.curvature``).
    Before the first refresh h = 0 and the step is η · sign(m). No bias correction (as the paper's code).
    Defaults as the paper's code: β = (0.965, 0.99), ρ = 0.04, k = 10; ε = 1e-12 (the paper). State:
    m and h, two copies of the trainable weights."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.965, 0.99), rho: float = 0.04, eps: float = 1e-12,
                 weight_decay: float = 0.0, curvature: str = "gauss-newton-bartlett", every: int = 10):
        if not rho > 0 or not eps > 0:
            raise ValueError(f"sophia: rho and eps must be > 0, got rho={rho}, eps={eps}")
        if int(every) < 1:
            raise ValueError(f"sophia: every (steps between curvature refreshes) must be >= 1, got {every}")
        betas = tuple(betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"sophia: betas must be two numbers in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "rho": rho, "eps": eps, "weight_decay": weight_decay})
        self.curvature, self.every = curvature, int(every)

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["hessian"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def refresh(self, estimates: dict) -> None:
        """h ← β2 h + (1 − β2) ĥ for each parameter's ĥ in ``estimates`` (parameter → tensor)."""
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                if p in estimates:
                    self._state(p)["hessian"].mul_(beta2).add_(estimates[p].to(p.dtype), alpha=1 - beta2)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1 = group["betas"][0]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                m = state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                ratio = m / (group["rho"] * state["hessian"]).clamp(min=group["eps"])
                p.add_(ratio.clamp_(-1.0, 1.0), alpha=-group["lr"])
        return loss


SOPHIA = {"sophia-g": "gauss-newton-bartlett", "sophia-h": "hutchinson"}


def check_sophia(cfg, layout) -> None:
    """Sophia's curvature refresh runs its own backward between updates and sums its buffers over
    processes like a replicated layout's gradients: refused where that is not so."""
    if cfg.optimizer.lower() not in SOPHIA:
        return
    why = []
    if cfg.optimizer_in_backward:
        why.append("train.optimizer_in_backward (the curvature estimate's backward would update the weights)")
    if cfg.fsdp or cfg.deepspeed:
        why.append("train.fsdp / train.deepspeed (the estimate is reduced as whole replicated tensors)")
    if why:
        raise ConfigError(f"train.optimizer={cfg.optimizer}: not with " + "; ".join(why) + "; run it replicated")
