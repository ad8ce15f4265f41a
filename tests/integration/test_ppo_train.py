"""PPO with a separate critic through the one loop on the tiny model: the critic is trained (value loss
logged every step), and a run killed with SIGKILL right after its checkpoints of steps 2 and 3 and
resumed each time ends at the uninterrupted run's policy weights, with the critic's weights and
optimiser state equal in the last checkpoint (step 3, written by a resumed run)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "tiny-ppo.yaml")
STEPS = 4
OVERRIDES = ["train.eval_every=0", "data.task.eval_size=0", "train.tensorboard=false", f"train.steps={STEPS}",
             "train.save_every=1", "train.keep_checkpoints=1"]

# One driver imports unigrad once and forks each run (it computes nothing itself, so forking is safe):
# the uninterrupted run, then the interrupted one, SIGKILLed as soon as a checkpoint of step ≥ k exists
# (k = 2, then 3, resuming in between), then resumed to the end.
DRIVER = """
import os, signal, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from unigrad.config import load_config
from unigrad.train import train
config, out, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]

def run(folder, resume, kill_at=None):
    pid = os.fork()
    if pid == 0:
        try:
            train(load_config(config, [*overrides, f"output_dir={folder}"]), resume=resume, progress=False)
        except BaseException:
            os._exit(1)
        os._exit(0)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "finished" if os.waitstatus_to_exitcode(status) == 0 else "failed"
        saved = [int(p.name[5:]) for p in (folder / "checkpoints").glob("step-*")] if kill_at else []
        if saved and max(saved) >= kill_at:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "killed"
        time.sleep(0.002)

print(run(out / "uninterrupted", False), run(out / "interrupted", True, 2), run(out / "interrupted", True, 3),
      run(out / "interrupted", True))
"""


def _weights(folder: Path) -> dict:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def _gap(a: dict, b: dict, keys) -> float:
    return max(float((a[key].double() - b[key].double()).abs().max()) for key in keys)


def test_ppo_trains_its_critic_and_resumes_policy_and_critic_exactly(tmp_path):
    result = subprocess.run([sys.executable, "-c", DRIVER, CONFIG, str(tmp_path), *OVERRIDES], text=True,
                            capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.stdout.split() == ["finished", "killed", "killed", "finished"], (result.stdout, result.stderr[-2000:])

    rows = [json.loads(line) for line in (tmp_path / "uninterrupted" / "metrics.jsonl").read_text().splitlines()]
    trained = [row for row in rows if "objective" in row]
    assert len(trained) == STEPS
    assert all(row["value_loss"] > 0 and row["critic_grad_norm"] > 0 for row in trained)
    resumed_rows = [json.loads(line) for line in (tmp_path / "interrupted" / "metrics.jsonl").read_text().splitlines()]
    assert max(row["step"] for row in resumed_rows) == STEPS

    straight, resumed = _weights(tmp_path / "uninterrupted" / "final"), _weights(tmp_path / "interrupted" / "final")
    assert _gap(straight, resumed, straight) <= 1e-6

    name = f"step-{STEPS - 1:06d}"
    straight = load_file(str(tmp_path / "uninterrupted" / "checkpoints" / name / "states.safetensors"))
    resumed = load_file(str(tmp_path / "interrupted" / "checkpoints" / name / "states.safetensors"))
    critic = sorted(key for key in straight if key.startswith("critic/"))
    assert any(key.startswith("critic/weights/") for key in critic)
    assert any(key.startswith("critic/optimizer/") for key in critic)
    assert critic == sorted(key for key in resumed if key.startswith("critic/"))
    assert _gap(straight, resumed, critic) <= 1e-6
