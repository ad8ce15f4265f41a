"""Rollout corrections through the loop: with rollout.recompute_logp_old the trainer's forward gives
π_old and the sampler's log-probs reach the batch as logp_sampler; TIS weights the terms by min(ρ, C)."""
import json
import math
from pathlib import Path

import pytest

import unigrad.train
from unigrad.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SHIFT = 0.1     # added to the trainer's recomputed log-probs, so that ρ = e^0.1 on every token


def test_tiny_grpo_with_recomputed_pi_old_and_tis(tmp_path, monkeypatch):
    assemble = unigrad.train.assemble

    def shifted(config):
        """The run, its recomputed π_old moved by SHIFT: only a ρ read from both fields can show it."""
        run = assemble(config)
        recompute = run.experience.recompute
        run.experience.recompute = lambda rows: recompute(rows) + SHIFT
        return run
    monkeypatch.setattr(unigrad.train, "assemble", shifted)
    config = load_config(ROOT / "configs" / "tiny-dapo.yaml", [
        "method={name: grpo}", "rollout.dynamic_sampling=false", "reward.overlong_cache=null",
        "rollout.recompute_logp_old=true", "rollout.correction={kind: tis, cap: 1.05}",
        "train.eval_every=0", "data.task.eval_size=0", f"output_dir={tmp_path}"])
    unigrad.train.train(config, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    trained = [row for row in rows if "correction/rho_mean" in row]
    assert len(trained) == 2
    for row in trained:
        assert row["correction/rho_mean"] == pytest.approx(math.exp(SHIFT), rel=1e-5)
        assert row["correction/truncated_fraction"] == 1.0          # every token's ρ above the cap C = 1.05
        assert row["mask_kept"] == pytest.approx(1.05, rel=1e-6)      # m = min(ρ, C) · m_PPO, m_PPO = 1
