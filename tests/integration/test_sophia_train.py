"""Sophia-G and Sophia-H train through the one loop: the curvature refresh runs every k steps before the
update (the rule wraps the update, the loop does not know), its state is checkpointed, bad settings are
refused, and runs killed with SIGKILL — Sophia's and MeZO's — resume to the uninterrupted weights."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unigrad.config import ConfigError, load_config
from unigrad.run import assemble
from unigrad.train import optimise, train

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "tiny-dpo.yaml")
QUIET = ["train.eval_every=0", "data.eval=null", "train.tensorboard=false"]


@pytest.mark.parametrize("name", ["sophia-g", "sophia-h"])
def test_sophia_refreshes_its_curvature_every_k_steps_and_trains(tmp_path, name):
    run = assemble(load_config(CONFIG, [f"train.optimizer={name}", "train.optimizer_args.every=2", *QUIET,
                                        f"output_dir={tmp_path}"]))
    hessians = []
    for step in range(3):
        sums, _ = optimise(run, run.experience(step), step)
        hessians.append([s["hessian"].clone() for s in run.optimizer.state.values()])
        assert ("curvature_skipped" in sums.metrics) == (step % 2 == 0)
        assert sums.metrics.get("curvature_skipped", 0.0) == 0.0
    assert all(float(h.abs().sum()) > 0 for h in hessians[0])                 # refreshed at step 0
    assert all(bool((a == b).all()) for a, b in zip(hessians[0], hessians[1]))  # not at step 1
    assert any(bool((a != b).any()) for a, b in zip(hessians[1], hessians[2]))  # again at step 2
    assert all(p.grad is None for p in run.params)


@pytest.mark.parametrize("override, message", [("train.optimizer_in_backward=true", "would update the weights"),
                                               ("train.optimizer_args.rho=0", "rho and eps must be > 0"),
                                               ("train.optimizer_args.every=0", "every"),
                                               ("train.optimizer_args.gamma=1", "does not take")])
def test_sophia_settings_refused_with_the_reason(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        assemble(load_config(CONFIG, ["train.optimizer=sophia-g", "train.max_grad_norm=null", override, *QUIET,
                                      f"output_dir={tmp_path}"]))


@pytest.mark.parametrize("overrides", [["train.optimizer=sophia-g", "train.optimizer_args.every=3"],
                                       ["train.gradient.name=mezo", "train.optimizer=sgd", "train.lr=1e-3",
                                        "train.gradient.samples=2"]], ids=["sophia-g", "mezo"])
def test_killed_with_sigkill_and_resumed_ends_at_the_uninterrupted_weights(tmp_path, overrides):
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "integration" / "kill_loop.py"), CONFIG,
                             str(tmp_path), "--kills", "4", "--max-delay", "1.0", "train.steps=8",
                             "train.save_every=1", "train.keep_checkpoints=2", *QUIET, *overrides],
                            text=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print("kill loop:", report)
    assert result.returncode == 0, (report, result.stderr[-2000:])
    assert report["kills"] == 4 and report["kills_in_a_write"] >= 1 and report["max_weight_diff"] <= 1e-6


def test_sophia_h_trains_a_run_to_the_end(tmp_path):
    metrics = train(load_config(CONFIG, ["train.optimizer=sophia-h", "train.steps=4", *QUIET,
                                         f"output_dir={tmp_path}"]), progress=False)
    assert metrics["objective"] == metrics["objective"] and (tmp_path / "final").is_dir()
