"""Unpaired preference methods through the one loop on the shipped unpaired data (tiny model): KTO trains
with its mismatched rows and reports the held-out margin; BCO's running mean δ resumes exactly."""
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file

from unigrad.checkpoint import read_states
from unigrad.config import load_config
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[2]
TINY_BCO = """
model: tiny-random
method: {name: bco, beta: 0.1}
data: {train: data/unpaired/train.jsonl, format: unpaired, max_length: 256, limit: 40}
train: {steps: 4, batch_size: 4, lr: 1.0e-3, save_every: 2, tensorboard: false, threads: 1}
"""


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_kto_trains_and_bco_resumes_with_the_same_delta(tmp_path):
    kto = tmp_path / "kto"
    train(load_config(str(ROOT / "configs/tiny-kto.yaml"),
                      [f"output_dir={kto}", "train.steps=2", "data.limit=40", "train.eval_every=0", "train.save_every=0", "train.threads=1"]),
          progress=False)
    rows = _rows(kto)
    assert {"eval/reward_margin", "eval/kl"} <= set(rows[0]) and {"kl", "reward_margin"} <= set(rows[1])
    assert rows[-1]["eval/reward_margin"] != rows[0]["eval/reward_margin"]

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(load_config(None, [f"output_dir={straight}"], text=TINY_BCO), progress=False)
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step-000002", resumed / "checkpoints" / "step-000002")
    train(load_config(None, [f"output_dir={resumed}"], text=TINY_BCO), resume=True, progress=False)
    assert read_states(straight / "checkpoints" / "step-000002")["bco_delta"]["count"] == 8    # 2 steps × 4 rows
    deltas = [{row["step"]: row["delta"] for row in _rows(run) if "delta" in row} for run in (straight, resumed)]
    assert deltas[1] == {3: deltas[0][3], 4: deltas[0][4]} and len(set(deltas[0].values())) == 4
    a, b = (load_file(str(run / "final" / "model.safetensors")) for run in (straight, resumed))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
