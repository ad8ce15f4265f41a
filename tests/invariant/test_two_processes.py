"""Two processes × batch b give the same update as one process × batch 2b (data parallel, gloo)."""
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = [str(ROOT / "configs" / "tiny-dpo.yaml"), "train.steps=3", "train.save_every=0", "train.eval_every=0",
           "data.eval=null"]
# greedy rollouts do not depend on how prompts are split over processes
ONLINE = [str(ROOT / "configs" / "tiny-hpt.yaml"), "train.steps=3", "train.batch_size=4", "rollout.temperature=0",
          "data.task.eval_size=2"]


def _one_and_two_processes(tmp_path: Path, config: list[str]) -> tuple[dict, dict]:
    """Final weights of the same run in one process and in two."""
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        result = subprocess.run([sys.executable, "-m", "unigrad", "train", *config, "--no-progress",
                                 f"output_dir={tmp_path / name}", *extra],
                                capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-2000:]
    return tuple(load_file(str(tmp_path / name / "final" / "model.safetensors")) for name in ("one", "two"))


def test_two_processes_equal_one(tmp_path):
    a, b = _one_and_two_processes(tmp_path, OFFLINE)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_two_processes_equal_one_for_online_rl(tmp_path):
    """Rollouts are generated half per process and gathered; greedy decoding makes them independent of
    the split, so the update must be exactly the one-process update (HPT: SFT on demonstrations
    while the tiny model solves nothing, so the gradient is not zero)."""
    a, b = _one_and_two_processes(tmp_path, ONLINE)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    from unigrad.models import load_model
    start = dict(load_model("tiny-random")[0].state_dict())
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4     # it did learn something
