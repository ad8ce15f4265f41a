"""The Bradley–Terry preference model of a reward model: P(y ≻ y′ | x) = σ(r(x, y) − r(x, y′)).

Bradley & Terry 1952, "Rank Analysis of Incomplete Block Designs"; the preference a reward model
trained by ``method: reward-model`` (Ouyang et al. 2022, §3.5) implies.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class BradleyTerry:
    """P(a ≻ b | x) = σ((r(x, a) − r(x, b)) / temperature) for each prompt x, from a reward ``score``:
    a ``RewardModel`` (or anything with ``score(prompts, completions) -> [N]``), or a reward-model
    folder (``BradleyTerry.of(folder)``). P(a ≻ b) + P(b ≻ a) = 1, P(a ≻ a) = ½."""

    reward: Any
    temperature: float = 1.0

    def __post_init__(self):
        if not hasattr(self.reward, "score") and not callable(self.reward):
            raise ValueError(f"BradleyTerry: reward must have score(prompts, completions) or be a reward function, "
                             f"got {type(self.reward).__name__}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"BradleyTerry: temperature must be > 0 (it divides the score difference), "
                             f"got {self.temperature!r}")

    @classmethod
    def of(cls, folder: str | os.PathLike, temperature: float = 1.0, **settings) -> "BradleyTerry":
        """The Bradley–Terry preference of the reward model in ``folder`` (``RewardModel`` settings)."""
        from unigrad.rewards.models import RewardModel
        return cls(RewardModel(folder, **settings), temperature)

    def _scores(self, prompts: Sequence, completions: Sequence[str]) -> Tensor:
        if hasattr(self.reward, "score"):
            return torch.as_tensor(self.reward.score(list(prompts), list(completions)), dtype=torch.float64)
        fn: Callable = self.reward
        return torch.tensor([float(fn(p, c, None)) for p, c in zip(prompts, completions)], dtype=torch.float64)

    def prefer(self, prompts: Sequence, completions_a: Sequence[str], completions_b: Sequence[str]) -> Tensor:
        """[P] float64: P(a_p ≻ b_p | x_p) for each prompt p."""
        if not len(prompts) == len(completions_a) == len(completions_b):
            raise ValueError(f"BradleyTerry: {len(prompts)} prompts, {len(completions_a)} and {len(completions_b)} "
                             f"completions; give one of each per prompt")
        scores = self._scores([*prompts, *prompts], [*completions_a, *completions_b])   # one batched pass
        a, b = scores[:len(prompts)], scores[len(prompts):]
        return torch.sigmoid((a - b) / self.temperature)

    __call__ = prefer


__all__ = ["BradleyTerry"]
