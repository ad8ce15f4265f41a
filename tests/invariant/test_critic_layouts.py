"""PPO's critic sharded with the policy (FSDP2, DeepSpeed ZeRO-3) on two processes: a one-process run's
checkpoint resumed under each layout ends at the one-process run's weights — policy weights and the
critic's weights and optimiser state in the next checkpoint, written by the sharded run; and the value
head on the policy's trunk under ZeRO-3 equals one process. Greedy rollouts, so the split of the prompts
over processes does not change them."""
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from test_two_processes import ROOT, _final, _max_gap, _train

PPO = [str(ROOT / "configs" / "tiny-ppo.yaml"), "train.steps=3", "train.batch_size=4", "rollout.temperature=0",
       "data.task.eval_size=0", "train.eval_every=0", "train.save_every=1", "train.keep_checkpoints=5"]


def _critic(run: Path, step: int) -> dict:
    """The critic's tensors (weights and optimiser state) in checkpoint ``step`` of ``run``."""
    saved = load_file(str(run / "checkpoints" / f"step-{step:06d}" / "states.safetensors"))
    return {key: value for key, value in saved.items() if key.startswith("critic/")}


def _resumed_from_step_one(tmp_path: Path, written: Path, *layout: str) -> Path:
    """Run ``written`` as if killed after its step-1 checkpoint, resumed to the end with ``layout`` (two
    processes when it names one)."""
    resumed = tmp_path / "resumed"
    shutil.copytree(written, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step-000002")
    result = _train([*PPO, *layout], resumed, "--resume", *(["--nproc", "2"] if layout else []))
    assert "resumed from" in result.stderr + result.stdout
    return resumed


def _same_run(a: Path, b: Path) -> None:
    assert _max_gap(_final(a), _final(b)) < 1e-5
    critic = _critic(a, 2)
    assert any(key.startswith("critic/weights/") for key in critic)
    assert any(key.startswith("critic/optimizer/") for key in critic)
    assert _max_gap(critic, _critic(b, 2)) < 1e-5
    trained = {key: value for key, value in _critic(a, 1).items() if key in critic}
    assert _max_gap(critic, trained) > 1e-4          # the critic moved in step 2: the comparison means something


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The tiny PPO run in one process, checkpointed after every step."""
    folder = tmp_path_factory.mktemp("ppo") / "one"
    _train(PPO, folder)
    return folder


def test_a_replicated_critic_checkpoint_resumes_under_fsdp(tmp_path, one_process):
    """One process writes the checkpoint; FSDP on two processes loads the full critic into its shards,
    trains it and gathers it back into the step-2 checkpoint."""
    _same_run(one_process, _resumed_from_step_one(tmp_path, one_process, "train.fsdp=true"))


def test_a_replicated_critic_checkpoint_resumes_under_zero3(tmp_path, one_process):
    """One process writes the checkpoint; ZeRO-3 on two processes (the critic's parameters sharded too, in its
    own DeepSpeed engine) loads the full critic into its shards and optimiser, trains it and gathers it back
    into the step-2 checkpoint."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is installed by setup.sh; this environment lacks it")
    _same_run(one_process, _resumed_from_step_one(tmp_path, one_process, "train.deepspeed=3"))


def _grad_norms(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row["critic_grad_norm"] for row in rows if "objective" in row]


def test_a_shared_value_head_under_zero3_equals_one_process(tmp_path):
    """The value head on the policy's trunk (``critic.shared``), the trunk sharded by ZeRO-3: the same policy,
    head and head gradient norms as one process (the norm checks that DeepSpeed's ×P loss scaling is taken
    off the head's gradient, which Adam's update alone would hide)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is installed by setup.sh; this environment lacks it")
    shared = [*PPO, "critic.shared=true"]
    _train(shared, tmp_path / "one")
    _train([*shared, "train.deepspeed=3"], tmp_path / "zero3", "--nproc", "2")
    assert _max_gap(_final(tmp_path / "one"), _final(tmp_path / "zero3")) < 1e-5
    assert _max_gap(_critic(tmp_path / "one", 2), _critic(tmp_path / "zero3", 2)) < 1e-5
    one, zero3 = _grad_norms(tmp_path / "one"), _grad_norms(tmp_path / "zero3")
    assert len(one) == len(zero3) == 3
    assert all(abs(a - b) <= 1e-5 * a for a, b in zip(one, zero3))
