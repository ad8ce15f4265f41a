"""Typed, validated run configuration.

A YAML file with the top-level keys ``model``, ``method``, ``data``, ``train``, ``output_dir``
(and ``reference``). Unknown keys and mistyped values are rejected with a ``ConfigError`` that
names the key; ``key.sub=value`` overrides from the command line are parsed as YAML scalars.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: Union[str, list] = "all-linear"
    init: Literal["default", "fila"] = "default"   # fila: Fisher-weighted init for unlearning (forget data)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "smollm2-135m-instruct"
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "auto"   # auto: bf16 on GPU, fp32 on CPU
    trust_remote_code: bool = False
    lora: Union[LoraConfig, None] = None


@dataclass(frozen=True)
class TaskConfig:
    """A built-in task generated on the fly instead of data files (``prompts`` format)."""
    name: Literal["arithmetic"] = "arithmetic"
    train_size: int = 2000
    eval_size: int = 100
    difficulty: int = 2
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    train: str = ""
    eval: Union[str, None] = None
    format: Literal["sft", "pairs", "prompts", "forget", "scored", "unpaired"] = "pairs"
    task: Union[TaskConfig, None] = None     # prompts from a built-in task instead of files
    max_length: int = 512
    truncation: bool = False
    packed: bool = True
    limit: Union[int, None] = None           # use only the first N records (smoke tests)
    on_policy_fraction: float = 0.0          # fraction λ of steps whose completions the policy samples instead
                                             # (GKD's on-policy distillation; offline formats)


@dataclass(frozen=True)
class CorrectionConfig:
    """A correction for the sampler/trainer mismatch, ρ = π_old / π_sampler (``estimator.corrections``):
    ``tis`` weights each term by min(ρ, cap), ``mis`` by ρ·1[low ≤ ρ ≤ high]; per token or per sequence."""
    kind: Literal["none", "tis", "mis"] = "none"
    level: Union[Literal["token", "sequence"], None] = None   # null: tis per token, mis per sequence (TRL)
    cap: float = 2.0                         # tis: C
    low: float = 0.0                         # mis: the band [low, high] a ratio must lie in
    high: float = 3.0

    def __post_init__(self):
        if self.kind != "none":
            from unigrad.estimator.corrections import correction_of   # the domains live with the corrections
            correction_of(self)


@dataclass(frozen=True)
class RolloutConfig:
    """Online sampling (``prompts`` data): completions per prompt and how they are drawn."""
    num_generations: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    epochs: int = 1                          # optimiser updates per rollout batch (PPO/GRPO's μ)
    sampler: Literal["hf", "vllm"] = "hf"
    max_batch_size: Union[int, None] = None  # rows decoded at once (memory)
    dynamic_sampling: bool = False           # DAPO: replace prompts whose rollouts all got the same reward
    max_sampling_rounds: int = 3             # rounds of replacement before training on what there is
    recompute_logp_old: bool = False         # π_old from a trainer forward; the sampler's kept as logp_sampler
    correction: CorrectionConfig = field(default_factory=CorrectionConfig)


@dataclass(frozen=True)
class RewardConfig:
    function: str = "numeric_match"          # a built-in name, module:function or file.py:function
    fallback: float = 0.0                    # the reward of a sample whose reward function fails
    overlong_cache: Union[int, None] = None  # DAPO's soft overlong penalty over the last N tokens before
                                             # rollout.max_new_tokens (null: off)


@dataclass(frozen=True)
class TeacherConfig:
    """A teacher for distillation: its log-probs come under inference mode, top-k to save memory."""
    name: Union[str, None] = None            # like model.name; same tokenizer/vocabulary as the student
    k: Union[int, None] = 32                 # teacher's top-k probabilities kept per token (null: full vocabulary)
    temperature: float = 1.0


@dataclass(frozen=True)
class PreferenceConfig:
    """The preference model P(y ≻ y′ | x) of on-policy preference methods (``unigrad.rewards.preferences``):
    ``rule`` (1 / 0 / ½ from ``function`` or, unset, the run's reward.function), ``reward-model``
    (σ(r(y) − r(y′)) from the reward model in ``model``), ``judge`` (the pairwise judge LM ``model``, both
    orders averaged; ``template`` with {prompt}, {a}, {b}) or ``function`` (a user's module:function).
    ``model`` is a model role like model.name, or ``policy`` (a frozen copy of the initial policy).
    ``ties``: a pair the preference cannot split (P = ½) is dropped (a step of ties only has no gradient),
    or kept in the sampled order."""
    kind: Literal["rule", "reward-model", "judge", "function"] = "rule"
    model: Union[str, None] = None
    function: Union[str, None] = None
    template: Union[str, None] = None        # the judging prompt; null: the default (preferences.DEFAULT_TEMPLATE)
    batch_size: int = 8                      # pairs' judging prompts (or texts scored) per forward pass
    max_length: Union[int, None] = None      # judging prompts cut to their last N tokens (null: whole)
    ties: Literal["drop", "keep"] = "drop"


@dataclass(frozen=True)
class IterationsConfig:
    """Batched on-policy iterations of preference pairs (DNO; ``experience.iterations``): every ``steps``
    optimiser steps the policy samples ``samples`` responses for ``prompts`` prompts (null: all), the
    preference model scores them (win rates), pairs are formed by the margin rule and the reference
    becomes the policy of the iteration's start."""
    steps: int = 0                           # optimiser steps per iteration (0: no iterations)
    prompts: Union[int, None] = None         # prompts sampled per iteration (null: every training prompt)
    samples: int = 5                         # K responses per prompt
    gold: bool = False                       # add each prompt's demonstration as a candidate
    margin: float = 0.5                      # a negative's win rate at least this far below its positive's
    min_score: Union[float, None] = None     # a positive's least win rate (null: the prompt's best)
    carry: tuple = (0.3, 0.15)               # shares of iterations t−1, t−2, …'s new pairs added to iteration t


@dataclass(frozen=True)
class CriticConfig:
    """PPO's value model (``unigrad.critic``), trained next to the policy with its own optimiser and schedule:
    ``model`` like model.name (null: the policy's initial weights, model.name) with a value head; ``shared``: a
    value head on the policy's own trunk instead, trained with it on L_π + ``value_coef``·L_V (the optimiser
    settings below are then the head's); ``pretrain_steps``: the first steps train only the critic, the policy held (verl's critic_warmup)."""
    model: Union[str, None] = None
    shared: bool = False
    value_coef: float = 0.1
    pretrain_steps: int = 0
    lr: float = 1e-5
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    schedule: Literal["cosine", "linear", "constant"] = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    max_grad_norm: Union[float, None] = 1.0


@dataclass(frozen=True)
class RehearsalConfig:
    """DPH-RL's rehearsal set (``experience.rehearsal``), used when the method reads it: before the first
    step the initial policy samples ``samples`` completions per training prompt; prompts with all correct
    keep them with their log-probs and leave the rollouts, and ``per_step`` of them join every step."""
    samples: int = 8                         # k completions per prompt pre-sampled from the initial policy
    per_step: int = 8                        # stored samples added to each step's rollouts


@dataclass(frozen=True)
class ReferenceConfig:
    precompute: bool = True                  # reference log-probs for the whole dataset once, then no reference model


@dataclass(frozen=True)
class GradientConfig:
    """How a step's gradient is obtained (``unigrad.gradients``): backprop; MeZO's forward-only SPSA
    estimate (``samples`` estimates averaged per step, perturbation scale ``eps``); antithetic ES
    (``samples`` pairs θ ± εz, fitness ``shaping``: none or centered-ranks); or ZO-RankSGD's direction
    from ``samples`` perturbed points ranked by the oracle (scale ``eps``, the best ``top`` revealed;
    null: all). ``oracle``: what a zeroth-order estimator evaluates at a perturbed point — the
    method's objective, the mean reward of greedy completions of the step's prompts (online runs),
    or, for zo-rank, pairwise preferences between the points' completions."""
    name: Literal["backprop", "mezo", "es", "zo-rank"] = "backprop"
    samples: int = 1
    eps: float = 1e-3
    top: Union[int, None] = None
    oracle: Literal["objective", "reward", "preference"] = "objective"
    shaping: Literal["none", "centered-ranks"] = "none"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    batch_size: int = 8                      # examples (pairs for `pairs`) per optimiser step
    grad_accum: int = 1                      # micro-batches per optimiser step
    lr: float = 1e-5
    optimizer: str = "adamw"
    optimizer_args: dict = field(default_factory=dict)   # further arguments of the optimiser (m-fac: m, damping)
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    max_grad_norm: Union[float, None] = 1.0
    max_nonfinite_steps: int = 3             # non-finite steps skipped in a row before the run stops
    optimizer_in_backward: bool = False      # update each parameter inside backward, free its gradient (memory)
    seed: int = 0
    chunk_size: int = 1024                   # tokens per log-softmax chunk (memory)
    share_prompts: bool = True               # sequences with the same prompt (a group, a pair) forward it once
    fsdp: bool = False                       # shard the model over processes (FSDP2); also `accelerate launch --use_fsdp`
    deepspeed: int = 0                       # DeepSpeed ZeRO stage 1-3 (0: off); also `accelerate launch --use_deepspeed`
    eval_every: int = 0                      # 0: only at the start and the end
    eval_batch_size: int = 16
    save_every: int = 0                      # 0: no intermediate checkpoints
    keep_checkpoints: int = 2
    track_kl: bool = False                   # log KL(π_θ‖π_ref) on the batch even if the loss has none
    log_every: int = 1
    tensorboard: bool = True
    threads: Union[int, None] = None         # torch CPU threads
    gradient: GradientConfig = field(default_factory=GradientConfig)   # how the step's gradient is obtained
    update_rule: Literal["optimizer_step", "extragradient"] = "optimizer_step"   # how gradients become new parameters


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: dict = field(default_factory=lambda: {"name": "dpo"})
    data: DataConfig = field(default_factory=DataConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    iterations: IterationsConfig = field(default_factory=IterationsConfig)
    rehearsal: RehearsalConfig = field(default_factory=RehearsalConfig)
    critic: Union[CriticConfig, None] = None  # PPO's value model; null: none, or the defaults when the method needs one
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/unigrad"
    source: Union[str, None] = None          # the file it was read from (set by load_config)


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return {type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp, where: str):
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(error)
                if isinstance(value, dict) and dataclasses.is_dataclass(option):
                    raise   # a mapping for an optional section: its own key's error says more
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{where}: must be one of {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no decimal point) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp in (dict, list, tuple):
        if isinstance(value, (list, tuple) if tp is not dict else dict):
            return tp(value)
    else:
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def build(cls, data: dict, where: str = ""):
    """Instantiate dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"{path}: unknown key{_suggest(str(key), names)}; "
                              f"allowed keys here: {', '.join(names)}")
        values[key] = _coerce(value, hints[key], path)
    return cls(**values)


def _positive(where: str, value, allow_zero=False):
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ConfigError(f"{where}: must be {'non-negative' if allow_zero else 'positive'}, got {value}")


def validate(config: RunConfig) -> RunConfig:
    t = config.train
    for name in ("steps", "batch_size", "grad_accum", "chunk_size", "eval_batch_size", "log_every", "keep_checkpoints",
                 "max_nonfinite_steps"):
        _positive(f"train.{name}", getattr(t, name))
    for name in ("eval_every", "save_every", "warmup_steps", "weight_decay"):
        _positive(f"train.{name}", getattr(t, name), allow_zero=True)
    _positive("train.lr", t.lr)
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.batch_size ({t.batch_size}) must be a multiple of train.grad_accum ({t.grad_accum})")
    _positive("data.max_length", config.data.max_length)
    if not config.data.train and not config.data.task:
        raise ConfigError("data.train: missing; give the training data file (JSONL, JSON, Parquet or a dataset folder)"
                          " or, for prompts, a built-in data.task")
    if config.data.task and config.data.format != "prompts":
        raise ConfigError("data.task: built-in tasks are prompts; set data.format: prompts")
    r = config.rollout
    for name in ("num_generations", "max_new_tokens", "epochs"):
        _positive(f"rollout.{name}", getattr(r, name))
    _positive("rollout.temperature", r.temperature, allow_zero=True)
    if r.correction.kind != "none" and not r.recompute_logp_old:
        raise ConfigError("rollout.correction: ρ = π_old/π_sampler is 1 while π_old is the sampler's own log-probs; "
                          "set rollout.recompute_logp_old: true")
    if r.recompute_logp_old and config.data.format != "prompts":
        raise ConfigError("rollout.recompute_logp_old: only rollouts (data.format: prompts) have a sampler's log-probs")
    if not 0.0 <= config.data.on_policy_fraction <= 1.0:
        raise ConfigError(f"data.on_policy_fraction: must be in [0, 1], got {config.data.on_policy_fraction}")
    if config.data.on_policy_fraction and config.data.format == "prompts":
        raise ConfigError("data.on_policy_fraction: with data.format: prompts every step is on-policy already")
    _positive("preference.batch_size", config.preference.batch_size)
    _positive("preference.max_length", config.preference.max_length)
    _positive("rehearsal.samples", config.rehearsal.samples)
    _positive("rehearsal.per_step", config.rehearsal.per_step, allow_zero=True)
    if config.critic is not None:
        _validate_critic(config.critic)
    if not isinstance(config.method, dict) or not config.method:
        raise ConfigError("method: expected a mapping such as {name: dpo, beta: 0.1} or {parts: {...}}")
    return config


def _validate_critic(c: CriticConfig) -> None:
    _positive("critic.lr", c.lr)
    _positive("critic.value_coef", c.value_coef)
    _positive("critic.pretrain_steps", c.pretrain_steps, allow_zero=True)
    _positive("critic.max_grad_norm", c.max_grad_norm)
    for name in ("warmup_steps", "weight_decay"):
        _positive(f"critic.{name}", getattr(c, name), allow_zero=True)
    if not 0.0 <= c.min_lr_ratio <= 1.0:
        raise ConfigError(f"critic.min_lr_ratio: must be in [0, 1], got {c.min_lr_ratio}")


def _set(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {} if node.get(key) is None else _fail(dotted, key)
        node = node[key]
    node[keys[-1]] = value


def _fail(dotted, key):
    raise ConfigError(f"override {dotted}: {key!r} is not a mapping")


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.steps=20")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        pairs.append((key.strip(), value))
    return pairs


def load_config(path: str | Path | None, overrides: list[str] = (), text: str | None = None) -> RunConfig:
    """Read, override and validate a run configuration."""
    source = str(path) if path else "<bundled quick start>"
    if text is None:
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise ConfigError(f"{source}: cannot read the config file ({error.strerror})") from None
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}{line}: invalid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: the config must be a mapping of keys such as model, method, data, train")
    if isinstance(tree.get("model"), str):
        tree["model"] = {"name": tree["model"]}
    for key, value in parse_overrides(list(overrides)):
        if key == "model" and isinstance(value, str):
            key = "model.name"
        _set(tree, key, value)
    try:
        config = build(RunConfig, tree)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    config = dataclasses.replace(config, source=str(path) if path else None)
    try:
        return validate(config)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)
