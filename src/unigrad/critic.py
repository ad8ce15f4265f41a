"""PPO's critic: a trainable model role next to the policy.

The critic V_φ(x, y_<t) is a language model with a one-output token-classification head
(``models.value_model``), loaded from ``critic.model`` (default: the policy's initial weights,
model.name). The run holds it the way the layout holds the policy (``layout.train_engine``: its own
engine and optimiser, gradients summed over processes like the policy's) and it takes part in a
step in two places:

- ``WithValues(source, critic)`` wraps the experience producer: when a step's rollouts are made it
  adds V_old [N, T] (``values``, no gradient) at every completion token;
- ``CriticUpdate(rule, critic, value_loss)`` wraps the update rule: after the policy's update it runs
  the value loss (``objectives.value.ValueLoss``) on the same step's micro-batches
  (``gradients(estimator)`` with the critic's own objective and read-out), then the critic's own
  clip and optimiser step at its own learning rate (``critic.lr``, ``critic.schedule``...). With
  several rollout epochs each epoch updates both.

``Critic`` is ``Stateful`` (``unigrad.state``): its weights and optimiser state go into every
checkpoint and come back on ``--resume``. Replicated layouts only: sharding the critic under FSDP or
DeepSpeed (its own sharded engine and full-state gathering) is not implemented and is refused.
"""
from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor

from unigrad.config import ConfigError, CriticConfig, RunConfig
from unigrad.data.packing import collate
from unigrad.gradients.base import StepSums
from unigrad.guards import finite
from unigrad.logprobs.readout import attention_mask, compute_dtype, scatter
from unigrad.methods.ppo import value_loss_of
from unigrad.models import load_model
from unigrad.objectives.value import ValueLoss
from unigrad.optim import learning_rate, make_optimizer
from unigrad.parallel.replicated import Replicated
from unigrad.tokens import TokenBatch
from unigrad.updates import UpdateRule

VALUES = frozenset({"values"})   # what the critic adds to the experience


def token_values(model, tb: TokenBatch) -> Tensor:
    """V [B, T] at each completion token t: the value head on the body's hidden state at the position
    that predicts token t (the one ``logprobs.readout.completion_states`` reads logits from), so V_t is
    the value of (x, y_<t); 0 where completion_mask is 0. Bypasses the head's dropout."""
    body = getattr(model, model.base_model_prefix)
    param = next(model.parameters())
    tb = tb.to(param.device)
    out = body(input_ids=tb.input_ids, position_ids=tb.position_ids,
               attention_mask=attention_mask(model.config, tb, param.dtype), use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    sel = tb.completion_mask > 0
    rows, cols = tb.completion_row[sel], tb.completion_col[sel]
    head = getattr(model, "score", None) or model.classifier
    return scatter(sel, head(hidden[rows, cols - 1]).squeeze(-1).to(compute_dtype(model)))


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
        width = max(len(s.completion_ids) for s in sequences)
        out = torch.zeros(len(sequences), width)
        with torch.no_grad():
            for start in range(0, len(sequences), self.batch_size):
                chunk = sequences[start:start + self.batch_size]
                v = self.engine(token_values, collate(chunk, self.pad_id, packed=self.packed)).float().cpu()
                out[start:start + len(chunk), :v.shape[1]] = v
        return out

    def backward(self, loss: Tensor) -> None:
        self.layout.backward(self.engine, loss)

    def update(self, step: int, skip: bool) -> float:
        """Sum the gradients over processes, clip at ``critic.max_grad_norm``, step at the schedule's rate."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, self.schedule)
        return self.layout.update(self.engine, self.optimizer, self.params, self.config.max_grad_norm, skip)

    def checkpoint_state(self) -> dict:
        state = {f"weights/{name}": p.detach() for name, p in self.model.named_parameters()}
        saved = self.optimizer.state_dict()
        values = {}
        for pid, entries in saved["state"].items():
            for key, value in entries.items():
                if isinstance(value, Tensor):
                    state[f"optimizer/{pid}/{key}"] = value
                else:
                    values[f"{pid}/{key}"] = value
        state["optimizer_values"] = values
        state["optimizer_groups"] = saved["param_groups"]
        return state

    def restore_state(self, state: dict) -> None:
        params = dict(self.model.named_parameters())
        entries: dict[int, dict] = {}
        for key, value in state.items():
            kind, _, rest = key.partition("/")
            if kind == "weights":
                with torch.no_grad():
                    params[rest].copy_(value)
            elif kind == "optimizer":
                pid, _, name = rest.partition("/")
                entries.setdefault(int(pid), {})[name] = value
        for key, value in state["optimizer_values"].items():
            pid, _, name = key.partition("/")
            entries.setdefault(int(pid), {})[name] = value
        self.optimizer.load_state_dict({"state": entries, "param_groups": state["optimizer_groups"]})


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
    non-finite value loss on any process skips the critic's step."""
    rule: UpdateRule
    critic: Critic
    loss: ValueLoss
    total: Callable[[float], float] = lambda value: value

    def __call__(self, step, gradients, apply):
        sums, norm = self.rule(step, gradients, apply)
        critic = gradients(CriticEstimator(self.critic, self.loss))
        skip = self.total(float(not finite(critic.surrogate, critic.objective))) > 0
        critic_norm = self.critic.update(step, skip)
        sums.metrics = {**sums.metrics, "value_loss": self.total(critic.objective),
                        "value_clipfrac": self.total(critic.metrics["value_clipfrac"]),
                        "explained_variance": critic.metrics.get("explained_variance", 0.0),
                        "critic_grad_norm": critic_norm}
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


def critic_fields(objective, config: RunConfig, layout) -> frozenset[str]:
    """What a critic adds to the run's experience ({"values"}, or nothing when the method needs no
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
        raise ConfigError("critic.shared: a value head on the policy's trunk is not implemented (the log-prob "
                          "producer would have to read the values from the policy's own forward); use a separate "
                          "critic (critic.shared: false, critic.model)")
    if config.data.format != "prompts":
        raise ConfigError(f"method: {name} learns from its own rollouts' rewards with a critic; set data.format: "
                          f"prompts (a built-in data.task or prompt files) instead of {config.data.format!r}")
    if not isinstance(layout, Replicated):
        raise ConfigError(f"critic: the critic is held whole on every process; sharding it with the policy "
                          f"(train.fsdp, train.deepspeed) is not implemented; run {name} replicated")
    return VALUES


def critic_for(objective, config: RunConfig, layout, procs, device, dtype, tokenizer) -> Critic | None:
    """The critic the method asks for (``critic_fields`` has checked the run), or None. It reads the
    policy's tokens, so its tokenizer must be the policy's."""
    if value_loss_of(objective) is None:
        return None
    c = config.critic or CriticConfig()
    model, own = load_model(c.model or config.model.name, dtype=dtype, device=device,
                            trust_remote_code=config.model.trust_remote_code, head="value")
    if own.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"critic.model={c.model}: its tokenizer is not the policy's ({config.model.name}); the "
                          "critic reads the policy's tokens, so give a model with the same vocabulary")
    procs.broadcast_parameters(model)
    return Critic(model, layout, c, config.train.steps, tokenizer.pad_token_id, config.data.packed,
                  config.train.eval_batch_size)


def with_critic(source, update: UpdateRule, objective, critic: Critic | None, total: Callable[[float], float]):
    """``(source, update)`` with the critic's values and update added (as they are when ``critic`` is None)."""
    if critic is None:
        return source, update
    return WithValues(source, critic), CriticUpdate(update, critic, value_loss_of(objective), total)


__all__ = ["Critic", "CriticEstimator", "CriticUpdate", "CriticValues", "VALUES", "WithValues", "critic_fields",
           "critic_for", "token_values", "with_critic"]
