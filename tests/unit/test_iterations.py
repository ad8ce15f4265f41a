"""DNO's iterations (``experience.iterations``): win rates from pairwise preferences, the margin rule,
and the producer — pairs from the policy's samples against the reference of the iteration's start,
carried-over shares, and the saved iteration read back exactly by a run resumed inside it, but made
again at an iteration's start when the weights are not the ones it was made from."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from unigrad.config import IterationsConfig, RolloutConfig
from unigrad.data.prompts import PromptExample
from unigrad.experience.iterations import IterationPairs, margin_pairs, win_rates
from unigrad.models import tiny_random_model, tiny_tokenizer
from unigrad.reference import snapshot_logprobs
from unigrad.rollout.hf import HFSampler


def longer(prompts, a, b, answers=None):
    """P(a ≻ b): the longer text wins, ½ on a tie."""
    return torch.tensor([1.0 if len(x) > len(y) else 0.0 if len(x) < len(y) else 0.5 for x, y in zip(a, b)])


def test_win_rates_are_the_mean_preference_against_the_other_candidates():
    scores = win_rates(longer, ["p", "q"], [["aaa", "a", "aa"], ["b", "b", "bbbb"]], [None, None])
    torch.testing.assert_close(scores, torch.tensor([[1.0, 0.0, 0.5], [0.25, 0.25, 1.0]], dtype=torch.float64))


def test_margin_rule_pairs_each_positive_with_every_negative_far_enough_below():
    scores = torch.tensor([1.0, 0.0, 0.5, 0.9])
    assert margin_pairs(scores, 0.5, None) == [(0, 1), (0, 2)]                 # positives: the best only
    assert margin_pairs(scores, 0.5, 0.9) == [(0, 1), (0, 2), (3, 1)]          # positives ≥ 0.9
    assert margin_pairs(torch.tensor([0.5, 0.5]), 0.0, None) == []             # ties never pair


def _producer(folder: Path, model, **settings) -> IterationPairs:
    tok = tiny_tokenizer()
    examples = [PromptExample([("user", f"q{i}")], str(i), None, SimpleNamespace(where=f"x:{i}"),
                              prompt_ids=tuple(tok.encode(f"question {i}:"))) for i in range(6)]
    config = IterationsConfig(**{"steps": 3, "prompts": 4, "samples": 3, "margin": 0.4, **settings})
    return IterationPairs(examples, HFSampler(model, tok), longer,
                          lambda seqs: snapshot_logprobs(model, seqs, tok.pad_token_id, 4),
                          RolloutConfig(max_new_tokens=6), config, tok, 4, model, folder, seed=3)


def test_pairs_come_with_the_iterations_reference_and_are_read_back_by_a_resumed_run(tmp_path):
    model = tiny_random_model(seed=5)
    producer = _producer(tmp_path, model)
    first = producer(0)
    assert len(first.sequences) == 8 and [s.sign for s in first.sequences[:2]] == [1.0, -1.0]
    chosen, rejected = first.sequences[0], first.sequences[1]
    assert len(chosen.completion_ids) >= len(rejected.completion_ids)     # the longer one wins
    expected = snapshot_logprobs(model, first.sequences, 0, 8)
    torch.testing.assert_close(first.fields["logp_ref"][:, :expected.shape[1]], expected)
    before = {step: producer(step) for step in range(3)}
    with torch.no_grad():                     # training moved the weights: a run resumed at step 1
        for p in model.parameters():
            p.add_(0.01)
    resumed = _producer(tmp_path, model)
    again = resumed(1)
    assert [s.completion_ids for s in again.sequences] == [s.completion_ids for s in before[1].sequences]
    torch.testing.assert_close(again.fields["logp_ref"], before[1].fields["logp_ref"])     # π_0's, not today's
    fresh = _producer(tmp_path, model)        # a new run at an iteration's start, other weights: made again
    remade = fresh.iteration(0, at_start=True)
    assert not torch.equal(remade.ref_chosen[:, :2], resumed.iteration(0).ref_chosen[:, :2])


def test_iteration_t_carries_a_share_of_earlier_iterations_new_pairs(tmp_path):
    model = tiny_random_model(seed=5)
    producer = _producer(tmp_path, model, carry=(0.5,))
    zero, one = producer.iteration(0, True), producer.iteration(1, True)
    assert one.new + int(0.5 * zero.new) == len(one.chosen)
    carried = {(c.completion_ids, r.completion_ids) for c, r in zip(one.chosen[one.new:], one.rejected[one.new:])}
    assert carried <= {(c.completion_ids, r.completion_ids) for c, r in zip(zero.chosen, zero.rejected)}
    assert producer(3).metrics["iteration"] == 1.0


def test_an_iteration_without_any_pair_is_refused_with_the_reason(tmp_path):
    producer = _producer(tmp_path, tiny_random_model(seed=5), margin=2.0)
    with pytest.raises(RuntimeError, match="margin"):
        producer(0)
