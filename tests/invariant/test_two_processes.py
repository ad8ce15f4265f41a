"""Two processes × batch b give the same update as one process × batch 2b (data parallel, gloo)."""
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
COMMON = [str(ROOT / "configs" / "tiny-dpo.yaml"), "train.steps=3", "train.save_every=0", "train.eval_every=0",
          "data.eval=null", "--no-progress"]


def _train(out: Path, *extra: str) -> None:
    result = subprocess.run([sys.executable, "-m", "unigrad", "train", *COMMON, f"output_dir={out}", *extra],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]


def test_two_processes_equal_one(tmp_path):
    _train(tmp_path / "one")
    _train(tmp_path / "two", "--nproc", "2")
    a = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_two_processes_equal_one_for_online_rl(tmp_path):
    """Rollouts are generated half per process and gathered; greedy decoding makes them independent of
    the split, so the update must be exactly the one-process update (HPT: SFT on demonstrations
    while the tiny model solves nothing, so the gradient is not zero)."""
    online = [str(ROOT / "configs" / "tiny-hpt.yaml"), "train.steps=3", "train.batch_size=4", "rollout.temperature=0",
              "data.task.eval_size=2", "--no-progress"]

    def run(out: Path, *extra: str) -> None:
        result = subprocess.run([sys.executable, "-m", "unigrad", "train", *online, f"output_dir={out}", *extra],
                                capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-2000:]
    run(tmp_path / "one")
    run(tmp_path / "two", "--nproc", "2")
    a = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    from unigrad.models import load_model
    start = dict(load_model("tiny-random")[0].state_dict())
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4     # it did learn something
