"""Scoring rollouts with a reward function, robustly, and best-of-n selection."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

log = logging.getLogger("unigrad.rewards")


@dataclass(frozen=True)
class RewardReport:
    """What happened while scoring: how many samples fell back and one example of why.

    num_failed: the reward function raised; num_nonfinite: it returned NaN/inf or a non-number.
    example_error: e.g. ``"ZeroDivisionError: division by zero (sample 3)"``, None when all went well.
    """
    num_samples: int
    num_failed: int = 0
    num_nonfinite: int = 0
    example_error: str | None = None
    fallback: float = 0.0
    token_rewards: tuple = ()   # per sample: its per-token rewards [|y|] or None; empty when none were given

    @property
    def num_fallback(self) -> int:
        return self.num_failed + self.num_nonfinite

    @property
    def ok(self) -> bool:
        return self.num_fallback == 0

    def metrics(self) -> dict[str, float]:
        """For logging: ``reward/failed``, ``reward/nonfinite`` (counts) and ``reward/fallback_frac``."""
        return {"reward/failed": float(self.num_failed), "reward/nonfinite": float(self.num_nonfinite),
                "reward/fallback_frac": self.num_fallback / max(self.num_samples, 1)}

    def __str__(self) -> str:
        if self.ok:
            return f"rewards: {self.num_samples} scored"
        return (f"rewards: {self.num_fallback} of {self.num_samples} got the fallback {self.fallback} "
                f"({self.num_failed} raised, {self.num_nonfinite} not finite); e.g. {self.example_error}")


def _expand(values: Sequence | None, n: int, name: str) -> list:
    """``values`` for n rows: as is when of length n; each repeated n/len times (prompt-major) when
    its length divides n; None → [None] * n."""
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) == n:
        return values
    if values and n % len(values) == 0:
        k = n // len(values)
        return [v for v in values for _ in range(k)]
    raise ValueError(f"{len(values)} {name} do not match {n} completions (need as many, or a divisor: one per prompt)")


def _as_float(value: Any) -> float | None:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _as_tokens(value: Any) -> Tensor | None:
    """A reward function's per-token rewards (a list, tuple or tensor of dim ≥ 1), flat float32; else None."""
    if isinstance(value, (list, tuple)) or (isinstance(value, Tensor) and value.dim() >= 1):
        try:
            return torch.as_tensor(value, dtype=torch.float32).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


def score_rollouts(reward_fn: Callable, prompts: Sequence[Any], completions: Sequence[str],
                   answers: Sequence | None = None, fallback: float = 0.0,
                   metas: Sequence[dict] | None = None) -> tuple[Tensor, RewardReport]:
    """Rewards [N] float32 for N completions, and a ``RewardReport``.

    ``prompts``, ``answers`` and ``metas`` have one entry per completion, or one per prompt (then each
    is repeated for the prompt's ``N / P`` consecutive samples, the ``Rollouts`` layout). A reward
    function with a batched ``score(prompts, completions, answers)`` (``RewardModel``, ``Ensemble``)
    is called once; otherwise ``reward_fn(prompt, completion, answer, **meta)`` per sample. A sample
    whose reward raises or is not a finite number gets ``fallback``; the run goes on, and the report
    counts these and keeps the first error message. A per-sample reward function may return one reward
    per completion token (process rewards, a list or tensor of length |y|): the sample's reward is their
    sum and the report's ``token_rewards`` keeps them (the rollout producer checks their length).
    """
    n = len(completions)
    prompts, answers, metas = _expand(prompts, n, "prompts"), _expand(answers, n, "answers"), _expand(metas, n, "metas")
    values: list[Any] = [None] * n
    errors: dict[int, str] = {}
    done = False
    if hasattr(reward_fn, "score"):
        try:
            batch = reward_fn.score(prompts, completions, answers)
            values = [v for v in torch.as_tensor(batch, dtype=torch.float32).reshape(-1).tolist()]
            if len(values) != n:
                raise ValueError(f"{type(reward_fn).__name__}.score returned {len(values)} rewards for {n} completions")
            done = True
        except Exception as e:  # fall back to one call per sample, so each failure is counted
            log.warning("batched reward scoring failed (%s: %s); scoring one by one", type(e).__name__, e)
            values = [None] * n
    if not done:
        for i in range(n):
            try:
                values[i] = reward_fn(prompts[i], completions[i], answers[i], **(metas[i] or {}))
            except Exception as e:
                errors[i] = f"{type(e).__name__}: {e}"

    rewards = torch.full((n,), float(fallback), dtype=torch.float32)
    nonfinite, example, tokens = 0, None, [None] * n
    for i in range(n):
        if i in errors:
            example = example or f"{errors[i]} (sample {i})"
            continue
        tokens[i] = _as_tokens(values[i])
        if tokens[i] is not None and not bool(torch.isfinite(tokens[i]).all()):
            tokens[i] = None   # not finite: the sample falls back like a scalar reward would
        v = float(tokens[i].sum()) if tokens[i] is not None else _as_float(values[i])
        if v is None or not math.isfinite(v):
            nonfinite += 1
            example = example or f"non-finite reward {values[i]!r} (sample {i})"
            continue
        rewards[i] = v
    report = RewardReport(num_samples=n, num_failed=len(errors), num_nonfinite=nonfinite,
                          example_error=example, fallback=float(fallback),
                          token_rewards=tuple(tokens) if any(t is not None for t in tokens) else ())
    if not report.ok:
        log.warning("%s", report)
    return rewards, report


def best_of_n(rewards: Tensor | Sequence[float], num_generations: int | None = None) -> Tensor:
    """Index (0..n-1) of the highest-reward sample of each prompt: [P] long.

    ``rewards`` is [P, n], or flat [P * n] in the ``Rollouts`` layout with ``num_generations = n``.
    Ties go to the first sample; NaN counts as the lowest reward.
    """
    r = torch.as_tensor(rewards, dtype=torch.float32)
    if r.dim() == 1:
        if num_generations is None or num_generations < 1 or r.numel() % num_generations:
            raise ValueError(f"flat rewards of length {r.numel()} need num_generations dividing it, got {num_generations}")
        r = r.view(-1, num_generations)
    elif r.dim() != 2:
        raise ValueError(f"rewards must be [P, n] or flat [P * n], got shape {tuple(r.shape)}")
    return torch.nan_to_num(r, nan=-math.inf).argmax(dim=1)


__all__ = ["RewardReport", "best_of_n", "score_rollouts"]
