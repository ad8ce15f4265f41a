"""Policy samples in place of a dataset's completions: on-policy distillation (GKD)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from unigrad.experience.base import Experience
from unigrad.tokens import Sequence


@dataclass
class OnPolicySamples:
    """A fraction λ of the steps of ``source`` answered by the current policy instead of the data
    (Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from Self-Generated
    Mistakes", GKD's λ): each step draws u ~ U(0, 1) seeded by (seed, step), so a resumed run makes the
    same choices, and for u < λ each prompt gets one sample. Reference log-probs precomputed for the
    dataset no longer apply to those steps (``reference_keys`` is None)."""
    source: object                   # an ExperienceProducer over a dataset
    sampler: object
    rollout: object                  # RolloutConfig: how to sample
    fraction: float
    seed: int = 0

    @property
    def provides(self) -> frozenset[str]:
        return self.source.provides

    @property
    def epochs(self) -> int:
        return self.source.epochs

    def __call__(self, step: int) -> Experience:
        experience = self.source(step)
        seed = self.seed * 1_000_003 + step
        if float(torch.rand(1, generator=torch.Generator().manual_seed(seed))) >= self.fraction:
            return experience
        return with_policy_completions(experience, self.sampler, self.rollout, seed)

    def after_update(self) -> None:
        self.source.after_update()


def with_policy_completions(experience: Experience, sampler, rollout, seed: int) -> Experience:
    """The same prompts answered by the current policy (one sample each) instead of the dataset."""
    prompts = [list(s.prompt_ids) for s in experience.sequences]
    rollouts = sampler.sample(prompts, 1, rollout.max_new_tokens, temperature=rollout.temperature,
                              top_p=rollout.top_p, top_k=rollout.top_k, seed=seed)
    sequences = [Sequence(old.prompt_ids, new.completion_ids, group=old.group, sign=old.sign, meta=new.meta)
                 for old, new in zip(experience.sequences, rollouts.sequences())]
    return Experience(sequences, experience.units, experience.fields, None, {**experience.metrics, "on_policy": 1.0})
