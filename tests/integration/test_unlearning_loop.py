"""Unlearning methods through the main loop on the tiny model with the ``forget`` format: IHL
(which needs ``logp_top_other`` from the engine) and NPO (which needs the reference)."""
import json
from pathlib import Path

import pytest
import torch

from unigrad.config import load_config
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[2]
TINY_NPO = str(ROOT / "configs" / "tiny-npo.yaml")


def _run(tmp_path, method: str, steps: int = 4):
    torch.set_num_threads(1)
    config = load_config(TINY_NPO, [f"method={method}", f"output_dir={tmp_path}", f"train.steps={steps}",
                                    "train.batch_size=8", "train.lr=3.0e-3"])
    summary = train(config, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


def test_ihl_trains_through_the_loop_with_the_competing_token(tmp_path):
    summary, rows = _run(tmp_path, "{name: ihl, retain_weight: 1.0}")
    assert len(rows) == 4 and all(torch.isfinite(torch.tensor(r["objective"])) for r in rows)
    # the engine filled logp_top_other: the hinge's competing-token probability is a real probability
    assert all(0.0 < r["ihl/p_competing"] <= 1.0 and 0.0 < r["ihl/p_data"] <= 1.0 for r in rows)
    assert all(r["grad_norm"] > 0 for r in rows)
    # IHL lowers the hinge 1 + p(y) − max_{v≠y} p(v) on the forget tokens
    assert rows[-1]["ihl/objective"] < rows[0]["ihl/objective"]
    assert (Path(summary["final_model"]) / "model.safetensors").exists()


def test_npo_trains_through_the_loop_and_moves_away_from_the_reference(tmp_path):
    _, rows = _run(tmp_path, "{name: npo, beta: 0.1}")
    assert len(rows) == 4
    # h = ℓ − ℓ_ref on the forget rows starts at 0 and is pushed down
    assert abs(rows[0]["log_ratio_mean"]) < 1e-4
    assert rows[-1]["log_ratio_mean"] < -0.5
    assert rows[-1]["kl_ref"] > 0


def test_ihl_is_refused_where_the_data_has_no_forget_rows(tmp_path):
    """The competing token is produced for any data; what SFT data cannot give is the forget rows."""
    from unigrad.config import ConfigError
    config = load_config(str(ROOT / "configs" / "tiny-kd.yaml"), [f"output_dir={tmp_path}", "method={name: ihl}",
                                                                 "teacher.name=null"])
    with pytest.raises(ConfigError, match="sign"):
        train(config, progress=False)


def test_npo_with_fila_initialised_lora_through_the_loop(tmp_path):
    config = load_config(str(ROOT / "configs" / "tiny-npo.yaml"),
                         [f"output_dir={tmp_path}", "model.lora.r=4", "model.lora.init=fila", "train.steps=2",
                          "train.save_every=0"])
    summary = train(config, progress=False)
    assert (tmp_path / "final" / "config.json").exists() and summary["steps"] == 2
