"""A run never ends worse than it started: non-finite steps, checked resumes, preemption, kills,
corrupt checkpoints and failed writes, on the tiny model (one and two processes)."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unigrad.config import load_config
from unigrad.guards import NonFiniteGuard, RunError, resume_differences
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "tiny-dpo.yaml")
QUIET = ["train.eval_every=0", "data.eval=null"]


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unigrad", "train", CONFIG, *args, "--no-progress"], text=True,
                          capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _weights(folder: Path) -> dict:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def _all_finite(folder: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _weights(folder).values())


def _same(a: dict, b: dict, tol: float) -> float:
    assert a.keys() == b.keys()
    gap = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert gap <= tol, gap
    return gap


# ---------------------------------------------------------------------------- non-finite steps

def test_a_non_finite_update_leaves_weights_and_optimiser_state_unchanged():
    from unigrad.optim import apply_update
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    layer(torch.ones(1, 3)).sum().backward()
    apply_update(optimizer, list(layer.parameters()), 1.0)            # a finite step: state exists
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    state = {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for p, s in optimizer.state.items()}
    (layer(torch.ones(1, 3)).sum() * float("nan")).backward()
    norm = apply_update(optimizer, list(layer.parameters()), 1.0)
    assert norm != norm                                                # NaN
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key])
    for p, s in optimizer.state.items():
        assert all(torch.equal(v, state[id(p)][k]) if torch.is_tensor(v) else v == state[id(p)][k] for k, v in s.items())
    assert all(p.grad is None for p in layer.parameters())


def test_the_guard_skips_then_stops_naming_the_step():
    guard = NonFiniteGuard(limit=3)
    assert not guard(1, 0.7, 0.7, 1.0)
    assert guard(2, float("nan"), float("nan"), float("nan")) and guard(3, 0.5, 0.5, float("inf"))
    assert not guard(4, 0.6, 0.6, 2.0) and guard.in_row == 0 and guard.skipped == 2
    guard(5, float("nan"), 0.0, 1.0), guard(6, float("nan"), 0.0, 1.0)
    with pytest.raises(RunError, match=r"at step 7 .*last finite step was 4.*train.lr"):
        guard(7, float("nan"), 0.0, 1.0)


@pytest.mark.parametrize("extra", [[], ["train.max_grad_norm=null", "train.grad_accum=2"]])
def test_a_diverging_run_stops_with_a_clear_error_and_saves_nothing_non_finite(tmp_path, extra):
    out = tmp_path / "run"
    result = _cli(f"output_dir={out}", "train.lr=1e30", "train.steps=12", "train.save_every=1", *QUIET, *extra)
    assert result.returncode == 2, result.stderr
    assert "training diverged: 3 non-finite steps in a row, the last at step" in result.stderr
    assert "Traceback" not in result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["nonfinite_skipped"] >= 1                            # the skips are in the metrics
    for checkpoint in (out / "checkpoints").glob("step-*"):
        assert _all_finite(checkpoint / "model"), checkpoint
    assert not (out / "final").exists() or _all_finite(out / "final")


# ---------------------------------------------------------------------------- resume checks

def test_resume_differences_name_what_changes_the_result():
    saved = {"method": {"name": "dpo", "beta": 0.1}, "train": {"steps": 6, "lr": 1e-3, "eval_every": 3},
             "output_dir": "a"}
    now = {"method": {"name": "dpo", "beta": 0.2}, "train": {"steps": 9, "lr": 1e-3, "eval_every": 0}, "output_dir": "b"}
    assert resume_differences(saved, now) == ["method: {'name': 'dpo', 'beta': 0.1} in the checkpoint, "
                                              "{'name': 'dpo', 'beta': 0.2} now"]


def test_resume_is_refused_after_a_change_that_matters_and_continues_after_more_steps(tmp_path):
    out = tmp_path / "run"
    base = [f"output_dir={out}", "train.steps=4", "train.save_every=2", *QUIET]
    train(load_config(CONFIG, base), progress=False)
    with pytest.raises(RunError, match=r"method: .*beta.*0\.1.*0\.2"):
        train(load_config(CONFIG, [*base, "method.beta=0.2"]), resume=True, progress=False)
    with pytest.raises(RunError, match="the training data"):
        train(load_config(CONFIG, [*base, "data.limit=40"]), resume=True, progress=False)
    forced = train(load_config(CONFIG, [*base, "method.beta=0.2"]), resume=True, progress=False, force=True)
    assert forced["steps"] == 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("beta" in row.get("resume_forced", "") for row in rows)      # the warning is in the metrics
    longer = train(load_config(CONFIG, [*base, "train.steps=6"]), resume=True, progress=False)
    assert longer["steps"] == 6


def test_a_corrupt_checkpoint_is_skipped_for_the_one_before(tmp_path, caplog):
    args = ["train.steps=6", "train.save_every=2", "train.keep_checkpoints=3", "train.schedule=constant", *QUIET]
    train(load_config(CONFIG, [f"output_dir={tmp_path / 'whole'}", *args]), progress=False)
    partial = tmp_path / "partial"
    train(load_config(CONFIG, [f"output_dir={partial}", *args, "train.steps=5"]), progress=False)  # checkpoints 2, 4
    (partial / "checkpoints" / "step-000004" / "optimizer.safetensors").write_bytes(b"not a safetensors file")
    with caplog.at_level("WARNING", logger="unigrad"):
        train(load_config(CONFIG, [f"output_dir={partial}", *args]), resume=True, progress=False)
    assert "step-000004 is incomplete or corrupt" in caplog.text
    _same(_weights(tmp_path / "whole" / "final"), _weights(partial / "final"), 1e-6)


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_says_so(tmp_path, monkeypatch):
    import unigrad.checkpoint as checkpoint
    out = tmp_path / "run"
    args = [f"output_dir={out}", "train.steps=6", "train.save_every=2", *QUIET]
    real, calls = checkpoint.save_model, []

    def full_disk(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)
    monkeypatch.setattr(checkpoint, "save_model", full_disk)
    with pytest.raises(RunError, match=r"No space left on device.*step-000002 is intact"):
        train(load_config(CONFIG, args), progress=False)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000002"]


# ---------------------------------------------------------------------------- preemption and kills

def _wait_for_step(out: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        path = out / "metrics.jsonl"
        if path.exists() and any(json.loads(line).get("step", 0) >= step and "objective" in json.loads(line)
                                 for line in path.read_text().splitlines() if line.strip()):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} was not reached")


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigterm_writes_a_checkpoint_and_resume_reaches_the_uninterrupted_run(tmp_path, nproc):
    args = ["train.steps=16", "train.save_every=0", *QUIET, f"--nproc={nproc}" if nproc > 1 else "--no-progress"]
    whole = _cli(f"output_dir={tmp_path / 'whole'}", *args)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "stopped"
    command = [sys.executable, "-m", "unigrad", "train", CONFIG, f"output_dir={out}", *args, "--no-progress"]
    process = subprocess.Popen(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    _wait_for_step(out, 2, process)
    os.killpg(process.pid, signal.SIGTERM) if nproc > 1 else process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "SIGTERM" in stderr and "--resume" in stderr
    stopped_at = max(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))
    assert 2 <= stopped_at < 16 and not (out / "final").exists()
    resumed = _cli(f"output_dir={out}", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _same(_weights(tmp_path / "whole" / "final"), _weights(out / "final"), 1e-5 if nproc > 1 else 1e-6)


def test_twenty_kills_at_random_moments_and_in_checkpoint_writes_end_at_the_uninterrupted_weights(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "integration" / "kill_loop.py"), CONFIG,
                             str(tmp_path), "--kills", "20", "train.steps=30", "train.save_every=1",
                             "train.keep_checkpoints=2", *QUIET], text=True, capture_output=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print("kill loop:", report)
    assert result.returncode == 0, (report, result.stderr[-2000:])
    assert report["kills"] == 20 and report["kills_in_a_write"] >= 1 and report["max_weight_diff"] <= 1e-6


def test_two_processes_refuse_a_changed_resume_and_stop_a_diverging_run(tmp_path):
    out = tmp_path / "run"
    base = [f"output_dir={out}", "train.steps=4", "train.save_every=2", *QUIET, "--nproc=2"]
    assert _cli(*base).returncode == 0
    refused = _cli(*base, "method.beta=0.3", "--resume")
    assert refused.returncode == 2 and "method:" in refused.stderr and "beta" in refused.stderr
    diverged = _cli(f"output_dir={tmp_path / 'nan'}", "train.lr=1e30", "train.steps=8", "train.save_every=1",
                    *QUIET, "--nproc=2")
    assert diverged.returncode == 2 and "training diverged" in diverged.stderr
    for checkpoint in (tmp_path / "nan" / "checkpoints").glob("step-*"):
        assert _all_finite(checkpoint / "model")
