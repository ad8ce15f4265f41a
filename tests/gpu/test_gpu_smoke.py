"""The GPU smoke run (benchmarks/gpu_smoke.py): every method family, two bfloat16 steps on a CUDA GPU."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_smoke.py"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_every_family_trains_two_finite_bfloat16_steps_on_the_gpu():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 of 7 families failed" in result.stdout
