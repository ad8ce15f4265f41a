"""`train.optimizer: m-fac` trains through the loop and resumes to the uninterrupted weights (the
gradient window is checkpointed with the optimiser state); bad optimiser arguments name the key."""
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from unigrad.config import ConfigError, load_config
from unigrad.run import assemble
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["train.optimizer=m-fac", "train.optimizer_args={m: 3, damping: 1.0e-3}", "train.lr=1e-3", "train.threads=1",
        "train.steps=4", "train.save_every=2", "train.eval_every=0", "data.eval=null", "train.tensorboard=false"]


def test_mfac_run_resumes_to_the_uninterrupted_weights(tmp_path):
    def run(out, resume=False):
        train(load_config(str(ROOT / "configs" / "tiny-dpo.yaml"), [*ARGS, f"output_dir={out}"]), resume=resume,
              progress=False)
    run(tmp_path / "straight")
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "step-000002",
                    tmp_path / "resumed" / "checkpoints" / "step-000002")
    run(tmp_path / "resumed", resume=True)
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "final" / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_unknown_optimizer_arguments_are_refused(tmp_path):
    config = load_config(str(ROOT / "configs" / "tiny-dpo.yaml"),
                         [*ARGS, "train.optimizer_args={window: 3}", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="train.optimizer_args: m-fac does not take"):
        assemble(config)
