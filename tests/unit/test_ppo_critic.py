"""PPO's critic: what a run refuses (ConfigError naming the key and the reason), the critic's state
round trip, its value read-out, and process rewards (one reward per completion token)."""
from __future__ import annotations

import pytest
import torch

from unigrad.config import ConfigError, CriticConfig, load_config
from unigrad.critic import Critic, critic_fields, token_values
from unigrad.data.packing import collate
from unigrad.experience.rollouts import token_reward_rows
from unigrad.methods import method
from unigrad.models import tiny_random_model, value_model
from unigrad.parallel.processes import Processes
from unigrad.parallel.replicated import Replicated
from unigrad.rewards import score_rollouts
from unigrad.tokens import Sequence

BASE = """
model: tiny-random
method: {name: ppo}
data: {format: prompts, task: {name: arithmetic, train_size: 8, eval_size: 0}}
train: {steps: 2, batch_size: 2}
"""
LAYOUT = Replicated(Processes())


def fields_of(extra: str = "", layout=LAYOUT):
    config = load_config(None, text=BASE + extra)
    return critic_fields(method(**config.method), config, layout)


def test_ppo_gets_values_from_a_default_critic():
    assert fields_of() == {"values"}
    assert fields_of("critic: {lr: 3.0e-6, schedule: cosine}\n") == {"values"}


@pytest.mark.parametrize("extra, message", [
    ("critic: {shared: true}\n", "critic.shared: a value head on the policy's trunk is not implemented"),
    ("critic: {}\nmethod: {name: grpo}\n", "critic: grpo reads no values"),
])
def test_refused_critics(extra, message):
    text = BASE.replace("method: {name: ppo}\n", "") if "method:" in extra else BASE
    config = load_config(None, text=text + extra)
    with pytest.raises(ConfigError, match=message):
        critic_fields(method(**config.method), config, LAYOUT)


def test_a_sharded_layout_or_offline_data_is_refused():
    with pytest.raises(ConfigError, match="sharding it with the policy"):
        fields_of(layout=object())
    config = load_config(None, text=BASE.replace("format: prompts, task: {name: arithmetic, train_size: 8, eval_size: 0}",
                                                 "format: pairs, train: x.jsonl"))
    with pytest.raises(ConfigError, match="set data.format: prompts"):
        critic_fields(method(**config.method), config, LAYOUT)


@pytest.mark.parametrize("extra, message", [("critic: {lr: -1}\n", "critic.lr"),
                                            ("critic: {max_grad_norm: 0}\n", "critic.max_grad_norm"),
                                            ("critic: {min_lr_ratio: 2}\n", "critic.min_lr_ratio"),
                                            ("critic: {learning_rate: 1}\n", "critic.learning_rate: unknown key")])
def test_critic_config_errors_name_the_key(extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, text=BASE + extra)


@pytest.fixture(scope="module")
def lm():
    return tiny_random_model(hidden=16, layers=1, heads=2)


def _critic(lm, seed: int = 0) -> Critic:
    model = value_model(lm, seed=seed)
    return Critic(model, LAYOUT, CriticConfig(lr=1e-2), 10, 0, False, 4)


def test_values_sit_at_the_positions_that_predict_each_token_and_the_state_round_trips(lm):
    critic = _critic(lm)
    seqs = [Sequence((5, 6, 7), (8, 9)), Sequence((5, 6), (10, 11, 12))]
    values = critic.values(seqs)
    assert values.shape == (2, 3) and values[0, 2] == 0 and values[1].ne(0).all()
    # V_t depends only on the prefix: a completion's first value does not see its tokens
    alone = token_values(critic.model, collate([Sequence((5, 6, 7), (8, 1, 1))], 0))
    torch.testing.assert_close(alone[0, :1], values[0, :1])
    loss = critic.engine(token_values, collate(seqs, 0)).pow(2).sum()
    critic.backward(loss)
    critic.update(0, skip=False)
    saved = {key: value.clone() if isinstance(value, torch.Tensor) else value
             for key, value in critic.checkpoint_state().items()}
    other = _critic(lm, seed=1)   # another head
    other.restore_state(saved)
    for (name, p), q in zip(critic.model.named_parameters(), other.model.parameters()):
        assert torch.equal(p, q), name
    assert other.optimizer.state_dict()["state"][0]["exp_avg"].equal(critic.optimizer.state_dict()["state"][0]["exp_avg"])


def test_process_rewards_are_summed_kept_and_checked_against_the_length():
    def per_token(prompt, completion, answer):
        return [0.5] * len(completion) if completion != "bad" else float("nan")
    rewards, report = score_rollouts(per_token, ["p"] * 3, ["ab", "abc", "bad"])
    assert rewards.tolist() == [1.0, 1.5, 0.0] and report.num_nonfinite == 1
    assert [None if t is None else t.tolist() for t in report.token_rewards] == [[0.5, 0.5], [0.5, 0.5, 0.5], None]
    seqs = [Sequence((1,), (2, 3)), Sequence((1,), (2, 3, 4)), Sequence((1,), (5,))]
    rows = token_reward_rows(list(report.token_rewards), seqs, rewards.tolist(), 3)
    assert rows.tolist() == [[0.5, 0.5, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="2 per-token rewards for a completion of 3 tokens"):
        token_reward_rows([torch.ones(2)], seqs[1:2], [2.0], 3)
    _, plain = score_rollouts(lambda p, c, a: 1.0, ["p"], ["x"])
    assert plain.token_rewards == ()
