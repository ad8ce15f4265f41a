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
