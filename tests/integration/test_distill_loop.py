"""On-policy distillation (GKD's λ, ``data.on_policy_fraction``) through the loop: some steps train on
the student's own samples, whatever objective the method is built from."""
import json
from pathlib import Path

import pytest

from unigrad.config import ConfigError, load_config
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[2]


def _on_policy_steps(folder: Path) -> list[float]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [row.get("on_policy", 0.0) for row in rows if "objective" in row]


@pytest.mark.parametrize("method", ["{name: kd-js, beta: 0.5}",
                                    "{sum: [{weight: 1.0, name: kd-js, beta: 0.5}, {weight: 0.5, name: kd-forward}]}"])
def test_gkd_on_policy_fraction_draws_student_samples(tmp_path, method):
    config = load_config(str(ROOT / "configs" / "tiny-kd.yaml"),
                         [f"output_dir={tmp_path}", f"method={method}", "data.on_policy_fraction=0.5", "train.steps=6",
                          "rollout.max_new_tokens=16", "data.eval=null"])
    train(config, progress=False)
    on_policy = _on_policy_steps(tmp_path)
    assert len(on_policy) == 6 and 0 < sum(on_policy) < 6        # some steps, not all, are on-policy


def test_on_policy_fraction_is_checked():
    with pytest.raises(ConfigError, match="on_policy_fraction"):
        load_config(str(ROOT / "configs" / "tiny-kd.yaml"), ["data.on_policy_fraction=1.5"])
