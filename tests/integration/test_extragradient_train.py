"""`train.update_rule=extragradient` trains the tiny DPO run through the one loop (backprop and MeZO
gradients), logs the half step's objective, is not the plain optimiser step, resumes from a
checkpoint to the uninterrupted weights, and is refused with updates inside backward."""
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from unigrad.config import ConfigError, load_config
from unigrad.run import assemble
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["train.steps=2", "train.save_every=1", "train.eval_every=0", "data.eval=null", "train.threads=1"]
EG = "train.update_rule=extragradient"


def _run(out: Path, *extra: str, resume: bool = False) -> dict:
    train(load_config(str(ROOT / "configs" / "tiny-dpo.yaml"), [*COMMON, f"output_dir={out}", *extra]),
          resume=resume, progress=False)
    return load_file(str(out / "final" / "model.safetensors"))


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_extragradient_trains_two_steps_and_resumes_exactly(tmp_path):
    straight = _run(tmp_path / "straight", EG)
    trained = [row for row in _rows(tmp_path / "straight") if "half_step_objective" in row]
    assert [row["step"] for row in trained] == [1, 2]
    assert all(row["grad_norm"] > 0 and row["half_step_grad_norm"] > 0 for row in trained)
    assert all(row["objective"] != row["half_step_objective"] for row in trained)   # two points evaluated

    plain = _run(tmp_path / "plain")
    assert max(float((straight[k] - plain[k]).abs().max()) for k in straight) > 1e-6   # not one optimiser step

    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "step-000001",
                    tmp_path / "resumed" / "checkpoints" / "step-000001")
    resumed = _run(tmp_path / "resumed", EG, resume=True)
    steps = [row["step"] for row in _rows(tmp_path / "resumed") if "half_step_objective" in row]
    assert steps == [2]                                                              # it went on from step 1
    assert max(float((straight[k] - resumed[k]).abs().max()) for k in straight) < 1e-6


def test_extragradient_with_mezo_gradients_and_adam(tmp_path):
    _run(tmp_path / "mezo", EG, "train.gradient.name=mezo", "train.save_every=0")
    trained = [row for row in _rows(tmp_path / "mezo") if "half_step_objective" in row]
    assert len(trained) == 2 and all(row["grad_norm"] > 0 and "projected_gradient" in row for row in trained)


def test_extragradient_is_refused_with_updates_inside_backward(tmp_path):
    config = load_config(str(ROOT / "configs" / "tiny-dpo.yaml"),
                         [*COMMON, EG, "train.optimizer_in_backward=true", "train.max_grad_norm=null",
                          f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="extragradient.*optimizer_in_backward"):
        assemble(config)
