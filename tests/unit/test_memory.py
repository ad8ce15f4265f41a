"""TRICE's producer: the memory update, the rows it emits, and the memory's checkpoint state."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from unigrad.config import ConfigError, RolloutConfig
from unigrad.experience.memory import MemorySource, RationaleMemory
from unigrad.experience.rollouts import RolloutSource
from unigrad.rollout.base import Rollouts
from unigrad.state import stateful


class Scripted:
    """A sampler whose completion for prompt (p,) is (p, 100 + p) and whose entropy is 0.5 per token."""

    def sample(self, prompts, num_generations, max_new_tokens, **kw):
        ids = [(p[0], 100 + p[0]) for p in prompts]
        B = len(ids)
        z = torch.zeros(B, 2)
        return Rollouts([tuple(p) for p in prompts], ids, z, z, z, torch.ones(B, 2), torch.arange(B),
                        torch.ones(B, dtype=torch.bool), 1, entropy=torch.full((B, 2), 0.5))

    def update_weights(self, model):
        pass


class Tok:
    def decode(self, ids, skip_special_tokens=True):
        return str(ids[0])


def _source(memory: RationaleMemory, correct: set[int], n_examples: int = 4, **rollout) -> MemorySource:
    examples = [SimpleNamespace(prompt_ids=(n,), prompt_text=str(n), answer=None, extra={}) for n in range(n_examples)]
    return MemorySource(RolloutSource(examples, Scripted(), lambda prompt, completion, answer: float(int(completion) in correct),
                                      RolloutConfig(**{"num_generations": 1, **rollout}), 0.0, Tok(), n_examples), memory)


def test_one_step_updates_the_memory_and_emits_memory_and_proposal_rows():
    memory = RationaleMemory(4, {1: (7, 7, 7), 2: (8,)})
    source = _source(memory, correct={0, 2})
    made = source(0)
    assert memory.rationales == [(0, 100), (7, 7, 7), (2, 102), None]     # accepted: z ← z̃; others kept
    rows = {s.group: [] for s in made.sequences}
    for r, s in enumerate(made.sequences):
        rows[s.group].append((s.completion_ids, bool(made.fields["memory"][r]), bool(made.fields["proposal"][r])))
    assert rows[0] == [((0, 100), True, True)]                               # accepted: one row, both flags
    assert rows[1] == [((7, 7, 7), True, False), ((1, 101), False, True)]    # rejected: memory and proposal
    assert rows[2] == [((2, 102), True, True)]
    assert rows[3] == [((3, 103), False, True)]                              # no memory yet: the proposal only
    assert sorted(len(u) for u in made.units) == [1, 1, 1, 2]
    assert made.metrics["rollout_accuracy"] == 0.5 and made.metrics["memory/filled"] == 0.75
    assert made.metrics["entropy"] == pytest.approx(0.5)


def test_the_memory_is_found_as_run_state_and_round_trips():
    memory = RationaleMemory(3, {0: (5, 6, 7), 2: (9,)})
    assert stateful(_source(memory, set(), 3)) == {"trice_memory": memory}
    saved = memory.checkpoint_state()
    assert saved["tokens"].dtype == torch.long and saved["lengths"].tolist() == [3, 0, 1]
    other = RationaleMemory(3)
    other.restore_state(saved)
    assert other.rationales == [(5, 6, 7), None, (9,)]
    with pytest.raises(ValueError, match="training data changed"):
        RationaleMemory(4).restore_state(saved)


def test_one_proposal_per_example():
    with pytest.raises(ConfigError, match="rollout.num_generations"):
        _source(RationaleMemory(4), set(), num_generations=4)
