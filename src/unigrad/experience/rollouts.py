"""Online experience: prompts → ``num_generations`` samples each from the current policy → rewards."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from unigrad.experience.base import Experience
from unigrad.experience.dataset import step_units
from unigrad.rollout.base import token_entropy
from unigrad.rollout.shaping import keep_informative_groups, overlong_penalty
from unigrad.tokens import Sequence


@dataclass
class RolloutSource:
    """The rollouts of step ``s``'s prompts, scored by ``reward_fn``.

    With ``demonstrations`` (the objective reads ``is_demo``: HPT and other SFT+RL mixes) each prompt
    also contributes its demonstration as a row marked ``is_demo``. The sampler's log-probs of the
    sampled tokens are the behaviour log-probs (``logp_old``): no extra forward pass, unless ``recompute``
    gives the trainer's (then the sampler's are ``logp_sampler``, for a rollout correction). With DAPO's
    dynamic sampling (``rollout.dynamic_sampling``), prompts whose rollouts all got the same reward
    are replaced by prompts drawn with seed + 1."""
    examples: list                   # PromptExample with prompt_ids
    sampler: object
    reward_fn: object
    rollout: object                  # RolloutConfig
    fallback: float
    tokenizer: object
    batch_size: int
    demonstrations: list[Sequence] | None = None
    seed: int = 0
    overlong_cache: int | None = None
    sync: Callable[[], None] = lambda: None   # hands the updated policy to the sampler
    # rollout.recompute_logp_old: [N, T] log π_old of the sequences from a trainer forward (no grad); the
    # sampler's log-probs are then kept as ``logp_sampler`` for a rollout correction
    recompute: Callable[[list[Sequence]], torch.Tensor] | None = None
    steps: int = 0                   # train.steps: rows carry train_step / train_steps for schedules (MDPO's t_k)

    @property
    def epochs(self) -> int:
        return self.rollout.epochs

    @staticmethod
    def fields(with_demonstrations: bool, recomputed: bool = False) -> frozenset[str]:
        """What rollouts carry: prompt groups, rewards, behaviour log-probs; with demonstrations, is_demo;
        with π_old recomputed, the sampler's log-probs."""
        return frozenset({"group", "reward", "logp_old", "answer_id", "train_step", "train_steps"}
                         | ({"is_demo"} if with_demonstrations else set())
                         | ({"logp_sampler"} if recomputed else set()))

    @property
    def provides(self) -> frozenset[str]:
        return self.fields(self.demonstrations is not None, self.recompute is not None)

    def __call__(self, step: int) -> Experience:
        units = step_units(len(self.examples), self.batch_size, step, self.seed)
        spare = step_units(len(self.examples), self.batch_size, step, self.seed + 1) if self.rollout.dynamic_sampling else []
        return self.experience(units, step, self.tokenizer, [u for u in spare if u not in units])

    def after_update(self) -> None:
        self.sync()

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
        rollouts.token_rewards = report.token_rewards
        if self.overlong_cache:
            penalty = overlong_penalty(rollouts.lengths, r.max_new_tokens, self.overlong_cache).to(rewards.dtype)
            rewards = rewards + penalty
            if rollouts.token_rewards:   # process rewards: the penalty falls on the last token, as a scalar's would
                rollouts.token_rewards = [t if t is None or not t.numel() else
                                          torch.cat([t[:-1], t[-1:] + float(p)]) for t, p in zip(rollouts.token_rewards, penalty)]
        return rollouts, rewards, report

    def _informative(self, rows: list) -> list:
        """The rows whose prompt's rollouts do not all have the same reward (DAPO's filter)."""
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
        sequences, grouped, reward, old_rows, is_demo, finished, entropy, tokens = [], [], [], [], [], [], [], []
        for u, ro, rw, i in rows:
            grouped.append(list(range(len(sequences), len(sequences) + n)))
            for j, s in enumerate(ro.sequences()[i * n:(i + 1) * n]):
                sequences.append(Sequence(s.prompt_ids, s.completion_ids, group=u, meta=s.meta))
                old_rows.append(ro.logp_policy[i * n + j])
                finished.append(bool(ro.finished[i * n + j]))
                entropy.append(None if ro.entropy is None else ro.entropy[i * n + j, :len(s.completion_ids)])
                tokens.append(ro.token_rewards[i * n + j] if ro.token_rewards else None)
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
                   "truncated_fraction": 1.0 - sum(finished) / max(len(finished), 1), **report.metrics(),
                   **token_entropy(entropy)}
        if self.rollout.dynamic_sampling:
            metrics["uninformative_groups_missing"] = dropped
        if report.example_error:
            metrics["reward_error_example"] = report.example_error
        fields = {"reward": torch.tensor(reward), "logp_old": old, "is_demo": torch.tensor(is_demo)}
        # the step's place in the run, and each rollout's extracted answer (COPO's consistency); demonstrations get id 0
        from unigrad.rewards.answers import answer_ids
        texts = [tokenizer.decode(list(s.completion_ids), skip_special_tokens=True) for s in sequences[:rollout_rows]]
        fields["answer_id"] = torch.cat([answer_ids(texts), torch.zeros(len(sequences) - rollout_rows, dtype=torch.long)])
        fields["train_step"], fields["train_steps"] = (torch.full((len(sequences),), v) for v in (step, self.steps))
        if any(t is not None for t in tokens):   # process rewards: one per completion token (GAE reads them)
            fields["token_rewards"] = token_reward_rows(tokens, sequences, reward, width)
        if self.recompute is not None:
            fields["logp_sampler"], fields["logp_old"] = old, torch.zeros_like(old)
            trainer = self.recompute(sequences[:rollout_rows])
            fields["logp_old"][:rollout_rows, :trainer.shape[1]] = trainer
        return Experience(sequences, grouped, fields, None, metrics)


def token_reward_rows(tokens: list, sequences: list[Sequence], reward: list[float], width: int) -> torch.Tensor:
    """[N, width]: row i's per-token rewards, or (a row scored by a scalar, e.g. a fallback, or a
    demonstration) its reward at its last completion token. A per-token list must have |y_i| entries."""
    out = torch.zeros(len(sequences), width)
    for i, s in enumerate(sequences):
        size = len(s.completion_ids)
        given = tokens[i] if i < len(tokens) else None
        if given is not None and given.numel() != size:
            raise ValueError(f"the reward function returned {given.numel()} per-token rewards for a completion of "
                             f"{size} tokens (sample {i}); return one per completion token, or one scalar")
        if given is not None:
            out[i, :size] = given
        elif size:
            out[i, size - 1] = reward[i]
    return out


def demonstration_rows(examples: list, tokenizer, max_length: int) -> list[Sequence]:
    """The demonstration of every example, as SFT rows aligned with ``examples`` (group = index)."""
    from unigrad.data.errors import DataError
    from unigrad.data.prompts import demonstration_sequences
    missing = [e.record.where for e in examples if e.demonstration is None]
    if missing:
        raise DataError(f"{missing[0]}: field \"demonstration\" is missing; this method mixes SFT on "
                        f"demonstrations into RL, so every prompt needs one ({len(missing)} lack it)")
    return demonstration_sequences(examples, tokenizer, max_length, truncation=True)
