"""TRICE's experience: a rationale memory per example, moved by an independence sampler (MCMC-EM).

Phan, Hoffman et al. 2023, "Training Chain-of-Thought via Latent-Variable Inference", NeurIPS, arXiv
2312.02179. The objective is the marginal likelihood of the correct answers, (1/N) Σ_n log p_θ(y_n | x_n)
with p_θ(y | x) = Σ_z π_θ(z | x) 1[z yields y]; its gradient is E_{z ~ p_θ(z | x, y)}[∇ log π_θ(z | x)], the
score of a rationale drawn from the posterior over rationales that reach the correct answer. TRICE keeps
one rationale z_n per example as the state of a Markov chain whose stationary law is that posterior:

    each step, for the step's examples m (``step_units``):
        propose z̃_m ~ π_θ(z | x_m)                          (one sample, the run's sampler)
        accept iff z̃_m yields the correct answer: z_m ← z̃_m  (reward > 1/2 under the run's reward function)

and trains on the memory rows and the proposals with the control-variate weights of
``estimator.advantages.memory`` (Â = 1, −β_m, or 1 − β_m when the proposal was accepted and is one row).

Memory initialisation: the paper starts the chains from rationales guessed with the answer as a hint
(STaR's rationalisation); here an example's demonstration, when the data has one and the reward function
scores it correct, else nothing until the first accepted proposal (an example without a memory has no
gradient term). What was read and followed: the paper's abstract and FORMULAS.md §19 (reconstructed, not
the full text): the independence-sampler update, the estimator with its leave-one-out β. Not implemented:
the paper's gradient subsampling (a subset of the 2M rows weighted to keep the estimate unbiased, whose
exact rule was not verified); every row is trained.

The memory is learned state (``unigrad.state``): ``RationaleMemory`` is saved in every checkpoint and
restored on ``--resume``; the proposals are seeded by (seed, step), so a resumed run draws the same ones.
Metrics: ``reward_mean`` and ``rollout_accuracy`` of the proposals (the acceptance rate),
``memory/filled`` (the fraction of all examples with a memory), ``completion_length``, ``entropy``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from unigrad.estimator.advantages.memory import MEMORY_FIELDS
from unigrad.experience.base import Experience
from unigrad.experience.dataset import step_units
from unigrad.experience.rollouts import RolloutSource
from unigrad.tokens import Sequence

CORRECT = 0.5          # a rationale yields the correct answer when its reward is above this (rollout_accuracy's rule)


def wants_memory(requires: frozenset[str]) -> bool:
    """Whether an objective trains on a rationale memory (it reads the memory / proposal flags)."""
    return {"memory", "proposal"} <= requires


class RationaleMemory:
    """z_n per example n: the completion token ids of its current rationale, or None (none found yet).
    Checkpointed as ``tokens`` [N, L] (right-padded with 0) and ``lengths`` [N] (0: no rationale)."""

    state_name = "trice_memory"

    def __init__(self, size: int, initial: dict[int, tuple[int, ...]] | None = None):
        self.rationales: list[tuple[int, ...] | None] = [None] * size
        for n, ids in (initial or {}).items():
            self.rationales[n] = tuple(ids)

    def checkpoint_state(self) -> dict:
        lengths = torch.tensor([len(z) if z else 0 for z in self.rationales], dtype=torch.long)
        tokens = torch.zeros(len(self.rationales), max(int(lengths.max()) if len(lengths) else 0, 1), dtype=torch.long)
        for n, z in enumerate(self.rationales):
            if z:
                tokens[n, :len(z)] = torch.tensor(z, dtype=torch.long)
        return {"tokens": tokens, "lengths": lengths}

    def restore_state(self, state: dict) -> None:
        tokens, lengths = state["tokens"], state["lengths"]
        if lengths.numel() != len(self.rationales):
            raise ValueError(f"the checkpoint's rationale memory has {lengths.numel()} examples, the run "
                             f"{len(self.rationales)}: the training data changed")
        self.rationales = [tuple(tokens[n, :k].tolist()) if k else None for n, k in enumerate(lengths.tolist())]

    @property
    def filled(self) -> float:
        return sum(z is not None for z in self.rationales) / max(len(self.rationales), 1)


def initial_memory(examples: list, reward_fn, fallback: float, tokenizer, max_length: int) -> RationaleMemory:
    """The memory started from the examples' demonstrations that the reward function scores correct."""
    from unigrad.data.prompts import demonstration_sequences
    from unigrad.rewards import score_rollouts
    demos = demonstration_sequences(examples, tokenizer, max_length, truncation=True)
    if not demos:
        return RationaleMemory(len(examples))
    chosen = [examples[s.group] for s in demos]
    texts = [tokenizer.decode(list(s.completion_ids), skip_special_tokens=True) for s in demos]
    rewards, _ = score_rollouts(reward_fn, [e.prompt_text for e in chosen], texts, [e.answer for e in chosen],
                                fallback=fallback, metas=[e.extra for e in chosen])
    return RationaleMemory(len(examples), {s.group: s.completion_ids for s, r in zip(demos, rewards.tolist())
                                           if r > CORRECT})


@dataclass
class MemorySource:
    """Step ``s``'s examples, one proposal each, the memory updated and both trained (module docstring).
    One unit per example (group = its index): [z_m, z̃_m] when z̃_m was rejected, [z_m = z̃_m] when accepted,
    [z̃_m] when the example has no memory (its weight is 0; it counts in β and in Z = M)."""
    rollouts: RolloutSource          # the examples, sampler, reward and seeds; one proposal per example
    memory: RationaleMemory
    provides: ClassVar[frozenset[str]] = MEMORY_FIELDS

    def __post_init__(self):
        if self.rollouts.rollout.num_generations != 1:
            from unigrad.config import ConfigError
            raise ConfigError(f"rollout.num_generations={self.rollouts.rollout.num_generations}: TRICE proposes one "
                              "rationale per example and step (an independence sampler); set rollout.num_generations: 1")

    @property
    def epochs(self) -> int:
        return self.rollouts.epochs

    def after_update(self) -> None:
        self.rollouts.after_update()

    def __call__(self, step: int) -> Experience:
        source = self.rollouts
        units = step_units(len(source.examples), source.batch_size, step, source.seed)
        rollouts, rewards, report = source._sample(units, step, 0, source.tokenizer)
        sequences, grouped, memory, proposal = [], [], [], []

        def row(completion: tuple[int, ...], u: int, is_memory: bool, is_proposal: bool) -> None:
            sequences.append(Sequence(tuple(source.examples[u].prompt_ids), tuple(completion), group=u))
            memory.append(is_memory)
            proposal.append(is_proposal)

        for i, u in enumerate(units):
            start, z_tilde, accepted = len(sequences), rollouts.completion_ids[i], bool(rewards[i] > CORRECT)
            if accepted:
                self.memory.rationales[u] = tuple(z_tilde)
            elif self.memory.rationales[u] is not None:
                row(self.memory.rationales[u], u, True, False)
            row(z_tilde, u, accepted, True)
            grouped.append(list(range(start, len(sequences))))
        metrics = {"reward_mean": float(rewards.mean()), "rollout_accuracy": float((rewards > CORRECT).float().mean()),
                   "memory/filled": self.memory.filled, "completion_length": float(rollouts.lengths.float().mean()),
                   **report.metrics(), **rollouts.entropy_metrics()}
        fields = {"memory": torch.tensor(memory), "proposal": torch.tensor(proposal)}
        return Experience(sequences, grouped, fields, None, metrics)


def memory_source(config, examples: list, sampler, reward_fn, tokenizer, sync) -> MemorySource:
    """The run's TRICE producer: its memory started from the demonstrations (``initial_memory``)."""
    memory = initial_memory(examples, reward_fn, config.reward.fallback, tokenizer, config.data.max_length)
    return MemorySource(RolloutSource(examples, sampler, reward_fn, config.rollout, config.reward.fallback, tokenizer,
                                      config.train.batch_size, seed=config.train.seed, sync=sync), memory)


__all__ = ["CORRECT", "MemorySource", "RationaleMemory", "initial_memory", "memory_source", "wants_memory"]
