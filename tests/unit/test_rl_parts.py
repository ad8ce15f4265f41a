"""Unit tests of the online-RL parts: group advantages, DAPO's data helpers, row selection, the gate."""
import pytest
import torch

import unigrad as ug
from unigrad.estimator import GlobalNormalised, GroupCentred, GroupNormalised, LeaveOneOut, Reinforce
from unigrad.objectives import Gate
from unigrad.rollout.shaping import keep_informative_groups, overlong_penalty

D = torch.float64


def _batch(reward, group, T=3, **extra):
    B = len(reward)
    mask = torch.ones(B, T, dtype=D)
    return ug.Batch(logp=torch.zeros(B, T, dtype=D), mask=mask, reward=torch.tensor(reward, dtype=D),
                    group=torch.tensor(group), extra=extra)


def test_group_advantages_by_hand():
    b = _batch([1.0, 0.0, 0.0, 5.0, 5.0], [7, 7, 7, 2, 2])
    std = torch.tensor([1.0, 0.0, 0.0]).std().item()          # unbiased: sqrt(1/3)
    torch.testing.assert_close(GroupNormalised(eps=0.0)(b).weight[:3], torch.tensor([2 / 3, -1 / 3, -1 / 3], dtype=D) / std)
    assert GroupNormalised()(b).weight[3:].tolist() == [0.0, 0.0]     # all-equal group: Â = 0
    biased = torch.tensor([1.0, 0.0, 0.0]).std(unbiased=False).item()
    torch.testing.assert_close(GroupNormalised(eps=0.0, unbiased=False)(b).weight[:3], torch.tensor([2 / 3, -1 / 3, -1 / 3], dtype=D) / biased)
    torch.testing.assert_close(GroupCentred()(b).weight, torch.tensor([2 / 3, -1 / 3, -1 / 3, 0, 0], dtype=D))
    torch.testing.assert_close(LeaveOneOut()(b).weight, torch.tensor([1.0, -0.5, -0.5, 0, 0], dtype=D))
    torch.testing.assert_close(Reinforce()(b).weight, b.reward)
    torch.testing.assert_close(Reinforce(baseline=1.0)(b).weight, b.reward - 1)
    torch.testing.assert_close(Reinforce(batch_mean=True)(b).weight, b.reward - 2.2)


def test_leave_one_out_needs_two_rollouts():
    with pytest.raises(ValueError, match="at least 2"):
        LeaveOneOut()(_batch([1.0, 0.0, 1.0], [0, 0, 1]))


def test_global_normalisation_token_weighted():
    b = _batch([1.0, 0.0, 3.0], [0, 0, 1])
    b = b.replace(mask=torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=D))
    a = GlobalNormalised()(b).weight
    tokens = torch.tensor([1.0] * 3 + [0.0] + [3.0] * 2, dtype=D)
    torch.testing.assert_close(a, (b.reward - tokens.mean()) / tokens.std(unbiased=False))
    per_seq = GlobalNormalised(over="sequence")(b).weight
    torch.testing.assert_close(per_seq, (b.reward - b.reward.mean()) / b.reward.std(unbiased=False))
    centred = GlobalNormalised(group_baseline=True)(b).weight            # [0.5, -0.5, 0] then normalised
    c = torch.tensor([0.5] * 3 + [-0.5] + [0.0] * 2, dtype=D)
    torch.testing.assert_close(centred, (torch.tensor([0.5, -0.5, 0.0], dtype=D) - c.mean()) / c.std(unbiased=False))


def test_keep_informative_groups():
    reward = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.3, 0.3])
    group = torch.tensor([5, 5, 9, 9, 5, 9, 1, 1])
    # group 5: {1, 1, 0} mixed; group 9: {0, 0, 1} mixed; group 1: all 0.3 → dropped
    assert keep_informative_groups(reward, group).tolist() == [True, True, True, True, True, True, False, False]
    assert keep_informative_groups(torch.ones(4), torch.tensor([0, 0, 1, 1])).tolist() == [False] * 4


def test_overlong_penalty_values():
    lengths = torch.tensor([0, 10, 16, 17, 18, 20, 25])
    got = overlong_penalty(lengths, max_length=20, cache=4)
    assert got.tolist() == pytest.approx([0, 0, 0, -0.25, -0.5, -1.0, -1.0])
    assert overlong_penalty(torch.tensor([20480, 16384, 18432]), 20480, 4096).tolist() == pytest.approx([-1, 0, -0.5])
    assert overlong_penalty(torch.tensor([18]), 20, 4, factor=2.0).tolist() == pytest.approx([-1.0])
    with pytest.raises(ValueError):
        overlong_penalty(lengths, max_length=4, cache=5)


def test_subset_slices_every_row_field_and_counts_on_the_subset():
    b = _batch([1.0, 0.0, 2.0], [4, 4, 8], is_demo=torch.tensor([False, True, False]), note="kept")
    b = b.replace(logp_old=torch.arange(9, dtype=D).view(3, 3))
    s = b.subset(torch.tensor([True, False, True]))
    assert s.reward.tolist() == [1.0, 2.0] and s.group.tolist() == [4, 8]
    assert s.logp_old[:, 0].tolist() == [0.0, 6.0] and s.extra["is_demo"].tolist() == [False, False]
    assert s.extra["note"] == "kept"
    assert s.sequences_total == 2.0 and s.tokens_total == float(b.mask[[0, 2]].sum())
    micro = b.micro_batch(torch.tensor([1, 2]))            # rows 1, 2 of the step
    sub = micro.subset(torch.tensor([True, False, True]))  # keeps step rows 0 and 2: only row 2 is here
    assert sub.reward.tolist() == [2.0] and sub.rows.tolist() == [1] and sub.whole.reward.tolist() == [1.0, 2.0]


def test_gate_micro_batches_add_up_to_the_step():
    """Micro-batches that know their step give the gradient of the full batch: routes and their
    normalisers are decided on the whole step."""
    g = torch.Generator().manual_seed(0)
    prompts, n, T = 4, 3, 5
    group = torch.arange(prompts).repeat_interleave(n + 1)
    is_demo = torch.tensor(([False] * n + [True]) * prompts)
    reward = torch.tensor([0, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 1], dtype=D)
    B = len(group)
    mask = (torch.arange(T)[None] < torch.randint(1, T + 1, (B, 1), generator=g)).double()
    logp = (-torch.rand(B, T, generator=g, dtype=D) * mask).requires_grad_()
    old = (logp.detach() + 0.2 * torch.randn(B, T, generator=g, dtype=D)) * mask
    hpt = ug.method("hpt")
    full = ug.Batch(logp=logp, mask=mask, logp_old=old, reward=reward, group=group, extra={"is_demo": is_demo})
    g_full, = torch.autograd.grad(hpt.loss(full).loss, logp)
    halves = [torch.arange(0, B // 2), torch.arange(B // 2, B)]
    parts = [hpt.loss(full.micro_batch(h)) for h in halves]
    g_acc, = torch.autograd.grad(sum(p.loss for p in parts), logp)
    torch.testing.assert_close(g_acc, g_full, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(sum(p.objective for p in parts), hpt.loss(full).objective, rtol=1e-12, atol=1e-15)
    local = [hpt.loss(full.micro_batch(h).replace(step=None, rows=None)) for h in halves]
    g_local, = torch.autograd.grad(sum(p.loss for p in local), logp)
    assert not torch.allclose(g_local, g_full)              # each half on its own: not equal


def test_gate_requires_and_validation():
    hpt = ug.method("hpt")
    assert {"reward", "group", "is_demo", "logp_old"} <= hpt.requires
    with pytest.raises(ValueError):
        Gate(below=hpt.below)


def test_a_step_with_fewer_units_than_the_batch_size_still_trains(tmp_path):
    """DAPO's dynamic sampling may leave fewer informative prompts than batch_size: the loop splits
    whatever the step holds (3 units into grad_accum = 2 micro-batches), and the update is the one of the
    whole step, θ' = θ − lr·∇L with L the token-mean NLL of all 3 completions, computed here from logits."""
    import copy
    import dataclasses

    from unigrad.config import load_config
    from unigrad.experience import Split
    from unigrad.run import assemble
    from unigrad.tokens import Sequence
    from unigrad.train import optimise
    config = load_config(None, ["model=tiny-random", "data.train=data/sft/train.jsonl", "data.format=sft",
                                "data.eval=null", f"output_dir={tmp_path}", "train.batch_size=4", "train.grad_accum=2",
                                "train.max_grad_norm=null"], text="method: {name: sft}")
    run = assemble(config)
    run = dataclasses.replace(run, optimizer=torch.optim.SGD(run.params, lr=0.1))
    run.model.eval()                                            # no dropout: the reference is deterministic
    sequences = [Sequence((1, 2 + i), (3, 4, 5)[: 3 - i % 2], group=i) for i in range(3)]  # 3 units < batch_size 4
    reference = copy.deepcopy(run.model)
    before = {name: p.detach().clone() for name, p in run.model.named_parameters()}

    total, tokens = 0.0, 0
    for s in sequences:
        ids = torch.tensor([list(s.prompt_ids + s.completion_ids)])
        logp = torch.log_softmax(reference(input_ids=ids).logits[0].double(), -1)
        for i, y in enumerate(s.completion_ids):
            total = total - logp[len(s.prompt_ids) - 1 + i, y]
            tokens += 1
    named = [(name, p) for name, p in reference.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(total / tokens, [p for _, p in named])

    optimise(run, Split.of("train", sequences).experience([0, 1, 2]), 0)
    after = dict(run.model.named_parameters())
    moved = 0
    for (name, _), grad in zip(named, grads):
        step = (before[name] - after[name].detach()).double() / 0.1
        torch.testing.assert_close(step, grad.double(), rtol=1e-4, atol=1e-6, msg=f"update of {name}")
        moved += int(grad.abs().max() > 0)
    assert moved > 0
