"""PPO's critic: a trainable model role next to the policy, held one of two ways (``critic.shared``).

A separate critic (``Critic``): V_φ(x, y_<t) is a language model with a one-output token-classification
head (``models.value_model``), loaded from ``critic.model`` (default: the policy's initial weights,
model.name). The run holds it the way the layout holds the policy (``layout.train_engine``: its own
engine and optimiser, replicated, FSDP-sharded or its own DeepSpeed engine) and it takes part in a
step in two places:

- ``WithValues(source, critic)`` wraps the experience producer: when a step's rollouts are made it
  adds V_old [N, T] (``values``, no gradient) at every completion token;
- ``CriticUpdate(rule, critic, value_loss)`` wraps the update rule: after the policy's update it runs
  the value loss (``objectives.value.ValueLoss``) on the same step's micro-batches
  (``gradients(estimator)`` with the critic's own objective and read-out), then the critic's own
  clip and optimiser step at its own learning rate (``critic.lr``, ``critic.schedule``...). With
  several rollout epochs each epoch updates both; ``critic.pretrain_steps`` first steps update only it.

A value head on the policy's trunk (``SharedHead``): V_t = wᵀh_t + b on the policy's own hidden states,
read with the log-probs from one forward (``logprobs.LogprobsAndValues``); the policy's loss becomes
L_π + c·L_V (``methods.ppo.WithValueHead``) and ``SharedHeadUpdate`` steps the head after the policy.

Both are ``Stateful`` (``unigrad.state``): weights and optimiser state go into every checkpoint as full
tensors in one process's layout (``trainable_state``) and come back on ``--resume`` under any layout.
``HeldOutValues`` scores the critic on new rollouts of the held-out prompts at each evaluation.
"""
from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor

from unigrad.config import ConfigError, CriticConfig, RunConfig
from unigrad.data.packing import per_token_rows
from unigrad.gradients.base import StepSums
from unigrad.guards import RunError, finite
from unigrad.logprobs.producers import LogprobsAndValues
from unigrad.logprobs.values import token_values, trunk_values
from unigrad.methods.ppo import WithCritic, WithValueHead, value_loss_of
from unigrad.models import load_model
from unigrad.estimator.advantages.gae import advantages_and_returns
from unigrad.objectives.value import ValueLoss, explained_variance
from unigrad.optim import learning_rate, make_optimizer
from unigrad.parallel.replicated import Replicated
from unigrad.parallel.zero import ELEMENTWISE_OPTIMIZERS, ZeRO
from unigrad.tokens import TokenBatch
from unigrad.updates import UpdateRule

VALUES = frozenset({"values"})   # what the critic adds to the experience


class Critic:
    """The critic model role: its engine, optimiser and schedule, and its checkpointed state."""
    state_name: ClassVar[str] = "critic"

    def __init__(self, model, layout, config: CriticConfig, steps: int, pad_id: int, packed: bool,
                 batch_size: int):
        self.model, self.layout, self.config = model.eval(), layout, config
        self.engine, self.optimizer = layout.train_engine(model, lambda params: make_optimizer(params, config))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.schedule = types.SimpleNamespace(**dataclasses.asdict(config), steps=steps)
        self.pad_id, self.packed, self.batch_size = pad_id, packed, batch_size

    def values(self, sequences: list) -> Tensor:
        """V_old [N, T] of ``sequences`` (no gradient), ``batch_size`` sequences per forward."""
        return per_token_rows(sequences, lambda tb: self.engine(token_values, tb), self.pad_id, self.batch_size,
                              self.packed)

    def producers(self) -> list:
        """None: the critic reads its values with its own estimator (``CriticEstimator``)."""
        return []

    def update_rule(self, rule: UpdateRule, loss: ValueLoss, total: Callable[[float], float]) -> UpdateRule:
        """``rule``, then the critic's own step on L_V."""
        return CriticUpdate(rule, self, loss, total, self.config.pretrain_steps)

    def backward(self, loss: Tensor) -> None:
        self.layout.backward(self.engine, loss)

    def update(self, step: int, skip: bool) -> float:
        return role_step(self, step, skip)

    def checkpoint_state(self) -> dict:
        return trainable_state(self.layout, self.model, self.optimizer)

    def restore_state(self, state: dict) -> None:
        restore_trainable(self.layout, self.model, self.optimizer, state)


def role_step(role, step: int, skip: bool) -> float:
    """A trainable role's update: its gradients summed over processes, clipped at ``critic.max_grad_norm``,
    one step of its optimiser at its schedule's rate (skipped with ``skip``); the norm before clipping."""
    for group in role.optimizer.param_groups:
        group["lr"] = learning_rate(step, role.schedule)
    return role.layout.update(role.engine, role.optimizer, role.params, role.config.max_grad_norm, skip)


def trainable_state(layout, model, optimizer) -> dict:
    """A trainable role's full weights (``weights/NAME``) and optimiser state (``optimizer/PID/KEY``
    tensors, ``optimizer_values``, ``optimizer_groups``) in one process's layout, gathered by ``layout``, so
    a checkpoint resumes under any layout and number of processes. Collective: every process calls it;
    only the main process's result is whole (the one written)."""
    params = dict(model.named_parameters())
    gathered = layout.full_weights(model)
    if gathered is None:    # held whole
        gathered = {name: p.detach() for name, p in params.items()}
    saved = layout.full_optimizer_state(model, optimizer)
    state = {f"weights/{name}": value for name, value in gathered.items() if name in params}   # no buffers
    values = {}
    for pid, entries in saved.get("state", {}).items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                state[f"optimizer/{pid}/{key}"] = value
            else:
                values[f"{pid}/{key}"] = value
    state["optimizer_values"] = values
    state["optimizer_groups"] = saved.get("param_groups", [])
    return state


def restore_trainable(layout, model, optimizer, state: dict) -> None:
    """``trainable_state``'s inverse, into this layout's (possibly sharded) model; every process passes it all."""
    weights, entries = {}, {}
    for key, value in state.items():
        kind, _, rest = key.partition("/")
        if kind == "weights":
            weights[rest] = value
        elif kind == "optimizer":
            pid, _, name = rest.partition("/")
            entries.setdefault(int(pid), {})[name] = value
    for key, value in state["optimizer_values"].items():
        pid, _, name = key.partition("/")
        entries.setdefault(int(pid), {})[name] = value
    layout.load_full_state(model, optimizer, weights, {"state": entries, "param_groups": state["optimizer_groups"]})


@dataclass(frozen=True, eq=False)
class CriticValues:
    """The critic's read-out as a log-prob producer: ``value_pred`` = V_φ (with gradient); ``logp`` zeros
    (the value loss reads no policy log-probs)."""
    critic: Critic
    provides: ClassVar[frozenset[str]] = frozenset({"logp", "value_pred"})

    def __call__(self, engine, sequences, tb: TokenBatch) -> dict[str, Tensor]:
        values = self.critic.engine(token_values, tb)
        return {"logp": torch.zeros_like(values.detach()), "value_pred": values}


@dataclass(frozen=True, eq=False)
class CriticEstimator:
    """∇_φ L_V by backprop through the critic over the step's micro-batches (each already divided by the
    whole step's token count): the gradient estimator protocol, with the critic's own backward."""
    critic: Critic
    loss: ValueLoss

    def __call__(self, micro_batches, backward, key: int = 0) -> StepSums:
        sums, producer = StepSums(metrics={"value_clipfrac": 0.0}), CriticValues(self.critic)
        for micro_batch in micro_batches:
            out, tokens = micro_batch(objective=self.loss, logprobs=producer)
            self.critic.backward(out.loss)
            sums.surrogate += float(out.loss.detach())
            sums.objective += float(out.objective)
            sums.tokens += tokens
            sums.metrics["value_clipfrac"] += out.metrics["value_clipfrac"]
            sums.metrics["explained_variance"] = out.metrics["explained_variance"]   # of the whole step
        return sums


@dataclass(frozen=True, eq=False)
class CriticUpdate:
    """``rule`` for the policy, then one update of the critic on the same step's micro-batches. Metrics:
    ``value_loss`` and ``value_clipfrac`` (of the step, summed over processes by ``total``),
    ``explained_variance`` (of V_old against the returns), ``critic_grad_norm`` (before clipping). A
    non-finite value loss on any process skips the critic's step (stops the run where its layout cannot
    skip: DeepSpeed). For the first ``pretrain_steps`` steps the
    policy is held and only the critic learns (``policy_held`` 1; verl's ``critic_warmup``)."""
    rule: UpdateRule
    critic: Critic
    loss: ValueLoss
    total: Callable[[float], float] = lambda value: value
    pretrain_steps: int = 0

    def __call__(self, step, gradients, apply):
        held = step < self.pretrain_steps          # the critic learns the initial policy's values first
        sums, norm = (StepSums(), 0.0) if held else self.rule(step, gradients, apply)
        critic = gradients(CriticEstimator(self.critic, self.loss))
        if held:
            sums.tokens = critic.tokens
        skip = self.total(float(not finite(critic.surrogate, critic.objective))) > 0
        if skip and not self.critic.layout.skips_updates:
            raise RunError(f"step {step + 1}: the critic's value loss is not finite ({critic.objective}) and its "
                           "DeepSpeed engine cannot skip an update; nothing non-finite was saved. Try a lower "
                           "critic.lr or critic.max_grad_norm")
        critic_norm = self.critic.update(step, skip)
        sums.metrics = {**sums.metrics, "value_loss": self.total(critic.objective),
                        "value_clipfrac": self.total(critic.metrics["value_clipfrac"]),
                        "explained_variance": critic.metrics.get("explained_variance", 0.0),
                        "critic_grad_norm": critic_norm, "policy_held": float(held)}
        return sums, norm


@dataclass(eq=False)
class WithValues:
    """The experience of ``source`` with the critic's V_old [N, T] of every row (``values``)."""
    source: object
    critic: Critic

    @property
    def provides(self) -> frozenset[str]:
        return self.source.provides | VALUES

    @property
    def epochs(self) -> int:
        return self.source.epochs

    def __call__(self, step: int):
        experience = self.source(step)
        values = self.critic.values(experience.sequences)
        experience.fields["values"] = values
        lengths = torch.tensor([len(s.completion_ids) for s in experience.sequences])
        mask = torch.arange(values.shape[1])[None] < lengths[:, None]
        experience.metrics["values_mean"] = float(values[mask].mean()) if mask.any() else 0.0
        return experience

    def after_update(self) -> None:
        self.source.after_update()


class SharedHead:
    """The value head on the policy's own trunk (``critic.shared``): V_t = wᵀh_t + b on the policy's
    hidden state h_t (``logprobs.values``), float32, held whole on every process. The trunk trains with
    the policy on L_π + c·L_V (``methods.ppo.WithValueHead``, one forward and one backward); the head
    has its own optimiser, schedule and clip (the ``critic`` settings), its gradient summed over
    processes. w ~ N(0, 1/(d+1)²), b = 0 (``models.value_model``'s initialisation). ``Stateful`` as the
    separate critic, under the same name."""
    state_name: ClassVar[str] = "critic"

    def __init__(self, hidden: int, policy_engine, procs, config: CriticConfig, steps: int, pad_id: int,
                 packed: bool, batch_size: int, chunk_size: int, device, backward_scale: float = 1.0, seed: int = 0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = torch.nn.Linear(hidden, 1, dtype=torch.float32)
            with torch.no_grad():
                self.model.weight.normal_(0.0, 1.0 / (hidden + 1))
                self.model.bias.zero_()
        self.model.to(device)
        procs.broadcast_parameters(self.model)
        self.layout, self.policy_engine, self.config, self.scale = Replicated(procs), policy_engine, config, backward_scale
        self.engine, self.optimizer = self.layout.train_engine(self.model, lambda params: make_optimizer(params, config))
        self.params = list(self.model.parameters())
        self.schedule = types.SimpleNamespace(**dataclasses.asdict(config), steps=steps)
        self.pad_id, self.packed, self.batch_size, self.chunk_size = pad_id, packed, batch_size, chunk_size

    def values(self, sequences: list) -> Tensor:
        """V_old [N, T] from the policy's trunk (no gradient; every process runs the same calls)."""
        return per_token_rows(sequences, lambda tb: self.policy_engine(trunk_values, tb, self.model), self.pad_id,
                              self.batch_size, self.packed)

    def producers(self) -> list:
        """The log-prob producer that reads the values from the policy's own forward."""
        return [LogprobsAndValues(self.model, self.chunk_size)]

    def update_rule(self, rule: UpdateRule, loss: ValueLoss, total: Callable[[float], float]) -> UpdateRule:
        """``rule`` (whose loss holds L_V), then the head's own step."""
        return SharedHeadUpdate(rule, self, total)

    def update(self, step: int, skip: bool) -> float:
        """Undo the layout's scaling of the loss in backward (DeepSpeed: × processes), sum over processes,
        clip, step at the schedule's rate."""
        if self.scale != 1.0:
            for p in self.params:
                if p.grad is not None:
                    p.grad.div_(self.scale)
        return role_step(self, step, skip)

    def checkpoint_state(self) -> dict:
        return trainable_state(self.layout, self.model, self.optimizer)

    def restore_state(self, state: dict) -> None:
        restore_trainable(self.layout, self.model, self.optimizer, state)


@dataclass(frozen=True, eq=False)
class SharedHeadUpdate:
    """``rule`` (whose gradient pass trained the trunk and filled the head's gradient), then the head's
    own step; a non-finite loss on any process skips it. Metric: ``critic_grad_norm``."""
    rule: UpdateRule
    head: SharedHead
    total: Callable[[float], float] = lambda value: value

    def __call__(self, step, gradients, apply):
        sums, norm = self.rule(step, gradients, apply)
        skip = self.total(float(not finite(sums.surrogate, sums.objective))) > 0
        sums.metrics = {**sums.metrics, "critic_grad_norm": self.head.update(step, skip)}
        return sums, norm


@dataclass(eq=False)
class HeldOutValues:
    """The critic scored on rollouts it never trained on: at each evaluation the current policy samples
    ``rollout.num_generations`` completions of every held-out prompt (``rollouts``: step → their
    experience, its draws seeded by the step), and

        value_loss = ½ (1/N_tok) Σ_t (V_t − G_t)²,    G_t = Σ_{s≥t} γ^{s−t} r_s

    against the Monte Carlo return of the reward the critic learns (KL-shaped with β_r = ``kl_coef``, which
    then needs the rollouts' ``logp_ref``), with ``explained_variance`` 1 − Var(G − V)/Var(G): how well V
    predicts the current policy's returns on new prompts, free of the training batch's noise; and
    ``return_variance`` Var(G) (a constant V = E[G] would score ½·Var(G))."""
    rollouts: Callable[[int], object]
    critic: object
    gamma: float
    kl_coef: float = 0.0

    @classmethod
    def of(cls, rollouts: Callable[[int], object], critic, loss: ValueLoss) -> "HeldOutValues":
        """Scored against the returns ``loss`` trains the critic on (its γ and KL shaping)."""
        return cls(rollouts, critic, loss.gamma, loss.kl_coef)

    def __call__(self, step: int) -> dict:
        experience = self.rollouts(step)
        values = self.critic.values(experience.sequences)
        experience.fields["values"] = values
        batch = experience.step_batch(torch.device("cpu"))
        _, returns = advantages_and_returns(batch, self.gamma, 1.0, self.kl_coef)
        mask, values = batch.mask, values[:, :batch.mask.shape[1]]
        kept = returns[mask > 0].double()
        return {"value_loss": 0.5 * float(((values - returns) ** 2 * mask).sum() / mask.sum().clamp(min=1)),
                "explained_variance": explained_variance(returns, values, mask),
                "return_variance": float(kept.var()) if kept.numel() > 1 else 0.0}


def critic_fields(objective, config: RunConfig, layout) -> frozenset[str]:
    """What a critic adds to the run's experience ({"values"}; with a KL-shaped reward "logp_ref" of the
    rollouts; with a shared head "value_pred" from the policy's forward; nothing when the method needs no
    critic); refuses a critic the run cannot build or that the method does not read."""
    needed = value_loss_of(objective) is not None
    name = config.method.get("name", "this method")
    if not needed:
        if config.critic is not None:
            raise ConfigError(f"critic: {name} reads no values, so a critic would be trained for nothing; remove the "
                              "critic section or use a method with a value model (ppo)")
        return frozenset()
    critic = config.critic or CriticConfig()
    if critic.shared:
        check_shared(critic, config)
    elif critic.value_coef != CriticConfig.value_coef:
        raise ConfigError(f"critic.value_coef: {critic.value_coef} weighs L_V in the policy's loss, which only a value "
                          "head on the policy's trunk has (critic.shared: true); a separate critic descends L_V alone")
    if critic.pretrain_steps >= config.train.steps:
        raise ConfigError(f"critic.pretrain_steps: {critic.pretrain_steps} of train.steps {config.train.steps} would "
                          "never train the policy; use fewer")
    if config.data.format != "prompts":
        raise ConfigError(f"method: {name} learns from its own rollouts' rewards with a critic; set data.format: "
                          f"prompts (a built-in data.task or prompt files) instead of {config.data.format!r}")
    if isinstance(layout, ZeRO) and not critic.shared:   # its own DeepSpeed engine, from the policy's config
        if critic.optimizer.lower() not in ELEMENTWISE_OPTIMIZERS:
            raise ConfigError(f"critic.optimizer: {critic.optimizer!r} under DeepSpeed — ZeRO runs the optimiser on "
                              "flat shards, the same update only for an element-wise optimiser: use one of "
                              + ", ".join(ELEMENTWISE_OPTIMIZERS))
        if (critic.max_grad_norm or 0.0) != (config.train.max_grad_norm or 0.0):
            raise ConfigError(f"critic.max_grad_norm: {critic.max_grad_norm} under DeepSpeed, where the engine clips "
                              f"at its config's gradient_clipping, train.max_grad_norm ({config.train.max_grad_norm}); "
                              "set the two equal")
    shaped = {"logp_ref"} if value_loss_of(objective).kl_coef else set()   # π_ref of the rollouts, made with them
    return VALUES | shaped | ({"value_pred"} if critic.shared else set())


def check_shared(critic: CriticConfig, config: RunConfig) -> None:
    """What a value head on the policy's trunk cannot be combined with, refused with the reason."""
    why = []
    if critic.model:
        why.append(f"critic.model ({critic.model}) names a separate critic; the shared head sits on the policy")
    if critic.pretrain_steps:
        why.append("critic.pretrain_steps (training the head alone would move the shared trunk or leave its "
                   "gradient to the next step)")
    if config.train.update_rule != "optimizer_step" or config.train.gradient.name != "backprop":
        why.append(f"train.update_rule {config.train.update_rule} / train.gradient.name {config.train.gradient.name} "
                   "(the head takes its step from the one backprop pass of optimizer_step)")
    if why:
        raise ConfigError("critic.shared: a value head on the policy's trunk cannot run with " + "; ".join(why))


def critic_objective(objective, config: RunConfig):
    """The run's objective: with ``critic.shared``, L_π + c·L_V in one loss (``WithValueHead``); else as it is
    (a separate critic descends L_V on its own)."""
    if not (config.critic and config.critic.shared and value_loss_of(objective) is not None):
        return objective
    if not isinstance(objective, WithCritic):
        raise ConfigError(f"critic.shared: the value head joins the policy's loss of a method with a critic (ppo); "
                          f"{type(objective).__name__} carries the critic inside another objective")
    return WithValueHead(objective, config.critic.value_coef)


def critic_for(objective, config: RunConfig, layout, procs, device, dtype, tokenizer, policy, engine):
    """The critic the method asks for (``critic_fields`` has checked the run), or None: a ``SharedHead`` on
    the ``policy`` (called through ``engine``, its layout's call) or a separate ``Critic``, which reads the
    policy's tokens, so its tokenizer must be the policy's."""
    if value_loss_of(objective) is None:
        return None
    c = config.critic or CriticConfig()
    if c.shared:
        hidden = policy.config.get_text_config().hidden_size
        return SharedHead(hidden, engine, procs, c, config.train.steps, tokenizer.pad_token_id, config.data.packed,
                          config.train.eval_batch_size, config.train.chunk_size, device, layout.backward_scale,
                          config.train.seed)
    model, own = load_model(c.model or config.model.name, dtype=dtype, device=device,
                            trust_remote_code=config.model.trust_remote_code, head="value")
    if own.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"critic.model={c.model}: its tokenizer is not the policy's ({config.model.name}); the "
                          "critic reads the policy's tokens, so give a model with the same vocabulary")
    procs.broadcast_parameters(model)
    return Critic(model, layout, c, config.train.steps, tokenizer.pad_token_id, config.data.packed,
                  config.train.eval_batch_size)


def with_critic(source, update: UpdateRule, objective, critic, total: Callable[[float], float]):
    """``(source, update)`` with the critic's values and update added (as they are when ``critic`` is None)."""
    if critic is None:
        return source, update
    return WithValues(source, critic), critic.update_rule(update, value_loss_of(objective), total)


__all__ = ["Critic", "CriticEstimator", "CriticUpdate", "CriticValues", "HeldOutValues", "SharedHead", "SharedHeadUpdate", "VALUES",
           "WithValues", "check_shared", "critic_fields", "critic_for", "critic_objective", "restore_trainable",
           "role_step", "token_values", "trainable_state", "with_critic"]
