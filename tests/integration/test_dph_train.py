"""DPH-RL through the one loop on the tiny model: the initial policy's samples are split into a rehearsal
set (written to the run's folder) and prompts to explore; each step trains DAPO on the rollouts and the
forward-KL term on stored rows; a run resumed after step 1 reads the set back and ends at the
uninterrupted run's weights."""
import json
import shutil

import pytest
from safetensors.torch import load_file

from unigrad.config import load_config
from unigrad.train import train

REWARD = '''
def reward(prompt, completion, answer, **meta):
    """1 for every sample of a prompt whose answer is even: those prompts are solved k/k."""
    return float(int(float(answer)) % 2 == 0)
'''


def _config(tmp_path, out):
    (tmp_path / "even.py").write_text(REWARD)
    return load_config(None, [], text=json.dumps({
        "model": "tiny-random", "method": {"name": "dph-rl", "divergence": "forward-kl", "eta": 0.5},
        "data": {"format": "prompts", "task": {"name": "arithmetic", "train_size": 16, "eval_size": 0}, "max_length": 128},
        "rollout": {"num_generations": 4, "max_new_tokens": 8}, "reward": {"function": f"{tmp_path / 'even.py'}:reward"},
        "rehearsal": {"samples": 3, "per_step": 4},
        "train": {"steps": 2, "batch_size": 2, "lr": 1e-3, "tensorboard": False, "save_every": 1, "eval_every": 0},
        "output_dir": str(out)}))


def test_dph_rehearsal_set_is_written_trained_on_and_read_back_on_resume(tmp_path, monkeypatch):
    monkeypatch.setattr("unigrad.report.write_report", lambda folder: folder)   # the HTML report is not under test
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_config(tmp_path, straight), progress=False)
    meta = json.loads((straight / "rehearsal" / "rehearsal.json").read_text())
    assert meta["pef"] and meta["exp"] and sorted(meta["pef"] + meta["exp"]) == list(range(16))
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    trained = [row for row in rows if "rehearsal_rows" in row]
    assert [row["rehearsal_rows"] for row in trained] == [4.0, 4.0]
    assert trained[0]["pef/forward-kl/log_ratio_mean"] == pytest.approx(0.0, abs=1e-4)   # stored = π_θ at step 0
    assert trained[0]["rehearsal_prompts"] == len(meta["pef"])

    shutil.copytree(straight, resumed, ignore=shutil.ignore_patterns("final", "summary.json"))
    written = (resumed / "rehearsal" / "rehearsal.safetensors").read_bytes()
    train(_config(tmp_path, resumed), resume=True, progress=False)
    assert (resumed / "rehearsal" / "rehearsal.safetensors").read_bytes() == written       # read back, not made again
    a, b = (load_file(str(run / "final" / "model.safetensors")) for run in (straight, resumed))
    assert max(float((a[key] - b[key]).abs().max()) for key in a) <= 1e-6
