"""Where each optimiser step's sequences come from: a dataset (offline) or the policy (online).

Both sources return an ``Experience``: the step's sequences, grouped into units that must share a
micro-batch (a preference pair; a prompt's rollouts and its demonstration), with per-row step data
(rewards, behaviour log-probs, demonstration flags). The loop treats both alike; which source runs
is decided by the data format and what the objective ``requires``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from unigrad.batch import Batch
from unigrad.tokens import Sequence

BATCH_ROW_FIELDS = ("reward", "logp_old")   # per-row data with a Batch field of its own; others go to extra


@dataclass
class Experience:
    sequences: list[Sequence]
    units: list[list[int]]                               # row indices of each unit, in step order
    fields: dict[str, Tensor] = field(default_factory=dict)  # per-row [N] or [N, T] step data
    reference_keys: list[tuple[str, int]] | None = None  # rows' keys into precomputed reference log-probs
    metrics: dict[str, float] = field(default_factory=dict)

    def rows_of(self, units: list[int]) -> list[int]:
        return [row for unit in units for row in self.units[unit]]

    def step_batch(self, device) -> Batch:
        """The whole step as data (no log-probs): what normalisers count and step-level advantages
        read; micro-batches point to it (``Batch.step``), so accumulation is exact."""
        lengths = torch.tensor([len(s.completion_ids) for s in self.sequences])
        mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).float()
        batch = Batch(logp=torch.zeros_like(mask), mask=mask, group=torch.tensor([s.group for s in self.sequences]),
                      sign=torch.tensor([s.sign for s in self.sequences], dtype=torch.float32),
                      **self.row_fields(list(range(len(self.sequences))), mask.shape[1]))
        return batch.to_device(device)

    def row_fields(self, rows: list[int], width: int) -> dict:
        """Batch keyword arguments with this experience's per-row data at ``rows`` ([N, T] data cut
        to ``width`` tokens)."""
        index = torch.tensor(rows, dtype=torch.long)
        out, extra = {}, {}
        for name, values in self.fields.items():
            picked = values[index] if values.dim() == 1 else values[index, :width]
            (out if name in BATCH_ROW_FIELDS else extra)[name] = picked
        if extra:
            out["extra"] = extra
        return out


# ---------------------------------------------------------------------------- offline

@dataclass(frozen=True)
class Split:
    """A tokenised dataset cut into units: the sequences that must share a batch (a pair)."""
    name: str
    sequences: list[Sequence]
    units: list[list[int]]

    @classmethod
    def of(cls, name: str, sequences: list[Sequence]) -> "Split":
        units, last = [], object()
        for index, sequence in enumerate(sequences):
            if sequence.group != last:
                units.append([])
                last = sequence.group
            units[-1].append(index)
        return cls(name, sequences, units)

    def experience(self, units: list[int]) -> Experience:
        rows = [i for u in units for i in self.units[u]]
        sequences = [self.sequences[i] for i in rows]
        fields = _meta_fields(sequences)
        grouped, start = [], 0
        for u in units:
            grouped.append(list(range(start, start + len(self.units[u]))))
            start += len(self.units[u])
        return Experience(sequences, grouped, fields, [(self.name, i) for i in rows])


def _meta_fields(sequences: list[Sequence]) -> dict[str, Tensor]:
    """Per-row numbers a data format put in ``Sequence.meta["fields"]`` (e.g. ``scored``'s reward)."""
    names = set().union(*(s.meta.get("fields", {}).keys() for s in sequences))
    return {name: torch.tensor([float(s.meta.get("fields", {}).get(name, float("nan"))) for s in sequences])
            for name in sorted(names)}


def step_units(n_units: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The units of optimiser step ``step``: a fresh seeded permutation per epoch, so the data
    order is a pure function of (seed, step) and a resumed run sees the same batches."""
    per_epoch = n_units // batch_size
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n_units, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[position * batch_size:(position + 1) * batch_size].tolist()


# ---------------------------------------------------------------------------- online

@dataclass
class RolloutSource:
    """Prompts → ``num_generations`` samples each from the current policy → rewards.

    With ``demonstrations`` (the objective reads ``is_demo``: HPT and other SFT+RL mixes) each prompt
    also contributes its demonstration as a row marked ``is_demo``. The sampler's log-probs of the
    sampled tokens are the behaviour log-probs (``logp_old``): no extra forward pass.
    """
    examples: list                   # PromptExample with prompt_ids
    sampler: object
    reward_fn: object
    rollout: object                  # RolloutConfig
    fallback: float
    demonstrations: list[Sequence] | None = None
    seed: int = 0

    def experience(self, units: list[int], step: int, tokenizer) -> Experience:
        chosen = [self.examples[u] for u in units]
        r = self.rollout
        rollouts = self.sampler.sample([list(e.prompt_ids) for e in chosen], r.num_generations, r.max_new_tokens,
                                       temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                       seed=self.seed * 1_000_003 + step)
        from unigrad.rewards import score_rollouts
        completions = rollouts.texts(tokenizer)
        rewards, report = score_rollouts(self.reward_fn, [e.prompt_text for e in chosen], completions,
                                         [e.answer for e in chosen], fallback=self.fallback,
                                         metas=[e.extra for e in chosen])
        sequences = [Sequence(s.prompt_ids, s.completion_ids, group=units[s.group], meta=s.meta)
                     for s in rollouts.sequences()]
        n = r.num_generations
        grouped = [list(range(i * n, (i + 1) * n)) for i in range(len(units))]
        reward, logp_old, is_demo = list(rewards.tolist()), [rollouts.logp_policy], [False] * len(sequences)
        if self.demonstrations is not None:
            for i, u in enumerate(units):
                demo = self.demonstrations[u]
                grouped[i].append(len(sequences))
                sequences.append(demo)
                reward.append(0.0)
                is_demo.append(True)
        width = max(len(s.completion_ids) for s in sequences)
        old = torch.zeros(len(sequences), width)
        old[:len(rollouts), :rollouts.logp_policy.shape[1]] = rollouts.logp_policy
        lengths = rollouts.lengths.float()
        metrics = {"reward_mean": float(rewards.mean()), "accuracy": float((rewards > 0.5).float().mean()),
                   "completion_length": float(lengths.mean()),
                   "truncated_fraction": float((~rollouts.finished).float().mean()), **report.metrics()}
        if report.example_error:
            metrics["reward_error_example"] = report.example_error
        fields = {"reward": torch.tensor(reward), "logp_old": old, "is_demo": torch.tensor(is_demo)}
        return Experience(sequences, grouped, fields, None, metrics)


def load_prompt_splits(config, tokenizer, resolve) -> tuple[list, list | None]:
    """Train and eval ``PromptExample``s (with prompt ids) from files or a built-in task."""
    from unigrad.data.prompts import encode_prompts, load_prompts, parse_prompts
    from unigrad.data.sources import Record
    data = config.data
    if data.task:
        from unigrad.tasks.arithmetic import make_splits
        train, test = make_splits(data.task.train_size, data.task.eval_size, seed=data.task.seed,
                                  difficulty=data.task.difficulty)

        def examples(records, name):
            return encode_prompts(parse_prompts([Record(value=r, source=f"task:{data.task.name}:{name}", row=i)
                                                 for i, r in enumerate(records)]), tokenizer)
        return examples(train, "train"), examples(test, "eval")
    train = load_prompts(resolve(data.train), tokenizer, limit=data.limit, truncation=data.truncation)
    evaluation = load_prompts(resolve(data.eval), tokenizer, truncation=data.truncation) if data.eval else None
    return train, evaluation


def demonstration_rows(examples: list, tokenizer, max_length: int) -> list[Sequence]:
    """The demonstration of every example, as SFT rows aligned with ``examples`` (group = index)."""
    from unigrad.data.errors import DataError
    from unigrad.data.prompts import demonstration_sequences
    missing = [e.record.where for e in examples if e.demonstration is None]
    if missing:
        raise DataError(f"{missing[0]}: field \"demonstration\" is missing; this method mixes SFT on "
                        f"demonstrations into RL, so every prompt needs one ({len(missing)} lack it)")
    return demonstration_sequences(examples, tokenizer, max_length, truncation=True)


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
