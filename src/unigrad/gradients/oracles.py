"""Oracles: what a zeroth-order estimator observes at a (perturbed) point θ (``train.gradient.oracle``).

An oracle's ``observe(micro_batches, sums)`` looks at the policy as it is now (the estimator has
perturbed it in place) on this process's share of the step; ``keys(observations)`` turns the
observations of several points into loss-like numbers, lower is better, that add up over processes:

- ``ObjectiveOracle`` (``objective``): F(θ) = Σ over the micro-batches of the method's
  ``Output.objective``; its key is its value.
- ``RewardOracle`` (``reward``): F(θ) = −(1/P) Σ_p r(x_p, y_p(θ)), the mean reward of the policy's
  greedy completions y_p(θ) of the step's P prompts, under the run's reward function: a
  non-differentiable black box. Each process completes its share; the terms add up to the step's mean.
- ``PreferenceOracle`` (``preference``, for ranking only): the m points' greedy completions of each
  prompt compared pairwise by a ``Preference`` P(a ≻ b) ∈ [0, 1]; point a's key is minus its total
  wins Σ_{b≠a} Σ_p P(y_p^a ≻ y_p^b) (P(b ≻ a) = 1 − P(a ≻ b)), i.e. points ranked by a Borda/Copeland
  count over the per-prompt contests, ties by query order.

The reward and preference oracles read the step's prompts from the micro-batches' rows
(``MicroBatch.experience``/``rows``): a rollout's ``group`` is its prompt's index in the run's
prompt examples, which ``GreedyCompletions`` (built at assembly from the run's sampler, tokenizer and
prompts) completes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import torch

from unigrad.gradients.base import StepSums
from unigrad.rewards.preferences import Preference, RulePreference   # noqa: F401 - the preference models' home


@runtime_checkable
class Oracle(Protocol):
    comparative: bool     # True: its keys exist only for several points together (a ranking oracle)

    def observe(self, micro_batches: list, sums: StepSums | None = None): ...

    def keys(self, observations: list) -> list[float]: ...


def _record(sums: StepSums | None, tokens: int, metrics: dict) -> None:
    if sums is not None:
        sums.tokens += tokens
        for key, value in metrics.items():
            sums.metrics[key] = sums.metrics.get(key, 0.0) + float(value)


@dataclass(frozen=True)
class ObjectiveOracle:
    """F(θ) = Σ_micro-batches Output.objective (the canonical loss, never the surrogate)."""
    comparative: bool = False

    def observe(self, micro_batches, sums=None) -> float:
        value = 0.0
        for loss_of in micro_batches:
            out, tokens = loss_of()
            value += float(out.objective)
            _record(sums, tokens, {key: float(v) / len(micro_batches) for key, v in out.metrics.items()})
        return value

    def keys(self, observations):
        return list(observations)


def step_prompts(micro_batches) -> tuple[list[int], int]:
    """The prompt indices this process's micro-batches hold (their rows' groups, in order) and the
    number of prompts in the whole step."""
    if not micro_batches:
        return [], 1
    if not all(hasattr(mb, "experience") and hasattr(mb, "rows") for mb in micro_batches):
        raise TypeError("a reward or preference oracle reads the step's prompts from MicroBatch rows; "
                        "these micro-batches are plain closures")
    experience = micro_batches[0].experience
    indices = list(dict.fromkeys(experience.sequences[r].group for mb in micro_batches for r in mb.rows))
    return indices, len(experience.units)


@dataclass(frozen=True)
class GreedyCompletions:
    """The policy's greedy completion of each prompt: (examples, texts, tokens forwarded). ``sync``
    hands the (perturbed) weights to the sampler first (nothing to do for the HF sampler)."""
    sampler: object
    tokenizer: object
    examples: list
    max_new_tokens: int
    sync: Callable[[], None] = lambda: None

    def __call__(self, indices: list[int]):
        chosen = [self.examples[i] for i in indices]
        if not chosen:
            return [], [], 0
        self.sync()
        rollouts = self.sampler.sample([list(e.prompt_ids) for e in chosen], 1, self.max_new_tokens, temperature=0.0)
        tokens = sum(len(p) + len(c) for p, c in zip(rollouts.prompt_ids, rollouts.completion_ids))
        return chosen, rollouts.texts(self.tokenizer), tokens


@dataclass(frozen=True)
class RewardScore:
    """r(x_p, y_p) for each prompt under the run's reward function (``fallback`` where it fails)."""
    reward_fn: Callable
    fallback: float = 0.0

    def __call__(self, examples: list, texts: list[str]) -> torch.Tensor:
        from unigrad.rewards import score_rollouts
        rewards, _ = score_rollouts(self.reward_fn, [e.prompt_text for e in examples], texts,
                                    [e.answer for e in examples], fallback=self.fallback,
                                    metas=[e.extra for e in examples])
        return rewards.double()


@dataclass(frozen=True)
class RewardOracle:
    """F(θ) = −mean reward of the greedy completions of the step's prompts (this process's share of the sum)."""
    generate: Callable
    score: Callable
    comparative: bool = False

    def observe(self, micro_batches, sums=None) -> float:
        indices, total = step_prompts(micro_batches)
        examples, texts, tokens = self.generate(indices)
        rewards = self.score(examples, texts) if examples else torch.zeros(0, dtype=torch.float64)
        _record(sums, tokens, {"oracle_reward_mean": float(rewards.mean()) if len(rewards) else 0.0})
        return -float(rewards.sum()) / total

    def keys(self, observations):
        return list(observations)


def total_wins(m: int, prefer: Callable[[int, int], torch.Tensor]) -> list[float]:
    """Each of m items' total wins Σ_{b≠a} Σ_p P_p(a ≻ b), from ``prefer(a, b)`` (a < b), the
    per-contest probabilities that a beats b, and P(b ≻ a) = 1 − P(a ≻ b)."""
    wins = [0.0] * m
    for a in range(m):
        for b in range(a + 1, m):
            p = prefer(a, b).double()
            wins[a] += float(p.sum())
            wins[b] += float((1 - p).sum())
    return wins


def ranking(keys: list[float]) -> list[int]:
    """Indices best first: the lowest key first, ties by index (query order)."""
    return sorted(range(len(keys)), key=lambda i: (keys[i], i))


@dataclass(frozen=True)
class PreferenceOracle:
    """Observes the greedy completions; keys: minus each point's total wins under ``prefer``."""
    generate: Callable
    prefer: Preference
    comparative: bool = True

    def observe(self, micro_batches, sums=None):
        examples, texts, tokens = self.generate(step_prompts(micro_batches)[0])
        _record(sums, tokens, {})
        return examples, texts

    def keys(self, observations):
        if not observations or not observations[0][0]:
            return [0.0] * len(observations)
        prompts = observations[0][0]
        return [-w for w in total_wins(len(observations),
                                       lambda a, b: self.prefer(prompts, observations[a][1], observations[b][1]))]
