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


def with_policy_completions(experience: Experience, sampler, rollout, seed: int) -> Experience:
    """The same prompts answered by the current policy (one sample each) instead of the dataset:
    on-policy distillation (GKD's λ). Reference log-probs precomputed for the dataset no longer apply."""
    prompts = [list(s.prompt_ids) for s in experience.sequences]
    rollouts = sampler.sample(prompts, 1, rollout.max_new_tokens, temperature=rollout.temperature,
                              top_p=rollout.top_p, top_k=rollout.top_k, seed=seed)
    sequences = [Sequence(old.prompt_ids, new.completion_ids, group=old.group, sign=old.sign, meta=new.meta)
                 for old, new in zip(experience.sequences, rollouts.sequences())]
    return Experience(sequences, experience.units, experience.fields, None, {**experience.metrics, "on_policy": 1.0})


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
    overlong_cache: int | None = None

    def _sample(self, units: list[int], step: int, round_: int, tokenizer):
        chosen = [self.examples[u] for u in units]
        r = self.rollout
        rollouts = self.sampler.sample([list(e.prompt_ids) for e in chosen], r.num_generations, r.max_new_tokens,
                                       temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                       seed=(self.seed * 1_000_003 + step) * 7 + round_)
        from unigrad.rewards import score_rollouts
        rewards, report = score_rollouts(self.reward_fn, [e.prompt_text for e in chosen], rollouts.texts(tokenizer),
                                         [e.answer for e in chosen], fallback=self.fallback,
                                         metas=[e.extra for e in chosen])
        if self.overlong_cache:
            from unigrad.methods.rl import overlong_penalty
            rewards = rewards + overlong_penalty(rollouts.lengths, r.max_new_tokens, self.overlong_cache).to(rewards.dtype)
        return rollouts, rewards, report

    def _informative(self, rows: list) -> list:
        """The rows whose prompt's rollouts do not all have the same reward (DAPO's filter)."""
        from unigrad.methods.rl import keep_informative_groups
        n = self.rollout.num_generations
        return [(u, ro, rw, i) for u, ro, rw, i in rows
                if bool(keep_informative_groups(rw[i * n:(i + 1) * n], torch.zeros(n, dtype=torch.long))[0])]

    def experience(self, units: list[int], step: int, tokenizer, spare: list[int] = ()) -> Experience:
        """Rollouts of the prompts ``units``; with dynamic sampling, prompts whose rollouts all got the
        same reward (no learning signal) are replaced by prompts from ``spare``."""
        n = self.rollout.num_generations
        rollouts, rewards, report = self._sample(units, step, 0, tokenizer)
        rows = [(u, rollouts, rewards, i) for i, u in enumerate(units)]   # (prompt, its rollouts, rewards, index)
        dropped = 0
        if self.rollout.dynamic_sampling:
            rows, spare = self._informative(rows), list(spare)
            for round_ in range(1, self.rollout.max_sampling_rounds + 1):
                if len(rows) >= len(units) or not spare:
                    break
                extra, spare = spare[:len(units) - len(rows)], spare[len(units) - len(rows):]
                more, more_rewards, _ = self._sample(extra, step, round_, tokenizer)
                rows += self._informative([(u, more, more_rewards, i) for i, u in enumerate(extra)])
            dropped = float(len(units) - len(rows))
            # Nothing informative at all: train on the original prompts (their advantages are 0).
            rows = rows[:len(units)] or [(u, rollouts, rewards, i) for i, u in enumerate(units)]
        sequences, grouped, reward, old_rows, is_demo, finished = [], [], [], [], [], []
        for u, ro, rw, i in rows:
            grouped.append(list(range(len(sequences), len(sequences) + n)))
            for j, s in enumerate(ro.sequences()[i * n:(i + 1) * n]):
                sequences.append(Sequence(s.prompt_ids, s.completion_ids, group=u, meta=s.meta))
                old_rows.append(ro.logp_policy[i * n + j])
                finished.append(bool(ro.finished[i * n + j]))
            reward.extend(rw[i * n:(i + 1) * n].tolist())
            is_demo.extend([False] * n)
        rollout_rows = len(sequences)
        if self.demonstrations is not None:
            for index, (u, *_rest) in enumerate(rows):
                grouped[index].append(len(sequences))
                sequences.append(self.demonstrations[u])
                reward.append(0.0)
                is_demo.append(True)
        width = max(len(s.completion_ids) for s in sequences)
        old = torch.zeros(len(sequences), width)
        for row, values in enumerate(old_rows):
            old[row, :values.numel()] = values
        rollout_reward = torch.tensor(reward[:rollout_rows])
        lengths = torch.tensor([float(len(s.completion_ids)) for s in sequences[:rollout_rows]])
        metrics = {"reward_mean": float(rollout_reward.mean()), "rollout_accuracy": float((rollout_reward > 0.5).float().mean()),
                   "completion_length": float(lengths.mean()),
                   "truncated_fraction": 1.0 - sum(finished) / max(len(finished), 1), **report.metrics()}
        if self.rollout.dynamic_sampling:
            metrics["uninformative_groups_missing"] = dropped
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
