"""Tuning a training hyper-parameter by PES / ES-Single: the learning-rate schedule of a short unigrad run.

The inner problem is a unigrad training run of T optimiser steps — the run's own objective
(``build_objective``), log-prob producer (``token_logprobs``), ``Batch``, data order and gradient
estimator, through ``train.StepLoss`` — with plain SGD, the gradient clipped by its global norm as the
loop clips it (``train.max_grad_norm``), and the learning rate of step t = 0 … T−1

    lr_t(θ) = e^{θ₀} (T − t)/T + e^{θ₁} t/T                  (θ ∈ R², log learning rates at the two ends)

(the schedule of the PES paper's learning-rate experiment; it replaces ``train.lr`` and
``train.schedule``). With w_t the weights after t steps and
L_val(w) the objective on a fixed held-out set (unigrad's ``eval/objective``), the meta-objective is
the area under the held-out curve,

    L(θ) = Σ_{t=1..T} L_val(w_t(θ)),

cut into truncations of K steps whose loss is L_t = Σ of L_val after each of its K steps. The
held-out loss, not the training loss, is taken: a schedule is a hyper-parameter, judged by how well
the run generalises, and the held-out batch is the same after every step, so L is a deterministic
function of θ (the training batches' noise is the run's, fixed by its seed).

Particles: the state is one row per particle, the particle's flat trainable weights followed by its
step counter t (float32, the model's dtype); each particle is evaluated at its own weights with
``torch.func.functional_call``. The unroll is a black box of θ (no graph through the inner steps):
unigrad's surrogate losses have the method's gradient but not its Hessian, so backprop through the
inner updates (truncated backprop, ``exact_gradient``) would be wrong; use the ES estimators
(``es``, ``pes``, ``es-single``).

Vicol, Metz & Sohl-Dickstein 2021, "Unbiased Gradient Estimation in Unrolled Computation Graphs with
Persistent Evolution Strategies" (ICML, arXiv 2112.13835), §5 learning-rate schedules; Vicol, Kolter &
Swersky 2023, "Low-Variance Gradient Estimation in Unrolled Computation Graphs with ES-Single" (ICML,
arXiv 2304.11153).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor
from torch.func import functional_call

from unigrad.config import ConfigError, RunConfig
from unigrad.gradients.unrolled import DTYPE, make, meta_train


class _Holder(torch.nn.Module):
    """``holder(fn, *args) = fn(model, *args)``: the engine's call as a module, so that
    ``functional_call`` can run it at any weights (``model.<name>`` keys)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


def schedule(theta: Tensor, T: int) -> Tensor:
    """lr_t = e^{θ₀}(T − t)/T + e^{θ₁} t/T for t = 0 … T−1, for θ of shape (d,) or (P, d): (T,) or (P, T)."""
    t = torch.arange(T, dtype=DTYPE)
    theta = theta.to(DTYPE)
    return torch.exp(theta[..., :1]) * (T - t) / T + torch.exp(theta[..., 1:2]) * t / T


def check_config(config: RunConfig) -> None:
    """What the inner run must be: one process, backprop, plain SGD through the optimiser step, a
    held-out split."""
    t = config.train
    if t.gradient.name != "backprop":
        raise ConfigError(f"train.gradient.name={t.gradient.name}: the inner run's gradient must be backprop "
                          "(the estimators of the schedule are the zeroth-order part)")
    if t.optimizer != "sgd" or t.optimizer_args:
        raise ConfigError(f"train.optimizer={t.optimizer}: the inner run is plain SGD (lr_t · gradient, no "
                          "optimizer_args such as momentum), so that its state is the weights alone")
    if t.update_rule != "optimizer_step" or t.optimizer_in_backward or t.fsdp or t.deepspeed:
        raise ConfigError("train.update_rule / optimizer_in_backward / fsdp / deepspeed: the inner run takes one "
                          "plain optimiser step per step, replicated in one process")
    if config.data.format == "prompts" or config.data.on_policy_fraction:
        raise ConfigError(f"data.format={config.data.format}: the inner run trains on a dataset split (its batches a "
                          "function of the seed and step alone); rollouts or on-policy samples would be drawn from "
                          "the initial weights, not each particle's")
    if not config.data.eval:
        raise ConfigError("data.eval: the meta-objective is the held-out loss of the inner run; give a held-out split")
    if t.steps < 1:
        raise ConfigError(f"train.steps={t.steps}: the inner run needs at least one step")


class ScheduleTuning:
    """The ``UnrolledProblem`` of a short unigrad training run under the schedule lr_t(θ) (module
    docstring): ``T`` = ``train.steps``, ``dim`` = 2, a state row = (trainable weights, t); a
    truncation's loss = Σ of the held-out objective after each of its K inner steps. ``held_out``:
    the first that many records of ``data.eval`` (all when None)."""

    dim = 2

    def __init__(self, config: RunConfig, held_out: int | None = None):
        from unigrad.data import load_dataset_sequences
        from unigrad.data.sources import resolve_data_path
        from unigrad.experience import Split
        from unigrad.run import assemble
        check_config(config)
        if held_out is not None and held_out < 1:
            raise ConfigError(f"held_out={held_out}: the held-out set needs at least one example")
        run = assemble(config)
        if run.procs.world != 1:
            raise ConfigError("the inner run of schedule tuning runs in one process (each particle is a whole model)")
        self.config, self.run, self.T = config, run, config.train.steps
        named = [(name, p) for name, p in run.model.named_parameters() if p.requires_grad]
        self.names = ["model." + name for name, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.start = torch.cat([p.detach().reshape(-1) for _, p in named])
        self.holder = _Holder(run.model)
        self.experiences = [run.experience(step) for step in range(self.T)]   # a pure function of (seed, step)
        d = config.data
        self.held_out = Split.of("held-out", load_dataset_sequences(
            resolve_data_path(d.eval, config.source), d.format, run.tokenizer, d.max_length, d.truncation, limit=held_out))

    # ------------------------------------------------------------------ the model at given weights
    def _params(self, weights: Tensor) -> dict[str, Tensor]:
        pieces = torch.split(weights, [math.prod(s) for s in self.shapes])
        return {name: piece.view(shape) for name, piece, shape in zip(self.names, pieces, self.shapes)}

    def _loss_of(self, weights: Tensor):
        """unigrad's step loss (``train.StepLoss``) with the policy called at ``weights``."""
        from unigrad.train import StepLoss
        params = self._params(weights)
        engine = lambda fn, *args, **kwargs: functional_call(self.holder, params, (fn, *args), kwargs)
        return StepLoss(dataclasses.replace(self.run, engine=engine))

    def held_out_loss(self, weights: Tensor) -> float:
        """The objective on the held-out set at ``weights`` (``evaluate.evaluate_objective``, as the loop's
        ``eval/objective``)."""
        from unigrad.evaluate import evaluate_objective
        r, t = self.run, self.config.train
        return evaluate_objective(self._loss_of(weights), r.model, self.held_out, t.eval_batch_size, r.device)["objective"]

    def train_step(self, weights: Tensor, step: int, lr: float) -> Tensor:
        """One step of the unigrad loop at ``weights``: the run's gradient estimator over the step's
        ``grad_accum`` micro-batches of ``run.experience(step)``, the gradient clipped to
        ``max_grad_norm`` (g · min(1, c / (‖g‖ + 1e-6)), as ``clip_grad_norm_``), then SGD
        w ← w − lr (g + wd·w); a step with a non-finite loss or gradient is skipped, as the loop skips it."""
        from unigrad.guards import finite
        t = self.config.train
        experience = self.experiences[step]
        whole = experience.step_batch(self.run.device)
        chunks = [c.tolist() for c in torch.arange(len(experience.units)).tensor_split(t.grad_accum)]
        grads = []
        with torch.enable_grad():     # also inside the estimators' no_grad: the inner run's own backprop
            leaf = weights.detach().requires_grad_(True)
            loss_of = self._loss_of(leaf)
            micro_batches = [lambda chunk=chunk: loss_of(experience, experience.rows_of(chunk), whole)
                             for chunk in chunks if chunk]
            sums = self.run.gradients(micro_batches, lambda loss: grads.append(torch.autograd.grad(loss, leaf)[0]),
                                      step * 64)
        grad, weights = torch.stack(grads).sum(0), weights.detach()
        pieces = torch.split(grad, [math.prod(s) for s in self.shapes])   # the norm as clip_grad_norm_ takes it
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in pieces]))
        if not (finite(sums.surrogate, sums.objective) and bool(torch.isfinite(norm))):
            return weights.clone()
        if t.max_grad_norm:
            grad = grad * torch.clamp(t.max_grad_norm / (norm + 1e-6), max=1.0)
        if t.weight_decay:
            grad = torch.add(grad, weights, alpha=t.weight_decay)
        return torch.add(weights, grad, alpha=-lr)                        # torch.optim.SGD's update

    # ------------------------------------------------------------------ the UnrolledProblem
    def init_state(self, particles: int) -> Tensor:
        row = torch.cat([self.start, self.start.new_zeros(1)])
        return row.expand(particles, row.numel()).clone()

    def unroll(self, state: Tensor, theta: Tensor, K: int) -> tuple[Tensor, Tensor]:
        """K inner steps of every particle under its own θ row; (new state, (P,) Σ held-out losses)."""
        if theta.requires_grad:
            raise ValueError("ScheduleTuning.unroll is not differentiable in θ (unigrad's surrogates have the "
                             "method's gradient, not its Hessian); use the es, pes or es-single estimators")
        rows, losses = [], []
        for weights, t, lrs in zip(state[:, :-1], state[:, -1], schedule(theta, self.T)):
            step, total = int(t), 0.0
            if step + K > self.T:
                raise ValueError(f"a truncation of K = {K} steps from step {step} runs past T = {self.T}")
            for _ in range(K):
                weights = self.train_step(weights, step, float(lrs[step]))
                step += 1
                total += self.held_out_loss(weights)
            rows.append(torch.cat([weights, weights.new_tensor([step])]))
            losses.append(total)
        return torch.stack(rows), torch.tensor(losses, dtype=DTYPE)

    def curve(self, theta: Tensor) -> list[float]:
        """The held-out loss after each of the T steps of one fresh inner run at θ (its sum is L(θ))."""
        state, out = self.init_state(1), []
        for _ in range(self.T):
            state, loss = self.unroll(state, theta.detach().to(DTYPE)[None], 1)
            out.append(float(loss[0]))
        return out

    def evaluate(self, theta: Tensor) -> dict:
        """meta_loss L(θ), final (the held-out loss at the end of the run) and the initial held-out loss."""
        curve = self.curve(theta)
        return {"meta_loss": sum(curve), "final": curve[-1]}

    def initial_loss(self) -> float:
        return self.held_out_loss(self.start)


def tune_schedule(config: RunConfig, estimator: str = "es-single", K: int | None = None, iterations: int = 100,
                  particles: int = 4, sigma: float = 0.3, lr: float = 0.1, theta0=(-4.0, -4.0), seed: int = 0,
                  held_out: int | None = None, eval_every: int = 10) -> dict:
    """Meta-train the learning-rate schedule of the run ``config`` describes (``train.steps`` = T) online
    with Adam on the estimator's ĝ_t, one outer step per truncation of K steps (default T/4 rounded
    to a divisor of T). Returns θ, the learned schedule lr_t, and the curve (every ``eval_every``
    outer steps: θ, meta-loss L(θ) and the final held-out loss of a fresh inner run)."""
    problem = ScheduleTuning(config, held_out)
    K = K or max(k for k in range(1, problem.T + 1) if problem.T % k == 0 and k <= max(1, problem.T // 4))
    curve = meta_train(make(estimator, problem, K, particles, sigma, seed), list(theta0), iterations,
                       lambda p: torch.optim.Adam(p, lr=lr), eval_every, problem.evaluate)
    theta = torch.tensor(curve["theta"][-1], dtype=DTYPE)
    return {"theta": curve["theta"][-1], "schedule": schedule(theta, problem.T).tolist(), "K": K, "curve": curve}


__all__ = ["ScheduleTuning", "check_config", "schedule", "tune_schedule"]
