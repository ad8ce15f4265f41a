"""Run assembly: everything a training run holds, built from its config.

``assemble(config)`` loads the policy and its tokenizer, the data, LoRA (and FILA's initialisation),
the frozen model roles (reference, teacher), the reward and the sampler, chooses the parallel layout,
and picks the experience producer, the log-prob producer, the gradient estimator and the update rule.
What the objective ``requires`` is checked against what those producers provide before anything
expensive runs. The loop (``train.py``) then only calls protocols.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from unigrad.config import ConfigError, RunConfig
from unigrad.critic import HeldOutValues, critic_fields, critic_for, critic_objective, with_critic
from unigrad.data import formats, load_dataset_sequences
from unigrad.data.prompts import load_prompt_splits
from unigrad.data.sources import resolve_data_path
from unigrad.estimator.corrections import apply_rollout_correction
from unigrad.evaluate import evaluate_greedy, evaluate_objective
from unigrad.experience import DatasetSource, OnPolicySamples, RolloutSource, Split, demonstration_rows
from unigrad.experience.iterations import IterationPairs
from unigrad.experience.memory import MemorySource, memory_source, wants_memory
from unigrad.experience import rehearsal
from unigrad.experience.preference_pairs import PreferencePairs, emits_for, fields as preference_fields
from unigrad.gradients import ZEROTH_ORDER, SeededSGD, estimator
from unigrad.gradients.curvature import curvature
from unigrad.guards import NonFiniteGuard, fingerprint
from unigrad.logprobs.producers import BestOtherToken, TeacherSupport, TokenLogprobs, choose_producer
from unigrad.logprobs.scores import SequenceScores
from unigrad.methods.compose import build_objective
from unigrad.methods.ppo import value_loss_of
from unigrad.methods.preference import on_policy
from unigrad.methods.nash import check_experience_for, check_update_rule_for
from unigrad.methods.unpaired import prepare_splits
from unigrad.objectives.reward_model import check_score_run
from unigrad.models import load_model
from unigrad.optim import Sophia, check_in_backward, check_sophia, make_optimizer
from unigrad.parallel import choose_layout, processes
from unigrad.rollout.hf import geometric_mixture
from unigrad.reference import Anchor, Reference, WithReferenceLogprobs, snapshot_logprobs
from unigrad.rewards.preferences import build_preference
from unigrad.state import stateful
from unigrad.roles import INITIAL_POLICY, Role, load_role, load_role_and_tokenizer
from unigrad.updates import CurvatureRefresh, check_update_rule, update_rule

log = logging.getLogger("unigrad")

# What to do when an objective needs a field nothing in the run provides.
HINTS = {
    "reward": "online methods need data.format: prompts",
    "logp_old": "online methods need data.format: prompts",
    "answer_id": "COPO reads the rollouts' extracted answers: data.format: prompts",
    "train_step": "a schedule over the run (MDPO) or a per-step state (f-DPG) needs the rollouts: data.format: prompts",
    "is_demo": "mixing SFT into RL needs data.format: prompts with demonstrations",
    "sign": "this objective compares chosen and rejected (or forget and retain) rows; use data.format: pairs or forget",
    "memory": "TRICE keeps a rationale per prompt and samples proposals for it; use data.format: prompts",
    "mismatched": "KTO's reference point reads prompts with other examples' completions; use data.format: unpaired",
    "teacher_logp_topk": "this method distils a teacher; give the teacher model in teacher.name (like model.name)",
    "logp_anchor": ("Nash-MP's half steps need log π_k of the update's start and the policy's samples at π_k and "
                    "π_{k+½}, compared by the preference model; use data.format: prompts"),
    "values": ("V_old comes from a critic, which the run builds for an objective that carries its value loss "
               "(methods.ppo.WithCritic, e.g. method: {name: ppo})"),
    "preference": ("P(y ≻ y′) against an opponent's sample comes from the policy's own samples compared by the "
                   "preference model (preference:); use data.format: prompts"),
}


@dataclass
class Run:
    config: RunConfig
    procs: object                 # the processes (rank, world, collectives)
    device: torch.device
    layout: object                # how the processes hold the models (parallel.Layout)
    model: object                 # the policy: the trainable role
    tokenizer: object
    engine: object                # the layout's call of the policy (training forward)
    optimizer: object
    params: list
    objective: object
    logprobs: object              # the log-prob producer (logprobs.LogProbProducer)
    reference: Reference | None
    experience: object            # the experience producer (experience.ExperienceProducer)
    held_out: Callable[[Callable, int], dict]   # held-out metrics, given the step's loss function and step
    gradients: object             # gradients.GradientEstimator
    update: object                # updates.UpdateRule
    out_dir: Path
    guard: NonFiniteGuard         # skips non-finite steps, stops a diverging run
    fingerprint: str              # of the training data, recorded in checkpoints (the resume check)
    states: dict                  # the other learned state, checkpointed with the policy (``unigrad.state``)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def check_requirements(objective, provided: frozenset[str], config: RunConfig) -> None:
    """Every Batch field ``objective`` reads is provided by the run's producers, or a clear error."""
    missing = objective.requires - provided - {"logp", "mask"}
    if missing:
        hints = sorted({HINTS[name] for name in missing if name in HINTS})
        raise ConfigError(f"method: this objective needs batch field(s) {', '.join(sorted(missing))}, which "
                          f"data.format={config.data.format!r} cannot provide" + "".join(f"; {h}" for h in hints))


def build_sampler(config: RunConfig, model, tokenizer, procs):
    if config.rollout.sampler == "vllm":
        from unigrad.rollout.vllm import VLLMSampler
        sampler = VLLMSampler(model, tokenizer)
    else:
        from unigrad.rollout.hf import HFSampler
        sampler = HFSampler(model, tokenizer, max_batch_size=config.rollout.max_batch_size)
    if procs.world > 1:
        from unigrad.rollout.sharded import ShardedSampler
        return ShardedSampler(sampler, procs)
    return sampler


def _load_reward(config: RunConfig):
    from unigrad.rewards import load_reward
    try:
        return load_reward(config.reward.function)
    except (ValueError, ImportError, AttributeError) as error:
        raise ConfigError(f"reward.function: {error}") from None


def preference_shape(objective, config: RunConfig) -> str | None:
    """The on-policy preference experience an online objective reads (``experience.preference_pairs.emits_for``:
    ranked pairs when it reads ``sign``, P(y ≻ y′) per sample when it reads ``preference``); None: rollouts
    scored by the reward. An objective for the policy's own samples only (``OnPolicy``) refuses offline data."""
    if config.data.format != "prompts":
        if on_policy(objective):
            raise ConfigError(f"method: {config.method.get('name', 'this method')} trains on the policy's own samples, "
                              f"ranked by the preference model; set data.format: prompts (a built-in data.task or "
                              f"prompt files) instead of {config.data.format!r}")
        return None
    return emits_for(objective.requires)


def check_state_over_processes(objective, world: int) -> None:
    """A loss's running statistic (BCO's δ, f-DPG's baseline) is updated from the rows each process sees:
    over several processes the copies would drift apart, so such a method runs in one process."""
    kept = sorted(stateful(objective))
    if world > 1 and kept:
        raise ConfigError(f"method: its loss keeps a running statistic ({', '.join(kept)}) updated from each "
                          f"process's own rows, not yet shared over processes; run it in one process (not {world})")


def iteration_shape(objective) -> str:
    """What iterations serve (``experience.iterations``): every sample with its win rate when the objective
    reads ``win_rate`` (SPPO), else preference pairs (DNO)."""
    return "samples" if "win_rate" in objective.requires else "pairs"


def preference_opponent(objective) -> float:
    """β of the opponent y′ ~ π^(1−β) μ^β of per-sample preferences (Nash-MD's geometric mixture of the
    policy and the reference); 0: the policy itself (self-play)."""
    advantage = getattr(getattr(objective, "objective", objective), "advantage", None)
    return float(getattr(getattr(advantage, "opponent", None), "beta", 0.0))


def _mixture_reference(config: RunConfig, model, layout, device, dtype):
    """μ for the geometric-mixture sampler: a frozen, whole copy of the initial policy (the sampler reads
    its logits at every decode step next to the policy's)."""
    try:
        return load_role(Role("mixture", INITIAL_POLICY, prepared=False), model, layout, device, dtype)
    except ValueError as error:
        raise ConfigError(f"method: sampling the opponent from the geometric mixture needs a whole copy of the "
                          f"initial policy ({error}); set model.lora: null or method.beta: 0") from None


def _anchor(config: RunConfig, model, layout, device, dtype):
    """π_k for Nash-MP: a frozen, whole copy of the policy that holds its weights at the start of each step."""
    try:
        return load_role(Role("anchor", INITIAL_POLICY, prepared=False), model, layout, device, dtype)
    except ValueError as error:
        raise ConfigError(f"method: Nash-MP's proximal centre π_k is a whole copy of the policy ({error}); "
                          "set model.lora: null") from None


def _load_split(config: RunConfig, tokenizer, path: str | None, name: str) -> Split | None:
    if not path:
        return None
    return Split.of(name, load_dataset_sequences(resolve_data_path(path, config.source), config.data.format, tokenizer,
                                                 config.data.max_length, config.data.truncation, limit=config.data.limit))


def _apply_lora(model, config: RunConfig, train_split: Split | None, pad_id: int):
    from peft import LoraConfig, get_peft_model
    lora = config.model.lora
    with warnings.catch_warnings():   # peft's own use of a deprecated transformers name; nothing a user can change
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    if lora.init == "fila":
        if config.data.format != "forget":
            raise ConfigError("model.lora.init: fila weighs forget against retain data; set data.format: forget")
        from unigrad.fila import fila_init
        sequences = train_split.sequences
        fila_init(model, [s for s in sequences if s.sign < 0], [s for s in sequences if s.sign > 0], pad_id,
                  chunk_size=config.train.chunk_size)
    return model


def zeroth_order_oracle(config: RunConfig, sampler, tokenizer, examples, sync, reward_fn):
    """What a zeroth-order estimator evaluates at a perturbed point (``train.gradient.oracle``): None
    for the method's objective; else the greedy completions of the step's prompts ``examples`` by the
    run's ``sampler`` (each process its own share, unsharded), scored by the run's reward function
    ``reward_fn``, as a reward (mean) or a rule preference (pairwise) oracle."""
    from unigrad.gradients.oracles import GreedyCompletions, PreferenceOracle, RewardOracle, RewardScore, RulePreference
    if config.train.gradient.name == "backprop" or config.train.gradient.oracle == "objective":
        return None
    generate = GreedyCompletions(getattr(sampler, "inner", sampler), tokenizer, examples,
                                 config.rollout.max_new_tokens, sync)
    score = RewardScore(reward_fn, config.reward.fallback)
    oracles = {"reward": lambda: RewardOracle(generate, score),
               "preference": lambda: PreferenceOracle(generate, RulePreference(score))}
    return oracles[config.train.gradient.oracle]()


def check_gradient(config: RunConfig) -> None:
    """A zeroth-order estimate perturbs whole parameter tensors on every process in step: refused
    where a process holds only a shard of them, or where updates happen inside backward. Its oracle
    and shaping must fit the estimator and the run."""
    t, g = config.train, config.train.gradient
    if g.name == "backprop" and g.oracle != "objective":
        raise ConfigError(f"train.gradient.oracle={g.oracle}: backprop differentiates the method's objective; a "
                          "black-box oracle needs a zeroth-order estimator (train.gradient.name: es, mezo or zo-rank)")
    if g.shaping != "none" and g.name != "es":
        raise ConfigError(f"train.gradient.shaping={g.shaping}: fitness shaping belongs to evolution strategies; "
                          "use train.gradient.name: es")
    if g.oracle == "preference" and g.name != "zo-rank":
        raise ConfigError(f"train.gradient.oracle=preference: pairwise preferences give a ranking, not values; "
                          f"only train.gradient.name: zo-rank can use them ({g.name} needs values)")
    if g.oracle in ("reward", "preference") and config.data.format != "prompts":
        raise ConfigError(f"train.gradient.oracle={g.oracle}: it completes the step's prompts and scores them with "
                          f"the run's reward function, so it needs an online run (data.format: prompts and reward:); "
                          f"this run has data.format={config.data.format!r}")
    if g.name == "backprop":
        return
    if t.fsdp or t.deepspeed or t.optimizer_in_backward:
        raise ConfigError(f"train.gradient.name={g.name}: not with train.fsdp, train.deepspeed or "
                          "train.optimizer_in_backward (it perturbs whole parameters and needs no backward); "
                          "run it replicated")
    least = 2 if g.name == "zo-rank" else 1
    what = {"zo-rank": "perturbed points to rank", "es": "antithetic pair per step", "mezo": "SPSA estimate per step"}
    if g.samples < least:
        raise ConfigError(f"train.gradient.samples={g.samples}: {g.name} needs at least {least} {what[g.name]}")
    top = g.top
    if top is not None and not 1 <= top <= g.samples:
        raise ConfigError(f"train.gradient.top={top}: the ranking reveals the best k of the "
                          f"{g.samples} points, 1 ≤ k ≤ samples")
    if not g.eps > 0:
        raise ConfigError(f"train.gradient.eps={g.eps}: the perturbation scale ε of θ ± εz must be > 0")


def _gradient_and_update(config: RunConfig, model, params, optimizer, procs, oracle=None):
    """The gradient estimator and update rule: a zeroth-order estimate with plain SGD (MeZO-SGD) is
    applied from the seeds without gradient tensors; with any other optimiser it goes through ``.grad``.
    Extragradient takes its two optimiser steps on ``params`` through ``optimizer``."""
    t = config.train
    in_place = t.gradient.name in ZEROTH_ORDER and t.optimizer == "sgd" and t.update_rule == "optimizer_step"
    gradients = estimator(t.gradient, model, params, procs, t.seed, into_grad=not in_place, oracle=oracle)
    if in_place:
        return gradients, SeededSGD(params, optimizer, gradients, t.weight_decay, t.max_grad_norm)
    rule = update_rule(t.update_rule, params, optimizer, procs.sum)
    if isinstance(optimizer, Sophia):   # its curvature estimate, refreshed every k steps before the update
        rule = CurvatureRefresh(rule, optimizer, curvature(optimizer.curvature, params, t.chunk_size, t.seed,
                                                           procs.sum_gradients, procs.rank), optimizer.every)
    return gradients, rule


def assemble(config: RunConfig) -> Run:
    t, d, online = config.train, config.data, config.data.format == "prompts"
    procs = processes()
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
    dtype = model_dtype(config.model.dtype, device)
    layout = choose_layout(config, procs, dtype)
    if t.batch_size % (procs.world * t.grad_accum):
        raise ConfigError(f"train.batch_size ({t.batch_size}) must be a multiple of processes × train.grad_accum "
                          f"({procs.world} × {t.grad_accum})")
    check_in_backward(t, procs.world)
    check_sophia(t, layout)
    check_gradient(config)
    check_update_rule(t.update_rule, layout, t.optimizer_in_backward)
    objective = critic_objective(apply_rollout_correction(build_objective(config.method), config.rollout.correction),
                                 config)   # a value head on the trunk joins the policy's loss
    check_update_rule_for(objective, t.update_rule)
    check_state_over_processes(objective, procs.world)
    check_score_run(objective, config)
    emit = preference_shape(objective, config)
    check_experience_for(objective, config.iterations.steps)
    iterative = online and config.iterations.steps > 0       # DNO's batched on-policy iterations of pairs
    if config.iterations.steps and not online:
        raise ConfigError("iterations.steps: iterations sample from the policy; set data.format: prompts")
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if t.threads:
        torch.set_num_threads(t.threads)
    seed_everything(t.seed)
    model, tokenizer = load_model(config.model.name, dtype=dtype, device=device,
                                  trust_remote_code=config.model.trust_remote_code,
                                  head=getattr(objective, "trains", "lm"))   # "score": a reward model
    pad_id = tokenizer.pad_token_id

    # ---- what the run can provide, checked against what the objective requires; then the data
    reward_fn, demonstrations, train_split, eval_split = (_load_reward(config) if online else None), None, None, None
    if online:
        train_prompts, eval_prompts = load_prompt_splits(config, tokenizer, lambda p: resolve_data_path(p, config.source))
        if "is_demo" in objective.requires:
            demonstrations = demonstration_rows(train_prompts, tokenizer, d.max_length)
        if config.iterations.gold:
            demonstrations = demonstration_rows(train_prompts, tokenizer, d.max_length)
        anchored = emit == "preference" and "logp_anchor" in objective.requires   # Nash-MP's π_k
        if config.rollout.recompute_logp_old and (emit or iterative):
            raise ConfigError("rollout.recompute_logp_old: the trainer recomputes π_old of rollouts scored by a reward; "
                              "on-policy preference samples (online-dpo, nash-*, dno, sppo) keep the sampler's")
        provided = (IterationPairs.fields(iteration_shape(objective)) if iterative else
                    preference_fields(emit) | ({"logp_anchor"} if anchored else set()) if emit else
                    RolloutSource.fields(demonstrations is not None, config.rollout.recompute_logp_old))
    else:
        provided = formats.provides(d.format)
    from_critic = critic_fields(objective, config, layout)   # PPO's V_old, from a critic the method asks for
    provided |= from_critic
    provided |= rehearsal.fields_for(objective, online)   # DPH-RL's stored samples of the initial policy
    if online and wants_memory(objective.requires):        # TRICE's rationale memory and proposals
        provided |= MemorySource.provides
    candidates = [TokenLogprobs(t.chunk_size, pad_id, t.share_prompts, layout.agree), BestOtherToken(t.chunk_size),
                  SequenceScores(pad_id)]
    if config.teacher.name:
        candidates.append(TeacherSupport(None, config.teacher.k, t.chunk_size, config.teacher.temperature))
    # the experience may bring its own reference (DNO's π_t): then no reference model is held
    with_reference = ("logp_ref" in objective.requires or t.track_kl) and "logp_ref" not in provided
    check_requirements(objective, provided | frozenset().union(*(c.provides for c in candidates)) | {"logp_ref"}, config)
    if d.on_policy_fraction and with_reference and config.reference.precompute:
        raise ConfigError("data.on_policy_fraction: on-policy samples need reference log-probs per batch; "
                          "set reference.precompute: false")
    if not online:
        train_split, eval_split = _load_split(config, tokenizer, d.train, "train"), _load_split(config, tokenizer, d.eval, "eval")
        train_split, eval_split = prepare_splits(objective, [train_split, eval_split], d.max_length)   # KTO's mismatched rows
    n_units = len(train_prompts) if online else len(train_split.units)
    if n_units < t.batch_size:
        raise ConfigError(f"train.batch_size={t.batch_size} is larger than the training set ({n_units} examples)")

    # ---- models: the policy (trainable) and the frozen roles
    if config.model.lora:
        model = _apply_lora(model, config, train_split, pad_id)
    procs.broadcast_parameters(model)
    reference = None

    def initial_reference() -> Reference:   # π_ref computed per batch by a frozen copy of the initial policy
        return Reference(load_role(Role("reference", INITIAL_POLICY), model, layout, device, dtype), None, t.chunk_size)
    if with_reference:
        splits = [] if online else [s for s in (train_split, eval_split) if s]
        if splits and config.reference.precompute:
            reference = Reference.precomputed(model, splits, out_dir / "reference_logps.safetensors", config.model.name,
                                              pad_id, d.packed, t.chunk_size, t.eval_batch_size * 2, write=procs.main)
        else:
            reference = initial_reference()
    # π_ref of each step's rollouts, made with them (PPO's KL-shaped reward)
    rollout_reference = initial_reference() if "logp_ref" in from_critic else None

    def with_rollout_reference(producer):
        return WithReferenceLogprobs(producer, rollout_reference, pad_id, t.eval_batch_size, d.packed) \
            if rollout_reference is not None else producer
    if config.teacher.name:
        teacher = load_role(Role("teacher", config.teacher.name, prepared=False), model, layout, device, dtype,
                            config.model.trust_remote_code)
        candidates[-1] = TeacherSupport(teacher, config.teacher.k, t.chunk_size, config.teacher.temperature)
    preference = build_preference(config, reward_fn, lambda role: load_role_and_tokenizer(
        role, model, tokenizer, layout, device, dtype, config.model.trust_remote_code)) if emit or iterative else None
    beta = preference_opponent(objective) if emit == "preference" else 0.0
    mixture = _mixture_reference(config, model, layout, device, dtype) if beta else None
    anchor = _anchor(config, model, layout, device, dtype) if online and anchored else None
    sampling = layout.sampling_model(model) if online else model   # taken before the policy is sharded
    engine, optimizer = layout.train_engine(model, lambda trainable: make_optimizer(trainable, t))

    # ---- producers
    held_out_values = None
    if online:
        sampler = build_sampler(config, sampling, tokenizer, procs)

        def sync() -> None:
            layout.sync_sampling_model(model, sampling)
            sampler.update_weights(sampling)

        def logp_now(rows) -> torch.Tensor:   # [N, T] log π of rows under the policy's current weights
            return snapshot_logprobs(sampling, rows, pad_id, t.eval_batch_size, t.chunk_size)
        source = RolloutSource(train_prompts, sampler, reward_fn, config.rollout, config.reward.fallback, tokenizer,
                               t.batch_size, demonstrations, t.seed, config.reward.overlong_cache, sync,
                               recompute=logp_now if config.rollout.recompute_logp_old else None, steps=t.steps)
        if emit:   # the objective reads preferences: the policy's samples compared by the preference model
            opponent = geometric_mixture(sampler, mixture, beta) if beta else None
            source = PreferencePairs(train_prompts, sampler, preference, config.rollout, tokenizer, t.batch_size, emit,
                                     opponent, config.preference.ties, t.seed, sync, anchor and Anchor(
                                         anchor, pad_id, t.eval_batch_size, t.chunk_size), sampling)
        if wants_memory(objective.requires):   # TRICE: MCMC-EM over a rationale memory per example
            source = memory_source(config, train_prompts, sampler, reward_fn, tokenizer, sync)
        if iterative:
            source = IterationPairs(train_prompts, sampler, preference, logp_now, config.rollout, config.iterations, tokenizer, t.batch_size, sampling,
                                    out_dir / "iterations", demonstrations, t.seed, procs.main, sync,
                                    shape=iteration_shape(objective))
        source = rehearsal.around(source, objective, config.rehearsal, sampling, out_dir / "rehearsal", procs.main)

        def held_out(loss_of, step: int) -> dict:
            if not eval_prompts:
                return {}
            values = held_out_values(step) if held_out_values else {}   # the critic on new rollouts
            return {**evaluate_greedy(sampling, tokenizer, eval_prompts, reward_fn, config.rollout), **values}
    else:
        source = DatasetSource(train_split, t.batch_size, provided, t.seed)
        if d.on_policy_fraction:
            source = OnPolicySamples(source, build_sampler(config, model, tokenizer, procs), config.rollout,
                                     d.on_policy_fraction, t.seed)

        def held_out(loss_of, step: int) -> dict:
            return evaluate_objective(loss_of, model, eval_split, t.eval_batch_size, device) if eval_split else {}
    params = [p for p in model.parameters() if p.requires_grad]
    gradients, update = _gradient_and_update(config, model, params, optimizer, procs,
                                             zeroth_order_oracle(config, sampler, tokenizer, train_prompts, sync,
                                                                 reward_fn) if online else None)
    source = with_rollout_reference(source)
    critic = critic_for(objective, config, layout, procs, device, dtype, tokenizer, model, engine)
    source, update = with_critic(source, update, objective, critic, procs.sum)
    candidates += critic.producers() if critic is not None else []   # a shared head reads V from the policy's forward
    if critic is not None and online and eval_prompts:   # the critic on new rollouts of every held-out prompt
        rollouts = RolloutSource(eval_prompts, sampler, reward_fn, dataclasses.replace(config.rollout, dynamic_sampling=False),
                                 config.reward.fallback, tokenizer, len(eval_prompts), seed=t.seed + 1,
                                 overlong_cache=config.reward.overlong_cache)
        held_out_values = HeldOutValues.of(with_rollout_reference(rollouts), critic, value_loss_of(objective))
    skips = layout.skips_updates and not t.optimizer_in_backward   # else a non-finite step cannot be undone
    data = ([(e.prompt_ids, e.answer, e.demonstration) for e in train_prompts] if online else
            [(s.prompt_ids, s.completion_ids, s.group, s.sign, s.meta.get("fields")) for s in train_split.sequences])
    return Run(config, procs, device, layout, model, tokenizer, engine, optimizer, params, objective,
               choose_producer(objective.requires, candidates), reference, source, held_out,
               gradients, update, out_dir,
               NonFiniteGuard(t.max_nonfinite_steps if skips else 1), fingerprint(data),
               stateful(objective, source, update))
