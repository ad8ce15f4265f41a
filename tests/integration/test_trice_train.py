"""TRICE through the one loop on the tiny model: the rationale memory moves, is checkpointed, and a run
that crashes after a checkpoint (in a later step, once that step has already changed the memory) resumes
to the uninterrupted run's memory and weights."""
from pathlib import Path

import pytest

from safetensors.torch import load_file

from unigrad.checkpoint import read_states
from unigrad.config import load_config
from unigrad.experience.memory import MemorySource
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "tiny-trice.yaml")
QUIET = ["train.eval_every=0", "data.task.eval_size=0", "train.tensorboard=false", "train.steps=5", "rollout.max_new_tokens=8",
         "train.save_every=1", "train.keep_checkpoints=5",
         f"reward.function={ROOT / 'tests' / 'integration' / 'trice_reward.py'}:coin"]


class Crash(BaseException):
    """The process dies in the middle of a step (nothing after it runs)."""


def _weights(folder: Path) -> dict:
    return {k: v for shard in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(shard)).items()}


def _memory(folder: Path) -> list:
    state = read_states(folder)["trice_memory"]
    return [state["tokens"][n, :k].tolist() for n, k in enumerate(state["lengths"].tolist())]


def test_trice_memory_survives_a_crash_after_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr("unigrad.report.write_report", lambda run_dir: run_dir)   # not under test here: its plots
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    train(load_config(CONFIG, [*QUIET, f"output_dir={straight}"]), progress=False)

    original = MemorySource.__call__

    def crash_in_step_3(self, step):
        made = original(self, step)          # step 3's proposals are in the memory, then the process dies
        if step == 3:
            raise Crash()
        return made
    monkeypatch.setattr(MemorySource, "__call__", crash_in_step_3)
    with pytest.raises(Crash):
        train(load_config(CONFIG, [*QUIET, f"output_dir={broken}"]), progress=False)
    monkeypatch.setattr(MemorySource, "__call__", original)
    train(load_config(CONFIG, [*QUIET, f"output_dir={broken}"]), resume=True, progress=False)

    checkpoints = straight / "checkpoints"
    first, last = _memory(checkpoints / "step-000001"), _memory(checkpoints / "step-000004")
    assert first != last, "the memory never moved: the test could not see a lost memory"
    assert _memory(broken / "checkpoints" / "step-000004") == last
    reference, resumed = _weights(straight / "final"), _weights(broken / "final")
    assert max(float((reference[k].double() - resumed[k].double()).abs().max()) for k in reference) <= 1e-6

