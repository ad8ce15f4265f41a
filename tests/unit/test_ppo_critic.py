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
from unigrad.parallel.zero import ZeRO
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
    assert fields_of("critic: {shared: true}\n") == {"values", "value_pred"}   # from the policy's own forward


def test_a_shared_head_joins_the_policy_loss():
    from unigrad.critic import critic_objective
    from unigrad.methods.ppo import WithValueHead
    config = load_config(None, text=BASE + "critic: {shared: true, value_coef: 0.5}\n")
    objective = critic_objective(method(**config.method), config)
    assert isinstance(objective, WithValueHead) and objective.coef == 0.5 and "value_pred" in objective.requires
    separate = load_config(None, text=BASE)
    assert critic_objective(method(**separate.method), separate) == method(**separate.method)


@pytest.mark.parametrize("extra, message", [
    ("critic: {shared: true, model: other}\n", "critic.shared: .*cannot run with critic.model \\(other\\)"),
    ("critic: {shared: true, pretrain_steps: 1}\n", "cannot run with critic.pretrain_steps"),
    ("critic: {pretrain_steps: 2}\n", "critic.pretrain_steps: 2 of train.steps 2 would never train the policy"),
    ("critic: {value_coef: 0.5}\n", "critic.value_coef: 0.5 weighs L_V in the policy's loss"),
    ("critic: {shared: true}\ntrain: {steps: 2, batch_size: 2, update_rule: extragradient}\n",
     "cannot run with train.update_rule extragradient"),
    ("critic: {}\nmethod: {name: grpo}\n", "critic: grpo reads no values"),
])
def test_refused_critics(extra, message):
    text = BASE.replace("method: {name: ppo}\n", "") if "method:" in extra else BASE
    config = load_config(None, text=text + extra)
    with pytest.raises(ConfigError, match=message):
        critic_fields(method(**config.method), config, LAYOUT)


def test_what_zero_cannot_give_the_critic_or_offline_data_is_refused():
    zero = ZeRO(Processes())
    assert fields_of(layout=zero) == {"values"}
    # a shared head is held whole with its own optimiser and clip
    assert fields_of("critic: {shared: true, max_grad_norm: 0.5, optimizer: lamb}\n", layout=zero) == {"values", "value_pred"}
    with pytest.raises(ConfigError, match="critic.max_grad_norm: 0.5 under DeepSpeed.*train.max_grad_norm"):
        fields_of("critic: {max_grad_norm: 0.5}\n", layout=zero)
    with pytest.raises(ConfigError, match="critic.optimizer: 'lamb' under DeepSpeed"):
        fields_of("critic: {optimizer: lamb}\n", layout=zero)
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


def test_a_kl_shaped_reward_gets_the_reference_with_the_rollouts(tmp_path):
    """ppo(kl_coef): π_ref of every rollout is made with the step's experience (the advantage reads the whole
    step), so no per-micro-batch reference is held; at step 0 it is the policy's own log-probs."""
    from pathlib import Path
    from unigrad.logprobs import reference_logprobs
    from unigrad.run import assemble
    config = load_config(str(Path(__file__).resolve().parents[2] / "configs" / "tiny-ppo.yaml"),
                         ["method.kl_coef=0.2", "data.task.eval_size=0", f"output_dir={tmp_path}"])
    import copy
    run = assemble(config)
    assert run.reference is None
    initial = copy.deepcopy(run.model)
    with torch.no_grad():                     # the policy moves; π_ref must stay the initial policy
        for p in run.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    run.experience.after_update()
    experience = run.experience(1)
    tb = collate(experience.sequences, run.tokenizer.pad_token_id)
    want, now = reference_logprobs(initial, tb), reference_logprobs(run.model, tb)
    got = experience.fields["logp_ref"]
    assert got.shape == want.shape and got.abs().sum() > 0
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    assert (got - now).abs().max() > 1e-2
    assert "values" in experience.fields


def test_the_held_out_value_loss_is_against_the_monte_carlo_return():
    """½ token-mean (V_t − G_t)² with G_t = Σ_{s≥t} γ^{s−t} r_s (a terminal reward: γ^{T−t} r), written out."""
    from unigrad.critic import HeldOutValues
    from unigrad.experience import Experience

    sequences = [Sequence((1, 2), (3, 4, 5)), Sequence((1,), (6,))]
    reward = torch.tensor([1.0, 0.5])
    values = torch.tensor([[0.2, 0.4, 0.9], [0.1, 0.0, 0.0]])

    def rollouts(step):
        assert step == 3
        return Experience(sequences, [[0], [1]], {"reward": reward})

    class Stub:
        def values(self, seqs):
            return values.clone()

    gamma = 0.9
    got = HeldOutValues(rollouts, Stub(), gamma)(3)
    returns = [[gamma ** 2 * 1.0, gamma * 1.0, 1.0], [0.5]]
    errors = [(float(values[i, t]) - g) ** 2 for i, row in enumerate(returns) for t, g in enumerate(row)]
    assert abs(got["value_loss"] - 0.5 * sum(errors) / len(errors)) < 1e-6
    flat_g = [g for row in returns for g in row]
    flat_v = [float(values[i, t]) for i, row in enumerate(returns) for t in range(len(row))]
    mean = lambda xs: sum(xs) / len(xs)
    var = lambda xs: sum((x - mean(xs)) ** 2 for x in xs) / (len(xs) - 1)
    assert abs(got["explained_variance"] - (1 - var([g - v for g, v in zip(flat_g, flat_v)]) / (var(flat_g) + 1e-5))) < 1e-5
    assert abs(got["return_variance"] - var(flat_g)) < 1e-6


def test_a_non_finite_value_loss_stops_a_critic_whose_engine_cannot_skip():
    """Replicated: the critic's step is skipped; DeepSpeed (no skipping): the run stops before the update."""
    import types
    from unigrad.critic import CriticUpdate
    from unigrad.gradients.base import StepSums
    from unigrad.guards import RunError
    from unigrad.objectives.value import ValueLoss

    skipped = []
    critic = types.SimpleNamespace(layout=types.SimpleNamespace(skips_updates=True),
                                   update=lambda step, skip: skipped.append(skip) or 0.0)
    rule = lambda step, gradients, apply: (StepSums(metrics={}), 1.0)
    nan = lambda estimator=None: StepSums(float("nan"), float("nan"), 3, {"value_clipfrac": 0.0})
    update = CriticUpdate(rule, critic, ValueLoss())
    update(0, nan, None)
    assert skipped == [True]
    critic.layout.skips_updates = False
    with pytest.raises(RunError, match="step 1: the critic's value loss is not finite"):
        update(0, nan, None)
    assert skipped == [True]
