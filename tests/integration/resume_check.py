"""Kill a training run with SIGKILL after step K, resume it, and compare with an uninterrupted run.

    python tests/integration/resume_check.py configs/dpo-smollm2.yaml --kill-after 12 [key=value ...]

Prints the final objectives of both runs and their difference; exits 1 if they differ by > 1e-5.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _unigrad(config: str, out: Path, overrides: list[str], resume: bool = False) -> subprocess.Popen:
    command = [sys.executable, "-m", "unigrad", "train", config, f"output_dir={out}", *overrides, "--no-progress"]
    return subprocess.Popen(command + (["--resume"] if resume else []), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return max((row["step"] for row in lines if "objective" in row), default=0)


def final_record(out: Path) -> dict:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row for row in lines if "objective" in row][-1]


def kill_and_resume(config: str, work: Path, kill_after: int, overrides: list[str]) -> tuple[dict, dict, int]:
    """(final record uninterrupted, final record killed+resumed, step at which it was killed)."""
    straight, broken = work / "straight", work / "killed"
    run = _unigrad(config, straight, overrides)
    output, _ = run.communicate()
    if run.returncode:
        raise RuntimeError(f"uninterrupted run failed:\n{output}")
    run = _unigrad(config, broken, overrides)
    while _steps_logged(broken) < kill_after:
        if run.poll() is not None:
            raise RuntimeError(f"run ended before step {kill_after}:\n{run.stdout.read()}")
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    killed_at = _steps_logged(broken)
    run = _unigrad(config, broken, overrides, resume=True)
    output, _ = run.communicate()
    if run.returncode:
        raise RuntimeError(f"resumed run failed:\n{output}")
    return final_record(straight), final_record(broken), killed_at


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--kill-after", type=int, default=12)
    parser.add_argument("--work", default="runs/resume-check")
    args = parser.parse_args()
    straight, resumed, killed_at = kill_and_resume(args.config, Path(args.work), args.kill_after, args.overrides)
    diff = abs(straight["objective"] - resumed["objective"])
    print(f"killed (SIGKILL) after step {killed_at}; final step {straight['step']}: "
          f"uninterrupted objective {straight['objective']:.8f}, resumed {resumed['objective']:.8f}, |diff| {diff:.2e}")
    return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
