"""The parts of reward-model training: the score head put on a causal LM, the score producer the loop
picks from the objective's requirements, and padding that does not change a sequence's score."""
import pytest
import torch

from unigrad.data.packing import collate
from unigrad.logprobs.producers import BestOtherToken, TokenLogprobs, choose_producer
from unigrad.logprobs.scores import SequenceScores, sequence_scores
from unigrad.models import is_score_model, load_model, score_model
from unigrad.objectives.reward_model import BradleyTerryLoss
from unigrad.tokens import Sequence


def _engine(model):
    return lambda fn, *args, **kw: fn(model, *args, **kw)


def test_score_head_on_the_body_of_a_causal_lm():
    lm, _ = load_model("tiny-random")
    rm = score_model(lm)
    assert is_score_model(rm) and not is_score_model(lm) and rm.config.num_labels == 1
    for name, value in lm.base_model.state_dict().items():
        assert torch.equal(rm.base_model.state_dict()[name], value)
    hidden = lm.config.hidden_size
    assert rm.score.weight.shape == (1, hidden) and float(rm.score.weight.detach().std()) < 3.0 / (hidden + 1)
    assert torch.equal(score_model(lm).score.weight, rm.score.weight)           # seeded, not the global RNG


def test_the_objective_gets_the_score_producer_and_scores_do_not_depend_on_padding():
    model, tok = load_model("tiny-random", head="score")
    candidates = [TokenLogprobs(64, tok.pad_token_id), BestOtherToken(64), SequenceScores(tok.pad_token_id)]
    producer = choose_producer(BradleyTerryLoss().requires, candidates)
    assert isinstance(producer, SequenceScores)
    assert isinstance(choose_producer(frozenset({"logp", "mask"}), candidates), TokenLogprobs)
    sequences = [Sequence((1, 2, 3), (4, 5, tok.eos_token_id), 0, 1.0), Sequence((1, 2, 3), (6, tok.eos_token_id), 0, -1.0),
                 Sequence((7,), (8, 9, 10, 11, tok.eos_token_id), 1, 1.0), Sequence((7,), (12, tok.eos_token_id), 1, -1.0)]
    tb = collate(sequences, tok.pad_token_id, packed=True)
    out = producer(_engine(model), sequences, tb)
    assert out["score"].shape == (4,) and out["score"].requires_grad
    assert torch.equal(out["logp"], torch.zeros(tb.completion_mask.shape))
    with torch.no_grad():
        alone = torch.stack([model(input_ids=torch.tensor([s.prompt_ids + s.completion_ids])).logits[0, 0]
                             for s in sequences])
    torch.testing.assert_close(out["score"].detach(), alone, atol=1e-5, rtol=0)


def test_a_causal_lm_is_not_a_score_model():
    lm, _ = load_model("tiny-random")
    with pytest.raises(ValueError, match="one output per sequence"):
        sequence_scores(lm, torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.long))


def test_a_causal_lm_folder_is_not_a_reward_function(tmp_path):
    from unigrad.models import save_model
    from unigrad.rewards import load_reward
    lm, tok = load_model("tiny-random")
    save_model(lm, tok, tmp_path / "lm")
    with pytest.raises(ValueError, match="not a reward model"):
        load_reward(str(tmp_path / "lm"))
