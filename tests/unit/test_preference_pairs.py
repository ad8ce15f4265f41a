"""The on-policy preference producer: two samples per prompt ranked into a pair (chosen +1, rejected −1),
ties dropped or kept, or each sample with P(y ≻ y′) against an opponent's sample."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from unigrad.experience.preference_pairs import PreferencePairs, emits_for
from unigrad.models import tiny_tokenizer
from unigrad.rollout.base import Rollouts

TOKENIZER = tiny_tokenizer()
ROLLOUT = SimpleNamespace(num_generations=3, max_new_tokens=8, temperature=1.0, top_p=1.0, top_k=0, epochs=1)


class ListSampler:
    """Completion ``texts[(seed + r) % len]`` for row r; ``logp_policy`` = −(r + 1) on every token."""

    def __init__(self, texts):
        self.texts, self.calls = list(texts), []

    def sample(self, prompts, num_generations, max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, seed=None):
        self.calls.append((len(prompts), num_generations, seed))
        rows = [self.texts[(seed + r) % len(self.texts)] for r in range(len(prompts) * num_generations)]
        ids = [tuple(TOKENIZER.encode(t, add_special_tokens=False)) for t in rows]
        width = max(len(c) for c in ids)
        mask = torch.tensor([[1.0] * len(c) + [0.0] * (width - len(c)) for c in ids])
        logp = -torch.arange(1, len(ids) + 1, dtype=torch.float32)[:, None] * mask
        return Rollouts([tuple(p) for p in prompts for _ in range(num_generations)], ids, logp, logp, logp, mask,
                        torch.arange(len(prompts)).repeat_interleave(num_generations),
                        torch.ones(len(ids), dtype=torch.bool), num_generations)


def examples(n=6):
    return [SimpleNamespace(prompt_ids=(259, 10 + i), prompt_text=f"q{i}", answer=str(i), extra={}) for i in range(n)]


def by_length(prompts, a, b, answers=None):
    """Longer wins; equal lengths tie."""
    return torch.tensor([1.0 if len(x) > len(y) else 0.0 if len(x) < len(y) else 0.5 for x, y in zip(a, b)])


def test_emits_pairs_for_pair_objectives_and_preferences_for_nash():
    import unigrad as ug
    assert emits_for(ug.method("online-dpo").requires) == "pairs" == emits_for(ug.method("dpo").requires)
    assert emits_for(ug.method("nash-md").requires) == "preference"
    assert emits_for(ug.method("grpo").requires) is None and emits_for(ug.method("npo").requires) is None


@pytest.mark.parametrize("ties", ["drop", "keep"])
def test_pairs_chosen_is_the_preferred_sample_and_ties_follow_the_setting(ties):
    texts = ["aaa", "b", "cc", "dd", "e", "f", "g", "hh"]
    sampler = ListSampler(texts)
    producer = PreferencePairs(examples(), sampler, by_length, ROLLOUT, TOKENIZER, batch_size=4, ties=ties, seed=1)
    experience = producer(step=2)
    assert sampler.calls == [(4, 2, (1 * 1_000_003 + 2) * 7)]                 # two samples per prompt, seeded
    assert producer.provides == {"group", "sign", "logp_old"}
    drawn = [texts[(sampler.calls[0][2] + r) % len(texts)] for r in range(8)]
    pairs = [(drawn[2 * i], drawn[2 * i + 1]) for i in range(4)]
    untied = [i for i, (a, b) in enumerate(pairs) if len(a) != len(b)]
    tied = [i for i, (a, b) in enumerate(pairs) if len(a) == len(b)]
    assert untied and tied
    kept = untied if ties == "drop" else list(range(4))
    assert len(experience.units) == len(kept)
    for unit, i in zip(experience.units, kept):
        rows = [experience.sequences[r] for r in unit]
        assert len({s.group for s in rows}) == 1 and sorted(s.sign for s in rows) == [-1.0, 1.0]
        chosen = TOKENIZER.decode(list(next(s for s in rows if s.sign > 0).completion_ids))
        a, b = pairs[i]
        assert chosen == (max(a, b, key=len) if len(a) != len(b) else a)      # a kept tie: the sampled order
    assert experience.metrics["preference/queries"] == 4.0
    assert experience.metrics["preference/ties"] == float(len(tied))
    assert experience.metrics["preference/dropped"] == (float(len(tied)) if ties == "drop" else 0.0)
    assert experience.metrics["preference/chosen_mean"] == (1.0 if ties == "drop" else (len(untied) + 0.5 * len(tied)) / 4)
    for row, s in enumerate(experience.sequences):                           # behaviour log-probs follow their rows
        assert experience.fields["logp_old"][row, :len(s.completion_ids)].abs().min() > 0


def test_a_step_whose_pairs_all_tie_trains_a_sample_against_itself():
    producer = PreferencePairs(examples(), ListSampler(["x", "y"]), by_length, ROLLOUT, TOKENIZER, batch_size=3)
    experience = producer(step=0)
    assert experience.units == [[0, 1]] and experience.metrics["preference/ties"] == 3.0
    assert experience.metrics["preference/dropped"] == 3.0
    first, second = experience.sequences
    assert first.completion_ids == second.completion_ids and first.sign == -second.sign
    import unigrad as ug                                  # y_w = y_l: DPO's gradient is exactly zero
    leaf = torch.randn(1, 2, dtype=torch.float64).requires_grad_(True)
    batch = ug.Batch(logp=leaf.repeat_interleave(2, dim=0), mask=torch.ones(2, 2, dtype=torch.float64),
                     logp_ref=torch.randn(1, 2, dtype=torch.float64).repeat_interleave(2, dim=0),
                     group=torch.tensor([s.group for s in experience.sequences]),
                     sign=torch.tensor([s.sign for s in experience.sequences], dtype=torch.float64))
    (grad,) = torch.autograd.grad(ug.method("online-dpo").loss(batch).loss, leaf)
    assert float(grad.abs().max()) == 0.0
    keep = PreferencePairs(examples(), ListSampler(["x", "y"]), by_length, ROLLOUT, TOKENIZER, batch_size=3, ties="keep")
    kept = keep(step=0)
    assert all(kept.sequences[u[0]].completion_ids != kept.sequences[u[1]].completion_ids for u in kept.units)


def test_preference_shape_weighs_each_sample_against_an_opponent_sample():
    policy, opponent = ListSampler(["aa", "b", "ccc"]), ListSampler(["dd"])
    producer = PreferencePairs(examples(), policy, by_length, ROLLOUT, TOKENIZER, batch_size=2, emit="preference",
                               opponent=opponent)
    experience = producer(step=1)
    assert producer.provides == {"group", "preference", "logp_old"}
    assert policy.calls[0][:2] == (2, 3) and opponent.calls[0][:2] == (2, 3)
    assert [len(u) for u in experience.units] == [3, 3]
    texts = [TOKENIZER.decode(list(s.completion_ids)) for s in experience.sequences]
    expect = [1.0 if len(t) > 2 else 0.0 if len(t) < 2 else 0.5 for t in texts]
    assert experience.fields["preference"].tolist() == expect
    assert all(s.sign == 1.0 for s in experience.sequences)
    assert experience.metrics["preference/queries"] == 6.0
    self_play = PreferencePairs(examples(), policy, by_length, ROLLOUT, TOKENIZER, batch_size=2, emit="preference")
    self_play(step=1)
    assert policy.calls[-2][2] + 1 == policy.calls[-1][2]                     # y′: the policy, sampled again


def test_a_preference_out_of_range_is_refused():
    producer = PreferencePairs(examples(), ListSampler(["x", "yy"]), lambda *a, **k: torch.full((2,), 1.5),
                               ROLLOUT, TOKENIZER, batch_size=2)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        producer(step=0)
