"""The training loop: one loop for every method.

It asks the objective which Batch fields it ``requires`` and fills only those; everything
method-specific lives in the objective. Per optimiser step: draw ``batch_size`` examples (a pair
counts as one), split them into ``grad_accum`` micro-batches, compute per-token log-probs, build a
``Batch`` whose normalisation counts are the step's totals (so accumulation is exact), backprop
``objective.loss(batch).loss``, clip, step.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
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
from unigrad.methods.compose import build_objective
from unigrad.models import load_model, save_model
from unigrad.policy import collate, reference_logprobs, token_logprobs
from unigrad.tokens import Sequence

log = logging.getLogger("unigrad")

# Batch fields this loop can fill, besides logp and mask (rollouts and rewards come with samplers).
PROVIDED = frozenset({"logp", "mask", "group", "sign", "logp_ref"})


# ---------------------------------------------------------------------------- data in units

@dataclass(frozen=True)
class Split:
    """A tokenised dataset cut into units: the sequences that must share a batch (a pair)."""
    name: str
    sequences: list[Sequence]
    units: list[list[int]]


def resolve_data_path(path: str, config_source: str | None) -> str:
    """``path`` as given if it exists, else relative to the config file, else to the data shipped
    with unigrad (so ``data/pairs/train.jsonl`` works from any folder)."""
    from importlib import resources
    candidates = [Path(path)]
    if config_source:
        candidates.append(Path(config_source).parent / path)
    candidates.append(Path(str(resources.files("unigrad").joinpath("resources"))) / path)
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    return path  # the data layer reports it missing, naming it


def make_split(name: str, sequences: list[Sequence]) -> Split:
    units, last = [], object()
    for index, sequence in enumerate(sequences):
        if sequence.group != last:
            units.append([])
            last = sequence.group
        units[-1].append(index)
    return Split(name, sequences, units)


def step_units(n_units: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The units of optimiser step ``step``: a fresh seeded permutation per epoch, so the data
    order is a pure function of (seed, step) and a resumed run sees the same batches."""
    per_epoch = n_units // batch_size
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n_units, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[position * batch_size:(position + 1) * batch_size].tolist()


def learning_rate(step: int, cfg) -> float:
    """Warm-up from 0, then cosine or linear decay to ``min_lr_ratio · lr`` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    shape = {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress, "constant": 1.0}[cfg.schedule]
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


def make_optimizer(params, cfg):
    name = cfg.optimizer.lower()
    builtin = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD,
               "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}
    kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if name in ("adamw", "adam"):
        kwargs["betas"] = tuple(cfg.betas)
    if name in builtin:
        return builtin[name](params, **kwargs)
    try:
        from pytorch_optimizer import load_optimizer
        optimizer_class = load_optimizer(name)
    except Exception:
        raise ConfigError(f"train.optimizer: unknown optimizer {cfg.optimizer!r}; use one of "
                          f"{', '.join(builtin)} or a pytorch-optimizer name (e.g. lion, adamp, sophiah)") from None
    return optimizer_class(params, **kwargs)


# ---------------------------------------------------------------------------- reference log-probs

class Reference:
    """log π_ref for any sequence, either precomputed once for the datasets (then no reference model
    stays in memory) or computed per batch from a frozen model under inference mode."""

    def __init__(self, config: RunConfig, policy, splits: list[Split], pad_id: int, device):
        self.config, self.pad_id = config, pad_id
        self.table: dict[tuple[str, int], torch.Tensor] | None = None
        self.model = None
        cache = Path(config.output_dir) / "reference_logps.safetensors"
        if config.reference.precompute:
            if cache.exists():
                self.table = {(key.split("/")[0], int(key.split("/")[1])): value
                              for key, value in load_file(str(cache)).items()}
            else:
                self.table = self._precompute(policy, splits)
                tmp = cache.with_suffix(".tmp")
                save_file({f"{split}/{index}": v for (split, index), v in self.table.items()}, str(tmp))
                tmp.replace(cache)
        elif _is_peft(policy):
            self.model = policy  # adapters switched off while computing the reference
        else:
            import copy
            self.model = copy.deepcopy(policy).eval().requires_grad_(False)

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

    def __call__(self, split: str, indices: list[int], tb, dtype) -> torch.Tensor:
        if self.table is not None:
            out = torch.zeros(tb.completion_mask.shape, dtype=dtype)
            for row, index in enumerate(indices):
                values = self.table[(split, index)]
                out[row, :values.numel()] = values.to(dtype)
            return out.to(tb.completion_mask.device)
        if _is_peft(self.model):
            with self.model.disable_adapter():
                return reference_logprobs(self.model, tb, self.config.train.chunk_size).to(dtype)
        return reference_logprobs(self.model, tb, self.config.train.chunk_size).to(dtype)


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


# ---------------------------------------------------------------------------- one loss evaluation

@dataclass
class Trainer:
    config: RunConfig
    model: object
    tokenizer: object
    objective: object
    reference: Reference | None
    device: torch.device

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def batch_loss(self, split: Split, indices: list[int], step: Batch, rows: list[int]):
        """Objective output on the sequences ``indices`` of ``split``: rows ``rows`` of ``step``."""
        sequences = [split.sequences[i] for i in indices]
        tb = collate(sequences, self.pad_id, packed=self.config.data.packed).to(self.device)
        logp = token_logprobs(self.model, tb, self.config.train.chunk_size)
        fields = {}
        if "logp_ref" in self.objective.requires:
            fields["logp_ref"] = self.reference(split.name, indices, tb, logp.dtype)
        batch = Batch(logp=logp, mask=tb.completion_mask.to(logp.dtype), group=tb.group, sign=tb.sign.to(logp.dtype),
                      step=step, rows=torch.tensor(rows, device=logp.device), **fields)
        return self.objective.loss(batch), sum(s.length for s in sequences)


def step_batch(split: Split, indices: list[int], device) -> Batch:
    """The whole optimiser step as data (no log-probs): what normalisers count and step-level
    advantages read. Micro-batches point to it (``Batch.step``), so accumulation is exact."""
    sequences = [split.sequences[i] for i in indices]
    lengths = torch.tensor([len(s.completion_ids) for s in sequences])
    mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).float()
    return Batch(logp=torch.zeros_like(mask), mask=mask, group=torch.tensor([s.group for s in sequences]),
                 sign=torch.tensor([s.sign for s in sequences], dtype=torch.float32)).to_device(device)


def evaluate(trainer: Trainer, split: Split) -> dict:
    """The objective and its metrics on a whole split (counts over the split, so sums are exact)."""
    was_training = trainer.model.training
    trainer.model.eval()
    all_units = list(range(len(split.units)))
    everything = [i for u in all_units for i in split.units[u]]
    step = step_batch(split, everything, trainer.device)
    objective, weighted, weight = 0.0, {}, 0.0
    size = trainer.config.train.eval_batch_size
    with torch.no_grad():
        for start in range(0, len(all_units), size):
            units = all_units[start:start + size]
            indices = [i for u in units for i in split.units[u]]
            out, _ = trainer.batch_loss(split, indices, step, indices)
            objective += float(out.objective)
            for key, value in out.metrics.items():
                weighted[key] = weighted.get(key, 0.0) + float(value) * len(units)
            weight += len(units)
    trainer.model.train(was_training)
    return {"objective": objective, **{key: value / weight for key, value in weighted.items()}}


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
        if self.path.exists():
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
    missing = objective.requires - PROVIDED
    if missing:
        raise ConfigError(f"method: this objective needs batch field(s) {', '.join(sorted(missing))}, which "
                          f"`unigrad train` cannot provide from data.format={config.data.format!r}")
    if "sign" in objective.requires and config.data.format != "pairs":
        raise ConfigError(f"method: this objective compares chosen and rejected responses; set data.format: pairs "
                          f"(got {config.data.format!r})")


def train(config: RunConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run ``config``; returns the final metrics. With ``resume`` it continues from the last
    checkpoint in ``output_dir`` and reaches the same result as an uninterrupted run."""
    t = config.train
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if t.threads:
        torch.set_num_threads(t.threads)
    objective = build_objective(config.method)
    check_requirements(objective, config)
    _seed_everything(t.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(config.model.name, dtype=_dtype(config.model.dtype, device), device=device,
                                  trust_remote_code=config.model.trust_remote_code)

    def load(path: str | None, name: str) -> Split | None:
        if not path:
            return None
        sequences = load_dataset_sequences(resolve_data_path(path, config.source), config.data.format, tokenizer, config.data.max_length,
                                           config.data.truncation, limit=config.data.limit)
        if count_truncated(sequences):
            log.warning("%s: %d sequences truncated to max_length=%d", path, count_truncated(sequences), config.data.max_length)
        return make_split(name, sequences)

    train_split, eval_split = load(config.data.train, "train"), load(config.data.eval, "eval")
    if len(train_split.units) < t.batch_size:
        raise ConfigError(f"train.batch_size={t.batch_size} is larger than the training set "
                          f"({len(train_split.units)} examples in {config.data.train})")
    if config.model.lora:
        model = _apply_lora(model, config.model.lora)
    reference = None
    if "logp_ref" in objective.requires:
        reference = Reference(config, model, [s for s in (train_split, eval_split) if s], tokenizer.pad_token_id, device)
    trainer = Trainer(config, model, tokenizer, objective, reference, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, t)

    start = 0
    checkpoints = out_dir / "checkpoints"
    if resume and list_checkpoints(checkpoints):
        start = load_checkpoint(list_checkpoints(checkpoints)[-1], model, optimizer)
        log.info("resumed from %s", list_checkpoints(checkpoints)[-1])
    elif resume:
        log.info("no checkpoint in %s: starting from step 0", checkpoints)
    (out_dir / "config.json").write_text(json.dumps(to_dict(config), indent=1, default=str))
    metrics_log = MetricsLog(out_dir, start, t.tensorboard)
    if eval_split and start == 0:
        metrics_log.write(0, {f"eval/{k}": v for k, v in evaluate(trainer, eval_split).items()})

    model.train()
    bar = _progress(t.steps, start, progress)
    last = {}
    for step in range(start, t.steps):
        started = time.perf_counter()
        units = step_units(len(train_split.units), t.batch_size, step, t.seed)
        everything = [i for u in units for i in train_split.units[u]]
        whole = step_batch(train_split, everything, device)
        lr = learning_rate(step, t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum, objective_sum, tokens, metrics = 0.0, 0.0, 0, {}
        per_micro = t.batch_size // t.grad_accum
        for micro in range(t.grad_accum):
            indices = [i for u in units[micro * per_micro:(micro + 1) * per_micro] for i in train_split.units[u]]
            start_row = sum(len(train_split.units[u]) for u in units[:micro * per_micro])
            rows = list(range(start_row, start_row + len(indices)))
            out, n = trainer.batch_loss(train_split, indices, whole, rows)
            out.loss.backward()
            loss_sum += float(out.loss.detach())
            objective_sum += float(out.objective)
            tokens += n
            for key, value in out.metrics.items():
                metrics[key] = metrics.get(key, 0.0) + float(value) / t.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm if t.max_grad_norm else float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        last = {"objective": objective_sum, "surrogate": loss_sum, "lr": lr, "grad_norm": float(grad_norm),
                "tokens_per_s": tokens / seconds, **metrics}
        done = step + 1
        if eval_split and t.eval_every and done % t.eval_every == 0 and done != t.steps:
            last.update({f"eval/{k}": v for k, v in evaluate(trainer, eval_split).items()})
        if done == t.steps and eval_split:
            last.update({f"eval/{k}": v for k, v in evaluate(trainer, eval_split).items()})
        if done % t.log_every == 0 or done == t.steps:
            metrics_log.write(done, last)
        bar.update(1)
        bar.set_postfix(surrogate=f"{loss_sum:.4f}", objective=f"{objective_sum:.4f}", tok_s=f"{tokens / seconds:.0f}")
        if t.save_every and done % t.save_every == 0 and done != t.steps:
            save_checkpoint(checkpoints, done, model, tokenizer, optimizer, to_dict(config), t.keep_checkpoints)
    bar.close()
    metrics_log.close()
    final = save_model(model, tokenizer, out_dir / "final")
    summary = {"steps": t.steps, "final_model": str(final), **last}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)
