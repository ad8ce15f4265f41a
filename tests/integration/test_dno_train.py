"""DNO through the one loop: iterations of on-policy pairs against the iteration's reference, trained
end to end on the tiny model, and a run killed with SIGKILL again and again — across iteration
boundaries, where the reference switches — resumes to the uninterrupted run's weights."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unigrad.config import ConfigError, load_config
from unigrad.run import assemble
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "tiny-dno.yaml")
QUIET = ["train.eval_every=0", "data.task.eval_size=0", "train.tensorboard=false"]


def test_dno_trains_on_iterations_whose_reference_is_the_policy_at_their_start(tmp_path):
    train(load_config(CONFIG, [*QUIET, f"output_dir={tmp_path}"]), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    trained = [row for row in rows if "iteration" in row]
    assert [row["iteration"] for row in trained] == [0.0, 0.0, 1.0, 1.0]
    assert all(row["iteration_pairs"] > 0 for row in trained)
    assert trained[0]["kl_ref"] == pytest.approx(0.0, abs=1e-6)          # at the iteration's start π_θ = π_t
    assert trained[2]["iteration_carried_pairs"] == int(0.3 * trained[0]["iteration_new_pairs"])
    assert sorted(p.name for p in (tmp_path / "iterations").iterdir()) == [
        "iteration-0000.json", "iteration-0000.safetensors", "iteration-0001.json", "iteration-0001.safetensors"]


def test_sppo_trains_on_every_sample_with_its_win_rate(tmp_path):
    train(load_config(CONFIG, [*QUIET, "method={name: sppo, beta: 0.1}", "train.steps=2", f"output_dir={tmp_path}"]),
          progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    trained = [row for row in rows if "iteration" in row]
    assert len(trained) == 2 and trained[0]["iteration_samples"] == 4 * (3 + 1)        # K samples + gold per prompt
    assert all(0 <= row["win_rate_mean"] <= 1 for row in trained)
    assert trained[0]["kl_ref"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("overrides, message", [(["method={name: dno}", "iterations.steps=0"], "iterations.steps"),
                                                (["method={name: grpo}"], "compare chosen and rejected")])
def test_dno_settings_refused_with_the_reason(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        assemble(load_config(CONFIG, [*QUIET, *overrides, f"output_dir={tmp_path}"]))


def test_dno_killed_with_sigkill_across_iteration_boundaries_resumes_exactly(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "integration" / "kill_loop.py"), CONFIG,
                             str(tmp_path), "--kills", "4", "--max-delay", "2.0", "train.steps=6", "train.save_every=1",
                             "train.keep_checkpoints=2", *QUIET],
                            text=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print("kill loop:", report)
    assert result.returncode == 0, (report, result.stderr[-2000:])
    assert report["kills"] == 4 and report["kills_in_a_write"] >= 1 and report["max_weight_diff"] <= 1e-6
