"""The run's other learned state: found wherever it sits, saved and restored with the checkpoint."""
from dataclasses import dataclass, field

import pytest
import torch

from unigrad.objectives import Sum, Term
from unigrad.state import join, split, stateful


class Mean:
    def __init__(self, name="running-mean"):
        self.state_name, self.total, self.count = name, torch.zeros(3), 0

    def checkpoint_state(self):
        return {"total": self.total, "count": self.count}

    def restore_state(self, state):
        self.total, self.count = state["total"].clone(), state["count"]


@dataclass(frozen=True)
class Part:
    keeps: object
    requires: frozenset = frozenset()

    def loss(self, batch):
        raise NotImplementedError


@dataclass
class Producer:
    inner: list = field(default_factory=list)


def test_found_inside_objectives_producers_and_containers():
    a, b = Mean("a"), Mean("b")
    objective = Sum((Term(1.0, Part(a), "x"), Term(0.5, Part({"deep": (b,)}), "y")))
    found = stateful(objective, Producer([a]), None)
    assert found == {"a": a, "b": b}


def test_two_parts_under_one_name_is_an_error():
    with pytest.raises(ValueError, match="state_name"):
        stateful(Part(Mean("same")), Part(Mean("same")))


def test_a_name_with_a_slash_is_refused():
    with pytest.raises(ValueError, match="without '/'"):
        stateful(Part(Mean("f-dpg/baseline")))


def test_split_and_join_round_trip():
    m = Mean()
    m.total, m.count = torch.tensor([1.0, 2.0, 3.0]), 7
    tensors, values = split({"running-mean": m})
    assert set(tensors) == {"running-mean/total"} and values == {"running-mean": {"count": 7}}
    other = Mean()
    other.restore_state(join(tensors, values)["running-mean"])
    assert other.count == 7 and torch.equal(other.total, m.total)


def test_a_checkpoint_without_a_parts_state_stops_the_resume_instead_of_starting_over(tmp_path):
    """Falling back to older checkpoints (or to step 0) would silently lose the run: it is an error."""
    import json

    from unigrad.checkpoint import MissingState, load_latest
    folder = tmp_path / "step-000002"
    folder.mkdir()
    (folder / "state.json").write_text(json.dumps({"step": 2, "rng": {}, "config": {}, "data": None}))
    with pytest.raises(MissingState, match="holds no state for running-mean"):
        load_latest(tmp_path, None, None, None, states={"running-mean": Mean()})
