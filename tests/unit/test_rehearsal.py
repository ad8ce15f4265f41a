"""DPH-RL's rehearsal set (unigrad.experience.rehearsal): the D_exp / D_pef split, the seeded share of
stored samples per step, the step's rows, and the files a resumed run reads back."""
from types import SimpleNamespace

import pytest
import torch

from unigrad.experience.base import Experience
from unigrad.experience.rehearsal import Rehearsal, RehearsalSet, rows_of_step, split
from unigrad.tokens import Sequence


def test_split_keeps_only_the_prompts_solved_in_every_sample():
    correct = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    assert split(correct) == ([1, 2], [0, 3])
    assert split(torch.ones(2, 4, dtype=torch.bool)) == ([], [0, 1])


@pytest.mark.parametrize("n, per_step", [(7, 3), (6, 6), (5, 8), (1, 2)])
def test_rows_of_step_visit_every_sample_once_a_lap_and_repeat_by_seed(n, per_step):
    m = min(per_step, n)
    steps = [rows_of_step(n, per_step, step, seed=3) for step in range(3 * n)]
    assert all(len(rows) == m for rows in steps)
    flat = [i for rows in steps for i in rows]
    for lap in range(len(flat) // n):
        assert sorted(flat[lap * n:(lap + 1) * n]) == list(range(n))
    assert steps == [rows_of_step(n, per_step, step, seed=3) for step in range(3 * n)]
    assert any(rows_of_step(n, per_step, s, seed=4) != steps[s] for s in range(3 * n)) or n == 1
    assert rows_of_step(0, per_step, 5, seed=3) == []


def _set() -> RehearsalSet:
    samples = [Sequence((1, 2, 3), (4, 5)), Sequence((1, 2, 3), (6,)), Sequence((7, 8), (9, 10, 11))]
    logp = torch.tensor([[-0.5, -1.0, 0.0], [-0.25, 0.0, 0.0], [-2.0, -0.1, -0.3]])
    return RehearsalSet(exp=[0, 2], pef=[1, 3], samples=samples, prompt_of=[0, 0, 1], logp=logp,
                        metrics={"rehearsal_prompts": 2.0})


def _producer(folder, policy, samples=3, prompts=4) -> Rehearsal:
    source = SimpleNamespace(examples=list(range(prompts)), seed=0)
    return Rehearsal(source, samples, 2, policy, folder)


def test_rehearsal_set_is_read_back_as_written(tmp_path):
    policy = torch.nn.Linear(2, 2)
    producer = _producer(tmp_path, policy)
    producer._save(_set())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rehearsal.json", "rehearsal.safetensors"]   # no .tmp left
    back = producer._load(at_start=True)
    assert (back.exp, back.pef, back.prompt_of, back.metrics) == ([0, 2], [1, 3], [0, 0, 1], {"rehearsal_prompts": 2.0})
    assert [(s.prompt_ids, s.completion_ids) for s in back.samples] == [(s.prompt_ids, s.completion_ids) for s in _set().samples]
    torch.testing.assert_close(back.logp, _set().logp, rtol=0, atol=0)


def test_saved_set_of_other_weights_is_made_again_at_step_0_but_read_on_resume(tmp_path):
    policy = torch.nn.Linear(2, 2)
    _producer(tmp_path, policy)._save(_set())
    with torch.no_grad():
        policy.weight.add_(0.1)                           # trained: no longer the weights the set came from
    assert _producer(tmp_path, policy)._load(at_start=True) is None
    assert _producer(tmp_path, policy).rehearsal(at_start=False).pef == [1, 3]
    assert _producer(tmp_path, policy, samples=4)._load(at_start=False) is None      # another k
    assert _producer(tmp_path, policy, prompts=5)._load(at_start=False) is None      # other prompts


def test_resume_without_the_files_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="cannot sample it again"):
        _producer(tmp_path, torch.nn.Linear(2, 2)).rehearsal(at_start=False)


def test_stored_rows_join_the_rollouts_marked_with_their_log_probs():
    rollouts = [Sequence((1,), (2, 3, 4), group=0), Sequence((1,), (5,), group=0)]
    experience = Experience(rollouts, [[0, 1]], {"reward": torch.tensor([1.0, 0.0]),
                                                 "logp_old": torch.tensor([[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0]]),
                                                 "is_demo": torch.tensor([False, False])}, None, {"reward_mean": 0.5})
    data = _set()
    out = Rehearsal._with_rehearsal(experience, data, [2, 0], offset=2)
    assert len(out.sequences) == 4 and out.units == [[0, 1], [2], [3]]
    assert [s.group for s in out.sequences] == [0, 0, 3, 2]                # after the D_exp prompts' groups
    assert out.fields["is_rehearsal"].tolist() == [False, False, True, True]
    assert out.fields["reward"].tolist() == [1.0, 0.0, 1.0, 1.0]
    torch.testing.assert_close(out.fields["logp_rehearsal"], torch.tensor(
        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-2.0, -0.1, -0.3], [-0.5, -1.0, 0.0]]))
    torch.testing.assert_close(out.fields["logp_old"][2:], out.fields["logp_rehearsal"][2:])    # sampled by π_ref
    assert out.metrics["rehearsal_rows"] == 2.0 and out.metrics["reward_mean"] == 0.5
    batch = out.step_batch("cpu")
    assert batch.extra["is_rehearsal"].tolist() == [False, False, True, True]


def test_rehearsal_needs_rollouts_and_is_off_for_methods_that_do_not_read_it():
    import unigrad as ug
    from unigrad.config import ConfigError
    from unigrad.experience.rehearsal import FIELDS, around, fields_for
    with pytest.raises(ConfigError, match="data.format: prompts"):
        fields_for(ug.method("dph-rl"), online=False)
    assert fields_for(ug.method("dph-rl"), online=True) == FIELDS
    assert fields_for(ug.method("dapo"), online=False) == frozenset()
    source = object()
    assert around(source, ug.method("dapo"), None, None, None, True) is source
