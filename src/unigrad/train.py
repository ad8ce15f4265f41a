"""The training loop: one loop for every method.

Each optimiser step: draw ``batch_size`` units (a pair, an example, or a prompt with its rollouts)
from the experience source, split them into ``grad_accum`` micro-batches, compute per-token
log-probs, build a ``Batch`` that knows its whole step (so normalisation over micro-batches is
exact), backprop ``objective.loss(batch).loss``, clip, step. The loop asks the objective what it
``requires`` and fills only that; nothing method-specific lives here.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from unigrad.batch import Batch
from unigrad.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from unigrad.config import ConfigError, RunConfig, to_dict
from unigrad.data import count_truncated, load_dataset_sequences
from unigrad.distributed import Engine, Processes, Replicated, ShardedSampler, layout, processes
from unigrad.experience import (
    Experience, RolloutSource, Split, demonstration_rows, load_prompt_splits, resolve_data_path, step_units,
    with_policy_completions,
)
from unigrad.methods.compose import build_objective
from unigrad.models import load_model, save_model
from unigrad.objectives import kl_estimate
from unigrad.optim import check_in_backward, learning_rate, make_optimizer
from unigrad.policy import collate, reference_logprobs, shared_prompt_logprobs, shares_prompts, token_logprobs

log = logging.getLogger("unigrad")

# Batch fields each kind of data can fill, besides logp and mask.
PROVIDED = {
    "sft": frozenset({"group", "sign", "logp_ref"}),
    "pairs": frozenset({"group", "sign", "logp_ref"}),
    "prompts": frozenset({"group", "sign", "logp_ref", "reward", "logp_old", "is_demo"}),
    "forget": frozenset({"group", "sign", "logp_ref", "logp_top_other"}),
    "scored": frozenset({"group", "sign", "logp_ref", "reward", "value"}),
}


# ---------------------------------------------------------------------------- reference log-probs

def _fingerprint(model_name: str, splits: list[Split]) -> str:
    """What reference log-probs depend on: the model and every token of every sequence."""
    digest = hashlib.sha256(model_name.encode())
    for split in splits:
        digest.update(split.name.encode())
        for sequence in split.sequences:
            digest.update(repr((sequence.prompt_ids, sequence.completion_ids)).encode())
    return digest.hexdigest()


def _metadata(path: Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class Reference:
    """log π_ref of any rows: precomputed once for a dataset (then no reference model stays in
    memory), or computed per batch under inference mode from a frozen copy of the initial policy
    (with LoRA: the policy with its adapters switched off)."""

    def __init__(self, config: RunConfig, policy, splits: list[Split], pad_id: int, writer: bool = True,
                 prepare=Engine):
        self.config, self.pad_id = config, pad_id
        self.table: dict[tuple[str, int], torch.Tensor] | None = None
        self.model = None
        if splits and config.reference.precompute:
            cache = Path(config.output_dir) / "reference_logps.safetensors"
            fingerprint = _fingerprint(config.model.name, splits)
            if cache.exists() and _metadata(cache).get("fingerprint") == fingerprint:
                # a resumed run must use the initial policy's values, not recompute them from its current weights
                self.table = {(key.split("/")[0], int(key.split("/")[1])): value
                              for key, value in load_file(str(cache)).items()}
            else:
                self.table = self._precompute(policy, splits)
                if writer:
                    tmp = cache.with_suffix(".tmp")
                    save_file({f"{split}/{index}": v for (split, index), v in self.table.items()}, str(tmp),
                              metadata={"fingerprint": fingerprint})
                    tmp.replace(cache)
        elif _is_peft(policy):
            self.model = Engine(policy)
        else:  # ``prepare``: how the processes hold it (FSDP shards the reference like the policy)
            self.model = prepare(copy.deepcopy(policy).eval().requires_grad_(False))

    def _precompute(self, policy, splits: list[Split]) -> dict:
        table = {}
        chunk, size = self.config.train.chunk_size, self.config.train.eval_batch_size * 2
        for split in splits:
            for start in range(0, len(split.sequences), size):
                indices = list(range(start, min(start + size, len(split.sequences))))
                tb = collate([split.sequences[i] for i in indices], self.pad_id, packed=self.config.data.packed)
                logp = reference_logprobs(policy, tb, chunk)
                for row, index in enumerate(indices):
                    length = len(split.sequences[index].completion_ids)
                    table[(split.name, index)] = logp[row, :length].float().contiguous().cpu()
        return table

    def __call__(self, keys: list | None, tb, dtype) -> torch.Tensor:
        if self.table is not None and keys is not None:
            out = torch.zeros(tb.completion_mask.shape, dtype=dtype)
            for row, key in enumerate(keys):
                values = self.table[key]
                out[row, :values.numel()] = values.to(dtype)
            return out.to(tb.completion_mask.device)
        if self.model is None:
            raise RuntimeError("reference log-probs were precomputed for the dataset only")
        if _is_peft(self.model.model):
            with self.model.model.disable_adapter():
                return self.model(reference_logprobs, tb, self.config.train.chunk_size).to(dtype)
        return self.model(reference_logprobs, tb, self.config.train.chunk_size).to(dtype)


# ---------------------------------------------------------------------------- one loss evaluation

@dataclass
class Trainer:
    config: RunConfig
    model: object
    tokenizer: object
    objective: object
    reference: Reference | None
    device: torch.device
    teacher: object = None
    engine: Engine | None = None          # calls log-prob functions of ``model`` (see distributed.Engine)
    parallel: object = None                # how processes hold the model: Replicated, Sharded or ZeRO
    sampling_model: object = None          # what generation runs on (the policy, or its whole copy under FSDP)

    def __post_init__(self):
        if self.engine is None:
            self.engine = Engine(self.model)
        if self.parallel is None:
            self.parallel = Replicated(Processes())
        if self.sampling_model is None:
            self.sampling_model = self.model

    def batch_loss(self, experience: Experience, rows: list[int], step: Batch):
        """Objective output on rows ``rows`` of ``experience`` (whose whole step is ``step``)."""
        sequences = [experience.sequences[i] for i in rows]
        tb = collate(sequences, self.tokenizer.pad_token_id, packed=self.config.data.packed).to(self.device)
        distilled = {}
        if self.teacher is not None:  # one student pass gives both its token log-probs and the teacher-support ones
            from unigrad.distill import distill_fields
            t = self.config.teacher
            distilled = self.engine(distill_fields, self.teacher, tb, k=t.k, chunk_size=self.config.train.chunk_size,
                                    temperature=t.temperature)
            logp = distilled["student_logp_target"]
        elif "logp_top_other" in self.objective.requires:  # e.g. the inverted hinge: log max_{v≠y_t} p(v), with grad
            from unigrad.engine_extras import token_logprobs_with_top_other
            logp, top_other = self.engine(token_logprobs_with_top_other, tb, self.config.train.chunk_size)
            distilled = {"logp_top_other": top_other}
        elif self.config.train.share_prompts and self.parallel.agree(shares_prompts(sequences)):
            # a group's prompt forwarded once
            logp = self.engine(shared_prompt_logprobs, sequences, self.tokenizer.pad_token_id, self.config.train.chunk_size)
        else:
            logp = self.engine(token_logprobs, tb, self.config.train.chunk_size)
        fields = experience.row_fields(rows, logp.shape[1])
        if distilled:
            fields["extra"] = {**fields.get("extra", {}), **distilled}
        fields = {k: (v.to(self.device) if torch.is_tensor(v) else {n: t.to(self.device) for n, t in v.items()})
                  for k, v in fields.items()}
        if self.reference is not None:
            keys = [experience.reference_keys[i] for i in rows] if experience.reference_keys else None
            fields["logp_ref"] = self.reference(keys, tb, logp.dtype)
        mask = tb.completion_mask.to(logp.dtype)
        batch = Batch(logp=logp, mask=mask, group=tb.group, sign=tb.sign.to(logp.dtype), step=step,
                      rows=torch.tensor(rows, device=logp.device), **fields)
        out = self.objective.loss(batch)
        if "logp_ref" in fields:  # KL(π_θ‖π_ref) on these tokens (k3), a diagnostic whether or not the loss has it
            kl = (kl_estimate(logp.detach(), fields["logp_ref"], "k3") * mask).sum() / mask.sum().clamp(min=1)
            out.metrics["kl_ref"] = float(kl)
        return out, sum(s.length for s in sequences)


def evaluate(trainer: Trainer, split: Split) -> dict:
    """The objective and its metrics on a whole split (counts over the split, so sums are exact)."""
    was_training = trainer.model.training
    trainer.model.eval()
    experience = split.experience(list(range(len(split.units))))
    step = experience.step_batch(trainer.device)
    objective, weighted, weight = 0.0, {}, 0.0
    size = trainer.config.train.eval_batch_size
    with torch.no_grad():
        for start in range(0, len(experience.units), size):
            units = list(range(start, min(start + size, len(experience.units))))
            out, _ = trainer.batch_loss(experience, experience.rows_of(units), step)
            objective += float(out.objective)
            for key, value in out.metrics.items():
                weighted[key] = weighted.get(key, 0.0) + float(value) * len(units)
            weight += len(units)
    trainer.model.train(was_training)
    return {"objective": objective, **{key: value / weight for key, value in weighted.items()}}


def evaluate_prompts_split(trainer: Trainer, examples: list, reward_fn) -> dict:
    """Greedy held-out accuracy and mean reward on prompts."""
    from unigrad.evaluate import evaluate_prompts
    r = trainer.config.rollout
    result = evaluate_prompts(trainer.sampling_model, trainer.tokenizer, examples, reward_fn, k=None, num_samples=0,
                              max_new_tokens=r.max_new_tokens, batch_size=r.max_batch_size or 64)
    return {key: float(value) for key, value in result.items() if isinstance(value, (int, float))}


# ---------------------------------------------------------------------------- the loop

def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _apply_lora(model, lora):
    from peft import LoraConfig, get_peft_model
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


class MetricsLog:
    """metrics.jsonl (truncated to the resumed step) and, when available, TensorBoard."""

    def __init__(self, folder: Path, start_step: int, tensorboard: bool):
        self.path = folder / "metrics.jsonl"
        kept = []
        if self.path.exists() and start_step > 0:   # a resumed run keeps what was logged up to its checkpoint
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= start_step]
        self.path.write_text("".join(line + "\n" for line in kept))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(folder / "tensorboard"), purge_step=start_step + 1)
            except Exception:  # tensorboard not installed: JSONL is enough
                self.writer = None

    def write(self, step: int, record: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **record}) + "\n")
        if self.writer:
            for key, value in record.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def check_requirements(objective, config: RunConfig) -> None:
    from unigrad.distill import DISTILL_FIELDS
    provided = PROVIDED[config.data.format] | (DISTILL_FIELDS if config.teacher.name else frozenset())
    if objective.requires & DISTILL_FIELDS and not config.teacher.name:
        raise ConfigError("teacher.name: this method distils a teacher; give the teacher model (like model.name)")
    missing = objective.requires - provided - {"logp", "mask"}
    if missing:
        raise ConfigError(f"method: this objective needs batch field(s) {', '.join(sorted(missing))}, which "
                          f"data.format={config.data.format!r} cannot provide"
                          + ("; online methods need data.format: prompts" if missing & {"reward", "logp_old"} else ""))
    if "sign" in objective.requires and config.data.format == "sft":
        raise ConfigError("method: this objective compares chosen and rejected responses; set data.format: pairs "
                          "(got 'sft')")


def _layout(config: RunConfig, procs: Processes, dtype: torch.dtype):
    """How the processes hold the model: FSDP (``train.fsdp``, or ``accelerate launch --use_fsdp``),
    DeepSpeed ZeRO (``train.deepspeed: S``, or ``accelerate launch --use_deepspeed``), or replicated;
    what the sharded layouts do not cover yet is refused with the reason."""
    launched = {name: os.environ.get(f"ACCELERATE_USE_{name.upper()}", "").lower() == "true"
                for name in ("fsdp", "deepspeed")}
    fsdp = config.train.fsdp or launched["fsdp"]
    stage = config.train.deepspeed or (int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or 2)
                                       if launched["deepspeed"] else 0)
    if not (fsdp or stage):
        return layout(False, procs)
    name = "train.fsdp" if fsdp else "train.deepspeed"
    if fsdp and stage:
        raise ConfigError("train.fsdp and train.deepspeed (or accelerate launch --use_fsdp / --use_deepspeed): "
                          "choose one way to shard the model")
    if not fsdp and stage not in (1, 2, 3):
        raise ConfigError(f"train.deepspeed: {stage} is not a ZeRO stage (1, 2 or 3; 0 turns DeepSpeed off)")
    why = []
    if procs.world == 1:
        why.append("one process (launch several: unigrad train --nproc P, torchrun or accelerate launch)")
    if config.data.format == "prompts" and config.rollout.sampler == "vllm":
        why.append("rollout.sampler: vllm (weight sync from a sharded model is not implemented; use hf)")
    if config.data.format == "prompts" and config.rollout.dynamic_sampling:
        why.append("rollout.dynamic_sampling (a step may leave a process without micro-batches, and every "
                   "process must run the same layer calls)")
    if config.teacher.name:
        why.append("a teacher (teacher.name): distillation on sharded models is not implemented")
    if config.model.lora:
        why.append("LoRA (model.lora): adapters on sharded models are not implemented")
    if why:
        raise ConfigError(f"{name}: {'FSDP' if fsdp else 'DeepSpeed'} cannot run with " + "; ".join(why))
    if fsdp:
        log.info("FSDP2: parameters, gradients and optimiser state sharded over %d processes", procs.world)
        return layout(True, procs)
    from unigrad.zero import zero_layout
    zero = zero_layout(procs, stage, config.train, dtype)
    log.info("DeepSpeed ZeRO stage %d over %d processes", zero.stage, procs.world)
    return zero


def _load_reward(config: RunConfig):
    from unigrad.rewards import load_reward
    try:
        return load_reward(config.reward.function)
    except (ValueError, ImportError, AttributeError) as error:
        raise ConfigError(f"reward.function: {error}") from None


def _sampler(config: RunConfig, model, tokenizer, procs: Processes):
    if config.rollout.sampler == "vllm":
        from unigrad.rollout.vllm import VLLMSampler
        sampler = VLLMSampler(model, tokenizer)
    else:
        from unigrad.rollout.hf import HFSampler
        sampler = HFSampler(model, tokenizer, max_batch_size=config.rollout.max_batch_size)
    return ShardedSampler(sampler, procs) if procs.world > 1 else sampler


def optimise(trainer: Trainer, experience: Experience, whole: Batch, optimizer, params: list, procs: Processes,
             epochs: int) -> tuple[float, float, int, dict, float]:
    """``epochs`` optimiser updates on one step's experience; this process trains its contiguous share
    of the step's units in ``grad_accum`` micro-batches, and gradients are summed over processes.
    Returns the last epoch's surrogate and objective sums, tokens seen, mean metrics, gradient norm."""
    t = trainer.config.train
    # The step's units in processes × grad_accum contiguous chunks (a step may hold fewer units than
    # batch_size, e.g. after DAPO's dynamic sampling); this process trains chunks rank·grad_accum …
    chunks = [chunk.tolist() for chunk in torch.arange(len(experience.units)).tensor_split(procs.world * t.grad_accum)]
    mine = [chunk for chunk in chunks[procs.rank * t.grad_accum:(procs.rank + 1) * t.grad_accum] if chunk]
    tokens = 0
    for _ in range(epochs):
        loss_sum, objective_sum, metrics = 0.0, 0.0, {}
        for chunk in mine:
            out, n = trainer.batch_loss(experience, experience.rows_of(chunk), whole)
            trainer.parallel.backward(trainer.engine, out.loss)
            loss_sum += float(out.loss.detach())
            objective_sum += float(out.objective)
            tokens += n
            for key, value in out.metrics.items():
                metrics[key] = metrics.get(key, 0.0) + float(value) / len(mine)
        grad_norm = trainer.parallel.update(trainer.engine, optimizer, params, t.max_grad_norm)
    if procs.world > 1:
        loss_sum, objective_sum, tokens = procs.sum(loss_sum), procs.sum(objective_sum), int(procs.sum(tokens))
        metrics = {key: procs.sum(value) / procs.world for key, value in sorted(metrics.items())}
    return loss_sum, objective_sum, tokens, metrics, grad_norm


def train(config: RunConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run ``config``; returns the final metrics. With ``resume`` it continues from the last
    checkpoint in ``output_dir`` and reaches the same result as an uninterrupted run."""
    t, online = config.train, config.data.format == "prompts"
    procs = processes()
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
    parallel = _layout(config, procs, _dtype(config.model.dtype, device))
    if t.batch_size % (procs.world * t.grad_accum):
        raise ConfigError(f"train.batch_size ({t.batch_size}) must be a multiple of processes × train.grad_accum "
                          f"({procs.world} × {t.grad_accum})")
    check_in_backward(t, procs.world)
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if t.threads:
        torch.set_num_threads(t.threads)
    objective = build_objective(config.method)
    check_requirements(objective, config)
    _seed_everything(t.seed)
    model, tokenizer = load_model(config.model.name, dtype=_dtype(config.model.dtype, device), device=device,
                                  trust_remote_code=config.model.trust_remote_code)

    def resolve(path):
        return resolve_data_path(path, config.source)

    def load(path: str | None, name: str) -> Split | None:
        if not path:
            return None
        sequences = load_dataset_sequences(resolve(path), config.data.format, tokenizer, config.data.max_length,
                                           config.data.truncation, limit=config.data.limit)
        if count_truncated(sequences):
            log.warning("%s: %d sequences truncated to max_length=%d", path, count_truncated(sequences), config.data.max_length)
        return Split.of(name, sequences)

    reward_fn = _load_reward(config) if online else None
    if online:
        train_prompts, eval_prompts = load_prompt_splits(config, tokenizer, resolve)
        n_units, eval_split = len(train_prompts), None
    else:
        train_split, eval_split = load(config.data.train, "train"), load(config.data.eval, "eval")
        n_units = len(train_split.units)
    if n_units < t.batch_size:
        raise ConfigError(f"train.batch_size={t.batch_size} is larger than the training set ({n_units} examples)")
    if config.model.lora:
        model = _apply_lora(model, config.model.lora)
        if config.model.lora.init == "fila":
            if config.data.format != "forget":
                raise ConfigError("model.lora.init: fila weighs forget against retain data; set data.format: forget")
            from unigrad.fila import fila_init
            fila_init(model, [s for s in train_split.sequences if s.sign < 0],
                      [s for s in train_split.sequences if s.sign > 0], tokenizer.pad_token_id,
                      chunk_size=t.chunk_size)
    procs.broadcast_parameters(model)
    reference = None
    if "logp_ref" in objective.requires or t.track_kl:
        splits = [] if online else [s for s in (train_split, eval_split) if s]
        reference = Reference(config, model, splits, tokenizer.pad_token_id, writer=procs.main, prepare=parallel.prepare)
    teacher = None
    if config.teacher.name:
        teacher, _ = load_model(config.teacher.name, dtype=_dtype(config.model.dtype, device), device=device,
                                trust_remote_code=config.model.trust_remote_code)
        teacher.requires_grad_(False)
    # what generation runs on, taken before sharding: the policy, or its whole copy when it is sharded
    sampling = parallel.sampling_model(model) if online else model
    engine, optimizer = parallel.train_engine(model, lambda trainable: make_optimizer(trainable, t))
    params = [p for p in model.parameters() if p.requires_grad]
    trainer = Trainer(config, model, tokenizer, objective, reference, device, teacher, engine, parallel, sampling)
    if online:
        demos = demonstration_rows(train_prompts, tokenizer, config.data.max_length) if "is_demo" in objective.requires else None
        source = RolloutSource(train_prompts, _sampler(config, sampling, tokenizer, procs), reward_fn, config.rollout,
                               config.reward.fallback, demos, t.seed, config.reward.overlong_cache)
    on_policy = float(getattr(objective, "on_policy_fraction", 0.0)) if not online else 0.0
    if on_policy and reference is not None and reference.table is not None:
        raise ConfigError("method: on-policy samples need reference log-probs per batch; set reference.precompute: false")
    policy_sampler = _sampler(config, model, tokenizer, procs) if on_policy else None

    start = 0
    checkpoints = out_dir / "checkpoints"
    if resume and list_checkpoints(checkpoints):
        start = load_checkpoint(list_checkpoints(checkpoints)[-1], model, optimizer, parallel)
        log.info("resumed from %s", list_checkpoints(checkpoints)[-1])
    elif resume:
        log.info("no checkpoint in %s: starting from step 0", checkpoints)
    if procs.main:
        (out_dir / "config.json").write_text(json.dumps(to_dict(config), indent=1, default=str))
    metrics_log = MetricsLog(out_dir, start, t.tensorboard) if procs.main else None

    def held_out() -> dict:
        if online:
            return {f"eval/{k}": v for k, v in evaluate_prompts_split(trainer, eval_prompts, reward_fn).items()} if eval_prompts else {}
        return {f"eval/{k}": v for k, v in evaluate(trainer, eval_split).items()} if eval_split else {}

    before = {}
    if start == 0:
        before = held_out()
        if before and procs.main:
            metrics_log.write(0, before)
            log.info("held-out before training: %s", _brief(before))

    model.train()
    bar = _progress(t.steps, start, progress and procs.main)
    last = {}
    for step in range(start, t.steps):
        started = time.perf_counter()
        units = step_units(n_units, t.batch_size, step, t.seed)
        if online:
            spare = step_units(n_units, t.batch_size, step, t.seed + 1) if config.rollout.dynamic_sampling else []
            experience = source.experience(units, step, tokenizer, [u for u in spare if u not in units])
        else:
            experience = train_split.experience(list(units))
            draw = torch.Generator().manual_seed(t.seed * 1_000_003 + step)
            if on_policy and float(torch.rand(1, generator=draw)) < on_policy:
                experience = with_policy_completions(experience, policy_sampler, config.rollout, t.seed * 1_000_003 + step)
        whole = experience.step_batch(device)
        lr = learning_rate(step, t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        epochs = config.rollout.epochs if online else 1
        loss_sum, objective_sum, tokens, metrics, grad_norm = optimise(trainer, experience, whole, optimizer, params,
                                                                      procs, epochs)
        if online:
            parallel.sync_sampling_model(model, sampling)
            source.sampler.update_weights(sampling)
        seconds = time.perf_counter() - started
        last = {"objective": objective_sum, "surrogate": loss_sum, "lr": lr, "grad_norm": grad_norm,
                "tokens_per_s": tokens / seconds, "step_seconds": seconds, **metrics, **experience.metrics}
        done = step + 1
        if (t.eval_every and done % t.eval_every == 0) or done == t.steps:
            last.update(held_out())
        if procs.main and (done % t.log_every == 0 or done == t.steps):
            metrics_log.write(done, last)
        bar.update(1)
        bar.set_postfix(_postfix(last))
        if t.save_every and done % t.save_every == 0 and done != t.steps:
            weights, optimizer_state = parallel.full_weights(model), parallel.full_optimizer_state(model, optimizer)
            if procs.main:
                save_checkpoint(checkpoints, done, model, tokenizer, optimizer_state, to_dict(config),
                                t.keep_checkpoints, weights)
    bar.close()
    weights = parallel.full_weights(model)
    summary = {"steps": t.steps, "final_model": str(out_dir / "final"), **last,
               **{f"before/{key}": value for key, value in before.items()}}
    if not procs.main:
        procs.barrier()
        return summary
    metrics_log.close()
    save_model(model, tokenizer, out_dir / "final", weights)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    try:
        from unigrad.report import write_report
        summary["report"] = str(write_report(out_dir))
    except Exception as error:  # the report must never lose a trained model
        log.warning("could not write the report: %s", error)
    procs.barrier()
    return summary


def _brief(metrics: dict) -> str:
    keys = [k for k in metrics if k.split("/")[-1] in ("accuracy", "reward_mean", "objective", "reward_margin")]
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys)


def _postfix(last: dict) -> dict:
    shown = {"objective": f"{last['objective']:.4f}", "tok_s": f"{last['tokens_per_s']:.0f}"}
    if "surrogate" in last:
        shown["surrogate"] = f"{last['surrogate']:.4f}"
    if "reward_mean" in last:
        shown["reward"] = f"{last['reward_mean']:.3f}"
    return shown


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)
