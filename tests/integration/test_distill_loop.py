"""On-policy distillation (GKD's λ) through the loop: some steps train on the student's own samples."""
import json
from pathlib import Path

from unigrad.config import load_config
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[2]


def test_gkd_on_policy_fraction_draws_student_samples(tmp_path):
    config = load_config(str(ROOT / "configs" / "tiny-kd.yaml"),
                         [f"output_dir={tmp_path}", "method={name: kd-js, beta: 0.5, lam: 0.5}", "train.steps=6",
                          "rollout.max_new_tokens=16", "data.eval=null"])
    train(config, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    on_policy = [row.get("on_policy", 0.0) for row in rows if "objective" in row]
    assert len(on_policy) == 6 and 0 < sum(on_policy) < 6        # some steps, not all, are on-policy
